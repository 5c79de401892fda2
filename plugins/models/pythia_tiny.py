"""Model plugin ``pythia_tiny``: the tiny offline default, a trained 4-layer GPT-NeoX (Pythia's architecture).

Its weights, config and tokenizer ship in ``pythia_tiny/`` beside this file; ``scripts/build_pythia_tiny.py``
reproduces them from the shipped corpus. Nothing is downloaded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Literal

from harness import HarnessError, LoadedModel, ModelPlugin, PluginConfig, StageContext, WeightsSource, hookimpl

from .hf_causal_lm import HFCausalLMConfig, load_hf_causal_lm

WEIGHTS_DIR = Path(__file__).resolve().parent / "pythia_tiny"


class PythiaTinyConfig(PluginConfig):
    #: The dtype the weights are loaded in.
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    #: Overrides the suite's device for this model.
    device: str | None = None


class PythiaTiny(ModelPlugin[PythiaTinyConfig]):
    """Tiny trained GPT-NeoX shipped with harness (offline default; 4 layers x 128, 4,096-token BPE)."""

    name = "pythia_tiny"

    def load(self, ctx: StageContext) -> LoadedModel:
        self.preflight(f"models.{ctx.stage.model}")
        config = HFCausalLMConfig(path=str(WEIGHTS_DIR), dtype=self.config.dtype, device=self.config.device)
        loaded = load_hf_causal_lm(config, ctx, ctx.stage.model)
        loaded.info["source"] = "pythia_tiny (shipped)"
        return loaded

    def preflight(self, where: str) -> None:
        if not (WEIGHTS_DIR / "model.safetensors").exists():
            raise HarnessError(f"{where}: pythia_tiny weights missing in {WEIGHTS_DIR}; fix: run "
                               "`python scripts/build_pythia_tiny.py` or restore the file from git")

    def weights_source(self) -> WeightsSource:
        return WeightsSource(str(WEIGHTS_DIR), local=True, dtype=self.config.dtype)

    def cache_key(self) -> dict[str, Any]:
        digest = hashlib.sha256()
        for f in sorted(WEIGHTS_DIR.iterdir()):  # weights, config and tokenizer all shape the results
            if f.is_file() and f.suffix in (".json", ".safetensors"):
                digest.update(f.name.encode() + hashlib.sha256(f.read_bytes()).digest())
        return {**self.config.model_dump(mode="json"), "files_sha256": digest.hexdigest()}


@hookimpl
def harness_models() -> list[type]:
    return [PythiaTiny]
