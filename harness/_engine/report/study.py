"""A study's write-up rendered from its runs (``harness study STUDY.yaml``): the questions are data, the answers are
the runs' primary endpoints as their reports judged them.

A study file names its runs (run directories, each with the command that makes it) and its questions; each question
lists the primary endpoints (``report.primary`` of a run's suite) that answer it, and may add prose of its own. The
rendered Markdown gives, for every endpoint: the effect with its multiplicity-adjusted interval and verdict, both
scales of an attack's effect, the sample (documents x seeds), the seed-to-seed spread of the paired difference, the
power the run had and what the declared power needs ("not settled at N = ..., power ..." where that is the truth),
the gradient-masking warnings that weaken it; for every run: its completeness, its arms excluded as destroyed or
unmatched, each arm's perplexity and its factor of the baseline's (the price), and every masking warning; and the
tables a question names (a run's ``report.tables``, as its report wrote them). Nothing here knows a plugin, a model
or an entry: names come from the study file and the runs' ``final_results.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field

from ...config import PluginConfig, validated
from ...errors import ConfigError
from ..suite import load_yaml
from ..rundir import read_json_object, read_records
from .arms import DESTROYED, UNMATCHED
from .primary import METHOD_LABELS, UNSETTLED, sample_text
from .text import interval, pct, signed

NO_INTERVAL = "(no interval)"


class StudyRun(PluginConfig):
    """A run of the study: its directory (relative to the study file) and the command that makes it."""

    dir: str
    command: str = ""


class StudyAnswer(PluginConfig):
    """A primary endpoint of a run that answers a question (``entry`` and ``metric`` only where the run's family
    compares the same two models more than once)."""

    run: str
    model: str
    reference: str
    entry: str | None = None
    metric: str | None = None


class StudyTable(PluginConfig):
    """A table a run's suite declares (``report.tables``), shown as the run's report wrote it."""

    run: str
    name: str


class StudyQuestion(PluginConfig):
    question: str
    answers: list[StudyAnswer] = Field(min_length=1)
    #: Tables of the runs shown under the answers (the measurements behind them).
    tables: list[StudyTable] = Field(default_factory=list)
    #: Prose of the study's own, printed after the numbers (what the endpoints do not say by themselves).
    note: str = ""


class Study(PluginConfig):
    """A study file (``harness study``)."""

    title: str
    intro: str = ""
    runs: dict[str, StudyRun] = Field(min_length=1)
    questions: list[StudyQuestion] = Field(min_length=1)
    #: The Markdown file written (relative to the study file).
    output: str = "research.md"


def load_study(path: Path) -> Study:
    study = validated(Study, load_yaml(path), path, "", "study")
    for i, q in enumerate(study.questions):
        for kind, items in (("answers", q.answers), ("tables", q.tables)):
            for j, item in enumerate(items):
                if item.run not in study.runs:
                    raise ConfigError(path, f"questions[{i}].{kind}[{j}].run", f"unknown run '{item.run}'",
                                      f"name one of: {', '.join(study.runs)}")
    return study


def _matches(results: dict[str, Any], answer: StudyAnswer) -> list[dict[str, Any]]:
    return [e for e in (results.get("primary") or {}).get("endpoints", [])
            if e.get("model") == answer.model and e.get("reference") == answer.reference
            and answer.entry in (None, e.get("entry")) and answer.metric in (None, e.get("metric"))]


def _endpoint(results: dict[str, Any], answer: StudyAnswer) -> dict[str, Any] | None:
    found = _matches(results, answer)
    return found[0] if len(found) == 1 else None


def endpoint_lines(name: str, results: dict[str, Any], answer: StudyAnswer) -> list[str]:
    """One answer as Markdown: the verdict sentence, then its sample and masking warnings."""
    who = f"`{name}`: {answer.model} vs {answer.reference}"
    found = _matches(results, answer)
    if len(found) > 1:
        return [f"- {who}: {len(found)} primary endpoints of this run compare these models; name the answer's "
                "`entry` (and `metric`) in the study file"]
    if not found:
        return [f"- {who}: not a primary endpoint of this run (its suite's `report.primary`); no answer"]
    e = found[0]
    who += f", {e['entry']}.{e['metric']}"
    if "ci" not in e:
        # No verdict, so no adjusted interval; the observed difference and the sample still say how far off it was.
        seen = (f"; observed {pct(e['effect'])}, absolute {signed(e['difference'])}, not judged"
                if isinstance(e.get("effect"), (int, float)) and isinstance(e.get("difference"), (int, float)) else "")
        out = [f"- {who}: **no verdict** ({e['status']}: {e.get('detail', 'not judged')}){seen}"]
        return out + ([f"  - {text}"] if (text := sample_text(e)) else [])
    method = METHOD_LABELS.get((results.get("primary") or {}).get("multiplicity", ""), "")
    out = [f"- {who}: relative effect {pct(e['effect'])} {interval(e['ci'], missing=NO_INTERVAL)}, absolute "
           f"{signed(e['difference'])} "
           f"{interval(e['difference_ci'], signed, NO_INTERVAL)} ({method} {e['confidence']:.1%} intervals, "
           f"p = {e['p_value']:.3g}; hoped: {e['direction']}, smallest effect of interest {e['min_effect']:.0%}) "
           f"-> **{e['status']}**"]
    for s in e.get("scales", []):
        out.append(f"  - on the {s['metric']} scale: {pct(s['effect'])} {interval(s['ci'], missing=NO_INTERVAL)} -> "
                   f"{s['status']}")
    if text := sample_text(e):
        out.append(f"  - {text}")
    out += [f"  - WARNING {w}" for w in e.get("masking_warnings", [])]
    return out


def run_lines(name: str, run: StudyRun, results: dict[str, Any] | None, base: Path) -> list[str]:
    """A run's state: complete or what is missing, the arms excluded, the masking warnings."""
    if results is None:
        return [f"- `{name}`: no report at `{run.dir}` (relative to the study file; make it with "
                f"`{run.command or 'harness run SUITE --out DIR'}`)"]
    stages = results.get("stages") or []
    seconds = sum(s.get("duration_s") or 0.0 for s in stages if s.get("status") == "done")
    missing = results.get("missing") or []
    out = [f"- `{name}` (suite `{results.get('suite')}`, {results.get('mode')} mode, seeds "
           f"{', '.join(str(s) for s in results.get('seeds', []))}): "
           + ("complete" if not missing else f"**incomplete**: {len(missing)} of {len(stages)} stages missing")
           + f", {len(stages)} stages, {seconds / 60:.1f} min of stage time"]
    # The wall time a run script logged per invocation (studies' run.sh): what the run cost on its machine, resumes
    # included, beside the stage time above (which leaves out loading, start-up and the report).
    calls, _ = read_records(base / run.dir / "invocations.jsonl")
    if calls:
        minutes = sum(float(c.get("seconds") or 0) for c in calls) / 60
        line = f"  - wall time: {minutes:.1f} min over {len(calls)} invocation{'s' if len(calls) != 1 else ''} " \
               "of its run script"
        if stopped := sum(1 for c in calls if c.get("exit_code") != 0):
            resumed = calls[-1].get("exit_code") == 0
            line += f" ({stopped} stopped before the end{', resumed' if resumed else '; the last one too'})"
        if calls[0].get("nproc"):
            line += f", {calls[0]['nproc']} CPU cores"
        out.append(line)
    arms = results.get("arms") or {}
    excluded = [f"{a.get('model')} ({a['status']}: perplexity {a.get('perplexity', float('nan')):.4g} above "
                f"{a.get('ceiling')})" for a in arms.get("arms") or [] if a.get("status") == DESTROYED]
    excluded += [f"{p.get('model')} vs {p.get('control')} ({p['status']})"
                 for p in [*(arms.get("matched_pairs") or []), *(arms.get("baseline_pairs") or [])]
                 if p.get("status") == UNMATCHED]
    out.append(f"  - arms excluded from verdicts: {', '.join(excluded) if excluded else 'none'}")
    out += arm_lines(results)
    masking = [w for w in results.get("warnings") or [] if w.startswith("possible gradient masking")]
    out.append(f"  - gradient-masking warnings: {len(masking)}" + "".join(f"\n    - {w}" for w in masking))
    return out


