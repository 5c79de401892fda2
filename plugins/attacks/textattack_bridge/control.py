"""The random control of a TextAttack attack: what the search buys over edits made blindly.

It keeps the attack's transformation, constraints, query budget and stopping rule, and replaces the search method by
one that visits the editable words in random order and keeps a uniformly random candidate at each. The candidates of
each visited word are scored, as a search scores them, but the scores choose nothing. A greedy search that scores
every word's candidates at each step (GreedySearch, BeamSearch) spends far more queries than this control unless both
have the same ``query_budget``. Like HotFlip's: an entry with ``control_of: <the attack's entry>`` runs it.

Importing this module imports TextAttack (offline, see :mod:`.env`).
"""

from __future__ import annotations

import numpy as np

from .env import import_textattack

import_textattack()

from textattack.goal_function_results import GoalFunctionResultStatus  # noqa: E402
from textattack.search_methods import SearchMethod  # noqa: E402


class RandomControlSearch(SearchMethod):
    """Random word order, a random candidate kept at each word; the model's scores choose nothing."""

    def perform_search(self, initial_result):
        _, indices = self.get_indices_to_order(initial_result.attacked_text)
        order = np.random.permutation(sorted(indices)).tolist()  # the global generator, seeded per example
        current = initial_result
        for index in order:
            candidates = self.get_transformations(current.attacked_text, original_text=initial_result.attacked_text,
                                                  indices_to_modify=[index])
            if not candidates:
                continue
            results, search_over = self.get_goal_results(candidates)
            if results:
                current = results[np.random.randint(len(results))]
            if search_over or current.goal_status == GoalFunctionResultStatus.SUCCEEDED:
                break
        return current

    @property
    def is_black_box(self) -> bool:
        return True
