"""The plan as text (rich tables) and as JSON."""

from __future__ import annotations

from typing import Any

from rich.console import Console, Group
from rich.table import Table
from rich.text import Text

from .estimate import Plan, StageEstimate
from .memory import USABLE, Memory


def si(x: float, unit: str = "") -> str:
    for factor, prefix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= factor:
            return f"{x / factor:,.3g}{prefix}{unit}"
    return f"{x:,.3g}{unit}"


def gb(x: float) -> str:
    return f"{x / 1e9:,.1f} GB" if x >= 1e9 else f"{x / 1e6:,.1f} MB"


def hours(h: float) -> str:
    if h >= 1:
        return f"{h:,.1f} h"
    return f"{h * 60:,.1f} min" if h * 60 >= 1 else f"{h * 3600:,.1f} s"


def groups(plan: Plan) -> list[list[StageEstimate]]:
    """Stages of one entry on one model (the seeds of it) together, in graph order."""
    out: dict[tuple[str, str, str], list[StageEstimate]] = {}
    for est in plan.stages:
        out.setdefault((est.stage.section, est.stage.entry, est.stage.model), []).append(est)
    return list(out.values())


def _label(members: list[StageEstimate]) -> str:
    s = members[0].stage
    base = "/".join([s.section, s.entry] + ([s.model] if s.section != "train" else []))
    if s.seeded:
        return f"{base} x{len(members)} seed{'s' if len(members) > 1 else ''}"
    return base


def models_table(plan: Plan) -> Table:
    t = Table(title="models", title_justify="left")
    for col in ("model", "shape from", "parameters", "layers x hidden (heads)", "vocab", "dtype", "source"):
        t.add_column(col, overflow="fold")
    for info in plan.models.values():
        origin = "" if info.root == info.name else f"trained from {info.root}"
        if info.shape is None:
            t.add_row(info.name, origin, "?", "", "", info.dtype, info.reason)
            continue
        s = info.shape
        t.add_row(info.name, origin, si(s.n_params), f"{s.n_layers} x {s.hidden} ({s.n_heads})", f"{s.vocab:,}",
                  info.dtype, s.source if info.root == info.name else "")
    return t


def flops(x: float) -> str:
    mantissa, exponent = f"{x:.2e}".split("e")
    return f"{float(mantissa):.3g}e{int(exponent)}"


def stages_table(plan: Plan) -> Table:
    a = plan.accelerator
    t = Table(title=f"stages on {a.name} at MFU {plan.mfu:g} (numbers per run; 'total' over the seeds)",
              title_justify="left")
    unit = "GPU-h" if a.device == "cuda" else "CPU-h"
    for col in ("stage", "tokens", "FLOPs", unit, "wall", "peak memory", "disk", f"total {unit}"):
        t.add_column(col, justify="left" if col == "stage" else "right")
    capacity = a.memory_gb * 1e9 * USABLE
    for members in groups(plan):
        est = members[0]
        w = est.workload
        if w is None:
            t.add_row(_label(members), Text("no estimate (see below)", style="yellow"), *[""] * 6)
            continue
        tokens = w.forward_tokens + w.gradient_tokens + w.train_tokens
        mem = ""
        if est.memory is not None:
            mem = gb(est.memory.total) + (" !" if est.memory.total > capacity else "")
        wall = hours(est.wall_hours) + (f" ({est.processes} GPUs)" if est.processes > 1 else "")
        t.add_row(_label(members), si(tokens), flops(est.flops), f"{est.gpu_hours:,.3g}", wall,
                  Text(mem, style="red") if mem.endswith("!") else mem, gb(est.disk_bytes),
                  f"{sum(m.gpu_hours for m in members):,.3g}")
    return t


def details(plan: Plan) -> Group:
    """What each row counts (the plugin's notes), or why it has no estimate; one entry per plugin config."""
    lines: list[Text] = [Text("what the rows count:", style="bold")]
    seen: set[str] = set()
    for members in groups(plan):
        est = members[0]
        w = est.workload
        text = est.reason if w is None else "; ".join(w.notes + ([f"disk: {w.disk_note}"] if w.training else []))
        key = f"{est.stage.section}/{est.stage.entry}: {text}"
        if key not in seen:
            seen.add(key)
            lines.append(Text(f"  - {key}", style="yellow" if w is None else ""))
    return Group(*lines)


