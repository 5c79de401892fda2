"""The per-example loop (``harness.loop``): what every plugin that works example by example leaves to the core.

A metric or attack that handles its examples one at a time (or a fixed chunk at a time) gives the examples and a
function for one of them; :func:`run_examples` (or :func:`run_chunks`) then

- skips the examples whose records are already in ``ctx.records`` (an interrupted stage resumes after them);
- polls ``ctx.should_stop`` before each example and raises :class:`~harness.StagePreempted` there, when every record
  so far is durable;
- resets ``scorer.budget`` before each example (chunk) and writes what it spent into the record
  (:meth:`~harness.attacks.Budget.as_record`: the ``BUDGET_FIELDS``, a chunk's passes shared equally by its examples);
- shows progress, and appends each record as soon as it is made.

The plugin's function holds the algorithm and nothing else::

    def attack_example(ex: Example) -> dict:
        ...  # search, scoring with `scorer` (its budget is counted for this example)
        return example_record(ex.id, before, after, cfg.threshold, steps=...)

    run_examples(ctx, examples, attack_example, scorer=scorer)

The lower-level door: a plugin whose state spans examples (a universal trigger optimised over many documents,
training) keeps its own loop; so may a function that checkpoints *inside* one long example (GCG's search, a chunk of
soft-prompt steps). Such code polls ``ctx.should_stop`` itself, saves its state (``ctx.save_state``, atomic files),
and only then raises :class:`~harness.StagePreempted`; the next run resumes from the saved state.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from .context import StageContext, StagePreempted

__all__ = ["Budgeted", "run_chunks", "run_examples"]

ExampleT = TypeVar("ExampleT")
Record = dict[str, Any]


class Spending(Protocol):
    """What the loop does with a budget (:class:`harness.attacks.Budget`); a protocol, so that this module does not
    import the attacks' toolkit (which imports this)."""

    def reset(self) -> None: ...

    def as_record(self, share: int = 1) -> dict[str, Any]: ...


class Budgeted(Protocol):
    """Anything that counts its spending in a ``budget`` (:class:`harness.attacks.Scorer`)."""

    @property
    def budget(self) -> Spending: ...


def _default_key(example: Any) -> str:
    return str(example.id)


def run_chunks(ctx: StageContext, examples: Sequence[ExampleT], chunk_size: int,
               run_chunk: Callable[[list[ExampleT]], Sequence[Record]], *, scorer: Budgeted | None = None,
               key: Callable[[ExampleT], Any] = _default_key, label: str = "examples",
               show: Callable[[list[Record]], dict[str, Any]] | None = None) -> list[Record]:
    """Records of ``examples``, computed ``chunk_size`` at a time by ``run_chunk`` (one record per example of the
    chunk, in order) where ``ctx.records`` does not hold them yet.

    Chunks are cut by position, so a resumed stage computes every example in the same batch as an uninterrupted one
    (a chunk partly recorded before an interruption is computed whole, and only its missing records are appended).
    ``key`` gives an example's record id (default ``example.id``); ``scorer``: its budget is reset before each chunk
    and its spending written into every record; ``show``: progress-bar fields from the records so far. Returns the
    records of ``examples``, in their order."""
    log = ctx.records
    done = log.done()
    chunks = [list(examples[i:i + chunk_size]) for i in range(0, len(examples), chunk_size)]
    with ctx.progress(label, len(examples)) as bar:
        bar.advance(sum(1 for ex in examples if key(ex) in done))
        for chunk in chunks:
            todo = [key(ex) not in done for ex in chunk]
            if not any(todo):
                continue
            if ctx.should_stop:  # every record so far is durable: the next run resumes at this chunk
                raise StagePreempted(ctx.stage.id)
            if scorer is not None:
                scorer.budget.reset()
            records = list(run_chunk(chunk))
            if len(records) != len(chunk):
                raise ValueError(f"stage {ctx.stage.id}: {len(records)} records for a chunk of {len(chunk)} examples")
            # Read after the call: a function that resumes a saved chunk may have replaced the budget object.
            spent = scorer.budget.as_record(share=len(chunk)) if scorer is not None else {}
            for ex, record, missing in zip(chunk, records, todo):
                if missing:
                    log.append({**record, **spent, log.key: key(ex)})
            bar.advance(sum(todo))
            if show is not None:
                bar.set(**show(log.records))
    wanted = {key(ex) for ex in examples}
    return [r for r in log if r.get(log.key) in wanted]


def run_examples(ctx: StageContext, examples: Sequence[ExampleT], run_example: Callable[[ExampleT], Record], *,
                 scorer: Budgeted | None = None, key: Callable[[ExampleT], Any] = _default_key,
                 label: str = "examples", show: Callable[[list[Record]], dict[str, Any]] | None = None
                 ) -> list[Record]:
    """Records of ``examples``, one ``run_example`` call per example not recorded yet (see :func:`run_chunks`)."""
    return run_chunks(ctx, examples, 1, lambda chunk: [run_example(chunk[0])], scorer=scorer, key=key, label=label,
                      show=show)
