"""Running a suite on a SLURM cluster: one job per stage with dependencies mirroring the stage graph.

:mod:`.profile` (the cluster's settings, from YAML), :mod:`.plan` (stages -> jobs and their dependencies),
:mod:`.scripts` (sbatch scripts from the templates in ``slurm/``), :mod:`.scheduler` (sbatch/squeue/scancel),
:mod:`.submit` (``harness slurm submit``) and :mod:`.status` (``harness status``).
"""
