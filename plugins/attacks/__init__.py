"""The built-in attacks."""

#: The success threshold of the built-in attacks (``threshold`` in their configs): an example counts as a success
#: when the attack raises its continuation NLL by more than this fraction. The study's choice, set here by the
#: plugins rather than in the core, which has no default.
SUCCESS_THRESHOLD = 0.15
