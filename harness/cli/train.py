"""``harness train TRAINER [--config FILE] [--mode quick|full] [--out DIR]``: one training stage, run as a suite.

The command writes a one-stage suite (``models: {base: ...}``, ``train: {TRAINER: ...}``) into the output directory
and runs it with :class:`harness._engine.runner.Runner`, so resume, caching and records are exactly those of suite runs.

The config file is YAML: trainer options at the top level, plus the reserved keys ``model`` (the starting model
entry, required), ``seeds``, ``device``, and ``quick:`` / ``full:`` blocks whose keys
replace the top-level ones in that mode. Relative paths in it are relative to the config file. Without
``--config`` the trainer plugin's own default (``TrainerPlugin.default_config``, package data beside its module)
is used.
"""

from __future__ import annotations

import argparse
import inspect
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from .main import command, console, err_console
from ..errors import ConfigError, HarnessError

if TYPE_CHECKING:
    from ..api import TrainerPlugin

RESERVED = ("model", "seeds", "device")
MODES = ("quick", "full")


def _args(p: argparse.ArgumentParser) -> None:
    p.add_argument("trainer", help="trainer plugin: monotonic, baseline (or any installed one)")
    p.add_argument("--config", type=Path, default=None, help="YAML of trainer options (default: the trainer "
                   "plugin's own, shipped with it)")
    p.add_argument("--mode", choices=MODES, default="quick", help="which block of the config applies")
    p.add_argument("--out", type=Path, default=None, help="run directory (default: runs/train_TRAINER)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")


def _absolute_paths(value: Any, base: Path, key: str = "") -> Any:
    """Make the config's relative file paths absolute (the generated suite lives in another directory)."""
    if isinstance(value, dict):
        return {k: _absolute_paths(v, base, k) for k, v in value.items()}
    if isinstance(value, list) and key == "data_files":
        return [_absolute_paths(v, base, key) for v in value]
    if isinstance(value, str) and key in ("data_files", "path", "tokenizer"):
        candidate = Path(os.path.expanduser(value))
        if not candidate.is_absolute() and (key == "data_files" or (base / candidate).exists()):
            return str((base / candidate).resolve())
    return value


def training_suite(trainer: str, config: dict[str, Any], config_path: Path, mode: str) -> dict[str, Any]:
    """The one-stage suite that ``harness train`` runs, with the mode's block applied."""
    for m in MODES:
        if m in config and not isinstance(config[m], dict):
            raise ConfigError(config_path, m, f"must be a mapping of options, got {type(config[m]).__name__}",
                              f"write `{m}: {{key: value}}`")
    resolved = {k: v for k, v in config.items() if k not in MODES}
    resolved.update(config.get(mode) or {})
    resolved = _absolute_paths(resolved, config_path.parent)
    model = resolved.pop("model", None)
    if not isinstance(model, dict):
        raise ConfigError(config_path, "model", "needs the starting model entry" if model is None else
                          f"must be a model entry, got {model!r}",
                          "write `model: {plugin: <a model plugin>, ...}` (`harness list` shows the model plugins)")
    suite: dict[str, Any] = {"name": f"train_{trainer}", "seeds": resolved.pop("seeds", [42]),
                             "models": {"base": model},
                             "train": {trainer: {"plugin": trainer, "model": "base", **{
                                 k: v for k, v in resolved.items() if k not in RESERVED}}}}
    if "device" in resolved:
        suite["device"] = resolved["device"]
    return suite


def default_config(trainer: type[TrainerPlugin]) -> Path:
    """Where a trainer plugin's default config lives: ``default_config`` beside the plugin's module."""
    if trainer.default_config is None:
        raise HarnessError(f"trainer '{trainer.name}' ships no default config; fix: pass --config FILE")
    return Path(inspect.getfile(trainer)).resolve().parent / trainer.default_config


@command("train", "train a model (monotonic, baseline, ...) as a one-stage suite; resumes when rerun", _args)
def cmd_train(args: argparse.Namespace) -> int:
    from .._engine.plugins import load_registry
    from .._engine.runner import Runner
    from ..store import atomic_write_text
    from .._engine.suite import load_suite, load_yaml

    try:
        trainer = load_registry().get("trainer", args.trainer).cls
    except KeyError as exc:
        raise HarnessError(f"{exc.args[0]}; fix: pick one of those (`harness list`)") from None
    config_path = (args.config or default_config(trainer)).resolve()
    if args.config is None and not config_path.is_file():
        raise HarnessError(f"no default config for trainer '{args.trainer}' ({config_path}); fix: pass --config FILE")
    suite_data = training_suite(args.trainer, load_yaml(config_path), config_path, args.mode)
    out = (args.out or Path("runs") / f"train_{args.trainer}").resolve()
    suite_path = out / "train_suite.yaml"
    header = f"# generated by `harness train {args.trainer}` from {config_path} (--mode {args.mode})\n"
    suite_text = header + yaml.safe_dump(suite_data, sort_keys=False)
    rank = int(os.environ.get("RANK", "0"))  # torchrun's; 0 without a launcher
    main_process = rank == 0
    if main_process:
        from .._engine.rundir import RunDir

        with RunDir(out).lock():  # refused now, before the suite file of a running training is replaced
            pass
        atomic_write_text(suite_path, suite_text)
    else:
        # Only the main process writes into the run directory: it holds the run and sweeps the temporary files of
        # interrupted writes, which would include another rank's half-written suite file.
        from .._engine.rundir import wait_for_rank0

        def written() -> bool:
            try:
                return suite_path.read_text(encoding="utf-8") == suite_text
            except OSError:
                return False

        wait_for_rank0(written, suite_path, rank, "write this suite file", 300.0)

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # torchrun: one GPU per process, chosen before the model loads
        import torch

        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    suite = load_suite(suite_path, args.mode, output_dir=out)
    runner = Runner(suite, show_progress=False if args.no_progress or not main_process else None, rank=rank)
    outcomes = runner.run()
    if not main_process:
        return 3 if any(o.status == "preempted" for o in outcomes) else 0
    for o in outcomes:
        err_console.print(f"{o.status:>9}  {o.stage.id}")
    if any(o.status == "preempted" for o in outcomes):
        err_console.print("stopped on request; run the same command again to resume")
        return 3
    for o in outcomes:
        metrics = (o.result or {}).get("metrics") or {}
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in metrics.items()
                          if isinstance(v, (int, float)) and not isinstance(v, bool))
        console.print(f"{o.stage.id}: {shown}")
        console.print(f"checkpoint: {runner.stage_dir(o.stage) / 'checkpoint'}")
    return 0
