"""Reliability, second round (issue 26), tried as a hostile or unlucky user would: paths that hold shell code never
run it (the real SLURM cluster runs nothing but harness jobs), nothing inside a run is written, read or deleted
through a symbolic link, caches follow the data files' content, duplicate document ids are refused, special files
(FIFOs, /dev/zero) are refused in seconds, and every failure of the environment is one line with exit code 2."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness._engine.rundir import RunDir, read_records
from harness._engine.runner import Runner
from harness.store import read_json
from harness._engine.suite import load_suite
from tests.conftest import (DATA, HARNESS, PERPLEXITY_SUITE, ROOT, checkpoint_error_at_validate,
                            one_line_error, write_suite)

TINY = ROOT / "plugins" / "models" / "pythia_tiny"
STAGE = "stages/metrics/ppl/tiny"

# Its own name: the SLURM test below checks that every queued job is one of its own ("rel2:...").
SUITE = PERPLEXITY_SUITE.replace("name: rel\n", "name: rel2\n")


#: The CLI runs in-process here: each test gets a harness logger bound to its own stderr.
pytestmark = pytest.mark.usefixtures("fresh_cli_logger")


@pytest.fixture(autouse=True)
def private_digest_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


def harness(*args: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([*HARNESS, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def assert_one_line(proc: subprocess.CompletedProcess, expected: str) -> str:
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert expected in lines[0], lines[0]
    assert "Traceback" not in proc.stderr
    return lines[0]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("pristine2")
    os.environ.setdefault("XDG_CACHE_HOME", str(base / "xdg-cache"))
    Runner(load_suite(write_suite(base, SUITE), output_dir=base / "run"), show_progress=False).run()
    return base / "run"


def copied(tmp_path: Path, pristine: Path) -> tuple[Path, Path, dict]:
    path = write_suite(tmp_path, SUITE)
    run_dir = tmp_path / "run"
    shutil.copytree(pristine, run_dir, symlinks=True)
    return path, run_dir, read_json(run_dir / STAGE / "result.json")


def outside(tmp_path: Path) -> Path:
    """A directory outside the run holding one precious file; tests check it is never touched."""
    d = tmp_path / "precious"
    d.mkdir(exist_ok=True)
    (d / "keep.txt").write_text("keep")
    return d


def untouched(d: Path) -> bool:
    return sorted(p.name for p in d.iterdir()) == ["keep.txt"] and (d / "keep.txt").read_text() == "keep"


# -- 1. paths never become code in sbatch scripts ---------------------------------------------------------------------
HOSTILE = "run $(touch {m}/DOLLAR) `touch {m}/TICK` \"dq\" 'sq' 100%"


@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\x1b[2Jb", "a\tb"])
def test_control_characters_in_run_paths_are_refused_at_validate_and_at_submission(tmp_path, capsys, bad):
    path = write_suite(tmp_path, SUITE + f"output_dir: {json.dumps(str(tmp_path / bad))}\n")
    line = one_line_error(capsys, "validate", str(path))
    assert "output_dir" in line and "control character" in line and "\x1b" not in line
    line = one_line_error(capsys, "slurm", "submit", str(path), "--dry-run", "--skip-preflight")
    assert "control character" in line
    good = write_suite(tmp_path, SUITE, name="good.yaml")
    line = one_line_error(capsys, "slurm", "submit", str(good), "--dry-run", "--skip-preflight", "--out",
                          str(tmp_path / bad))
    assert "--out" in line and "control character" in line
    assert not any(p.name.startswith("a") for p in tmp_path.iterdir())  # no run directory was made


def test_dry_run_scripts_keep_quotes_dollars_and_backticks_inert(tmp_path):
    markers = tmp_path / "markers"
    markers.mkdir()
    out = tmp_path / HOSTILE.format(m=markers)
    path = write_suite(tmp_path, SUITE)
    assert main(["slurm", "submit", str(path), "--dry-run", "--skip-preflight", "--out", str(out)]) == 0
    scripts = sorted((out / "slurm" / "jobs").glob("*.sbatch"))
    assert scripts
    for script in [*scripts, out / "slurm" / "submit.sh"]:
        text = script.read_text()
        assert subprocess.run(["bash", "-n", str(script)]).returncode == 0, text
        # bash reads the script without sbatch: every line runs up to the first command it cannot find; the
        # injected `touch` must not be among them.
        for line in text.splitlines():
            if line.startswith("#SBATCH --output="):
                assert line.startswith('#SBATCH --output="') and "100%%" in line, line
    assert list(markers.iterdir()) == []


def _slurm_missing() -> str | None:
    missing = [b for b in ("munged", "slurmctld", "slurmd", "sbatch") if shutil.which(b) is None]
    if missing:
        return f"SLURM is not installed ({', '.join(missing)} missing)"
    if os.geteuid() != 0:
        return "the local SLURM cluster needs root"
    return None


@pytest.mark.slurm
def test_hostile_paths_on_the_real_cluster_run_nothing_but_harness_jobs(tmp_path):
    """The suite's output_dir holds `$(...)`, backticks, both quotes and `%`: submitted for real (and the dry run's
    submit.sh run by bash), every job is a harness job, the run completes there, and no injected command ran."""
    reason = _slurm_missing()
    if reason:
        pytest.skip(reason)
    cluster = tmp_path / "cluster"
    start = subprocess.run(["bash", str(ROOT / "scripts" / "slurm_local.sh"), "start", str(cluster)],
                           capture_output=True, text=True, timeout=120)
    assert start.returncode == 0, start.stderr
    env = {**os.environ, "SLURM_CONF": str(cluster / "slurm.conf"), "OMP_NUM_THREADS": "1"}
    try:
        markers = tmp_path / "markers"
        markers.mkdir()
        out = tmp_path / HOSTILE.format(m=markers)
        path = write_suite(tmp_path, SUITE + f"output_dir: {json.dumps(str(out))}\n")
        # Jobs sized to the one-node cluster (the default profile asks 4 CPUs a job, which no node here has, so
        # every job would pend with reason PartitionConfig).
        profile = tmp_path / "profile.yaml"
        profile.write_text("defaults: {cpus_per_task: 1, time: '0:20:00', gpus: 0}\nsignal_lead_s: 30\n")
        submit = subprocess.run([*HARNESS, "slurm", "submit", str(path), "--profile", str(profile)],
                                capture_output=True, text=True, timeout=300, env=env)
        assert submit.returncode == 0, submit.stderr
        dry_out = tmp_path / HOSTILE.format(m=markers).replace("run", "dry")
        dry = subprocess.run([*HARNESS, "slurm", "submit", str(path), "--dry-run", "--out", str(dry_out),
                              "--profile", str(profile)],
                             capture_output=True, text=True, timeout=300, env=env)
        assert dry.returncode == 0, dry.stderr
        by_bash = subprocess.run(["bash", str(dry_out / "slurm" / "submit.sh")], capture_output=True, text=True,
                                 timeout=120, env=env)
        assert by_bash.returncode == 0, by_bash.stderr
        deadline = time.time() + 420
        while time.time() < deadline:
            queue = subprocess.run(["squeue", "-h", "-o", "%j"], capture_output=True, text=True, env=env).stdout
            if not queue.strip():
                break
            assert all(name.startswith("rel2:") for name in queue.split()), queue  # only harness jobs, ever
            time.sleep(2)
        for run in (out, dry_out):
            logs = "\n".join(f"== {p.name}\n{p.read_text(errors='replace')[-1500:]}"
                             for p in sorted((run / "slurm" / "logs").glob("*")))
            assert (run / "final_results.json").exists(), logs
            final = read_json(run / "final_results.json")
            assert final["complete"] is True, logs
            logs = list((run / "slurm" / "logs").glob("*.out"))
            assert logs and all("%" not in p.name.replace("100%", "") for p in logs)
        assert list(markers.iterdir()) == [], "an injected command ran"
        # Both runs on the cluster give what a local run gives.
        local = tmp_path / "local"
        Runner(load_suite(path, output_dir=local), show_progress=False).run()
        expected = read_json(local / STAGE / "result.json")["metrics"]
        assert read_json(out / STAGE / "result.json")["metrics"] == expected
        assert read_json(dry_out / STAGE / "result.json")["metrics"] == expected
    finally:
        subprocess.run(["scancel", "--me"], capture_output=True, env=env)
        subprocess.run(["bash", str(ROOT / "scripts" / "slurm_local.sh"), "stop", str(cluster)], timeout=60)


# -- 2. nothing inside a run is followed through a symbolic link ------------------------------------------------------
def test_lock_that_is_a_link_is_refused_and_its_target_untouched(tmp_path, capsys, pristine):
    path, run_dir, _ = copied(tmp_path, pristine)
    precious = outside(tmp_path)
    (run_dir / ".lock").unlink(missing_ok=True)
    (run_dir / ".lock").symlink_to(precious / "keep.txt")
    line = one_line_error(capsys, "run", str(path), "--out", str(run_dir), "--skip-preflight", "--no-progress")
    assert ".lock" in line and "symbolic link" in line
    assert untouched(precious)


def test_lock_that_is_a_directory_is_one_line(tmp_path, capsys, pristine):
    path, run_dir, _ = copied(tmp_path, pristine)
    (run_dir / ".lock").unlink(missing_ok=True)
    (run_dir / ".lock").mkdir()
    line = one_line_error(capsys, "run", str(path), "--out", str(run_dir), "--skip-preflight", "--no-progress")
    assert ".lock" in line and "directory" in line


@pytest.mark.parametrize("finished", [True, False])
def test_records_log_that_is_a_link_is_recomputed_never_followed(tmp_path, pristine, caplog, finished):
    path, run_dir, before = copied(tmp_path, pristine)
    precious = outside(tmp_path)
    sdir = run_dir / STAGE
    if not finished:  # an interrupted stage: its records are read to resume and appended to
        (sdir / "done.json").unlink()
        (sdir / "result.json").unlink()
    (sdir / "records.jsonl").unlink()
    (sdir / "records.jsonl").symlink_to(precious / "keep.txt")
    caplog.clear()
    outcomes = Runner(load_suite(path, output_dir=run_dir), show_progress=False).run()
    assert [o.status for o in outcomes] == ["done"]
    assert untouched(precious)
    assert not (sdir / "records.jsonl").is_symlink()
    assert read_json(sdir / "result.json")["metrics"] == before["metrics"]
    assert len(read_records(sdir / "records.jsonl")[0]) == before["metrics"]["documents"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert any("symbolic link" in w for w in warnings) and all("\n" not in w for w in warnings)


def test_resume_state_file_that_is_a_link_is_removed_not_read(tmp_path, pristine):
    path, run_dir, before = copied(tmp_path, pristine)
    precious = outside(tmp_path)
    sdir = run_dir / STAGE
    (sdir / "done.json").unlink()
    (sdir / "state-x.json").symlink_to(precious / "keep.txt")
    outcomes = Runner(load_suite(path, output_dir=run_dir), show_progress=False).run()
    assert [o.status for o in outcomes] == ["done"] and untouched(precious)
    assert not (sdir / "state-x.json").exists() and read_json(sdir / "result.json")["metrics"] == before["metrics"]


def test_stage_directory_parent_that_is_a_link_is_refused(tmp_path, pristine):
    path, run_dir, _ = copied(tmp_path, pristine)
    precious = outside(tmp_path)
    shutil.rmtree(run_dir / "stages" / "metrics")
    (run_dir / "stages" / "metrics").symlink_to(precious)
    with pytest.raises(HarnessError, match="symbolic link"):
        Runner(load_suite(path, output_dir=run_dir), show_progress=False).run()
    assert untouched(precious)


TRAIN_SUITE = """
name: reltrain
seeds: [42]
device: cpu
models:
  tiny: {plugin: pythia_tiny}
  trained: {plugin: hf_causal_lm, from_train: base}
