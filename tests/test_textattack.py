"""The TextAttack bridge (plugins/attacks/textattack_bridge): registration with and without the extra, offline import,
the goal function against the shared scorer, fail-fast components, and the recipe against its random control.

Tests that need TextAttack skip without it; CI runs this file in .venv-ta (scripts/setup_textattack.sh). The tests of
the missing extra run in both venvs (in .venv-ta with ``textattack`` hidden from the subprocess).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from harness import HarnessError
from harness._engine.suite import load_suite

from .conftest import DATA, ROOT, write_suite

HAS_TEXTATTACK = importlib.util.find_spec("textattack") is not None
needs_textattack = pytest.mark.skipif(not HAS_TEXTATTACK, reason="needs the extra: pip install 'harness[textattack]'")
HIDE_TEXTATTACK = "import sys; sys.modules['textattack'] = None\n"  # find_spec() then returns None, as if absent
BRIDGE = ("textattack", "textattack_deepwordbug", "textattack_pruthi")


def run_python(code: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=timeout,
                          env={**os.environ, **(env or {})})


def cli(args: list[str], hide: bool) -> str:
    return (HIDE_TEXTATTACK if hide else "import sys\n") + f"from harness.cli import main\nsys.exit(main({args!r}))\n"


def attack_suite(tmp_path: Path, attacks: str, name: str = "suite.yaml") -> Path:
    return write_suite(tmp_path, """
        name: ta
        seeds: [7]
        device: cpu
        models:
          tiny: {plugin: pythia_tiny}
        attacks:
    """ + textwrap.indent(textwrap.dedent(attacks), " " * 10), name)


DATA_SOURCE = "{dataset: json, data_files: @DATA@/test.jsonl, split: test}"


# -- registration -------------------------------------------------------------------------------------------------------

def test_missing_extra_hides_the_attacks_and_names_the_install_command(tmp_path):
    listing = run_python(cli(["list"], hide=True))
    assert listing.returncode == 0, listing.stderr
    assert "hotflip" in listing.stdout
    assert not any(f" {name} " in listing.stdout for name in BRIDGE)

    suite = attack_suite(tmp_path, f"dwb: {{plugin: textattack_deepwordbug, data: {DATA_SOURCE}}}\n")
    out = run_python(cli(["validate", str(suite)], hide=True))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    assert "attacks.dwb" in lines[0] and "pip install 'harness[textattack]'" in lines[0]


def test_quick_suites_validate_without_the_extra():
    """suites/quick.yaml must keep working in the core venv: the bridge's entries there are disabled."""
    out = run_python(HIDE_TEXTATTACK + "from harness._engine.suite import load_suite\n"
                     "s = load_suite('suites/quick.yaml')\nprint(sorted(s.attacks))")
    assert out.returncode == 0, out.stderr
    assert not any(name in out.stdout for name in ("deepwordbug", "textattack"))


@needs_textattack
def test_listed_with_the_extra():
    listing = run_python(cli(["list"], hide=False))
    assert listing.returncode == 0, listing.stderr
    assert all(f" {name} " in listing.stdout for name in BRIDGE)
    # Registration must not import TextAttack (seconds); only validating or running an entry does.
    out = run_python("import sys\nfrom harness._engine.plugins import load_registry\nload_registry()\n"
                     "print('textattack' in sys.modules)")
    assert out.stdout.strip() == "False", out.stderr


# -- offline import ------------------------------------------------------------------------------------------------------

NETWORK_PROBE = """
import json, os, socket, sys, urllib.request
attempts = []
def refuse(*args, **kwargs):
    attempts.append(repr(args[:2])[:80])
    raise OSError("network disabled by the test")
socket.create_connection = refuse
socket.getaddrinfo = refuse
socket.socket.connect = refuse
urllib.request.urlopen = refuse
before = {k: os.environ.get(k) for k in ("HF_HOME", "XDG_CACHE_HOME", "TOKENIZERS_PARALLELISM")}
"""


