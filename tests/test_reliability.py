"""Reliability and safety (issue 17): names never become paths outside the run, one run per directory, damaged
state never wedges a run, stop requests exit 3 and resume identically, and every input error is one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from harness.cli import main
from harness.errors import HarnessError
from harness._engine.report import load_run
from harness._engine.rundir import RunDir, read_records
from harness._engine.runner import Runner
from harness._engine.slurm.status import run_status
from harness.store import atomic_write_json, read_json
from harness._engine.suite import load_suite
from tests.conftest import (DATA, HARNESS, PERPLEXITY_SUITE, ROOT, checkpoint_error_at_validate,
                            one_line_error, write_suite)

TINY = ROOT / "plugins" / "models" / "pythia_tiny"


#: The CLI runs in-process here: each test gets a harness logger bound to its own stderr.
pytestmark = pytest.mark.usefixtures("fresh_cli_logger")


# -- names --------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("models, metric", [
    ("../../../../escaped: {plugin: pythia_tiny}", "ppl"),
    ("tiny: {plugin: pythia_tiny}", "../../../../escaped2"),
    ("tiny: {plugin: pythia_tiny}", "x" * 10_000),
    ("tiny: {plugin: pythia_tiny}", "7"),  # YAML reads an integer
    ("'.': {plugin: pythia_tiny}", "ppl"),
])
def test_unsafe_names_are_one_line_at_validate(tmp_path, capsys, models, metric):
    path = write_suite(tmp_path, f"""
        models:
          {models}
        metrics:
          ? {metric}
          : {{plugin: perplexity, data: {{dataset: json, data_files: @DATA@/test.jsonl}}}}
        """)  # an explicit key (`?`): YAML limits plain keys to 1,024 characters
    line = one_line_error(capsys, "validate", str(path))
    assert "name" in line and "letters, digits" in line and len(line) < 400


def test_nothing_outside_the_run_is_written_or_deleted(tmp_path):
    """A stage directory that is a link out of the run (planted, or from an old unchecked name) is refused."""
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    run = RunDir(tmp_path / "run")
    (run.root / "stages" / "metrics" / "ppl").mkdir(parents=True)
    (run.root / "stages" / "metrics" / "ppl" / "tiny").symlink_to(outside)
    with pytest.raises(HarnessError, match="outside the run directory"):
        run.clear_stage("metrics/ppl/tiny")
    with pytest.raises(HarnessError, match="outside the run directory"):
        run.stage_dir("../../escaped")
    suite = load_suite(write_suite(tmp_path, PERPLEXITY_SUITE), output_dir=run.root)
    with pytest.raises(HarnessError, match="outside the run directory"):
        Runner(suite, show_progress=False).run()
    assert (outside / "keep.txt").read_text() == "keep" and sorted(p.name for p in outside.iterdir()) == ["keep.txt"]


# -- one run per directory ----------------------------------------------------------------------------------------
HOLD = """
import sys, time
from pathlib import Path
from harness._engine.rundir import RunDir
with RunDir(Path(sys.argv[1])).lock(sys.argv[2] or None):
    print("held", flush=True)
    time.sleep(60)
