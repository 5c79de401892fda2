"""Character-level recipes that run offline, written out from TextAttack's ``attack_recipes`` (0.3.11).

A recipe is a transformation, its constraints and a search method; the goal function is the bridge's
continuation-NLL one. Only the word ranking of DeepWordBug deviates from TextAttack's recipe (see
:class:`.config.DeepWordBugConfig`).

Importing this module imports TextAttack (offline, see :mod:`.env`).
"""

from __future__ import annotations

from .config import DeepWordBugConfig, PruthiConfig
from .env import import_textattack

import_textattack()

from textattack.constraints.overlap import LevenshteinEditDistance, MaxWordsPerturbed  # noqa: E402
from textattack.constraints.pre_transformation import (  # noqa: E402
    MinWordLength, RepeatModification, StopwordModification)
from textattack.search_methods import GreedySearch, GreedyWordSwapWIR, SearchMethod  # noqa: E402
from textattack.transformations import (  # noqa: E402
    CompositeTransformation, Transformation, WordSwapNeighboringCharacterSwap, WordSwapQWERTY,
    WordSwapRandomCharacterDeletion, WordSwapRandomCharacterInsertion, WordSwapRandomCharacterSubstitution)

Recipe = tuple[Transformation, list, SearchMethod]


def deepwordbug(cfg: DeepWordBugConfig) -> Recipe:
    """Gao, Lanchantin, Soffa, Qi 2018 (arXiv:1801.04354), as ``DeepWordBugGao2018.build``.

    In the order of the words' importance, try one random character edit of each kind on the word and keep the best
    if it raises the score; never edit a stop word or a word twice; at most ``max_edit_distance`` character edits.
    """
    if cfg.transformations == "all":
        transformation = CompositeTransformation([
            WordSwapNeighboringCharacterSwap(),     # swap two adjacent letters
            WordSwapRandomCharacterSubstitution(),  # replace a letter by a random one
            WordSwapRandomCharacterDeletion(),      # delete a letter
            WordSwapRandomCharacterInsertion(),     # insert a random letter
        ])
    else:
        transformation = WordSwapRandomCharacterSubstitution()
    constraints = [RepeatModification(), StopwordModification(), LevenshteinEditDistance(cfg.max_edit_distance)]
    return transformation, constraints, GreedyWordSwapWIR(wir_method=cfg.wir_method)


def pruthi(cfg: PruthiConfig) -> Recipe:
    """Pruthi, Dhingra, Lipton 2019 (arXiv:1905.11268), as ``Pruthi2019.build``.

    Every typo-like edit (adjacent swap, deletion, insertion, QWERTY-neighbour key) of every inner character of every
    long enough non-stop word is a candidate; greedy search keeps the best, up to ``max_num_word_swaps`` words.
    """
    inner = dict(random_one=False, skip_first_char=True, skip_last_char=True)
    transformation = CompositeTransformation([
        WordSwapNeighboringCharacterSwap(**inner),
        WordSwapRandomCharacterDeletion(**inner),
        WordSwapRandomCharacterInsertion(**inner),
        WordSwapQWERTY(**inner),
    ])
    constraints = [MinWordLength(min_length=cfg.min_word_length), StopwordModification(),
                   MaxWordsPerturbed(max_num_words=cfg.max_num_word_swaps), RepeatModification()]
    return transformation, constraints, GreedySearch()
