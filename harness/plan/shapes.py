"""Model shapes without weights: the config from a local directory or the Hugging Face cache, else a small table
of the published Pythia configs (labelled as such), else the hub if it is reachable, else "unknown"."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..hub import hub_reachable, offline_mode
from ..workload import ModelShape, WeightsSource

#: EleutherAI/pythia-<size>[-deduped]: (layers, hidden, heads, vocabulary rows) from the published config.json files
#: (GPT-NeoX; intermediate 4 x hidden, 2048 positions, untied embeddings). Used when the config is not cached.
PYTHIA = {
    "14m": (6, 128, 4, 50304), "31m": (6, 256, 8, 50304), "70m": (6, 512, 8, 50304), "160m": (12, 768, 12, 50304),
    "410m": (24, 1024, 16, 50304), "1b": (16, 2048, 8, 50304), "1.4b": (24, 2048, 16, 50304),
    "2.8b": (32, 2560, 32, 50304), "6.9b": (32, 4096, 32, 50432), "12b": (36, 5120, 40, 50688),
}
_PYTHIA_ID = re.compile(r"^EleutherAI/pythia-([0-9.]+[mb])(-deduped)?(-v0)?$", re.IGNORECASE)


@dataclass(frozen=True)
class ShapeLookup:
    shape: ModelShape | None
    #: Why there is no shape, with the fix (when ``shape`` is None).
    reason: str = ""


def count_parameters(config: Any) -> int:
    """Exact parameter count of the model a config builds, on the meta device (no memory, no weights)."""
    import torch
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return sum(p.numel() for p in model.parameters())


def shape_from_config(config: Any, source: str) -> ModelShape:
    text = config.get_text_config() if hasattr(config, "get_text_config") else config

    def get(*names: str, default: Any = None) -> Any:
        for name in names:
            value = getattr(text, name, None)
            if value is not None:
                return value
        return default

    hidden = int(get("hidden_size", "n_embd", "d_model"))
    dtype = get("dtype", "torch_dtype", default="float32")
    return ModelShape(
        n_params=count_parameters(config), n_layers=int(get("num_hidden_layers", "n_layer")), hidden=hidden,
        n_heads=int(get("num_attention_heads", "n_head")), intermediate=int(get("intermediate_size", "n_inner",
                                                                                 default=4 * hidden)),
        vocab=int(get("vocab_size")), max_length=int(get("max_position_embeddings", "n_positions", default=2048)),
        tied_embeddings=bool(get("tie_word_embeddings", default=False)), model_type=str(get("model_type")),
        dtype=str(dtype).replace("torch.", ""), source=source)


def pythia_config(ref: str) -> tuple[Any, str] | None:
    m = _PYTHIA_ID.match(ref)
    if not m or m.group(1).lower() not in PYTHIA:
        return None
    from transformers import GPTNeoXConfig

    layers, hidden, heads, vocab = PYTHIA[m.group(1).lower()]
    config = GPTNeoXConfig(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                           intermediate_size=4 * hidden, vocab_size=vocab, max_position_embeddings=2048,
                           rotary_pct=0.25, tie_word_embeddings=False, use_parallel_residual=True, dtype="float16")
    return config, f"published Pythia-{m.group(1).upper()} config (built-in table: not cached, not read from the hub)"


def _auto_config(ref: str, source: WeightsSource, local_only: bool) -> Any:
    from transformers import AutoConfig

    kwargs: dict[str, Any] = {"revision": source.revision, "local_files_only": local_only}
    if source.gguf_file:
        kwargs["gguf_file"] = source.gguf_file
    return AutoConfig.from_pretrained(ref, **kwargs)


def lookup_shape(source: WeightsSource | None, name: str) -> ShapeLookup:
    """The shape of a model entry's weights, and where it came from; never downloads weights."""
    if source is None:
        return ShapeLookup(None, f"unknown shape: model '{name}' does not say where its weights live (its plugin "
                                 "has no weights_source)")
    if source.local:
        try:
            return ShapeLookup(shape_from_config(_auto_config(source.ref, source, True), f"config in {source.ref}"))
        except (OSError, ValueError) as exc:
            return ShapeLookup(None, f"unknown shape: cannot read the config in {source.ref} ({type(exc).__name__})")
    try:
        return ShapeLookup(shape_from_config(_auto_config(source.ref, source, True),
                                             f"config.json of {source.ref} in the local Hugging Face cache"))
    except (OSError, ValueError):
        pass
    table = pythia_config(source.ref)
    if table is not None:
        return ShapeLookup(shape_from_config(*table))
    if not offline_mode() and hub_reachable():
        try:
            return ShapeLookup(shape_from_config(_auto_config(source.ref, source, False),
                                                 f"config.json of {source.ref} from the hub"))
        except (OSError, ValueError) as exc:
            return ShapeLookup(None, f"unknown shape: cannot read the config of '{source.ref}' from the hub "
                                     f"({type(exc).__name__})")
    return ShapeLookup(None, f"unknown shape: '{source.ref}' is not in the local Hugging Face cache and the hub is "
                             f"not reachable; fix: `hf download {source.ref} config.json` (or the whole "
                             "model) where the hub is reachable")
