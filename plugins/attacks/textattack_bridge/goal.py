"""A causal-LM goal function for TextAttack, and the model wrapper that feeds it through the harness's scorer.

TextAttack edits text and asks a goal function how far each edit got. Here the text is an example's **context**
(the harness task of :mod:`harness.attacks`: a document's first tokens, decoded) and the model's output for it is the mean
NLL of the example's fixed **continuation** tokens after it. The score of an edit is the relative NLL increase over
the unedited context, exactly ``harness.attacks.relative_increase``; the goal is reached when it exceeds the threshold, the
same test as ``harness.attacks.example_record``'s ``success``.

Importing this module imports TextAttack (through :func:`.env.import_textattack`, offline).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from harness import LoadedModel

from harness.attacks import Example, Scorer, relative_increase
from .env import import_textattack

import_textattack()

from textattack.goal_function_results import GoalFunctionResult  # noqa: E402
from textattack.goal_functions import GoalFunction  # noqa: E402
from textattack.models.wrappers import ModelWrapper  # noqa: E402
from textattack.shared import validators  # noqa: E402


class CausalLMContinuationWrapper(ModelWrapper):
    """TextAttack's handle on a causal LM: context texts in, the continuation's mean NLL out (float64 ``[N]``).

    A whole list of TextAttack's queries becomes one call of the shared :class:`harness.attacks.Scorer`, which batches the
    token sequences under its token budget and counts every sequence it scores.
    """

    def __init__(self, model: LoadedModel, scorer: Scorer) -> None:
        self.model = model.model  # TextAttack reads `.model` (to check compatibility, to move it between devices)
        self.tokenizer = model.tokenizer
        self.scorer = scorer
        self.max_length = model.max_length
        self.example: Example | None = None
        self.original_text = ""

    def set_example(self, example: Example) -> str:
        """Score against ``example``'s continuation from now on; returns the context text for TextAttack to edit."""
        self.example = example
        self.original_text = self.tokenizer.decode(list(example.context))
        return self.original_text

    def context_ids(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids of edited contexts (cut from the left when an edit would overflow the model's positions)."""
        ex = self._current()
        encoded = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        room = self.max_length - len(ex.prefix) - len(ex.continuation)
        out = []
        for text, ids in zip(texts, encoded):
            if text == self.original_text:
                # The unedited context is scored on exactly the tokens every other attack scores: decoding a token
                # slice and encoding it again need not give the same tokens back.
                ids = list(ex.context)
            if not ids and not ex.prefix:  # everything deleted and no end-of-text token: keep one token to condition on
                ids = [ex.context[0]]
            out.append(list(ids[-room:]))
        return out

    def __call__(self, text_input_list: list[str]) -> torch.Tensor:
        ex = self._current()
        sequences = [ex.ids(context=ids) for ids in self.context_ids(text_input_list)]
        return self.scorer.nll(sequences, len(ex.continuation))

    def get_grad(self, text_input: str) -> dict:
        """Gradient of the continuation loss w.r.t. the context's input embeddings (``wir_method: gradient``)."""
        ex = self._current()
        ids = self.context_ids([text_input])[0]
        seq = torch.tensor([ex.ids(context=ids)], device=next(self.model.parameters()).device)
        k = len(ex.continuation)
        self.scorer.count_pass(1, seq.shape[1], backward=True)
        embeds = self.model.get_input_embeddings()(seq).detach().requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(inputs_embeds=embeds).logits[:, -k - 1:-1]
            loss = F.cross_entropy(logits.float().transpose(1, 2), seq[:, -k:])
            (grad,) = torch.autograd.grad(loss, embeds)
        start = len(ex.prefix)
        return {"ids": ids, "gradient": grad[0, start:start + len(ids)].float().cpu().numpy()}

    def _tokenize(self, inputs: list[str]) -> list[list[str]]:
        # Used by TextAttack to align words with model tokens (gradient word ranking); the context alone, as scored.
        return [self.tokenizer.convert_ids_to_tokens(ids) for ids in self.context_ids(inputs)]

    def _current(self) -> Example:
        if self.example is None:
            raise RuntimeError("call set_example() before querying the wrapper")
        return self.example


class CausalLMNLLResult(GoalFunctionResult):
    """One scored text: ``raw_output`` is the continuation NLL, ``score`` its relative increase."""

    def __init__(self, attacked_text, raw_output, output, goal_status, score, num_queries, ground_truth_output):
        super().__init__(attacked_text, raw_output, output, goal_status, score, num_queries, ground_truth_output,
                         goal_function_result_type="Causal LM continuation NLL")

    def get_text_color_input(self) -> str:
        return "blue"

    def get_text_color_perturbed(self) -> str:
        return "red"

    def get_colored_output(self, color_method=None) -> str:
        return f"continuation NLL {float(self.output):.4f}"


class CausalLMNLLGoalFunction(GoalFunction):
    """Raise a causal LM's NLL of a fixed continuation by editing the context before it.

    Model output: the continuation's mean NLL. Score: ``(nll - nll_before) / nll_before``, where ``nll_before`` is
    the unedited context's. Goal: score > ``threshold``. With ``maximizable=True`` the goal is never declared
    reached, so a search keeps raising the score until its candidates or its query budget run out.
    ``ground_truth_output`` (TextAttack's label slot) carries the example id, for display only.
    """

    def __init__(self, model_wrapper: CausalLMContinuationWrapper, threshold: float, maximizable: bool = False,
                 query_budget: float = float("inf"), model_batch_size: int = 4096) -> None:
        # One model call per list of queries: the scorer splits it under its token budget.
        super().__init__(model_wrapper, maximizable=maximizable, use_cache=True, query_budget=query_budget,
                         model_batch_size=model_batch_size, allow_skip=False)
        self.threshold = threshold
        self.nll_before = float("nan")

    def init_attack_example(self, attacked_text, ground_truth_output):
        # Cached outputs belong to the previous example's continuation.
        self.clear_cache()
        # The unedited context's NLL, stored in the cache: the base class scores the same text again for free.
        self.nll_before = float(self._call_model([attacked_text])[0])
        return super().init_attack_example(attacked_text, ground_truth_output)

    def _process_model_outputs(self, inputs, outputs):
        return torch.as_tensor(outputs, dtype=torch.float64).flatten()

    def _get_score(self, model_output, attacked_text) -> float:
        return relative_increase(self.nll_before, float(model_output))

    def _is_goal_complete(self, model_output, attacked_text) -> bool:
        return self._get_score(model_output, attacked_text) > self.threshold

    def _get_displayed_output(self, raw_output) -> float:
        return float(raw_output)

    def _goal_function_result_type(self):
        return CausalLMNLLResult

    def extra_repr_keys(self) -> list[str]:
        return ["threshold", *super().extra_repr_keys()]


# TextAttack checks goal functions against model classes by module path; the wrapper makes any causal LM fit.
validators.MODELS_BY_GOAL_FUNCTION[CausalLMNLLGoalFunction] = [r".*"]
