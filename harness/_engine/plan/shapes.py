"""Model shapes without weights: the config from a local directory or the Hugging Face cache, else the published
configs shipped as data (``published_configs.json``, labelled as such), else the hub if it is reachable, else
"unknown"."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from ...hub import hub_reachable, offline_mode
from ...workload import ModelShape, WeightsSource

#: Published configs by model reference (families of sizes), read when a model's config is not cached.
PUBLISHED_CONFIGS = Path(__file__).with_name("published_configs.json")


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


@cache
def _published_families() -> list[dict[str, Any]]:
    return json.loads(PUBLISHED_CONFIGS.read_text())["families"]


def published_config(ref: str) -> tuple[Any, str] | None:
    """The config of ``ref`` from the shipped published configs, and its label; None when not listed."""
    for family in _published_families():
        m = re.match(family["pattern"], ref, re.IGNORECASE)
        size = m.group("size").lower() if m else None
        if size is None or size not in family["sizes"]:
            continue
        from transformers import AutoConfig

        fields = {**family["config"], **family["sizes"][size]}
        config = AutoConfig.for_model(fields.pop("model_type"), **fields)
        label = family["label"].format(SIZE=size.upper(), size=size)
        return config, f"{label} (shipped table: not cached, not read from the hub)"
    return None


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
    table = published_config(source.ref)
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
