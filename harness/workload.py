"""What one stage costs, as its plugin describes it without running anything: the types of the optional ``plan``.

``harness plan`` (and the pre-flight disk check) call ``plugin.plan(inputs)`` once per stage. The plugin answers in
quantities its config determines (tokens through the model, the largest batch of each kind, bytes it writes); the
core turns them into FLOPs, GPU-hours, peak memory and disk with formulas it prints as assumptions
(:mod:`harness._engine.plan`). A plugin without ``plan`` shows as "no estimate".
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from .data import DocumentSource


class TaskShape(Protocol):
    """What a cost model reads of an attack's task (``harness.attacks.TaskConfig`` has it); a protocol, so that this
    module does not import the attacks' toolkit (which imports the plugin API, which imports this)."""

    prefix_eos: bool
    context_tokens: int
    continuation_tokens: int


@dataclass(frozen=True)
class ModelShape:
    """The sizes that cost compute and memory, read from a model's config (never from its weights)."""

    n_params: int
    n_layers: int
    hidden: int
    n_heads: int
    intermediate: int
    #: Rows of the output projection (a model may pad its vocabulary, e.g. to a multiple of 128).
    vocab: int
    max_length: int
    tied_embeddings: bool
    #: Hugging Face ``model_type`` (``gpt_neox``, ``llama``...).
    model_type: str
    #: dtype the config declares (what ``dtype: auto`` loads).
    dtype: str
    #: Where the numbers come from, printed with the plan ("config.json in ...", "published ... config").
    source: str

    @property
    def compute_params(self) -> int:
        """Parameters that multiply every token: all but the input embedding, which is a table lookup."""
        return self.n_params - (0 if self.tied_embeddings else self.vocab * self.hidden)


@dataclass(frozen=True)
class WeightsSource:
    """Where a model's config and weights live, known without loading them (``ModelPlugin.weights_source``)."""

    #: A local directory or a hub id.
    ref: str
    local: bool
    revision: str | None = None
    #: dtype the weights are loaded in.
    dtype: str = "float32"
    #: A GGUF file inside ``ref`` (its config is read from the GGUF header).
    gguf_file: str | None = None


@dataclass(frozen=True)
class DocumentStats:
    """How many documents a source yields and how long they are, measured on local files or assumed."""

    documents: int
    tokens_per_document: float
    #: How these numbers were obtained (printed as an assumption).
    how: str

    @property
    def tokens(self) -> float:
        return self.documents * self.tokens_per_document


@dataclass(frozen=True)
class Batch:
    """The largest forward pass of one kind that a stage runs: ``rows`` sequences of ``seq_len`` tokens."""

    rows: int
    seq_len: int
    #: ``none``: scoring without gradients; ``inputs``: gradient w.r.t. the input embeddings (gradient attacks);
    #: ``weights``: training (see :class:`TrainingSetup`).
    backward: Literal["none", "inputs", "weights"] = "none"
    #: Positions per row projected to the vocabulary (None: all of them).
    logit_positions: int | None = None
    #: Positions whose logits exist at once, over all rows, when they are projected a slice at a time (None: all
    #: of them together).
    logits_at_once: int | None = None
    label: str = ""

    @property
    def tokens(self) -> int:
        return self.rows * self.seq_len


@dataclass(frozen=True)
class TrainingSetup:
    """What a training stage keeps in memory besides activations."""

    #: Parameters with gradients and optimiser state.
    trainable_params: int
    micro_batch: int
    seq_len: int
    grad_accum: int
    gradient_checkpointing: bool
    #: bf16 autocast with fp32 master weights (GPU); False: fp32 throughout (CPU).
    autocast_bf16: bool
    #: AdamW: two fp32 moments per trainable parameter.
    optimizer_bytes_per_param: int = 8
    #: Memory the method adds per micro-batch, e.g. the materialised ``softplus(V)`` weights and their gradients.
    extra_bytes: float = 0.0
    extra_note: str = ""