@needs_textattack
def test_import_is_offline_and_leaves_the_environment_alone(tmp_path):
    """A fresh TextAttack cache (no post-install marker) and no NLTK data: a plain import tries the network six
    times and then crashes; the bridge's import makes no attempt and restores the variables TA_CACHE_DIR rewrites."""
    env = {"TA_CACHE_DIR": str(tmp_path / "ta-cache"), "HOME": str(tmp_path / "home"), "NLTK_DATA": "",
           "HF_HOME": str(tmp_path / "hf"), "XDG_CACHE_HOME": str(tmp_path / "xdg")}
    bridge = run_python(NETWORK_PROBE + textwrap.dedent("""
        from harness_plugins.attacks.textattack_bridge import goal, recipes, control, catalogue
        from textattack.constraints.pre_transformation import StopwordModification
        after = {k: os.environ.get(k) for k in before}
        print(json.dumps({"attempts": attempts, "same_env": after == before,
                          "stopwords": len(StopwordModification().stopwords)}))
    """), env)
    assert bridge.returncode == 0, bridge.stderr[-2000:]
    result = json.loads(bridge.stdout.strip().splitlines()[-1])
    assert result == {"attempts": [], "same_env": True, "stopwords": 318}
    assert (tmp_path / "ta-cache" / "post_install_check_3").exists()

    # The same probe catches the network attempts of a plain import (so the check above can fail).
    plain = run_python(NETWORK_PROBE + "try:\n    import textattack\nexcept LookupError:\n    pass\n"
                       "print(json.dumps({'attempts': attempts}))",
                       {**env, "TA_CACHE_DIR": str(tmp_path / "ta-cache-plain")})
    assert json.loads(plain.stdout.strip().splitlines()[-1])["attempts"], plain.stderr[-2000:]


# -- the goal function ---------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def examples(tiny):
    from harness import DocumentSource, load_documents
    from harness.attacks import TaskConfig, make_examples

    docs = load_documents(DocumentSource(dataset="json", data_files=[DATA / "test.jsonl"], split="test", limit=40))
    return make_examples(docs, tiny, TaskConfig(threshold=0.0), n=3)


