"""The TextAttack bridge: TextAttack's transformations, constraints and search methods as harness attacks on causal
LMs (``pip install 'harness[textattack]'``).

TextAttack attacks classifiers, entailment and seq2seq models; :mod:`.goal` adds the missing goal function for
causal LMs (raise the NLL of a fixed continuation by editing the context), so that any of its components runs on the
harness task with the same examples, threshold and summary as HotFlip and UAT (:mod:`.attacks`).

The attacks are offered only when TextAttack is installed; without it, a suite that names one fails with one line
that gives the install command. Neither this module nor ``harness list`` imports TextAttack (it takes seconds).
"""

from __future__ import annotations

from harness import hookimpl

from .env import INSTALL_HINT, textattack_installed

#: The plugin names, for the missing-extra message (kept in step with ``attacks.ATTACKS``).
NAMES = ("textattack", "textattack_deepwordbug", "textattack_pruthi")


@hookimpl
def harness_attacks() -> list[type]:
    if not textattack_installed():
        return []
    from .attacks import ATTACKS

    return list(ATTACKS)


@hookimpl
def harness_unavailable_plugins() -> dict[str, str]:
    if textattack_installed():
        return {}
    return {name: f"it needs the optional TextAttack extra: {INSTALL_HINT}" for name in NAMES}