def arm_lines(results: dict[str, Any]) -> list[str]:
    """The price of each arm: its perplexity (the report's gap metric, mean over seeds), as a factor of the
    baseline's, and whether it may be compared (the report's arms check)."""
    arms = [a for a in (results.get("arms") or {}).get("arms") or [] if a.get("perplexity") is not None]
    if not arms:
        return []
    baseline = (results.get("report_config") or {}).get("baseline")
    base = next((a["perplexity"] for a in arms if a.get("model") == baseline), None)
    out = [f"  - perplexity ({arms[0].get('entry')}.{arms[0].get('metric')}, mean over seeds; a uniform guess: "
           f"{arms[0].get('ceiling')}):"]
    for a in arms:
        factor = f", {a['perplexity'] / base:.3g}x {baseline}" if base and a.get("model") != baseline else ""
        out.append(f"    - {a.get('model')}: {a['perplexity']:.4g}{factor} ({a.get('status')})")
    return out


def table_lines(name: str, results: dict[str, Any] | None, table: StudyTable, base: Path) -> list[str]:
    """A run's declared table as its report wrote it (Markdown), under a line naming where it comes from."""
    if results is None:
        return [f"`{name}`: no run yet, no table `{table.name}`"]
    path = (results.get("files") or {}).get(f"{table.name}_md")
    if not path or not Path(path).is_file():
        path = str(base / f"{table.name}.md")  # a run directory moved since its report was built
        if not Path(path).is_file():
            return [f"`{name}`: its report has no table `{table.name}` (its suite's `report.tables`)"]
    return [f"`{name}`, table `{table.name}`:", "", Path(path).read_text().strip()]


