"""``python -m harness.cli`` (SLURM jobs, torchrun): the same entry point as the ``harness`` console script."""

import sys

from .main import main

sys.exit(main())