@dataclass
class Workload:
    """One stage's work. Tokens are summed over every sequence the model sees (a query of 80 tokens counts 80)."""

    #: Tokens through forward-only passes: evaluation, validation, attack queries.
    forward_tokens: float = 0.0
    #: Tokens through a forward and a backward pass to the input embeddings (gradient-based attacks).
    gradient_tokens: float = 0.0
    #: Tokens trained on: forward and backward to the weights.
    train_tokens: float = 0.0
    #: Typical number of positions a token attends to (the attention term of the FLOPs).
    context: int = 0
    #: Sequences scored (attack queries), shown to the reader.
    queries: int = 0
    #: Model calls (forward passes) of the forward-only and the gradient tokens, where the plugin knows them; None:
    #: tokens / the largest batch's tokens (a lower bound). A call's fixed cost matters on CPUs and for small models.
    forward_calls: int | None = None
    gradient_calls: int | None = None
    #: The largest batch of each kind of pass, for the peak memory.
    batches: list[Batch] = field(default_factory=list)
    training: TrainingSetup | None = None
    #: Bytes this stage leaves on disk (checkpoints kept, caches, records) and what they are.
    disk_bytes: float = 0.0
    disk_note: str = ""
    #: Steps, epochs, examples... one short line each, shown with the stage.
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class PlanInputs:
    """What a plugin's ``plan`` may ask: the model's shape and dtype, where the plan is for, and document counts."""

    shape: ModelShape
    #: dtype the evaluated model is loaded in (``float32``, ``bfloat16``...).
    dtype: str
    #: ``cuda`` or ``cpu``: the device the estimate is for (training autocasts to bf16 on cuda).
    device: str
    #: Processes a training stage runs on (one per GPU under torchrun), 1 otherwise.
    processes: int
    #: Characters per token of this model's tokenizer on English text (measured or assumed).
    chars_per_token: float
    #: Counts and lengths of a document source's documents (after ``skip``/``limit``/``min_chars``).
    documents: Callable[[DocumentSource], DocumentStats]
    #: The stages this one needs, by id, as the run will pass them in ``ctx.inputs`` minus the results:
    #: ``{"stage": ..., "plugin": ..., "config": ...}``.
    dependencies: dict[str, dict[str, Any]] = field(default_factory=dict)


class NoEstimate(Exception):
    """Raised by ``plan`` (or the document counts it asks for) when a stage cannot be estimated; the message says
    why and what would make it possible (shown as "no estimate: ...")."""


# -- what every attack's cost model shares (public: a third party's ``plan`` uses them) -----------------------------

#: Bytes of one per-example record (ids, token lists, texts) in records.jsonl, roughly.
RECORD_BYTES = 2000


def sequence_length(task: TaskShape, inserted: int = 0) -> int:
    """Tokens of one attacked sequence of the shared task: ``[eos] + (inserted string) + context + continuation``."""
    return int(task.prefix_eos) + inserted + task.context_tokens + task.continuation_tokens


def planned_examples(inputs: PlanInputs, source: DocumentSource | None, wanted: int | None, task: TaskShape,
                     where: str) -> tuple[int, str]:
    """How many examples a stage attacks from ``source`` (``wanted`` of them, None: all) and a note for the plan when
    the documents look too short to give that many; raises :class:`NoEstimate` when there are none."""
    if source is None:
        raise NoEstimate(f"{where}: no documents")
    docs = inputs.documents(source)
    need = task.context_tokens + task.continuation_tokens
    n = docs.documents if wanted is None else min(wanted, docs.documents)
    note = ""
    if docs.tokens_per_document < need:
        note = (f"; {where}: documents average {docs.tokens_per_document:,.0f} tokens, fewer than the {need} an example "
                "needs (short ones are skipped: fewer examples)")
    if n == 0:
        raise NoEstimate(f"{where}: no documents")
    return n, note