def render_study(path: Path) -> tuple[Path, str]:
    """The study's Markdown and where it goes."""
    study = load_study(path)
    base = path.resolve().parent
    results: dict[str, dict[str, Any] | None] = {}
    for name, run in study.runs.items():
        results[name] = read_json_object(base / run.dir / "final_results.json")
    out = [f"# {study.title}", "", f"Rendered by `harness study {path}` from the runs' `final_results.json`; "
           "every number below is a run's, as its report computed it.", ""]
    if study.intro:
        out += [study.intro.strip(), ""]
    out += ["## Runs", ""]
    for name, run in study.runs.items():
        out += run_lines(name, run, results[name], base)
    unsettled = unjudged = 0
    for i, q in enumerate(study.questions, 1):
        out += ["", f"## {i}. {q.question}", ""]
        for a in q.answers:
            r = results[a.run]
            if r is None:
                out.append(f"- `{a.run}`: {a.model} vs {a.reference}: no run yet, no answer")
                continue
            out += endpoint_lines(a.run, r, a)
            e = _endpoint(r, a)
            unsettled += bool(e and e.get("status") == UNSETTLED)
            unjudged += bool(e and "ci" not in e)
        for t in q.tables:
            out += [""] + table_lines(t.run, results[t.run], t, base / study.runs[t.run].dir)
        if q.note:
            out += ["", q.note.strip()]
    out += ["", f"Endpoints not settled: {unsettled}; without a verdict (destroyed, unmatched or missing): {unjudged}. "
            "A verdict is given only where its adjusted interval settles "
            "it; \"not settled\" is not \"no effect\".", ""]
    return base / study.output, "\n".join(out)
