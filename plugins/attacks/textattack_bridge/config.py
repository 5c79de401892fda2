"""Options of the bridge's attacks. Importing this module does not import TextAttack (``harness list`` stays fast);
validating a generic ``textattack`` entry does, to check the component names against the installed catalogue."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from harness import DocumentSource

from .. import SUCCESS_THRESHOLD
from harness.attacks import TaskConfig
from .component import Component


class TextAttackTaskConfig(TaskConfig):
    """What every bridge attack shares with the harness's other attacks (examples, threshold, scoring budget)."""

    limit_fields = ("n_examples",)  # `harness run --limit N` caps these
    #: Success: the continuation NLL raised by more than this fraction (the built-in attacks' shared choice).
    threshold: float = Field(default=SUCCESS_THRESHOLD, ge=0)
    data: DocumentSource
    #: Examples to attack (the first usable documents, or a seeded sample); None = all.
    n_examples: int | None = Field(default=None, ge=1)
    sample: Literal["first", "seeded"] = "first"
    #: Model queries per example, as TextAttack counts them (every text scored, repeats included); None = no limit.
    query_budget: int | None = Field(default=None, ge=1)
    #: TextAttack's semantics: an example's search ends once its NLL increase passes ``threshold``. False: keep
    #: raising it until the search or the budget is spent, like HotFlip (then mean increases are comparable).
    stop_at_goal: bool = True
    #: Let components download what they need (word embeddings, WordNet, hub models). Off: a component that tries
    #: fails at once with one line naming the missing data.
    allow_downloads: bool = False

    @model_validator(mode="after")
    def _no_vocab(self) -> TextAttackTaskConfig:
        if "vocab" in self.model_fields_set:
            raise ValueError("`vocab` does not apply to TextAttack attacks: they edit characters and words, not "
                             "tokens; remove it")
        return self


class TextAttackConfig(TextAttackTaskConfig):
    """Either a TextAttack ``recipe`` (its transformation, constraints and search method; its goal function is
    replaced by the continuation-NLL one) or a ``transformation`` (a list = all of them combined) with ``constraints``
    and a ``search`` method, all named from TextAttack's catalogue."""

    recipe: str | None = None
    #: Keyword arguments of the recipe's ``build`` (e.g. ``max_num_word_swaps`` for Pruthi2019).
    recipe_args: dict[str, Any] = {}
    transformation: Component | list[Component] | None = None
    constraints: list[Component] = Field(default_factory=lambda: [Component(name="RepeatModification"),
                                                                  Component(name="StopwordModification")])
    search: Component = Component(name="GreedyWordSwapWIR", args={"wir_method": "delete"})

    @field_validator("transformation")
    @classmethod
    def _known_transformations(cls, value: Component | list[Component] | None):
        if isinstance(value, list) and not value:
            raise ValueError("give at least one transformation")
        for spec in value if isinstance(value, list) else [value] if value else []:
            _check_name("transformation", spec.name)
        return value

    @field_validator("constraints")
    @classmethod
    def _known_constraints(cls, value: list[Component]) -> list[Component]:
        for spec in value:
            _check_name("constraint", spec.name)
        return value

    @field_validator("search")
    @classmethod
    def _known_search(cls, value: Component) -> Component:
        _check_name("search", value.name)
        return value

    @field_validator("recipe")
    @classmethod
    def _known_recipe(cls, value: str | None) -> str | None:
        if value is not None:
            from .catalogue import resolve_recipe

            resolve_recipe(value)
        return value

    @model_validator(mode="after")
    def _recipe_or_components(self) -> TextAttackConfig:
        if (self.recipe is None) == (self.transformation is None):
            raise ValueError("give either `recipe:` (a TextAttack attack recipe) or `transformation:` (with "
                             "`constraints:` and `search:`)")
        if self.recipe is not None and self.model_fields_set & {"constraints", "search"}:
            raise ValueError("a `recipe:` brings its own constraints and search method; remove `constraints:` and "
                             "`search:` or use `transformation:` instead of the recipe")
        if self.recipe is None and self.recipe_args:
            raise ValueError("`recipe_args` needs a `recipe:`")
        return self


def _check_name(kind: str, name: str) -> None:
    from .catalogue import resolve  # imports TextAttack: only entries that name components pay for it

    resolve(kind, name)


class DeepWordBugConfig(TextAttackTaskConfig):
    """DeepWordBug (Gao et al. 2018) as TextAttack builds it, with word ranking by deletion for causal LMs."""

    #: ``all``: neighbouring swap, substitution, deletion and insertion of a character (the recipe's default);
    #: ``substitution``: substitution only (the paper's main setting).
    transformations: Literal["all", "substitution"] = "all"
    #: Most character edits (Levenshtein distance) between the original and the adversarial context.
    max_edit_distance: int = Field(default=30, ge=1)
    #: How words are ranked before the greedy swaps: TextAttack's recipe replaces each word by the string "[UNK]"
    #: (``unk``), which means nothing to a causal LM's tokenizer; ``delete`` drops the word instead.
    wir_method: Literal["delete", "unk", "weighted-saliency", "gradient", "random"] = "delete"


class PruthiConfig(TextAttackTaskConfig):
    """Pruthi et al. 2019 as TextAttack builds it: typo-like edits inside words, greedy search."""

    #: Words edited at most (one character edit each).
    max_num_word_swaps: int = Field(default=1, ge=1)
    #: Shorter words are never edited (the first and last characters never are).
    min_word_length: int = Field(default=4, ge=1)