"""


def hold_lock(run_dir: Path, stage: str = "") -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir), stage], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_second_run_is_refused_naming_pid_and_host_and_dead_holders_do_not_block(tmp_path, pristine):
    path, run_dir, _ = _ran(tmp_path, pristine)
    records = (run_dir / "stages/metrics/ppl/tiny/records.jsonl").read_bytes()
    holder = hold_lock(run_dir)
    try:
        with pytest.raises(HarnessError) as err:
            Runner(load_suite(path, output_dir=run_dir), show_progress=False).run()
        assert f"pid {holder.pid} on host {socket.gethostname()}" in str(err.value) and "\n" not in str(err.value)
        # A stage job (shared run lock) is refused beside a whole run too.
        with pytest.raises(HarnessError, match=f"pid {holder.pid}"):
            Runner(load_suite(path, output_dir=run_dir), show_progress=False, only=["metrics/ppl/tiny"]).run()
    finally:
        holder.kill()  # kill -9: the kernel drops its lock; the file still names it (a stale holder)
        holder.wait()
    assert str(holder.pid) in (run_dir / ".lock").read_text()
    outcomes = Runner(load_suite(path, output_dir=run_dir), show_progress=False).run()
    assert [o.status for o in outcomes] == ["skipped"]
    assert (run_dir / "stages/metrics/ppl/tiny/records.jsonl").read_bytes() == records  # nothing duplicated


def test_stage_jobs_share_the_run_but_not_a_stage(tmp_path):
    run_dir = tmp_path / "run"
    first = hold_lock(run_dir, "metrics/a/tiny")
    try:
        with RunDir(run_dir).lock("metrics/b/tiny"):  # another stage of the same run: in parallel
            pass
        with pytest.raises(HarnessError, match=f"stage metrics/a/tiny .* in use by pid {first.pid}"):
            with RunDir(run_dir).lock("metrics/a/tiny"):
                pass
        with pytest.raises(HarnessError, match="in use by"):
            with RunDir(run_dir).lock():
                pass
    finally:
        first.kill()
        first.wait()


# -- damaged state ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    """One finished run of PERPLEXITY_SUITE, copied by each test that damages it."""
    base = tmp_path_factory.mktemp("pristine")
    Runner(load_suite(write_suite(base, PERPLEXITY_SUITE), output_dir=base / "run"), show_progress=False).run()
    return base / "run"


def _ran(tmp_path: Path, pristine: Path) -> tuple[Path, Path, dict]:
    path = write_suite(tmp_path, PERPLEXITY_SUITE)
    run_dir = tmp_path / "run"
    shutil.copytree(pristine, run_dir)
    return path, run_dir, read_json(run_dir / "stages/metrics/ppl/tiny/result.json")


DAMAGE = {
    "result.json truncated": lambda d: (d / "result.json").write_bytes((d / "result.json").read_bytes()[:40]),
    "result.json not an object": lambda d: (d / "result.json").write_text("[1, 2]"),
    "done.json garbage": lambda d: (d / "done.json").write_bytes(b"\x00\xff garbage"),
    "done.json without key": lambda d: (d / "done.json").write_text("{}"),
    "stage.json garbage": lambda d: (d / "stage.json").write_text("{not json"),
    "records.jsonl torn": lambda d: (d / "records.jsonl").write_bytes((d / "records.jsonl").read_bytes()[:-30]),
    "records.jsonl line removed": lambda d: (d / "records.jsonl").write_text(
        "".join((d / "records.jsonl").read_text().splitlines(keepends=True)[1:])),
    "state file garbage (unfinished stage)": lambda d: ((d / "done.json").unlink(),
                                                         (d / "state-x.json").write_text("{\"trunc")),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_each_damaged_file_reruns_its_stage_with_one_warning_and_same_numbers(tmp_path, pristine, caplog, damage):
    path, run_dir, before = _ran(tmp_path, pristine)
    sdir = run_dir / "stages/metrics/ppl/tiny"
    DAMAGE[damage](sdir)
    caplog.clear()
    stage = load_run(run_dir).stages[0]  # what the report reads: never raises, and the stage is not done
    assert stage.id == "metrics/ppl/tiny" and not stage.done and stage.metrics == {}
    status = {r.stage: r for r in run_status(run_dir, query_slurm=False)}["metrics/ppl/tiny"]
    assert status.state in ("damaged", "interrupted"), status
    outcomes = Runner(load_suite(path, output_dir=run_dir), show_progress=False).run()
    assert [o.status for o in outcomes] == ["done"]
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and r.name == "harness"]
    assert warnings and all("damaged" in w and "\n" not in w for w in warnings), warnings
    after = read_json(sdir / "result.json")
    assert after["metrics"] == before["metrics"]
    assert len(read_records(sdir / "records.jsonl")[0]) == before["metrics"]["documents"]


def test_run_damaged_in_every_file_still_gives_status_and_report(tmp_path, pristine, capsys):
    _, run_dir, _ = _ran(tmp_path, pristine)
    for f in run_dir.rglob("*"):
        if f.is_file() and f.name != ".lock" and f.suffix in (".json", ".jsonl", ".yaml", ".txt", ".md", ".tex"):
            f.write_bytes(f.read_bytes()[: max(1, f.stat().st_size // 3)])  # every file torn at a third
    assert main(["status", str(run_dir)]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err and "metrics/ppl/tiny" in out.out and "damaged" in out.out
    assert main(["report", str(run_dir)]) == 0
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    final = read_json(run_dir / "final_results.json")
    assert final["complete"] is False
    assert final["missing"] == [{"id": "metrics/ppl/tiny", "status": "damaged: stage.json damaged"}]
    # Then a run repairs it all: the stage is recomputed.
    path = write_suite(tmp_path, PERPLEXITY_SUITE)
    outcomes = Runner(load_suite(path, output_dir=run_dir), show_progress=False).run()
    assert [o.status for o in outcomes] == ["done"]


def test_damaged_training_snapshot_meta_falls_back_to_the_older_one(tmp_path, caplog):
    import torch

    from harness_plugins.training.state import Processes, Snapshots

    snaps = Snapshots(tmp_path / "state", keep=3, procs=Processes())
    snaps.save(1, {"w": torch.ones(2)})
    snaps.save(2, {"w": torch.full((2,), 2.0)})
    (snaps.path(2) / "meta.json").write_text("{trunc")
    state = snaps.load_latest()
    assert state is not None and torch.equal(state["w"], torch.ones(2))
    assert any("damaged" in r.getMessage() for r in caplog.records)


# -- stopping -----------------------------------------------------------------------------------------------------
LONG = PERPLEXITY_SUITE.replace("limit: 6", "limit: 24").replace("chunk_documents: 2", "chunk_documents: 1").replace(
    "max_length: 64", "max_length: 128")


def test_sigterm_during_perplexity_exits_3_and_resume_is_identical(tmp_path):
    path = write_suite(tmp_path, LONG)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([*HARNESS, "run", str(path), "--out", str(run_dir), "--no-progress"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    records = run_dir / "stages/metrics/ppl/tiny/records.jsonl"
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        if records.exists() and len(records.read_bytes().splitlines()) >= 3:
            break
        time.sleep(0.05)
    # A second run on the same directory meanwhile (the first one paused, so it is surely still mid-stage) is
    # refused in one line naming the first one's pid.
    proc.send_signal(signal.SIGSTOP)
    try:
        second = subprocess.run([*HARNESS, "run", str(path), "--out", str(run_dir), "--no-progress"],
                                capture_output=True, text=True, timeout=600)
    finally:
        proc.send_signal(signal.SIGTERM)  # pending until it continues: then it stops at the next chunk
        proc.send_signal(signal.SIGCONT)
    assert second.returncode == 2 and f"in use by pid {proc.pid} on host {socket.gethostname()}" in second.stderr
    assert len([ln for ln in second.stderr.splitlines() if ln.strip()]) == 1, second.stderr
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 3, err
    assert "preempted" in err and not (run_dir / "stages/metrics/ppl/tiny/done.json").exists()
    n_before = len(read_records(records)[0])
    assert 3 <= n_before < 24
    resumed = subprocess.run([*HARNESS, "run", str(path), "--out", str(run_dir), "--no-progress"],
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    fresh_dir = tmp_path / "fresh"
    Runner(load_suite(path, output_dir=fresh_dir), show_progress=False).run()
    got = read_json(run_dir / "stages/metrics/ppl/tiny/result.json")["metrics"]
    want = read_json(fresh_dir / "stages/metrics/ppl/tiny/result.json")["metrics"]
    assert got == want
    assert read_records(records)[0] == read_records(fresh_dir / "stages/metrics/ppl/tiny/records.jsonl")[0]


def test_lm_eval_batches_poll_the_stop_flag():
    from types import SimpleNamespace

    from harness.context import StagePreempted
    from harness_plugins.metrics.lmeval import poll_stop

    calls = []
    lm = SimpleNamespace(_model_call=lambda *a: calls.append(a) or "logits", _model_generate=lambda *a: "text")
    ctx = SimpleNamespace(should_stop=False, stage=SimpleNamespace(id="metrics/lm/tiny"))
    poll_stop(lm, ctx)
    assert lm._model_call(1) == "logits" and lm._model_generate(2) == "text" and calls == [(1,)]
    ctx.should_stop = True
    for call in (lm._model_call, lm._model_generate):
        with pytest.raises(StagePreempted):
            call(3)
    assert calls == [(1,)]


def test_stop_between_stages_is_preempted_and_second_signal_stops_at_once(tmp_path, monkeypatch):
    from harness.context import StopNow
    from harness._engine.runner import _stop_signals

    path = write_suite(tmp_path, PERPLEXITY_SUITE + """
  ppl2:
    plugin: perplexity
    data: {dataset: json, data_files: @DATA@/valid.jsonl, split: train, limit: 2}
