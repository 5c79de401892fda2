"""Attack plugins ``textattack_deepwordbug``, ``textattack_pruthi`` and ``textattack`` (any catalogue components).

Each runs TextAttack's search on the harness task (:mod:`harness.attacks`): the same examples, threshold, records and
summary as HotFlip and UAT. Per example:

1. the context tokens are decoded to text, which TextAttack edits (characters, words);
2. every edited text TextAttack wants scored becomes prefix + re-tokenised context + the unchanged continuation
   tokens, scored in batches by the shared :class:`harness.attacks.Scorer` (:class:`.goal.CausalLMContinuationWrapper`);
3. the goal function scores each edit by its relative NLL increase (:class:`.goal.CausalLMNLLGoalFunction`) and the
   search method keeps what raises it, until the threshold is passed (``stop_at_goal``), the candidates run out or
   the ``query_budget`` is spent.

TextAttack's random edits draw from Python's, NumPy's and torch's global generators: they are seeded per example
from (seed, entry, example id), never from the model, so every model starts from the same random stream.
TextAttack is imported when a stage runs (or a generic entry is validated), never by ``harness list``.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, TypeVar

import numpy as np
import torch

from harness import AttackPlugin, LoadedModel, MetricSpec, StageContext, derive_seed, load_documents
from harness.attacks import (ATTACK_METRICS, POSITIONS_METRIC, Example, Scorer, attack_progress, attack_summary,
                             example_record, make_examples, position_histogram, select_examples)
from harness.loop import run_examples

from .config import DeepWordBugConfig, PruthiConfig, TextAttackConfig, TextAttackTaskConfig

_STATUS = {"SuccessfulAttackResult": "succeeded", "FailedAttackResult": "failed",
           "MaximizedAttackResult": "maximized", "SkippedAttackResult": "skipped"}
#: (model wrapper, entry name) -> (transformation, constraints, search method); imports TextAttack when called.
ComponentsFn = Callable[[Any, str], tuple[Any, list, Any]]


def run_textattack(model: LoadedModel, ctx: StageContext, cfg: TextAttackTaskConfig,
                   components: ComponentsFn, control: bool = False) -> dict[str, Any]:
    """Attack every example (the core's loop), return what the summary holds beside the record metrics. ``control``:
    the random control (``control_of:``)."""
    where = f"attacks.{ctx.stage.entry}"
    examples = make_examples(load_documents(cfg.data), model, cfg, where=f"{where}.data")
    examples = select_examples(examples, cfg.n_examples, cfg.sample, ctx)

    from .catalogue import assemble, offline_component
    from .goal import CausalLMContinuationWrapper, CausalLMNLLGoalFunction

    scorer = Scorer(model, cfg.batch_tokens)
    wrapper = CausalLMContinuationWrapper(model, scorer)
    goal = CausalLMNLLGoalFunction(wrapper, cfg.threshold, maximizable=not cfg.stop_at_goal,
                                   query_budget=cfg.query_budget or float("inf"))
    # Built before the first example, so that a component missing its data fails within seconds.
    transformation, constraints, search = components(wrapper, where)
    if control:
        from .control import RandomControlSearch

        search = RandomControlSearch()
    attack = assemble(goal, transformation, constraints, search, where=where)
    ctx.log(f"TextAttack: {attack.transformation} | {len(attack.pre_transformation_constraints)} pre-transformation "
            f"+ {len(attack.constraints)} constraints | {attack.search_method}")

    def attack_example(ex: Example) -> dict[str, Any]:
        scorer.forget()  # per example: nothing cached from the last one (the core's loop counts its budget)
        seed = derive_seed(ctx.seed, ctx.stage.section, ctx.stage.entry, "example", ex.id)
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        text = wrapper.set_example(ex)
        with offline_component(f"{where}: a TextAttack component, while attacking example {ex.id},", "",
                               cfg.allow_downloads):
            result = attack.attack(text, ex.id)
        initial, final = result.original_result, result.perturbed_result
        return example_record(
            ex.id, goal.nll_before, float(final.raw_output), cfg.threshold,
            positions=edited_positions(wrapper, ex, initial.attacked_text, final.attacked_text),
            textattack_queries=int(final.num_queries), status=_STATUS.get(type(result).__name__, "?"),
            words_perturbed=len(initial.attacked_text.all_words_diff(final.attacked_text)),
            adversarial_text=final.attacked_text.text, original_text=text)

    records = run_examples(ctx, examples, attack_example, scorer=scorer, show=attack_progress)
    return textattack_summary(records, cfg.threshold, cfg.context_tokens)


def edited_positions(wrapper: Any, example: Any, original: Any, final: Any) -> list[int]:
    """The context token positions (as every flip attack reports them) under the words TextAttack changed: each
    token of the unedited context whose characters overlap a changed word of the original text. Word edits rarely
    keep token boundaries, so this is where the edits land, not a count of tokens swapped."""
    text = original.text
    changed = original.all_words_diff(final)
    spans, cursor = [], 0
    for index, word in enumerate(original.words):  # TextAttack's words appear in its text in order
        at = text.find(word, cursor)
        if at < 0:
            break
        cursor = at + len(word)
        if index in changed:
            spans.append((at, cursor))
    context = list(example.context)
    # Character offsets of each token in the decoded context (prefix decodes: exact for byte-level vocabularies).
    bounds = [len(wrapper.tokenizer.decode(context[:i])) for i in range(len(context) + 1)]
    return [i for i in range(len(context))
            if any(bounds[i] < end and start < bounds[i + 1] for start, end in spans)]


def textattack_workload(cfg: TextAttackTaskConfig, inputs: Any, gradient: bool) -> Any:
    """Upper bound of the stage's work (``harness plan``): ``query_budget`` scores per example (+1 gradient pass)."""
    from harness import Batch, NoEstimate, Workload

    from harness import RECORD_BYTES, planned_examples, sequence_length

    if cfg.query_budget is None:
        raise NoEstimate("how many texts TextAttack scores depends on the text; set `query_budget` to bound it")
    n, note = planned_examples(inputs, cfg.data, cfg.n_examples, cfg, "data")
    # Typos split words into more tokens: edited contexts are assumed up to 1.5x as long.
    length = sequence_length(cfg) + cfg.context_tokens // 2
    scored = n * (1 + cfg.query_budget)
    # The largest scoring call: every text one search step asks for, at most the budget, capped by batch_tokens.
    rows = max(1, min(cfg.planned_batch_tokens // length, cfg.query_budget))
    batches = [Batch(rows, length, logit_positions=cfg.continuation_tokens + 1, label="exact scoring")]
    if gradient:
        batches.append(Batch(1, length, "inputs", label="word-ranking gradient"))
    return Workload(forward_tokens=scored * length, gradient_tokens=n * length if gradient else 0, context=length,
                    queries=scored + (n if gradient else 0), batches=batches, disk_bytes=n * RECORD_BYTES,
                    disk_note="per-example records",
                    notes=[f"{n:,} examples x {cfg.query_budget} queries, up to {length} tokens each (upper "
                           f"bound){note}"])


def textattack_summary(records: list[dict[str, Any]], threshold: float, n_context: int) -> dict[str, Any]:
    """What does not follow from a declaration (the core computes the record metrics: success, words perturbed...)."""
    return {**attack_summary(records, threshold), POSITIONS_METRIC.name: position_histogram(records, n_context)}


#: The config of one bridge attack.
BridgeConfigT = TypeVar("BridgeConfigT", bound=TextAttackTaskConfig)


class _BridgeAttack(AttackPlugin[BridgeConfigT]):
    """What the bridge's attacks share: each can be another entry's random control (``control_of:``, see
    ``control.py``)."""

    version = "3"  # FLOPs count the vocabulary projection where it runs
    # v2: records and summary gain the budget (tokens, FLOPs) and the edited positions
    randomizable = True

    def declared_metrics(self) -> list[MetricSpec]:
        return [*ATTACK_METRICS, POSITIONS_METRIC,
                MetricSpec("mean_words_perturbed", "Words perturbed / example", field="words_perturbed", digits=1,
                           show=False),
                MetricSpec("mean_textattack_queries", "TextAttack queries / example", field="textattack_queries",
                           digits=1, show=False)]


class DeepWordBugAttack(_BridgeAttack[DeepWordBugConfig]):
    """TextAttack's DeepWordBug on causal LMs: character edits of the most important words, greedy (offline)."""

    name = "textattack_deepwordbug"

    def attack(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        cfg = self.config

        def components(wrapper: Any, where: str):
            from .recipes import deepwordbug

            return deepwordbug(cfg)

        return run_textattack(model, ctx, cfg, components, self.is_control())

    def plan(self, inputs):
        cfg = self.config
        return textattack_workload(cfg, inputs, gradient=cfg.wir_method == "gradient" and not self.is_control())


class PruthiAttack(_BridgeAttack[PruthiConfig]):
    """TextAttack's Pruthi2019 on causal LMs: typo-like edits inside words, greedy search (offline)."""

    name = "textattack_pruthi"

    def attack(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        cfg = self.config

        def components(wrapper: Any, where: str):
            from .recipes import pruthi

            return pruthi(cfg)

        return run_textattack(model, ctx, cfg, components, self.is_control())

    def plan(self, inputs):
        return textattack_workload(self.config, inputs, gradient=False)


class TextAttackAttack(_BridgeAttack[TextAttackConfig]):
    """Any TextAttack recipe, or transformation + constraints + search method, on causal LMs."""

    name = "textattack"

    def attack(self, model: LoadedModel, ctx: StageContext) -> dict[str, Any]:
        cfg = self.config

        def components(wrapper: Any, where: str):
            from .catalogue import build, build_transformation, recipe_components

            if cfg.recipe is not None:
                return recipe_components(cfg.recipe, cfg.recipe_args, wrapper, f"{where}.recipe",
                                         cfg.allow_downloads)
            assert cfg.transformation is not None
            return (build_transformation(cfg.transformation, f"{where}.transformation", cfg.allow_downloads),
                    [build("constraint", c, f"{where}.constraints[{i}]", cfg.allow_downloads)
                     for i, c in enumerate(cfg.constraints)],
                    build("search", cfg.search, f"{where}.search", cfg.allow_downloads))

        return run_textattack(model, ctx, cfg, components, self.is_control())

    def plan(self, inputs):
        cfg = self.config
        gradient = cfg.search.args.get("wir_method") == "gradient" and cfg.recipe is None and not self.is_control()
        return textattack_workload(cfg, inputs, gradient=gradient)


ATTACKS: list[type[AttackPlugin]] = [DeepWordBugAttack, PruthiAttack, TextAttackAttack]
