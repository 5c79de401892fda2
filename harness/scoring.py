"""Batched negative log-likelihood of token sequences under a causal LM: the one scorer every stage shares.

Sequences are sorted by length, grouped under a token budget, right-padded with an attention mask and run in
one forward pass per group; each sequence says from which position its tokens count. Padding on the right
leaves the positions of real tokens unchanged, so a sequence scores the same alone or in a batch (up to float
summation order, which is fixed for a fixed batch composition).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class Window:
    """Input tokens fed to the model; the last ``n_scored`` predictions (of tokens ``ids[1:]``) are scored."""

    ids: tuple[int, ...]
    n_scored: int


def rolling_windows(seq: Sequence[int], max_length: int, stride: int) -> list[Window]:
    """Cover predictions of ``seq[1:]`` with windows of at most ``max_length`` inputs.

    The first window predicts up to ``max_length`` tokens; each later one predicts the next ``stride`` tokens with
    the ``max_length`` tokens before them as context. With ``stride == max_length`` this is exactly lm-eval's
    ``loglikelihood_rolling`` (``get_rolling_token_windows`` with ``context_len=1``).
    """
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must be in [1, max_length={max_length}], got {stride}")
    n = len(seq)
    if n < 2:
        return []
    first = min(max_length, n - 1)
    windows = [Window(tuple(seq[0:first]), first)]
    done = first
    while done < n - 1:
        new = min(stride, n - 1 - done)
        end = done + new  # index of the last predicted token
        start = max(0, end - max_length)
        windows.append(Window(tuple(seq[start:end]), new))
        done = end
    return windows


def _targets(window: Window, seq_next: int) -> list[int]:
    return list(window.ids[1:]) + [seq_next]


@torch.no_grad()
def score_windows(model: torch.nn.Module, windows: Sequence[Window], next_tokens: Sequence[int],
                  batch_tokens: int = 16384, pad_id: int = 0) -> list[torch.Tensor]:
    """Per-token NLL (float64 on CPU) of the scored tail of each window, in input order.

    ``next_tokens[i]`` is the token that follows ``windows[i].ids`` (the last target).
    """
    device = next(model.parameters()).device
    order = sorted(range(len(windows)), key=lambda i: (-len(windows[i].ids), i))
    out: list[torch.Tensor | None] = [None] * len(windows)
    start = 0
    while start < len(order):
        width = len(windows[order[start]].ids)
        size = max(1, batch_tokens // max(width, 1))
        group = order[start:start + size]
        start += len(group)
        ids = torch.full((len(group), width), pad_id, dtype=torch.long)
        targets = torch.full((len(group), width), -100, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, i in enumerate(group):
            w = windows[i]
            n = len(w.ids)
            ids[row, :n] = torch.tensor(w.ids)
            mask[row, :n] = 1
            tgt = torch.tensor(_targets(w, next_tokens[i]))
            targets[row, n - w.n_scored:n] = tgt[n - w.n_scored:]
        logits = model(input_ids=ids.to(device), attention_mask=mask.to(device)).logits
        nll = F.cross_entropy(logits.float().transpose(1, 2), targets.to(device), reduction="none", ignore_index=-100)
        nll = nll.double().cpu()
        for row, i in enumerate(group):
            n = len(windows[i].ids)
            out[i] = nll[row, n - windows[i].n_scored:n]
    return out  # type: ignore[return-value]


def sequence_nll(model: torch.nn.Module, seq: Sequence[int], max_length: int, stride: int | None = None,
                 batch_tokens: int = 16384, pad_id: int = 0) -> torch.Tensor:
    """Per-token NLL of ``seq[1:]`` given everything before it (within the window)."""
    windows = rolling_windows(seq, max_length, stride or max_length)
    nexts, done = [], 0
    for w in windows:
        done += w.n_scored
        nexts.append(seq[done])
    parts = score_windows(model, windows, nexts, batch_tokens, pad_id)
    return torch.cat(parts) if parts else torch.zeros(0, dtype=torch.float64)