def memory_table(plan: Plan) -> Table | None:
    """Training stages: the memory terms with and without gradient checkpointing, and the micro-batch that fits."""
    train = [(m[0], m[0].workload.training) for m in groups(plan)
             if m[0].workload is not None and m[0].workload.training is not None]
    if not train:
        return None
    a = plan.accelerator
    t = Table(title=f"training memory per process on {a.name} ({a.memory_gb:,.0f} GB, {USABLE:.0%} usable)",
              title_justify="left")
    t.add_column("term", overflow="fold")
    columns: list[Memory] = []
    for est, setup in train:
        pair = [est.memory, est.memory_toggled]
        if setup.gradient_checkpointing:
            pair.reverse()  # without checkpointing first
        for mem, ckpt in zip(pair, (False, True)):
            assert mem is not None, "estimate() sets both memories of every training stage"
            t.add_column(f"{est.stage.entry}\n{'with' if ckpt else 'no'} checkpointing", justify="right")
            columns.append(mem)
    terms = list(dict.fromkeys(k for mem in columns for k in mem.parts))
    for term in terms:
        t.add_row(term, *[gb(mem.parts[term]) if term in mem.parts else "" for mem in columns])
    t.add_row(Text("peak", style="bold"), *[Text(gb(m.total), style="bold") for m in columns])
    fits = []
    for est, setup in train:
        for ckpt in (False, True):
            b = est.max_micro_batch.get(ckpt, 0)
            fits.append(f"{b}" + (" (now)" if b and setup.micro_batch <= b and ckpt == setup.gradient_checkpointing
                                  else f" (now {setup.micro_batch})" if ckpt == setup.gradient_checkpointing else ""))
    t.add_row("largest micro_batch that fits", *fits)
    return t


def render(plan: Plan, console: Console) -> None:
    suite = plan.suite
    console.print(f"[bold]plan of {suite.path.name}[/] ({suite.mode} mode): {len(plan.stages)} stages, seeds "
                  f"{suite.seeds}, device {plan.accelerator.device}", highlight=False)
    console.print(models_table(plan))
    console.print(stages_table(plan))
    console.print(details(plan))
    mem = memory_table(plan)
    if mem is not None:
        console.print(mem)
    longest = max(plan.stages, key=lambda s: s.wall_hours, default=None)
    unit = "GPU-hours" if plan.accelerator.device == "cuda" else "CPU-hours"
    totals = [f"{plan.gpu_hours:,.3g} {unit} on {plan.accelerator.name} (MFU {plan.mfu:g})",
              f"{flops(plan.flops)} FLOPs", f"disk {gb(plan.disk_bytes)} (everything the run keeps)"]
    if longest is not None and longest.wall_hours:
        totals.append(f"longest job {hours(longest.wall_hours)} ({longest.stage.id})")
    console.print(Text("total: " + ", ".join(totals), style="bold"))
    if plan.missing:
        console.print(f"not counted: {len(plan.missing)} stage(s) without an estimate "
                      f"({', '.join(sorted({s.stage.entry for s in plan.missing}))})", highlight=False)
    if plan.warnings:
        console.print(Group(Text("warnings:", style="bold red"),
                            *[Text(f"  - {w}", style="red") for w in plan.warnings]))
    console.print(Group(Text("assumptions:", style="bold"), *[Text(f"  - {a}") for a in plan.assumptions]))


def as_json(plan: Plan) -> dict[str, Any]:
    def memory(m: Memory | None) -> dict[str, Any] | None:
        return None if m is None else {"label": m.label, "total": m.total, "parts": m.parts}

    return {
        "suite": str(plan.suite.path), "mode": plan.suite.mode, "seeds": plan.suite.seeds,
        "accelerator": vars(plan.accelerator), "mfu": plan.mfu, "profile": plan.profile_path,
        "models": {n: {"root": i.root, "dtype": i.dtype, "shape": vars(i.shape) if i.shape else None,
                       "reason": i.reason} for n, i in plan.models.items()},
        "stages": [{"id": e.stage.id, "reason": e.reason, "flops": e.flops, "gpu_hours": e.gpu_hours,
                    "wall_hours": e.wall_hours, "time_how": e.time_how, "processes": e.processes, "disk_bytes": e.disk_bytes,
                    "tokens": ({"forward": e.workload.forward_tokens, "gradient": e.workload.gradient_tokens,
                                "train": e.workload.train_tokens} if e.workload else None),
                    "queries": e.workload.queries if e.workload else None,
                    "notes": e.workload.notes if e.workload else [],
                    "memory": memory(e.memory), "memory_toggled": memory(e.memory_toggled),
                    "max_micro_batch": {"no_checkpointing": e.max_micro_batch.get(False),
                                        "checkpointing": e.max_micro_batch.get(True)} if e.max_micro_batch else None,
                    "warnings": e.warnings} for e in plan.stages],
        "totals": {"gpu_hours": plan.gpu_hours, "flops": plan.flops, "disk_bytes": plan.disk_bytes},
        "warnings": plan.warnings, "assumptions": plan.assumptions, "versions": plan.versions,
    }
