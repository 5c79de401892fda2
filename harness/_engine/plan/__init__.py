"""``harness plan``: resource estimates of a suite before anything runs (see :mod:`.estimate`)."""

from .estimate import DEFAULT_MFU, Plan, StageEstimate, make_plan
from .hardware import DEFAULT_GPU, GPUS, Accelerator, accelerator

__all__ = ["DEFAULT_GPU", "DEFAULT_MFU", "GPUS", "Accelerator", "Plan", "StageEstimate", "accelerator", "make_plan"]
