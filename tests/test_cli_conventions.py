"""Command-line conventions: key=value overrides, --limit, --version, bare `harness`, --stage prefixes and globs,
readable type errors, the smoke-test notice, `harness describe` and the generated options reference, `hf download`
in messages, and scripts/setup.sh without root."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pytest

from harness.cli import main
from harness._engine.runner import Runner
from harness._engine.suite import load_suite
from tests.conftest import ROOT, write_suite

QUICK = ROOT / "suites" / "quick.yaml"
FULL = ROOT / "suites" / "pythia_full.yaml"


def cli(*args: str) -> SimpleNamespace:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = main(list(args))
        except SystemExit as exc:  # argparse: --version, --help, usage errors
            code = int(exc.code or 0)
    return SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


# -- overrides and --limit --------------------------------------------------------------------------------------------
def test_overrides_change_the_suite_after_its_mode_and_are_recorded(tmp_path):
    suite = load_suite(QUICK, overrides=["attacks.hotflip.flips=2", "seeds=[1, 2]", "metrics.perplexity.data.limit=7"],
                       output_dir=tmp_path / "run")
    assert suite.attacks["hotflip"].config.flips == 2 and suite.seeds == [1, 2]
    assert suite.metrics["perplexity"].config.data.limit == 7
    # Entry names may hold dots: the longest existing key wins.
    full = load_suite(FULL, overrides=["models.pythia_1.4b.dtype=float16"])
    assert full.models["pythia_1.4b"].config.dtype == "float16"
    runner = Runner(suite, show_progress=False)
    runner.write_run_files()
    resolved = json.loads((tmp_path / "run" / "config.resolved.json").read_text())
    assert resolved["overrides"] == ["attacks.hotflip.flips=2", "seeds=[1, 2]", "metrics.perplexity.data.limit=7"]
    assert resolved["suite"]["attacks"]["hotflip"]["flips"] == 2 and resolved["seeds"] == [1, 2]
    # On the command line, before or after options.
    proc = cli("validate", str(QUICK), "seeds=[3]", "--mode", "quick", "attacks.hotflip.flips=2")
    assert proc.returncode == 0 and "seeds [3]" in proc.stdout, proc.stderr
    assert cli("validate", str(QUICK), "--mode", "quick", "--bogus").returncode == 2


@pytest.mark.parametrize("override,words", [
    ("attacks.hotflip.flips=x", "attacks.hotflip.flips: must be an integer >= 1 or a number > 0 and <= 1, got 'x'"),
    ("attacks.hotflip.flipz=3", "unknown key 'flipz' for plugin 'hotflip' (did you mean 'flips'?)"),
    ("seedz=[1]", "unknown top-level key 'seedz' in the command-line overrides (did you mean 'seeds'?)"),
    ("attacks.hotflip.flips", "an override must be `key.path=value`"),
    ("attacks.hotflip.flips.x=1", "goes inside a int, not a mapping"),
])
def test_a_bad_override_is_one_line_like_a_bad_suite(override, words):
    proc = cli("validate", str(QUICK), override)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0] and str(QUICK) in lines[0], proc.stderr


def test_limit_caps_every_metric_and_attack_entry_and_runs_apart(tmp_path):
    plain, limited = load_suite(QUICK), load_suite(QUICK, limit=3)
    assert limited.output_dir == plain.output_dir.with_name(plain.output_dir.name + "-limit3")
    hotflip = limited.attacks["hotflip"].config
    assert hotflip.n_examples == 3 and hotflip.data.limit == 3
    assert limited.attacks["random_hotflip"].config.n_examples == 3  # a control (`control_of:`) too: its attack's config
    assert limited.metrics["perplexity"].config.data.limit == 3 and limited.metrics["lm_eval"].config.limit == 3
    assert limited.train["baseline"].config == plain.train["baseline"].config  # training is not an evaluation
    # Caps never raise a size: an entry already below N keeps its own.
    roomy = load_suite(QUICK, limit=10_000).attacks["hotflip"].config
    assert roomy.n_examples == plain.attacks["hotflip"].config.n_examples
    # A real run of one capped stage: 2 documents scored, and the limit recorded with the run.
    run_dir = tmp_path / "trial"
    proc = cli("run", str(QUICK), "--limit", "2", "--out", str(run_dir), "--stage", "metrics/perplexity/tiny",
               "--no-progress")
    assert proc.returncode == 0, proc.stderr
    records = (run_dir / "stages" / "metrics" / "perplexity" / "tiny" / "records.jsonl").read_text().splitlines()
    assert len(records) == 2
    assert json.loads((run_dir / "config.resolved.json").read_text())["limit"] == 2
    assert cli("run", str(QUICK), "--limit", "0").returncode == 2


# -- --version, bare harness, --stage ---------------------------------------------------------------------------------
def test_version_and_bare_harness_print_and_exit_0():
    from harness import __version__

    version = cli("--version")
    assert version.returncode == 0 and version.stdout.strip().startswith(f"harness {__version__}")
    bare = cli()
    assert bare.returncode == 0 and bare.stdout.startswith("usage: harness") and "describe" in bare.stdout
    assert cli("nonsense").returncode == 2  # argparse's convention for a usage error


def test_stage_takes_prefixes_and_globs_and_a_wrong_one_gets_five_suggestions_at_most():
    suite = load_suite(QUICK)
    ids = [s.id for s in Runner(suite, show_progress=False).graph.stages]
    assert Runner(suite, show_progress=False, only=["train/monotonic"]).only == ["train/monotonic/s42"]
    assert Runner(suite, show_progress=False, only=["train/monotonic*"]).only == [
        s for s in ids if s.startswith("train/monotonic")] and len([s for s in ids if s.startswith("train/mono")]) == 2
    assert Runner(suite, show_progress=False, only=["attacks/*/tiny/*"]).only == [
        s for s in ids if s.startswith("attacks/") and s.split("/")[2] == "tiny"]
    proc = cli("run", str(QUICK), "--stage", "train/monotonc")
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and len(line) < 600, line
    suggested = line.split("did you mean: ")[1].split("?")[0].split(", ")
    assert 1 <= len(suggested) <= 5 and suggested[0] == "train/monotonic"


# -- type errors and notices ------------------------------------------------------------------------------------------
def test_type_errors_read_like_the_rest(tmp_path):
    path = write_suite(tmp_path, """
        models: {tiny: {plugin: pythia_tiny}}
        attacks:
          hotflip:
            data: {dataset: json, data_files: @DATA@/test.jsonl, split: test}
            flips: x
            beam_width: [1]
        """)
    proc = cli("validate", str(path))
    assert proc.returncode == 2
    line = proc.stderr.strip()
    assert "attacks.hotflip.flips: must be an integer >= 1 or a number > 0 and <= 1, got 'x'" in line
    assert "(and 1 more problem)" in line  # beam_width; the union's two members are one problem, not two
    assert "constrained-int" not in line and "Input should" not in line


def test_a_full_suite_run_without_mode_says_it_is_the_smoke_test():
    proc = cli("validate", str(FULL))
    assert proc.returncode == 0 and "smoke test" in proc.stderr and "--mode full" in proc.stderr
    assert "smoke test" not in cli("validate", str(FULL), "--mode", "quick").stderr
    assert "smoke test" not in cli("validate", str(QUICK)).stderr  # its own default is the demo, no `quick:` block


def test_download_hints_name_hf_download():
    sources = [*ROOT.glob("harness/**/*.py"), *ROOT.glob("plugins/**/*.py"), ROOT / "README.md",
               *ROOT.glob("docs/*.md"), *ROOT.glob("suites/*.yaml")]
    stale = [str(p.relative_to(ROOT)) for p in sources if "huggingface-cli" in p.read_text(encoding="utf-8")]
    assert not stale, f"huggingface_hub 2.x replaced `huggingface-cli download` by `hf download`: {stale}"


# -- harness describe -------------------------------------------------------------------------------------------------
def test_describe_shows_options_types_defaults_descriptions_and_metrics():
    proc = cli("describe", "hotflip")
    assert proc.returncode == 0, proc.stderr
    out = " ".join(proc.stdout.split())
    for words in ("flips", "an integer >= 1 or a number > 0 and <= 1", "Steps (at most one flip each)",
                  "beam_width", "DocumentSource options", "data_files", "declared metrics", "success_rate"):
        assert words in out, words
    md = cli("describe", "hf_causal_lm", "--markdown").stdout
    row = next(line for line in md.splitlines() if line.startswith("| `random_init`"))
    assert "Needs `path:`" in row
    bad = cli("describe", "hotflp")
    assert bad.returncode == 2 and "did you mean 'hotflip'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


def test_the_options_reference_in_docs_is_the_code_s():
    from harness._engine.describe import plugin_doc, reference_markdown
    from harness._engine.plugins import load_registry

    docs = [plugin_doc(i) for i in load_registry().all() if i.package == "harness"]
    shipped = (ROOT / "docs" / "plugins.md").read_text(encoding="utf-8")
    if any(d.name.startswith("textattack") for d in docs):  # the optional extra adds plugins the docs leave out
        pytest.skip("the TextAttack extra is installed; docs/plugins.md covers the core install")
    assert shipped == reference_markdown(docs), (
        "docs/plugins.md is out of date: regenerate it with `harness describe --all --markdown > docs/plugins.md`")


def test_every_built_in_option_says_what_it_does():
    """`harness describe` is where a user looks an option up: no built-in option may have an empty description."""
    from harness._engine.describe import plugin_doc
    from harness._engine.plugins import load_registry

    bare = [f"{doc.name}: {block.name or 'options'}.{o.key}"
            for doc in (plugin_doc(i) for i in load_registry().all() if i.package == "harness")
            for block in doc.blocks for o in block.options if not o.description]
    assert not bare, f"options without a description (a `#:` comment above the field): {bare}"


# -- scripts/setup.sh without root ------------------------------------------------------------------------------------
def _fake_setup(tmp_path: Path, uid: int) -> tuple[subprocess.CompletedProcess, Path]:
    """scripts/setup.sh in a copy of the checkout with fake id/sudo/apt-get/dpkg/python that only record calls."""
    root = tmp_path / "checkout"
    (root / "scripts").mkdir(parents=True)
    (root / "scripts" / "setup.sh").write_text((ROOT / "scripts" / "setup.sh").read_text())
    fake = tmp_path / "bin"
    fake.mkdir()
    (root / ".venv" / "bin").mkdir(parents=True)
    calls = tmp_path / "calls"
    scripts = {
        fake / "id": f"echo {uid}",
        fake / "sudo": "exit 1",  # no passwordless sudo
        fake / "apt-get": f'echo "apt-get $*" >> {calls}',
        fake / "dpkg": "exit 1",  # nothing installed
        root / ".venv" / "bin" / "python": f'echo "python $*" >> {calls}',
    }
    for path, body in scripts.items():
        path.write_text(f"#!/bin/bash\n{body}\n")
        path.chmod(0o755)
    (root / ".venv" / "bin" / "activate").write_text(f'PATH="{root / ".venv" / "bin"}:$PATH"\n')
    env = {**os.environ, "PATH": f"{fake}:/usr/bin:/bin"}
    proc = subprocess.run(["bash", str(root / "scripts" / "setup.sh")], capture_output=True, text=True, env=env,
                          timeout=60)
    return proc, calls


def test_setup_without_root_skips_system_packages_and_as_root_installs_them(tmp_path):
    user, calls = _fake_setup(tmp_path / "user", uid=1000)
    assert user.returncode == 0, user.stderr
    assert "skipping the system packages" in user.stderr
    recorded = calls.read_text()
    assert "apt-get" not in recorded and "pip" in recorded  # harness itself still installs
    root, calls = _fake_setup(tmp_path / "root", uid=0)  # CI runs as root: unchanged
    assert root.returncode == 0, root.stderr
    assert "apt-get install" in calls.read_text() and "slurm-wlm" in calls.read_text()


# -- the README's path from the demo to a cluster ---------------------------------------------------------------------
def test_every_harness_command_in_the_readme_path_parses_and_names_files_that_exist():
    import shlex

    from harness.cli.main import build_parser

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    section = readme.split("## From the quick demo to a cluster", 1)[1].split("\n## ", 1)[0]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    commands = [line.split("  #", 1)[0].strip() for line in block.splitlines() if line.strip()]
    parser = build_parser()
    checked = 0
    for command in commands:
        words = shlex.split(command)
        if words[0] == "harness":
            args = parser.parse_args(words[1:])  # argparse exits (a failure here) on anything it does not take
            suite = getattr(args, "suite", None)
            if suite is not None:
                assert (ROOT / suite).is_file(), command
            checked += 1
        elif words[0] == "cp":
            assert (ROOT / words[1]).is_file(), command
    assert checked >= 6
    # The first two command lines of the README stay exactly what a new user types.
    assert readme.splitlines()[3] == ("bash scripts/setup.sh && .venv/bin/harness run suites/quick.yaml    # set up, "
                                      "then run the tiny offline default")
    assert (ROOT / "docs" / "guide.md").is_file() and (ROOT / "docs" / "cluster.md").is_file()
    for link in ("docs/guide.md", "docs/plugins.md", "docs/writing-plugins.md", "docs/cluster.md",
                 "docs/benchmarks.md"):
        assert (ROOT / link).is_file() and link in readme


def test_the_core_option_blocks_describe_every_option():
    """The options every plugin shares (documents, the attack task, the vocabulary filter) and the model loader's
    are all described; plugins document their own with `#:` comments above each field."""
    from harness.attacks import TaskConfig, VocabFilter
    from harness.data import DocumentSource
    from harness._engine.describe import option_blocks
    from harness_plugins.models.hf_causal_lm import HFCausalLMConfig

    for cls in (DocumentSource, TaskConfig, VocabFilter, HFCausalLMConfig):
        undescribed = [o.key for o in option_blocks(cls)[0].options if not o.description]
        assert not undescribed, f"{cls.__name__}: options without a description: {undescribed}"
