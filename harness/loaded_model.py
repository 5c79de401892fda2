"""The loaded-model handle every plugin receives (its own module: the stage context and the plugin base classes both
name it, and neither imports the other)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase


@dataclass
class LoadedModel:
    """A causal LM ready for evaluation: in eval mode, on its device, with its tokenizer."""

    name: str
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    #: Provenance recorded with every result that used this model (source, revision, dtype, checkpoint hash...).
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def max_length(self) -> int:
        """The longest sequence the model was trained for (positions), capped by the tokenizer's claim."""
        cfg = self.model.config
        for key in ("max_position_embeddings", "n_positions", "max_sequence_length", "seq_length"):
            value = getattr(cfg, key, None)
            if isinstance(value, int) and value > 0:
                return value
        return 2048

    @property
    def output_vocab_size(self) -> int | None:
        """How many tokens the model's next-token distribution ranges over (its output logits; may exceed the
        tokenizer's vocabulary when the embedding is padded): a uniform guess has this perplexity."""
        head = self.model.get_output_embeddings() if hasattr(self.model, "get_output_embeddings") else None
        weight = getattr(head, "weight", None)
        if weight is not None and weight.ndim == 2:
            return int(weight.shape[0])
        value = getattr(self.model.config, "vocab_size", None)
        return value if isinstance(value, int) and value > 0 else None
