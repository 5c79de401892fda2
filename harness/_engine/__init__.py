"""The engine: suites, the stage graph, the runner and run directories, plans, reports and SLURM.

Private: plugins import the public modules at the top of ``harness`` (see its docstring), never this package,
which may change without notice. The commands in ``harness.cli`` drive it.
"""
