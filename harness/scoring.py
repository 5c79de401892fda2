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
        for row, i in enumerate(group):
            w = windows[i]
            n = len(w.ids)
            ids[row, :n] = torch.tensor(w.ids)
            targets[row, n - w.n_scored:n] = torch.tensor(_targets(w, next_tokens[i])[n - w.n_scored:])
        # No attention mask: padding is on the right and the model is causal, so no real token ever attends to a
        # pad, and positions of real tokens are unchanged. The maskless path is the fast fused-causal kernel.
        logits = model(input_ids=ids.to(device)).logits
        scored = targets.to(device) != -100
        # Cross-entropy only where a token is scored (not on pads or unscored context).
        flat = F.cross_entropy(logits[scored].float(), targets.to(device)[scored], reduction="none").double().cpu()
        counts = scored.sum(1).tolist()
        for i, part in zip(group, flat.split(counts)):
            out[i] = part
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


# -- continuation scoring of many candidate sequences (attacks) -----------------------------------------------------

def logits_tail_kwarg(model: torch.nn.Module) -> str | None:
    """The forward keyword that limits logits to the last positions (saves the vocabulary projection elsewhere)."""
    import inspect

    params = inspect.signature(model.forward).parameters
    for name in ("logits_to_keep", "num_logits_to_keep"):  # transformers >= 4.50 | 4.45-4.49
        if name in params:
            return name
    return None


def _tail_logits(model: torch.nn.Module, ids: torch.Tensor, keep: int) -> torch.Tensor:
    """Logits of the last ``keep`` positions of ``ids`` ([B, keep, V])."""
    kwarg = logits_tail_kwarg(model)
    if kwarg is not None:
        logits = model(input_ids=ids, **{kwarg: keep}).logits
        if logits.shape[1] == keep:
            return logits
    return model(input_ids=ids).logits[:, ids.shape[1] - keep:]


@torch.no_grad()
def continuation_nll(model: torch.nn.Module, sequences: torch.Tensor | Sequence[Sequence[int]],
                     n_scored: int | Sequence[int], batch_tokens: int = 16384, pad_id: int = 0) -> torch.Tensor:
    """Mean NLL of the last ``n_scored`` tokens of each sequence (its continuation), given all tokens before them.

    ``sequences`` is a ``[N, T]`` LongTensor (candidates of one length: no padding at all) or a list of token lists
    of any lengths; ``n_scored`` is one count for all or one per sequence. Sequences are sorted by length and run in
    chunks of at most ``batch_tokens`` tokens (the memory budget), right-padded; no attention mask is needed because
    the model is causal and the pads come after every real token. Only the positions that predict a continuation
    token are projected to the vocabulary. Returns a float64 CPU tensor ``[N]`` in input order; a sequence scores the
    same alone or in a batch up to float summation order.
    """
    n = len(sequences)
    if isinstance(sequences, torch.Tensor):
        if sequences.dim() != 2:
            raise ValueError(f"sequences must be a [N, T] tensor, got shape {tuple(sequences.shape)}")
        lengths = [sequences.shape[1]] * n
    else:
        lengths = [len(s) for s in sequences]
    counts = [n_scored] * n if isinstance(n_scored, int) else list(n_scored)
    if len(counts) != n:
        raise ValueError(f"{len(counts)} n_scored values for {n} sequences")
    for length, k in zip(lengths, counts):
        if not 1 <= k < length:
            raise ValueError(f"n_scored must be in [1, len(sequence) - 1], got {k} for a sequence of {length} tokens")
    device = next(model.parameters()).device
    out = torch.empty(n, dtype=torch.float64)
    order = sorted(range(n), key=lambda i: (-lengths[i], i))
    start = 0
    while start < n:
        width = lengths[order[start]]
        group = order[start:start + max(1, batch_tokens // width)]
        start += len(group)
        if isinstance(sequences, torch.Tensor):
            ids = sequences[torch.tensor(group)]
        else:
            ids = torch.full((len(group), width), pad_id, dtype=torch.long)
            for row, i in enumerate(group):
                ids[row, :lengths[i]] = torch.as_tensor(list(sequences[i]), dtype=torch.long)
        lens = torch.tensor([lengths[i] for i in group])
        ks = torch.tensor([counts[i] for i in group])
        first = int((lens - ks - 1).min())  # the earliest position that predicts a continuation token
        positions = torch.arange(first, width)
        # Position p predicts token p + 1; it is scored when that token is in the row's continuation.
        scored = (positions[None] >= (lens - ks - 1)[:, None]) & (positions[None] <= (lens - 2)[:, None])
        targets = torch.cat([ids[:, first + 1:], torch.full((len(group), 1), pad_id, dtype=torch.long)], 1)
        logits = _tail_logits(model, ids.to(device), width - first)
        nll = F.cross_entropy(logits[scored.to(device)].float(), targets[scored].to(device), reduction="none")
        rows = scored.nonzero()[:, 0]
        sums = torch.zeros(len(group), dtype=torch.float64).index_add_(0, rows, nll.double().cpu())
        out[torch.tensor(group)] = sums / ks.double()
    return out
