"""The environment record saved beside every run: library versions, git commit, hardware, threads."""

from __future__ import annotations

import importlib.metadata as md
import os
import platform
import socket
import subprocess
import sys
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@contextmanager
def restored_environ(keys: Iterable[str]) -> Iterator[None]:
    """Put ``keys`` of ``os.environ`` back as they were (set or unset) when the block ends, whatever it changed."""
    saved = {key: os.environ.get(key) for key in keys}
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


PACKAGES = ("harness", "torch", "transformers", "tokenizers", "datasets", "lm_eval", "accelerate", "safetensors",
            "pluggy", "pydantic", "pyyaml", "numpy", "rich", "matplotlib", "textattack")


def package_versions(extra: list[str] | None = None) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in (*PACKAGES, *(extra or [])):
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            out[name] = None
    return out


def git_commit(path: Path) -> dict[str, Any] | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=path, capture_output=True, text=True, timeout=5)
        if commit.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=path,
                               capture_output=True, text=True, timeout=5)
        return {"commit": commit.stdout.strip(), "dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return None


def native_bf16(device: torch.device | str) -> bool:
    """Whether bf16 computes natively on ``device``: a GPU of compute capability 8 or more (Ampere), a CPU with
    AVX512-BF16 or AMX. Elsewhere torch emulates it, measured 26x slower than fp32 (a SmolLM2-135M training step in
    bf16 autocast on a 2-core AVX2 CPU): a setting that asks for bf16 there is refused rather than left that slow."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported(including_emulation=False)
    if device.type == "cpu":
        # oneDNN's own check (a private op): its bf16 kernels are native only there; a build without oneDNN has none
        check = (getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None) if torch.backends.mkldnn.is_available()
                 else None)
        return bool(check()) if check is not None else False
    return True


def environment_record(seeds: list[int] | None = None, plugin_packages: list[str] | None = None) -> dict[str, Any]:
    import torch

    cuda = torch.cuda.is_available()
    return {
        "time": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "argv": sys.argv,
        "packages": package_versions(plugin_packages),
        "git": git_commit(Path(__file__).resolve().parent),
        "torch": {
            "threads": torch.get_num_threads(),
            "cuda_available": cuda,
            "devices": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else [],
            "cuda_version": torch.version.cuda,
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "cpu_native_bf16": native_bf16("cpu"),
        },
        "cpu_count": os.cpu_count(),
        "slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "seeds": seeds,
    }