@needs_textattack
def test_goal_score_is_the_shared_scorers_relative_increase(tiny, examples):
    # The bridge first: it prepares TextAttack's offline import.
    from harness.attacks import Scorer, relative_increase
    from harness_plugins.attacks.textattack_bridge.goal import CausalLMContinuationWrapper, CausalLMNLLGoalFunction
    from textattack.goal_function_results import GoalFunctionResultStatus
    from textattack.shared import AttackedText

    wrapper = CausalLMContinuationWrapper(tiny, Scorer(tiny, 4096))
    goal = CausalLMNLLGoalFunction(wrapper, threshold=0.02)
    reference = Scorer(tiny, 4096)
    for ex in examples:
        text = AttackedText(wrapper.set_example(ex))
        initial, _ = goal.init_attack_example(text, ex.id)
        before = float(reference.nll([ex.ids()], len(ex.continuation))[0])
        assert goal.nll_before == pytest.approx(before, rel=1e-9)  # the exact tokens every other attack scores
        assert initial.score == pytest.approx(0.0, abs=1e-9)

        words = text.words
        edits = [text.replace_word_at_index(i, words[i][::-1] + "q") for i in range(0, len(words), 2)]
        queries = wrapper.scorer.queries
        results, _ = goal.get_results(edits)
        assert wrapper.scorer.queries - queries == len(edits)  # one batched call, one query per new text
        scores = []
        for edited, result in zip(edits, results):
            ids = tiny.tokenizer(edited.text, add_special_tokens=False)["input_ids"]
            after = float(reference.nll([ex.ids(context=ids)], len(ex.continuation))[0])
            # float32 NLLs agree alone and in a padded batch to ~1e-7 relative (summation order), which a relative
            # increase near zero inherits as an absolute error of that size.
            assert result.score == pytest.approx(relative_increase(before, after), rel=1e-6, abs=1e-6)
            scores.append(result.score)

        # The goal is reached exactly above the threshold: put it between the scores, ask again (from the cache).
        goal.threshold = float(sorted(scores)[len(scores) // 2])
        again, _ = goal.get_results(edits)
        assert wrapper.scorer.queries - queries == len(edits)
        status = [r.goal_status for r in again]
        assert status == [GoalFunctionResultStatus.SUCCEEDED if s > goal.threshold
                          else GoalFunctionResultStatus.SEARCHING for s in scores]
        assert len(set(status)) == 2
        goal.threshold = 0.02


# -- components that need downloads --------------------------------------------------------------------------------------

@needs_textattack
def test_download_needing_components_fail_fast_with_one_line(tmp_path):
    from harness_plugins.attacks.textattack_bridge.catalogue import build, build_transformation
    from harness_plugins.attacks.textattack_bridge.config import Component
    from harness_plugins.attacks.textattack_bridge.env import textattack_cache_dir

    if (textattack_cache_dir() / "word_embeddings").exists():
        pytest.skip("word embeddings were downloaded on this machine")
    with pytest.raises(HarnessError) as err:
        build_transformation(Component(name="WordSwapEmbedding"), "attacks.x.transformation", allow_downloads=False)
    message = str(err.value)
    assert "\n" not in message
    assert "WordSwapEmbedding" in message and "paragramcf" in message and "attacks.x.transformation" in message

    with pytest.raises(HarnessError) as err:
        build("transformation", Component(name="WordSwapWordNet"), "attacks.y", allow_downloads=False)
    assert "\n" not in str(err.value) and "WordNet" in str(err.value)


@needs_textattack
def test_generic_config_checks_names_against_the_catalogue(tmp_path):
    suite = attack_suite(tmp_path, f"""
        ta:
          plugin: textattack
          data: {DATA_SOURCE}
          transformation: [WordSwapRandomCharacterDeletion, {{name: WordSwapQWERTY, args: {{random_one: true}}}}]
          constraints: [RepeatModification, {{name: MaxWordsPerturbed, args: {{max_num_words: 2}}}}]
          search: GreedySearch
    """)
    entry = load_suite(suite).attacks["ta"]
    assert [c.name for c in entry.config.constraints] == ["RepeatModification", "MaxWordsPerturbed"]

    typo = attack_suite(tmp_path, f"ta: {{plugin: textattack, data: {DATA_SOURCE}, "
                                  "transformation: WordSwapRandomCharacterDeletio}\n", "typo.yaml")
    with pytest.raises(HarnessError) as err:
        load_suite(typo)
    assert "did you mean 'WordSwapRandomCharacterDeletion'" in str(err.value) and "\n" not in str(err.value)


# -- the recipe against its random control, next to the token-level attacks ----------------------------------------------

@needs_textattack
def test_deepwordbug_raises_nll_above_its_random_control(tmp_path):
    from harness._engine.runner import Runner

    budget = 60
    suite = attack_suite(tmp_path, f"""
        deepwordbug: &dwb
          plugin: textattack_deepwordbug
          data: {DATA_SOURCE}
          n_examples: 6
          query_budget: {budget}
          stop_at_goal: false
        deepwordbug_random: {{control_of: deepwordbug}}
        random_token:  # only to compare the examples and their unedited NLL
          {{plugin: hotflip, data: {DATA_SOURCE}, n_examples: 6, flips: 1, beam_width: 2}}
    """)
    runner = Runner(load_suite(suite), run_dir=tmp_path / "run", show_progress=False)
    results = {o.stage.entry: o.result["metrics"] for o in runner.run()}
    records = {entry: [json.loads(line) for line in
                       (tmp_path / "run" / "stages" / "attacks" / entry / "tiny" / "s7" / "records.jsonl").open()]
               for entry in results}

    # Same examples, scored on the same tokens as the token-level attacks.
    ids = [r["id"] for r in records["random_token"]]
    before = {r["id"]: r["nll_before"] for r in records["random_token"]}
    for entry in ("deepwordbug", "deepwordbug_random"):
        assert [r["id"] for r in records[entry]] == ids
        assert all(r["nll_before"] == pytest.approx(before[r["id"]], rel=1e-9) for r in records[entry])
        assert all(r["queries"] <= budget for r in records[entry])
        assert all(r["adversarial_text"] != r["original_text"] for r in records[entry])
        # The budget of every record, and where its word edits land among the context tokens.
        assert all(r["tokens"] > 0 and r["flops"] > 0 and r["gradient_calls"] == 0 for r in records[entry])
        assert results[entry]["mean_flops"] == pytest.approx(sum(r["flops"] for r in records[entry]) / 6)
        assert all(r["positions"] and all(0 <= p < 32 for p in r["positions"]) for r in records[entry])
        assert sum(results[entry]["position_histogram"]["counts"]) == sum(len(r["positions"])
                                                                        for r in records[entry])

    recipe, control = results["deepwordbug"], results["deepwordbug_random"]
    pairs = [(round(a["relative_increase"], 4), round(b["relative_increase"], 4))
             for a, b in zip(records["deepwordbug"], records["deepwordbug_random"])]
    assert recipe["mean_relative_increase"] > control["mean_relative_increase"] + 0.01, pairs
    assert sum(a > b for a, b in pairs) > len(pairs) / 2, pairs
    # The greedy search only keeps edits that raise the NLL.
    assert all(r["nll_after"] >= r["nll_before"] for r in records["deepwordbug"])
