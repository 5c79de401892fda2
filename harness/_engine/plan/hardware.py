"""The accelerators a plan can be made for, and SLURM's time and memory formats.

Peak numbers are the vendors' datasheet figures for dense bf16 tensor-core math (no sparsity; fp16 for the V100,
which has no bf16). Real training reaches a fraction of them, the MFU (model FLOPs utilisation) the plan is given.
``cpu`` is this machine: its fp32 matmul throughput is measured when the plan is made.
"""

from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass

from ...errors import HarnessError, did_you_mean


@dataclass(frozen=True)
class Accelerator:
    name: str
    #: Peak dense TFLOP/s of the precision the work runs in (bf16 on GPUs).
    peak_tflops: float
    #: Memory in GB (1e9 bytes), as the vendor states it.
    memory_gb: float
    #: cuda or cpu: decides the training precision the estimate assumes (bf16 autocast on cuda).
    device: str = "cuda"
    note: str = "vendor datasheet, dense bf16"


GPUS: dict[str, Accelerator] = {a.name: a for a in [
    Accelerator("V100", 125, 32, note="vendor datasheet, dense fp16 (the V100 has no bf16)"),
    Accelerator("V100-16GB", 125, 16, note="vendor datasheet, dense fp16 (the V100 has no bf16)"),
    Accelerator("A10", 125, 24),
    Accelerator("A40", 150, 48),
    Accelerator("A6000", 155, 48),
    Accelerator("A100-40GB", 312, 40),
    Accelerator("A100-80GB", 312, 80),
    Accelerator("L4", 121, 24),
    Accelerator("L40S", 362, 48),
    Accelerator("RTX4090", 165, 24),
    Accelerator("H100-PCIe", 756, 80),
    Accelerator("H100", 989, 80, note="vendor datasheet, dense bf16 (SXM)"),
    Accelerator("H200", 989, 141),
    Accelerator("B200", 2250, 180),
    Accelerator("MI250X", 383, 128),
    Accelerator("MI300X", 1307, 192),
]}
ALIASES = {"A100": "A100-80GB", "H100-SXM": "H100", "H100-80GB": "H100", "V100-32GB": "V100"}
DEFAULT_GPU = "H100"


def accelerator(name: str) -> Accelerator:
    """The named GPU (case-insensitive), or ``cpu``: this machine, its matmul peak measured now."""
    if name.lower() == "cpu":
        return measure_cpu()
    by_lower = {k.lower(): k for k in [*GPUS, *ALIASES]}
    key = by_lower.get(name.lower())
    if key is None:
        raise HarnessError(f"unknown GPU '{name}'{did_you_mean(name, [*GPUS, 'cpu'])}; fix: use one of "
                           f"{', '.join([*GPUS, 'cpu'])}")
    return GPUS[ALIASES.get(key, key)]


def measure_cpu(size: int = 768, seconds: float = 0.3) -> Accelerator:
    """This machine as the accelerator: best fp32 matmul TFLOP/s over ``seconds`` (torch's threads), host RAM."""
    import torch

    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b  # warm-up (thread pool, kernels)
    best, stop = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < stop:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * size ** 3 / (time.perf_counter() - t0))
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9
    return Accelerator("cpu", best / 1e12, ram, device="cpu",
                       note=f"this machine: fp32 matmul measured now ({torch.get_num_threads()} threads), host RAM")


_TIME = re.compile(r"^(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?$")


def slurm_seconds(value: str) -> int:
    """Seconds in a SLURM time limit: M, M:S, H:M:S, D-H, D-H:M, D-H:M:S."""
    m = _TIME.match(value.strip())
    if not m:
        raise ValueError(f"not a SLURM time: {value!r}")
    days, a, b, c = m.groups()
    parts = [int(x) for x in (a, b, c) if x is not None]
    if days is not None:  # D-H, D-H:M, D-H:M:S
        h, mnt, s = (parts + [0, 0])[:3]
        return ((int(days) * 24 + h) * 60 + mnt) * 60 + s
    if len(parts) == 1:
        return parts[0] * 60
    if len(parts) == 2:
        return parts[0] * 60 + parts[1]
    return (parts[0] * 60 + parts[1]) * 60 + parts[2]


def slurm_bytes(value: str) -> float:
    """Bytes in a SLURM memory size (no suffix: megabytes)."""
    m = re.match(r"^(\d+)([KMGT]?)$", value.strip())
    if not m:
        raise ValueError(f"not a SLURM memory size: {value!r}")
    unit = {"K": 2 ** 10, "M": 2 ** 20, "": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}[m.group(2)]
    return int(m.group(1)) * unit
