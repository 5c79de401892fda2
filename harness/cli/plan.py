"""``harness plan SUITE``: what a suite will cost (tokens, FLOPs, GPU-hours, memory, disk) before anything runs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .main import command, console


def _plan_args(p: argparse.ArgumentParser) -> None:
    from .._engine.plan import DEFAULT_GPU, DEFAULT_MFU, GPUS

    from .conventions import add_mode_arg, add_override_args

    p.add_argument("suite", type=Path, help="suite YAML file")
    add_mode_arg(p)
    add_override_args(p)
    p.add_argument("--profile", type=Path, default=None,
                   help="SLURM cluster profile: time limits, GPUs per job, launcher (warns where a stage won't fit)")
    p.add_argument("--gpu", default=None,
                   help=f"accelerator to plan for: {', '.join(GPUS)}, or cpu (this machine, measured) "
                        f"(default: the profile's gpu_type, else {DEFAULT_GPU}; cpu for a suite with `device: cpu`)")
    p.add_argument("--mfu", type=float, default=DEFAULT_MFU,
                   help=f"model FLOPs utilisation reached, 0-1 (default {DEFAULT_MFU})")
    p.add_argument("--doc-tokens", type=float, default=None,
                   help="mean tokens per document of hub datasets (default: a table of known ones, else 1000)")
    p.add_argument("--no-timing", action="store_true",
                   help="cpu plans: use the FLOPs formula instead of timing each stage's calls on this machine")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")


@command("plan", "estimate a suite's tokens, FLOPs, GPU-hours, peak memory and disk before running it", _plan_args)
def cmd_plan(args: argparse.Namespace) -> int:
    from ..errors import HarnessError
    from .._engine.plan import DEFAULT_GPU, accelerator, make_plan
    from .._engine.plan.render import as_json, render
    from .._engine.suite import load_suite

    if not 0 < args.mfu <= 1:
        raise HarnessError(f"--mfu {args.mfu}: must be in (0, 1]; fix: e.g. --mfu 0.35")
    from .main import note
    from .conventions import chosen_mode, smoke_test_note

    suite = load_suite(args.suite, chosen_mode(args), overrides=args.overrides, limit=args.limit)
    note(smoke_test_note(args))
    profile = None
    if args.profile is not None:
        from .._engine.slurm.profile import load_profile

        profile = load_profile(args.profile)
    from .._engine.plan.calibrate import CallTimer

    # The profile's GPU model when it names one: the plan then matches what `slurm submit` checks the jobs against.
    gpu = args.gpu or (profile.gpu_type if profile is not None and profile.gpu_type else
                       "cpu" if suite.device == "cpu" else DEFAULT_GPU)
    accel = accelerator(gpu)
    timer = CallTimer() if accel.device == "cpu" and not args.no_timing else None
    plan = make_plan(suite, accel, args.mfu, profile, str(args.profile) if args.profile else None,
                     doc_tokens=args.doc_tokens, timer=timer)
    if args.json:
        print(json.dumps(as_json(plan), indent=1, default=str))
    else:
        render(plan, console)
    return 0