""")
    runner = Runner(load_suite(path, output_dir=tmp_path / "run"), show_progress=False)
    plain = Runner.run_stage

    def then_stop(self, stage):  # a plugin that never polls: the request lands after its stage finished
        out = plain(self, stage)
        self.stop_flag[0] = True
        return out

    monkeypatch.setattr(Runner, "run_stage", then_stop)
    assert [o.status for o in runner.run()] == ["done", "preempted"]
    flag = [False]
    with _stop_signals(flag):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.01)
        assert flag[0]
        with pytest.raises(StopNow):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)


# -- input errors: one line, exit 2, at validate ------------------------------------------------------------------
def _model_dir(tmp_path: Path, change) -> Path:
    target = tmp_path / "ckpt"
    shutil.copytree(TINY, target)
    change(target)
    return target


def _truncate(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def _json_edit(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


CHECKPOINT_CASES = {
    "truncated safetensors": (lambda d: _truncate(d / "model.safetensors", 5000), "truncated"),
    "header-corrupt safetensors": (lambda d: (d / "model.safetensors").write_bytes(
        b"\x10\x00\x00\x00\x00\x00\x00\x00{not json here!}" + b"\0" * 64), "header"),
    "remote code": (lambda d: _json_edit(d / "config.json", model_type="my_custom_lm",
                                         auto_map={"AutoModelForCausalLM": "modeling.MyLM"}), "trust_remote_code"),
    "no tokenizer files": (lambda d: [os.unlink(d / f) for f in ("tokenizer.json", "tokenizer_config.json",
                                                                   "special_tokens_map.json")], "tokenizer"),
    "no config.json": (lambda d: os.unlink(d / "config.json"), "config.json"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_damaged_checkpoint_is_one_line_at_validate(tmp_path, capsys, case):
    change, expected = CHECKPOINT_CASES[case]
    ckpt = _model_dir(tmp_path, change)
    assert expected in checkpoint_error_at_validate(tmp_path, capsys, ckpt)


def test_checkpoint_whose_shapes_do_not_match_its_config_is_one_line(tmp_path):
    from types import SimpleNamespace

    import torch

    from harness_plugins.models.hf_causal_lm import HFCausalLMConfig, load_hf_causal_lm

    config = json.loads((TINY / "config.json").read_text())
    ckpt = _model_dir(tmp_path, lambda d: _json_edit(d / "config.json",
                                                     intermediate_size=config["intermediate_size"] * 2))
    ctx = SimpleNamespace(torch_device=lambda: torch.device("cpu"))
    with pytest.raises(HarnessError) as err:
        load_hf_causal_lm(HFCausalLMConfig(path=str(ckpt)), ctx, "m")  # type-compatible stand-in for the context
    assert "do not match its config.json" in str(err.value) and "\n" not in str(err.value)


def _data(tmp_path: Path, name: str, content: bytes | None) -> Path:
    path = tmp_path / name
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    return path


DATA_CASES = {
    "directory": ("docs", None, "is a directory"),
    "empty": ("empty.jsonl", b"", "is empty"),
    "binary": ("bin.jsonl", b"\x89PNG\r\n\x1a\n\0\0\0", "binary"),
    "bad first JSON line": ("bad.jsonl", b"{'text': 'single quotes'}\n", "line 1 is not JSON"),
    "not an object": ("list.jsonl", b"[1, 2]\n", "not an object"),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_files_are_one_line_at_validate(tmp_path, capsys, case):
    name, content, expected = DATA_CASES[case]
    data = _data(tmp_path, name, content)
    path = write_suite(tmp_path, f"""
        models:
          tiny: {{plugin: pythia_tiny}}
        metrics:
          ppl: {{plugin: perplexity, data: {{dataset: json, data_files: {data}}}}}
        """)
    line = one_line_error(capsys, "validate", str(path))
    assert expected in line and "metrics.ppl.data.data_files" in line


def test_bad_json_line_in_the_middle_is_one_line_at_run(tmp_path):
    from harness.data import DocumentSource, load_documents

    good = (DATA / "test.jsonl").read_text().splitlines()[:3]
    data = tmp_path / "mid.jsonl"
    data.write_text("\n".join(good + ["{broken", *good]) + "\n")
    with pytest.raises(HarnessError) as err:
        load_documents(DocumentSource(dataset="json", data_files=[data], split="train", streaming=False))
    assert str(data) in str(err.value) and "\n" not in str(err.value)


SUITE_CASES = {
    "seed 2**63": ("seeds: [9223372036854775808]\n", "seeds"),
    "duplicate top-level key": ("seeds: [1]\nseeds: [2]\n", "duplicate key 'seeds'"),
    "flips 0": ("attacks:\n  hotflip: {flips: 0, data: {dataset: json, data_files: @DATA@/test.jsonl}}\n",
                "attacks.hotflip.flips"),
    "needs cycle": ("metrics:\n  a: {plugin: perplexity, needs: [b], data: {dataset: json, data_files: "
                    "@DATA@/test.jsonl}}\n  b: {plugin: perplexity, needs: [a], data: {dataset: json, data_files: "
                    "@DATA@/test.jsonl}}\n", "cycle"),
}


@pytest.mark.parametrize("case", list(SUITE_CASES))
def test_suite_mistakes_are_one_line_at_validate(tmp_path, capsys, case):
    extra, expected = SUITE_CASES[case]
    path = write_suite(tmp_path, "models:\n  tiny: {plugin: pythia_tiny}\n" + extra)
    assert expected in one_line_error(capsys, "validate", str(path))


def test_directory_and_oversized_suite_are_one_line(tmp_path, capsys):
    assert "is a directory" in one_line_error(capsys, "validate", str(tmp_path))
    big = tmp_path / "big.yaml"
    big.write_text("models:\n  tiny: {plugin: pythia_tiny}\nmetrics:\n" + "".join(
        f"  p{i}: {{plugin: perplexity}}\n" for i in range(60_000)))
    started = time.monotonic()
    line = one_line_error(capsys, "validate", str(big))
    assert "1,048,576-byte limit" in line and time.monotonic() - started < 30


def test_preflight_refuses_a_stage_whose_planned_memory_exceeds_the_machine(tmp_path):
    from harness._engine.preflight import run_preflight

    path = write_suite(tmp_path, """
        models:
          tiny: {plugin: pythia_tiny}
        train:
          monotonic: {model: tiny, data: {dataset: json, data_files: @DATA@/train.jsonl, limit: 20}, seq_len: 64,
                      micro_batch: 1000000000000, steps: 2}
        """)
    suite = load_suite(path, output_dir=tmp_path / "run")
    with pytest.raises(HarnessError) as err:
        run_preflight(suite, tmp_path / "run")
    assert "peak memory" in str(err.value) and "--skip-preflight" in str(err.value) and "\n" not in str(err.value)


def test_lm_eval_task_dir_that_imports_code_needs_trust_code(tmp_path, capsys):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "evil.yaml").write_text(textwrap.dedent("""
        task: evil
        dataset_path: json
        process_docs: !function utils.process
        output_type: loglikelihood_rolling
        """))
    body = f"""
        models:
          tiny: {{plugin: pythia_tiny}}
        metrics:
          lm: {{plugin: lm_eval, tasks: [evil], include_path: [{tasks}]@TRUST@}}
        """
    line = one_line_error(capsys, "validate", str(write_suite(tmp_path, body.replace("@TRUST@", ""))))
    assert "!function" in line and "trust_code: true" in line
    assert main(["validate", str(write_suite(tmp_path, body.replace("@TRUST@", ", trust_code: true")))]) == 0
    (tasks / "evil.yaml").write_text("task: evil\n")
    (tasks / "utils.py").write_text("import os\n")
    assert "utils.py" in one_line_error(capsys, "validate", str(write_suite(tmp_path, body.replace("@TRUST@", ""))))


# -- a full disk --------------------------------------------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_full_disk_is_one_line_naming_the_path_and_leaves_no_temporaries(small_disk):
    import torch

    from harness.store import RecordLog
    from harness_plugins.training.state import Processes, Snapshots

    target = small_disk / "run" / "big.json"
    with pytest.raises(HarnessError) as err:
        atomic_write_json(target, {"x": "y" * 3_000_000})
    assert str(target) in str(err.value) and "\n" not in str(err.value)
    assert [p.name for p in target.parent.iterdir()] == []
    snaps = Snapshots(small_disk / "state", keep=2, procs=Processes())
    with pytest.raises(HarnessError, match="cannot write the training snapshot"):
        snaps.save(1, {"w": torch.zeros(1_000_000)})
    assert list((small_disk / "state").iterdir()) == [] and snaps.load_latest() is None
    (small_disk / "filler").write_bytes(b"0" * (2 * 1024 * 1024 - 8192))
    log = RecordLog(small_disk / "records.jsonl")
    with pytest.raises(HarnessError, match="records.jsonl"):
        for i in range(1000):
            log.append({"id": i, "pad": "p" * 500})
    assert len(RecordLog(small_disk / "records.jsonl")) == len(log)


def test_full_disk_during_a_run_is_one_line(tmp_path, small_disk):
    path = write_suite(tmp_path, PERPLEXITY_SUITE)
    (small_disk / "filler").write_bytes(b"0" * (2 * 1024 * 1024 - 4096))
    done = subprocess.run([*HARNESS, "run", str(path), "--out", str(small_disk / "run"), "--no-progress",
                           "--skip-preflight"], capture_output=True, text=True, timeout=600)
    lines = [ln for ln in done.stderr.splitlines() if ln.strip()]
    assert done.returncode == 2 and len(lines) == 1 and str(small_disk) in lines[0], done.stderr
    assert not [p for p in small_disk.rglob("*.tmp")]