train:
  base:
    plugin: baseline
    model: tiny
    data: {dataset: json, data_files: @DATA@/train.jsonl, split: train, limit: 20}
    val_data: {dataset: json, data_files: @DATA@/valid.jsonl, split: train, limit: 2}
    seq_len: 32
    micro_batch: 2
    grad_accum: 1
    steps: 4
    warmup_ratio: 0.25
    val_every: 2
    val_blocks: 2
    checkpoint_every: 2
metrics:
  ppl:
    plugin: perplexity
    models: [trained]
    data: {dataset: json, data_files: @DATA@/test.jsonl, split: test, limit: 2}
    max_length: 32
"""


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    base = tmp_path_factory.mktemp("trained")
    Runner(load_suite(write_suite(base, TRAIN_SUITE), output_dir=base / "run"), show_progress=False).run()
    return base / "run"


def _train_dir(run_dir: Path) -> Path:
    (done,) = (run_dir / "stages" / "train").rglob("done.json")
    return done.parent


@pytest.mark.parametrize("what", ["train_state", "checkpoint", "checkpoint/harness.json", "train_state/step"])
def test_training_state_checkpoint_and_export_links_are_never_followed(tmp_path, trained, caplog, what):
    path = write_suite(tmp_path, TRAIN_SUITE)
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir, symlinks=True)
    tdir = _train_dir(run_dir)
    weights = (tdir / "checkpoint" / "model.safetensors").read_bytes()
    ppl = read_json(run_dir / "stages/metrics/ppl/trained/s42/result.json")["metrics"]
    precious = outside(tmp_path)
    if what.startswith("train_state"):  # snapshots are read back by an unfinished training: interrupt it
        for name in ("done.json", "result.json"):
            (tdir / name).unlink()
        shutil.rmtree(tdir / "checkpoint")
        if what == "train_state":
            shutil.rmtree(tdir / "train_state")
            (tdir / "train_state").symlink_to(precious)
        else:  # the newest snapshot folder is a link out of the run (the trainer deletes old snapshots)
            newest = sorted((tdir / "train_state").glob("step-*"))[-1]
            shutil.rmtree(newest)
            newest.symlink_to(precious)
    else:
        target = tdir / what
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink()
        target.symlink_to(precious if what != "checkpoint/harness.json" else precious / "keep.txt")
    caplog.clear()
    outcomes = Runner(load_suite(path, output_dir=run_dir), show_progress=False).run()
    assert untouched(precious)
    assert {o.stage.section: o.status for o in outcomes}["train"] == "done"  # recomputed, not skipped
    assert not any(p.is_symlink() for p in tdir.rglob("*"))
    assert (tdir / "checkpoint" / "model.safetensors").read_bytes() == weights  # the same training, bit for bit
    assert read_json(run_dir / "stages/metrics/ppl/trained/s42/result.json")["metrics"] == ppl
    assert any("symbolic link" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_plots_directory_and_report_files_that_are_links_are_replaced_not_followed(tmp_path, pristine, caplog):
    _, run_dir, _ = copied(tmp_path, pristine)
    precious = outside(tmp_path)
    shutil.rmtree(run_dir / "plots", ignore_errors=True)
    (run_dir / "plots").symlink_to(precious)
    names = ["report.html", "final_results.json", "experiment_summary.txt"]  # what the report writes
    for i, name in enumerate(names):
        (run_dir / name).unlink(missing_ok=True)
        (precious / f"file{i}").write_text("mine")
        (run_dir / name).symlink_to(precious / f"file{i}")
    assert main(["report", str(run_dir)]) == 0
    assert (precious / "keep.txt").read_text() == "keep"
    assert all((precious / f"file{i}").read_text() == "mine" for i in range(len(names)))
    assert sorted(p.name for p in precious.iterdir()) == sorted(["keep.txt"] + [f"file{i}" for i in range(len(names))])
    assert (run_dir / "plots").is_dir() and not (run_dir / "plots").is_symlink()
    for name in names:
        assert not (run_dir / name).is_symlink() and (run_dir / name).stat().st_size > 0
    assert any("symbolic link" in r.getMessage() for r in caplog.records if r.levelname == "WARNING")


def test_slurm_jobs_directory_that_is_a_link_is_replaced(tmp_path):
    path = write_suite(tmp_path, SUITE)
    precious = outside(tmp_path)
    run_dir = tmp_path / "run"
    (run_dir / "slurm").mkdir(parents=True)
    (run_dir / "slurm" / "jobs").symlink_to(precious)
    assert main(["slurm", "submit", str(path), "--dry-run", "--skip-preflight", "--out", str(run_dir)]) == 0
    assert untouched(precious) and any((run_dir / "slurm" / "jobs").glob("*.sbatch"))


# -- 3. caches follow content; ids are unique -------------------------------------------------------------------------
def test_changed_data_file_recomputes_the_stage(tmp_path):
    data = tmp_path / "docs.jsonl"
    lines = (DATA / "test.jsonl").read_text().splitlines(keepends=True)
    data.write_text("".join(lines[:6]))
    suite = SUITE.replace("@DATA@/test.jsonl", str(data))
    path = write_suite(tmp_path, suite)
    first = Runner(load_suite(path, output_dir=tmp_path / "run"), show_progress=False).run()
    again = Runner(load_suite(path, output_dir=tmp_path / "run"), show_progress=False).run()
    assert [o.status for o in first] == ["done"] and [o.status for o in again] == ["skipped"]
    data.write_text("".join(lines[6:12]))  # same path, other documents
    changed = Runner(load_suite(path, output_dir=tmp_path / "run"), show_progress=False).run()
    assert [o.status for o in changed] == ["done"]
    fresh = Runner(load_suite(path, output_dir=tmp_path / "fresh"), show_progress=False).run()
    assert changed[0].result["metrics"] == fresh[0].result["metrics"] != first[0].result["metrics"]


def test_data_digest_is_cached_by_size_and_mtime(tmp_path):
    from harness import digests

    data = tmp_path / "docs.jsonl"
    data.write_text('{"text": "a"}\n')
    cache = tmp_path / "digests.json"
    real = digests.file_sha256(data, cache)
    entry = json.loads(cache.read_text())[os.path.realpath(data)]
    assert entry["sha256"] == real
    # A remembered digest for the same size, mtime and inode is used as is: the file is not read again.
    entry["sha256"] = "f" * 64
    cache.write_text(json.dumps({os.path.realpath(data): entry}))
    digests._memo.clear()
    assert digests.file_sha256(data, cache) == "f" * 64
    data.write_text('{"text": "b"}\n')  # same size, new mtime: hashed again
    digests._memo.clear()
    assert digests.file_sha256(data, cache) not in (real, "f" * 64)


def test_duplicate_document_ids_are_one_line_naming_the_file_and_id(tmp_path, capsys):
    data = tmp_path / "dup.jsonl"
    data.write_text('{"id": "a", "text": "one"}\n{"id": "b", "text": "two"}\n{"id": "a", "text": "three"}\n')
    path = write_suite(tmp_path, SUITE.replace("@DATA@/test.jsonl", str(data)))
    line = one_line_error(capsys, "run", str(path), "--out", str(tmp_path / "run"), "--skip-preflight",
                          "--no-progress")
    assert str(data) in line and "'a'" in line and "twice" in line


# -- 4. special files -------------------------------------------------------------------------------------------------
def test_suite_that_is_a_fifo_or_dev_zero_is_one_line_in_seconds(tmp_path):
    fifo = tmp_path / "suite.yaml"
    os.mkfifo(fifo)
    started = time.monotonic()
    assert_one_line(harness("validate", str(fifo)), "FIFO")
    zero = tmp_path / "zero.yaml"
    zero.symlink_to("/dev/zero")
    assert_one_line(harness("validate", str(zero)), "character device")
    assert time.monotonic() - started < 60


def test_suite_read_limit_counts_bytes_read_not_stat(tmp_path, monkeypatch, capsys):
    from harness._engine import suite as suite_module

    monkeypatch.setattr(suite_module, "MAX_SUITE_BYTES", 100)
    path = write_suite(tmp_path, SUITE)  # over 100 bytes; a proc-like file would report size 0
    line = one_line_error(capsys, "validate", str(path))
    assert "100-byte limit" in line


def test_checkpoint_config_and_tokenizer_that_are_fifos_are_one_line(tmp_path):
    for name in ("config.json", "tokenizer.json"):
        ckpt = tmp_path / name.replace(".", "_")
        shutil.copytree(TINY, ckpt)
        (ckpt / name).unlink()
        os.mkfifo(ckpt / name)
        path = write_suite(tmp_path, f"""
            models:
              m: {{plugin: hf_causal_lm, path: {ckpt}}}
            metrics:
              ppl: {{plugin: perplexity, data: {{dataset: json, data_files: @DATA@/test.jsonl}}}}
            """, name=f"{name}.yaml")
        assert_one_line(harness("validate", str(path)), "FIFO")


def test_data_file_that_is_a_fifo_is_one_line(tmp_path):
    fifo = tmp_path / "docs.jsonl"
    os.mkfifo(fifo)
    path = write_suite(tmp_path, SUITE.replace("@DATA@/test.jsonl", str(fifo)))
    assert_one_line(harness("validate", str(path)), "not a regular file")


def test_finished_records_that_are_a_fifo_do_not_hang_status_or_report(tmp_path, pristine):
    _, run_dir, _ = copied(tmp_path, pristine)
    records = run_dir / STAGE / "records.jsonl"
    records.unlink()
    os.mkfifo(records)
    for command in ("status", "report"):
        proc = harness(command, str(run_dir))
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    assert read_json(run_dir / "final_results.json")["complete"] is False


# -- 5. one line, exit 2, for what used to be a traceback -------------------------------------------------------------
def _ckpt(tmp_path: Path, change) -> Path:
    target = tmp_path / "ckpt"
    shutil.copytree(TINY, target)
    change(target)
    return target


def _tokenizer_beyond_vocab(d: Path) -> None:
    tok = json.loads((d / "tokenizer.json").read_text())
    size = json.loads((d / "config.json").read_text())["vocab_size"]
    tok["added_tokens"].append({"id": size + 10, "content": "<beyond>", "single_word": False, "lstrip": False,
                                "rstrip": False, "normalized": False, "special": True})
    (d / "tokenizer.json").write_text(json.dumps(tok))


CHECKPOINT_CASES = {
    "harness.json a list": (lambda d: (d / "harness.json").write_text("[1, 2]"), "harness.json is malformed"),
    "harness.json monotonic without weights": (
        lambda d: (d / "harness.json").write_text('{"monotonic": true, "constrained_weights": 3}'), "malformed"),
    "tokenizer.json not a tokenizer": (lambda d: (d / "tokenizer.json").write_text('{"hello": 1}'),
                                       "does not load as a tokenizer"),
    "tokenizer ids beyond the embedding": (_tokenizer_beyond_vocab, "beyond the model's embedding"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_checkpoint_that_run_would_trip_on_is_one_line_at_validate(tmp_path, capsys, case):
    change, expected = CHECKPOINT_CASES[case]
    ckpt = _ckpt(tmp_path, change)
    assert expected in checkpoint_error_at_validate(tmp_path, capsys, ckpt)


def test_relative_model_path_resolves_against_the_suite_file(tmp_path, capsys, monkeypatch):
    suites = tmp_path / "suites"
    suites.mkdir()
    shutil.copytree(TINY, suites / "ck")
    path = write_suite(suites, """
        models:
          m: {plugin: hf_causal_lm, path: ./ck}
        metrics:
          ppl: {plugin: perplexity, data: {dataset: json, data_files: @DATA@/test.jsonl, limit: 2}, max_length: 32}
        """)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "--no-progress"]) == 0
    capsys.readouterr()
    missing = write_suite(suites, "models:\n  m: {plugin: hf_causal_lm, path: ./nope}\n", name="missing.yaml")
    line = one_line_error(capsys, "validate", str(missing))
    assert "checkpoint directory not found" in line and str(suites / "nope") in line


def test_permission_error_mid_run_is_one_line_and_keeps_the_records(tmp_path, capsys, monkeypatch):
    from harness import store

    path = write_suite(tmp_path, SUITE)
    calls = {"n": 0}
    real_append = store.RecordLog.append

    def append(self, record):
        calls["n"] += 1
        if calls["n"] == 3:  # as a `chmod -w` of the stage directory would (root ignores modes, so it is simulated)
            raise PermissionError(13, "Permission denied", str(self.path))
        real_append(self, record)

    monkeypatch.setattr(store.RecordLog, "append", append)
    line = one_line_error(capsys, "run", str(path), "--out", str(tmp_path / "run"), "--skip-preflight",
                          "--no-progress")
    assert "records.jsonl" in line and "Permission denied" in line and "chmod" in line
    assert len(read_records(tmp_path / "run" / STAGE / "records.jsonl")[0]) == 2


def test_memory_error_is_one_line(tmp_path, capsys, monkeypatch):
    from harness_plugins.models import pythia_tiny

    def out_of_memory(*args, **kwargs):
        raise MemoryError()

    monkeypatch.setattr(pythia_tiny.PythiaTiny, "load", out_of_memory)
    line = one_line_error(capsys, "run", str(write_suite(tmp_path, SUITE)), "--out", str(tmp_path / "run"),
                          "--skip-preflight", "--no-progress")
    assert "out of memory" in line and "fix:" in line


def test_control_characters_in_arguments_are_escaped(tmp_path):
    path = write_suite(tmp_path, SUITE)
    proc = harness("run", str(path), "--out", str(tmp_path / "run"), "--skip-preflight", "--stage",
                   "metrics/ppl\nerror: forged line\x1b[31m\x1b]0;title\x07")
    line = assert_one_line(proc, "matches none of")
    assert "\x1b" not in proc.stderr and "\x07" not in proc.stderr and "\\x1b" in line and "\\n" in line


def test_long_first_json_document_is_valid(tmp_path, capsys):
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"id": "x", "text": "word " * 40_000}) + "\n" + '{"id": "y", "text": "b"}\n')
    path = write_suite(tmp_path, SUITE.replace("@DATA@/test.jsonl", str(data)))
    assert main(["validate", str(path)]) == 0, capsys.readouterr().err


def test_data_directory_error_advises_no_glob(tmp_path, capsys):
    docs = tmp_path / "docs"
    docs.mkdir()
    path = write_suite(tmp_path, SUITE.replace("@DATA@/test.jsonl", str(docs)))
    line = one_line_error(capsys, "validate", str(path))
    assert "is a directory" in line and "glob" not in line


def test_orphaned_temporary_files_are_removed_on_the_next_run(tmp_path, pristine):
    path, run_dir, _ = copied(tmp_path, pristine)
    orphans = [run_dir / ".report.html.k2j3h4g5.tmp", run_dir / ".final_results.json.abcd_123.tmp",
               run_dir / STAGE / ".result.json.zz99yy88.tmp"]
    for orphan in orphans:
        orphan.write_text("half")
    mine = run_dir / "notes.tmp"
    mine.write_text("not a temporary of an atomic write")
    Runner(load_suite(path, output_dir=run_dir), show_progress=False).run()
    assert not any(o.exists() for o in orphans) and mine.exists()


def test_out_on_a_foreign_directory_or_another_suites_run_is_refused_unless_forced(tmp_path, capsys, pristine):
    path = write_suite(tmp_path, SUITE)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "thesis.tex").write_text("precious")
    line = one_line_error(capsys, "run", str(path), "--out", str(mine), "--skip-preflight", "--no-progress")
    assert "not a harness run directory" in line and "--force" in line
    line = one_line_error(capsys, "slurm", "submit", str(path), "--out", str(mine), "--dry-run", "--skip-preflight")
    assert "not a harness run directory" in line
    assert sorted(p.name for p in mine.iterdir()) == ["thesis.tex"]
    other = write_suite(tmp_path, SUITE.replace("name: rel2", "name: other"), name="other.yaml")
    line = one_line_error(capsys, "run", str(other), "--out", str(pristine), "--skip-preflight", "--no-progress")
    assert "suite 'rel2', not 'other'" in line
    assert main(["run", str(path), "--out", str(mine), "--skip-preflight", "--no-progress", "--force"]) == 0
    assert (mine / "thesis.tex").read_text() == "precious" and (mine / "final_results.json").exists()


def test_allocation_failure_while_loading_is_out_of_memory_not_a_damaged_checkpoint(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import torch
    from transformers import AutoModelForCausalLM

    from harness_plugins.models.hf_causal_lm import HFCausalLMConfig, load_hf_causal_lm

    def no_memory(*args, **kwargs):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you tried "
                           "to allocate 1073741824 bytes")

    monkeypatch.setattr(AutoModelForCausalLM, "from_pretrained", no_memory)
    ctx = SimpleNamespace(torch_device=lambda: torch.device("cpu"))
    with pytest.raises(HarnessError) as err:
        load_hf_causal_lm(HFCausalLMConfig(path=str(TINY)), ctx, "m")
    assert "out of memory" in str(err.value) and "damaged" not in str(err.value) and "\n" not in str(err.value)
