"""Batched negative log-likelihood of token sequences under a causal LM: the one scorer every stage shares.

Sequences are sorted by length, grouped under a token budget, right-padded with an attention mask and run in
one forward pass per group; each sequence says from which position its tokens count. Padding on the right
leaves the positions of real tokens unchanged, so a sequence scores the same alone or in a batch (up to float
summation order, which is fixed for a fixed batch composition).

Attacks score many candidate sequences by the NLL of their continuation (:func:`continuation_nll`); candidates that
edit a base sequence (token swaps) can skip the positions before their first edit, whose keys and values are the
base's (:func:`swap_nll`).
"""

from __future__ import annotations

import copy
import inspect
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

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


#: Positions projected to the vocabulary at once by :func:`_chunked_nll`: their logits (positions x vocabulary)
#: stay small enough for the CPU's caches or a GPU's spare memory, instead of all rows x width x vocabulary at once
#: (25 GB for 8 rows of 2048 tokens of a 50k vocabulary in fp32).
HEAD_CHUNK_POSITIONS = 256

_SPLITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _body_and_head(model: torch.nn.Module) -> tuple[torch.nn.Module, torch.nn.Module] | None:
    """The model's transformer body (ids -> last hidden states) and its vocabulary projection, when the model's
    logits are exactly ``head(body(ids))``; None otherwise (the full forward pass is used).

    Checked once per model on a short probe: a model whose forward does more than project the last hidden state
    (logit soft-capping or scaling, extra heads) disagrees there and keeps the plain path.
    """
    if model in _SPLITS:
        return _SPLITS[model]
    split = None
    prefix = getattr(model, "base_model_prefix", "")
    body = getattr(model, prefix, None) if prefix else None
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    if isinstance(body, torch.nn.Module) and body is not model and isinstance(head, torch.nn.Module):
        device = next(model.parameters()).device
        vocab = int(getattr(head, "out_features", 0) or head.weight.shape[0])
        probe = (torch.arange(12, device=device) * 7919 % max(vocab, 1))[None]
        try:
            with torch.no_grad():
                want = model(input_ids=probe).logits.float()
                got = head(body(input_ids=probe)[0]).float()
            # The same operations either way, so equal up to rounding; a soft-cap or a scale is far off.
            if got.shape == want.shape and float((got - want).abs().max()) <= 1e-3 * (1.0 + float(want.abs().max())):
                split = (body, head)
        except Exception:  # noqa: BLE001 - any model this probe does not fit keeps the plain path
            split = None
    _SPLITS[model] = split
    return split


def _chunked_nll(head: torch.nn.Module, hidden: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy (float32) of ``targets`` [n] under ``head(hidden)`` [n, V], ``HEAD_CHUNK_POSITIONS`` at a time."""
    out = torch.empty(len(targets), dtype=torch.float32, device=hidden.device)
    for start in range(0, len(targets), HEAD_CHUNK_POSITIONS):
        end = start + HEAD_CHUNK_POSITIONS
        out[start:end] = F.cross_entropy(head(hidden[start:end]).float(), targets[start:end], reduction="none")
    return out


@torch.no_grad()
def score_windows(model: torch.nn.Module, windows: Sequence[Window], next_tokens: Sequence[int],
                  batch_tokens: int = 16384, pad_id: int = 0) -> list[torch.Tensor]:
    """Per-token NLL (float64 on CPU) of the scored tail of each window, in input order.

    ``next_tokens[i]`` is the token that follows ``windows[i].ids`` (the last target).
    """
    device = next(model.parameters()).device
    order = sorted(range(len(windows)), key=lambda i: (-len(windows[i].ids), i))
    out: dict[int, torch.Tensor] = {}
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
        scored = targets.to(device) != -100
        split = _body_and_head(model)
        if split is not None:
            # Only the scored positions are projected to the vocabulary, a slice at a time (see _body_and_head).
            body, head = split
            hidden = body(input_ids=ids.to(device))[0][scored]
            flat = _chunked_nll(head, hidden, targets.to(device)[scored]).double().cpu()
        else:
            logits = model(input_ids=ids.to(device)).logits
            # Cross-entropy only where a token is scored (not on pads or unscored context).
            flat = F.cross_entropy(logits[scored].float(), targets.to(device)[scored], reduction="none").double().cpu()
        counts = scored.sum(1).tolist()
        for i, part in zip(group, flat.split(counts)):
            out[i] = part
    return [out[i] for i in range(len(windows))]


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

#: CPU only: at most this many tokens per forward pass, whatever ``batch_tokens`` allows. Larger passes are no faster
#: per token on a CPU, and slower once the activations (above all the logits, rows x continuation x vocabulary)
#: spill out of the caches; ``batch_tokens`` stays the memory budget everywhere. Measured (interleaved, 2 cores)
#: on the tiny model (vocabulary 4096), 256 candidates of 41 tokens: ~1090 candidates/s at 2048-4096 tokens per
#: pass, ~870 at 8192; the scorer before this cap ran 16384-token passes at ~750.
CPU_CHUNK_TOKENS = 2048

#: Told of every forward pass the attack scorers run: ``(rows, fed, context, projected)``: ``rows`` sequences, ``fed``
#: positions computed in each (pads included; positions whose keys and values come from a cache are not), each
#: attending to at most ``context`` positions (the cached ones plus those fed), ``projected`` positions of each
#: projected to the vocabulary. Budget accounting (``harness.attacks.Budget``) listens; the scores never depend on it.
PassCounter = Callable[[int, int, int, int], None]


_FORWARD_PARAMS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
#: ``batch_tokens: auto``, per model: the tokens per pass found (and, on CPU, the fastest, which replaces the cap).
_AUTO_TOKENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_FASTEST_CPU_TOKENS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

#: ``auto_batch_tokens``: the token counts tried (CPU: each timed; CUDA: the largest that fits, halving from the top).
AUTO_CPU_TOKENS = (512, 1024, 2048, 4096, 8192)
AUTO_MAX_TOKENS = 1 << 20
#: The sequence length the trial passes use (candidates of attacks: tens to a few hundred tokens).
AUTO_WIDTH = 64


def _forward_params(model: torch.nn.Module) -> Mapping[str, object]:
    """The parameters of ``model.forward``, looked up once per model (every pass asks)."""
    if model not in _FORWARD_PARAMS:
        _FORWARD_PARAMS[model] = inspect.signature(model.forward).parameters
    return _FORWARD_PARAMS[model]


def logits_tail_kwarg(model: torch.nn.Module) -> str | None:
    """The forward keyword that limits logits to the last positions (saves the vocabulary projection elsewhere)."""
    params = _forward_params(model)
    for name in ("logits_to_keep", "num_logits_to_keep"):  # transformers >= 4.50 | 4.45-4.49
        if name in params:
            return name
    return None


def _rows_per_chunk(model: torch.nn.Module, width: int, batch_tokens: int) -> int:
    """Rows per forward pass for sequences of ``width`` tokens: the memory budget, capped on CPU (see above; a model
    whose fastest pass :func:`auto_batch_tokens` measured is capped there instead)."""
    tokens = batch_tokens
    if next(model.parameters()).device.type == "cpu":
        tokens = min(tokens, _FASTEST_CPU_TOKENS.get(model, CPU_CHUNK_TOKENS))
    return max(1, tokens // max(width, 1))


def _tail_logits(model: torch.nn.Module, ids: torch.Tensor, keep: int, on_pass: PassCounter | None = None,
                 start: int = 0, **kwargs) -> torch.Tensor:
    """Logits of the last ``keep`` positions of ``ids`` ([B, keep, V]); ``kwargs`` go to the forward pass, which
    ``on_pass`` is told of (``ids`` follow ``start`` cached positions)."""
    kwarg = logits_tail_kwarg(model)
    if kwarg is not None:
        logits = model(input_ids=ids, **{kwarg: keep}, **kwargs).logits
        if on_pass is not None:
            on_pass(ids.shape[0], ids.shape[1], start + ids.shape[1], logits.shape[1])
        if logits.shape[1] == keep:
            return logits
    logits = model(input_ids=ids, **kwargs).logits[:, ids.shape[1] - keep:]
    if on_pass is not None:
        on_pass(ids.shape[0], ids.shape[1], start + ids.shape[1], ids.shape[1])
    return logits


def _chunk_nll(model: torch.nn.Module, ids: torch.Tensor, lens: torch.Tensor, ks: torch.Tensor,
               start: int = 0, on_pass: PassCounter | None = None, **kwargs) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean continuation NLL of each row of ``ids`` ([n, W], right-padded; float64 CPU ``[n]``), and whether the
    model's greedy continuation is exactly the row's (every scored position's argmax is its token; bool CPU ``[n]``:
    a by-product of the same logits, so a search's exact-match check needs no pass of its own).

    Row ``r`` has ``lens[r]`` real tokens, the last ``ks[r]`` of them scored. Tokens before ``start`` are not fed:
    their keys and values come in ``kwargs`` (a cache, with the matching position ids). The last column is never
    fed either: it is only ever a target (or a pad), and in a causal model no scored position depends on it.
    """
    width = ids.shape[1]
    first = int((lens - ks - 1).min())  # the earliest position that predicts a continuation token
    if first < start:
        raise ValueError(f"a row's continuation starts at position {first + 1}, before the fed tokens ({start})")
    device = next(model.parameters()).device
    logits = _tail_logits(model, ids[:, start:width - 1].to(device), width - 1 - first, on_pass, start, **kwargs)
    targets = ids[:, first + 1:].to(device)
    if bool((lens == width).all()) and bool((ks == width - 1 - first).all()):
        # Every row scores every kept position: no gather, and cross-entropy runs on the logits as they are.
        nll = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), reduction="none")
        greedy = (logits.argmax(-1) == targets).all(1).cpu()
        return nll.view(len(ids), -1).double().sum(1).cpu() / ks.double(), greedy
    positions = torch.arange(first, width - 1)
    # Position p predicts token p + 1; it is scored when that token is in the row's continuation.
    scored = (positions[None] >= (lens - ks - 1)[:, None]) & (positions[None] <= (lens - 2)[:, None])
    # Cross-entropy only where a token is scored (not on pads or unscored context).
    kept, wanted = logits[scored.to(device)], targets[scored.to(device)]
    nll = F.cross_entropy(kept.float(), wanted, reduction="none")
    rows = scored.nonzero()[:, 0]
    misses = torch.zeros(len(ids), dtype=torch.long).index_add_(0, rows, (kept.argmax(-1) != wanted).long().cpu())
    return torch.zeros(len(ids), dtype=torch.float64).index_add_(0, rows, nll.double().cpu()) / ks.double(), misses == 0


@torch.no_grad()
def continuation_nll(model: torch.nn.Module, sequences: torch.Tensor | Sequence[Sequence[int]],
                     n_scored: int | Sequence[int], batch_tokens: int = 16384, pad_id: int = 0,
                     on_pass: PassCounter | None = None, matches: torch.Tensor | None = None) -> torch.Tensor:
    """Mean NLL of the last ``n_scored`` tokens of each sequence (its continuation), given all tokens before them.

    ``sequences`` is a ``[N, T]`` LongTensor (candidates of one length: no padding at all) or a list of token lists
    of any lengths; ``n_scored`` is one count for all or one per sequence. Sequences are sorted by length and run in
    chunks of at most ``batch_tokens`` tokens (the memory budget; fewer on CPU, see ``CPU_CHUNK_TOKENS``),
    right-padded; no attention mask is needed because the model is causal and the pads come after every real token.
    Only the positions that predict a continuation token are projected to the vocabulary. Returns a float64 CPU
    tensor ``[N]`` in input order; a sequence scores the same alone or in a batch up to float summation order.
    ``on_pass`` is told of every forward pass (see :data:`PassCounter`); ``matches`` (a bool ``[N]`` tensor, when
    given) receives whether each sequence's continuation is the model's greedy one (see ``_chunk_nll``).
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
    out = torch.empty(n, dtype=torch.float64)
    order = sorted(range(n), key=lambda i: (-lengths[i], i))
    start = 0
    while start < n:
        width = lengths[order[start]]
        group = order[start:start + _rows_per_chunk(model, width, batch_tokens)]
        start += len(group)
        if isinstance(sequences, torch.Tensor):
            ids = sequences[torch.tensor(group)]
        else:
            ids = torch.full((len(group), width), pad_id, dtype=torch.long)
            for row, i in enumerate(group):
                ids[row, :lengths[i]] = torch.as_tensor(list(sequences[i]), dtype=torch.long)
        lens = torch.tensor([lengths[i] for i in group])
        ks = torch.tensor([counts[i] for i in group])
        out[torch.tensor(group)], greedy = _chunk_nll(model, ids, lens, ks, on_pass=on_pass)
        if matches is not None:
            matches[torch.tensor(group)] = greedy
    return out


# -- candidates that edit a base sequence: reuse the keys and values of its unchanged prefix -------------------------

#: What one forward pass costs beyond its tokens (Python, kernel launches, masks), in token positions, by device
#: type: swap_nll weighs it against the positions a prefix cache saves. CPU: measured on the tiny model (~4.5 ms
#: per pass vs ~0.017 ms per position fed); CUDA (and others): a guess that keeps the passes few, since a GPU runs
#: short suffixes of many rows nearly as fast as full rows.
FORWARD_OVERHEAD_TOKENS = {"cpu": 256}
DEFAULT_FORWARD_OVERHEAD_TOKENS = 1024


def _cache_kwarg(model: torch.nn.Module) -> str | None:
    """The forward keyword that takes a KV cache, or None when the model takes none."""
    params = _forward_params(model)
    for name in ("cache", "past_key_values"):  # transformers 5 | 4
        if name in params:
            return name
    return None


def _full_attention_cache(cache: object, length: int) -> bool:
    """Whether ``cache`` can be cropped and batch-indexed exactly: a DynamicCache of plain full-attention layers
    holding ``length`` positions (not sliding-window, linear-attention, quantized or offloaded layers)."""
    try:
        from transformers import DynamicCache
        from transformers.cache_utils import DynamicLayer
    except ImportError:
        return False
    layers = getattr(cache, "layers", None)
    return (isinstance(cache, DynamicCache) and bool(layers) and all(type(layer) is DynamicLayer for layer in layers)
            and cache.get_seq_length() == length)


def _plan_groups(starts: list[int], width: int, rows: int, overhead: int) -> tuple[list[tuple[int, int]], int]:
    """Split candidates sorted by start into contiguous groups, each fed from its first start, minimising the
    positions computed plus ``overhead`` per forward pass. Returns the groups as index ranges and their cost.

    Dynamic programme over the distinct starts (at most ``width`` of them); one pass holds at most ``rows`` rows.
    """
    distinct = sorted(set(starts))
    ends = [0] * len(distinct)  # ends[j]: one past the last candidate whose start is <= distinct[j]
    for s in starts:
        ends[distinct.index(s)] += 1
    for j in range(1, len(ends)):
        ends[j] += ends[j - 1]
    # best[j]: least cost of the candidates whose start is below distinct[j]; choice[j]: where its last group begins
    best: list[int | None] = [0] + [None] * len(distinct)
    choice = [0] * (len(distinct) + 1)
    for j in range(1, len(distinct) + 1):
        for a in range(j):  # the last group covers distinct[a:j]
            lo, hi = (ends[a - 1] if a else 0), ends[j - 1]
            count, s = hi - lo, distinct[a]
            cost = best[a] + -(-count // rows) * overhead + count * (width - 1 - s)
            if best[j] is None or cost < best[j]:
                best[j], choice[j] = cost, a
    groups, j = [], len(distinct)
    while j:
        a = choice[j]
        groups.append((ends[a - 1] if a else 0, ends[j - 1]))
        j = a
    return groups[::-1], int(best[-1])


@torch.no_grad()
def swap_nll(model: torch.nn.Module, base: torch.Tensor, candidates: torch.Tensor, n_scored: int,
             batch_tokens: int = 16384, overhead_tokens: int | None = None,
             memo: dict[tuple[int, ...], object] | None = None,
             on_pass: PassCounter | None = None, keep: Literal["max", "min"] = "max",
             matches: torch.Tensor | None = None) -> torch.Tensor:
    """``continuation_nll(model, candidates, n_scored, batch_tokens)`` for candidates that edit base sequences (a
    HotFlip step's token swaps), computing less: tokens before a candidate's first edit are those of its base, so
    their keys and values come from one cached forward pass of the bases' prefixes.

    ``candidates`` is ``[N, T]``; ``base`` is ``[T]`` (the base of every candidate) or ``[N, T]`` (each candidate's
    own). Candidates are sorted by their first edit and grouped; a group's passes feed only its suffix, from the
    group's earliest edit, on a copy of the prefix cache cropped there (groups are chosen to minimise the positions
    computed plus ``overhead_tokens`` per pass, ``FORWARD_OVERHEAD_TOKENS`` by default). Exact: the same scores as
    ``continuation_nll`` up to float summation order. Models whose cache cannot be cropped and batch-indexed exactly
    (see ``_full_attention_cache``), or that take no cache or position ids, get ``continuation_nll`` itself, as do
    candidates whose plan would not save computation.

    ``memo`` (a dict the caller keeps between calls; one base ``[T]`` only) holds the keys and values of the last
    call's base and of its best candidate (the highest score, or the lowest with ``keep='min'``: the one the
    caller's search keeps; first in input order on ties), so that a next call on either of them (a greedy search's
    next step: the same sequence after a failed step, the best swap after a kept one) needs no prefix pass. With a
    memo the prefix pass counts as free in the plan: it is kept for the next calls.

    ``on_pass`` is told of every forward pass actually run (see :data:`PassCounter`): a prefix pass the memo spares
    is not one, and a suffix pass counts only the positions it feeds. ``matches``: as for ``continuation_nll``.
    """
    if candidates.dim() != 2:
        raise ValueError(f"candidates must be a [N, T] tensor, got shape {tuple(candidates.shape)}")
    n, width = candidates.shape
    single = base if base.dim() == 1 else None
    if single is not None:
        base = base[None].expand(n, -1)
    if base.shape != candidates.shape:
        raise ValueError(f"base must be [T] or [N, T] like candidates {tuple(candidates.shape)}, got "
                         f"{tuple(base.shape)}")
    if not 1 <= n_scored < width:
        raise ValueError(f"n_scored must be in [1, {width - 1}], got {n_scored}")
    params = _forward_params(model)
    cache_kwarg = _cache_kwarg(model)
    if n == 0 or cache_kwarg is None or "position_ids" not in params:
        return continuation_nll(model, candidates, n_scored, batch_tokens, on_pass=on_pass, matches=matches)
    device = next(model.parameters()).device
    if overhead_tokens is None:
        overhead_tokens = FORWARD_OVERHEAD_TOKENS.get(device.type, DEFAULT_FORWARD_OVERHEAD_TOKENS)
    if single is None:
        memo = None
    base_key = tuple(single.tolist()) if memo is not None else ()
    known = memo.get(base_key) if memo is not None else None

    bases, which = torch.unique(base, dim=0, return_inverse=True)
    edited = candidates != base
    # The first position where a candidate leaves its base; no later than the first position that predicts a
    # continuation token (a candidate equal to its base, or edited only in its continuation, is fed from there).
    starts = torch.where(edited.any(1), edited.int().argmax(1), width).clamp(max=width - 1 - n_scored)
    # Rows per pass as for plain scoring: every pass holds the keys and values of all ``width`` positions (memory),
    # and its logits (rows x continuation x vocabulary) do not shrink with the suffix (the CPU cap).
    rows = _rows_per_chunk(model, width, batch_tokens)
    out = torch.empty(n, dtype=torch.float64)

    def plainly(order: torch.Tensor) -> None:  # candidates ``order`` scored without a prefix cache
        greedy = None if matches is None else torch.empty(len(order), dtype=torch.bool)
        out[order] = continuation_nll(model, candidates[order], n_scored, batch_tokens, on_pass=on_pass,
                                      matches=greedy)
        if matches is not None and greedy is not None:
            matches[order] = greedy

    sign = 1.0 if keep == "max" else -1.0  # the memo keeps the candidate with the highest sign * score
    best: tuple[float, int, object] | None = None  # the best candidate so far: sign * score, index, its cache
    cache = None
    # One prefix pass holds at most ``rows`` bases; more bases are taken in turns.
    for first_base in range(0, len(bases), rows):
        local = bases[first_base:first_base + rows]
        members = ((which >= first_base) & (which < first_base + len(local))).nonzero()[:, 0]
        order = members[torch.argsort(starts[members] * n + members)]  # by start, then input order
        order_starts = starts[order].tolist()
        groups, cost = _plan_groups(order_starts, width, rows, overhead_tokens)
        # Each pass is fed from its own earliest edit (the group's, or later in a group split into passes).
        chunks = [(lo, min(hi, lo + rows)) for g_lo, hi in groups for lo in range(g_lo, hi, rows)]
        prefix = max(order_starts[lo] for lo, _ in chunks)
        if memo is None:  # with a memo, the prefix pass is kept (or was) for the next calls: it pays for itself
            cost += overhead_tokens + len(local) * prefix
        plain = -(-len(order) // rows) * overhead_tokens + len(order) * (width - 1)
        if prefix == 0 or cost >= plain:
            plainly(order)
            continue
        cache = known
        if cache is None:
            upto = width - 1 if memo is not None else prefix  # a memo keeps every position a later prefix may need
            cache = _prefix_cache(model, local[:, :upto].to(device), on_pass)
            if not _full_attention_cache(cache, upto):  # not exact to crop or index: score them plainly
                plainly(order)
                cache = None
                continue
        for lo, hi in chunks:
            chunk = order[lo:hi]
            scores, greedy, past = _score_from(model, candidates[chunk], n_scored, order_starts[lo], cache,
                                               which[chunk] - first_base, cache_kwarg, on_pass)
            out[chunk] = scores
            if matches is not None:
                matches[chunk] = greedy
            if memo is not None:
                row = int(scores.argmax() if keep == "max" else scores.argmin())
                score, index = sign * float(scores[row]), int(chunk[row])
                if best is None or score > best[0] or (score == best[0] and index < best[1]):
                    past.batch_select_indices(torch.tensor([row], device=device))
                    best = (score, index, past)
    if memo is not None:
        memo.clear()
        if cache is not None:
            memo[base_key] = cache
        if best is not None and best[1] == int((sign * out).argmax()) and _full_attention_cache(best[2], width - 1):
            memo[tuple(candidates[best[1]].tolist())] = best[2]
    return out


#: The shortest unedited prefix worth a cache in a gradient pass (shorter ones cost more to copy than they save).
MIN_GRADIENT_PREFIX = 8


def prefix_forward_kwargs(model: torch.nn.Module, ids: torch.Tensor, start: int, memo: dict,
                          on_pass: PassCounter | None = None) -> tuple[dict[str, object], bool]:
    """Forward keywords that feed ``ids[:, start:]`` after the keys and values of ``ids[:, :start]``, and True; or
    ``({}, False)`` when that would not pay (``start < MIN_GRADIENT_PREFIX``) or the model's cache cannot be reused
    exactly. The prefix pass runs once per distinct prefix (``memo`` keeps the last one; a copy serves each call,
    since a forward pass appends to its cache) and without gradient: no position before ``start`` attends to a later
    one, so a gradient with respect to the fed positions is the one the whole sequence gives."""
    cache_kwarg = _cache_kwarg(model)
    if (start < MIN_GRADIENT_PREFIX or start >= ids.shape[1] or cache_kwarg is None
            or "position_ids" not in _forward_params(model)):
        return {}, False
    key = tuple(map(tuple, ids[:, :start].tolist()))
    if key not in memo:
        with torch.no_grad():
            cache = _prefix_cache(model, ids[:, :start], on_pass)
        memo.clear()
        memo[key] = cache if _full_attention_cache(cache, start) else None  # None: plain passes for this prefix
    if memo[key] is None:
        return {}, False
    return _after_cache(model, cache_kwarg, copy.deepcopy(memo[key]), start, ids.shape[1], len(ids)), True


def _prefix_cache(model: torch.nn.Module, prefix: torch.Tensor, on_pass: PassCounter | None) -> object:
    """The keys and values of ``prefix`` (one forward pass, logits of its last position only where the model can
    skip the others)."""
    tail = logits_tail_kwarg(model)
    out = model(input_ids=prefix, use_cache=True, **({tail: 1} if tail else {}))
    if on_pass is not None:
        on_pass(len(prefix), prefix.shape[1], prefix.shape[1], out.logits.shape[1])
    return out.cache if getattr(out, "cache", None) is not None else out.past_key_values


def _after_cache(model: torch.nn.Module, cache_kwarg: str, past: object, start: int, end: int,
                 rows: int) -> dict[str, object]:
    """Forward keywords that feed positions ``start`` to ``end - 1`` of ``rows`` sequences after ``past`` (the keys
    and values of the positions before ``start``; the pass appends to it)."""
    positions = torch.arange(start, end, device=next(model.parameters()).device)
    kwargs: dict[str, object] = {cache_kwarg: past, "position_ids": positions[None].expand(rows, -1),
                                 "use_cache": True}
    if "cache_position" in _forward_params(model):  # transformers 4 derives it from the cache; explicit is safer
        kwargs["cache_position"] = positions
    return kwargs


def _score_from(model: torch.nn.Module, ids: torch.Tensor, n_scored: int, start: int, cache: object,
                base_rows: torch.Tensor, cache_kwarg: str,
                on_pass: PassCounter | None = None) -> tuple[torch.Tensor, torch.Tensor, object]:
    """Continuation NLL of ``ids`` fed from ``start``, positions before it from rows ``base_rows`` of ``cache``,
    whether each row's continuation is greedy (see ``_chunk_nll``), and the pass's own cache (every fed position of
    every row)."""
    from transformers import DynamicCache

    lens = torch.full((len(ids),), ids.shape[1])
    ks = torch.full((len(ids),), n_scored)
    device = next(model.parameters()).device
    if start == 0:  # an edit at the very first position: nothing to reuse
        past = DynamicCache()
    else:
        past = copy.deepcopy(cache)  # the forward pass appends to it; the prefix cache serves later chunks
        if past.get_seq_length() > start:  # a negative count removes that many positions (transformers 4 and 5)
            past.crop(start - past.get_seq_length())
        past.batch_select_indices(base_rows.to(device))
    kwargs = _after_cache(model, cache_kwarg, past, start, ids.shape[1] - 1, len(ids))
    scores, greedy = _chunk_nll(model, ids, lens, ks, start, on_pass, **kwargs)
    return scores, greedy, past


# -- a cheaper copy of the model to screen candidates with (probe sampling's draft) ---------------------------------

def _layer_list(body: torch.nn.Module) -> tuple[str, torch.nn.ModuleList] | None:
    """The body's list of transformer blocks and its attribute name (``layers``: Llama, GPT-NeoX; ``h``: GPT-2)."""
    for name in ("layers", "h"):
        layers = getattr(body, name, None)
        if isinstance(layers, torch.nn.ModuleList) and len(layers):
            return name, layers
    return None


def draft_model(model: torch.nn.Module, layers: Sequence[int], dtype: torch.dtype | None = None) -> torch.nn.Module:
    """A copy of ``model`` keeping only its transformer blocks ``layers`` (in that order; the embeddings, final norm
    and vocabulary projection are kept), in ``dtype`` (None: the model's): probe sampling's draft, which shares the
    tokenizer by construction. The blocks are renumbered so the copy's caches index them from 0.

    Raises ValueError for a model whose blocks are not a ``layers``/``h`` list of its base model.
    """
    prefix = getattr(model, "base_model_prefix", "")
    body = getattr(model, prefix, None) if prefix else None
    found = _layer_list(body) if isinstance(body, torch.nn.Module) else None
    if found is None:
        raise ValueError(f"{type(model).__name__}: no list of transformer blocks found to truncate")
    name, blocks = found
    keep = list(layers)
    if not keep or any(not 0 <= i < len(blocks) for i in keep):
        raise ValueError(f"draft layers {keep} are not blocks of a {len(blocks)}-block model")
    setattr(body, name, torch.nn.ModuleList())  # the copy below leaves the blocks out; they are copied one by one
    try:
        draft = copy.deepcopy(model)
    finally:
        setattr(body, name, blocks)
    copied = torch.nn.ModuleList(copy.deepcopy(blocks[i]) for i in keep)
    for new, block in enumerate(copied):
        for module in block.modules():  # the attention's index into the cache
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = new
    setattr(getattr(draft, prefix), name, copied)
    config = getattr(draft, "config", None)
    if config is not None:  # one config object, shared by the copy's modules (deepcopy keeps the sharing)
        text = config.get_text_config() if hasattr(config, "get_text_config") else config
        if getattr(text, "layer_types", None) is not None:
            text.layer_types = [text.layer_types[i] for i in keep]
        text.num_hidden_layers = len(keep)
    draft.eval()
    return draft.to(dtype) if dtype is not None else draft


# -- batch_tokens: auto ------------------------------------------------------------------------------------------

def _trial(model: torch.nn.Module, tokens: int, width: int) -> float:
    """Seconds of one scoring pass of ``tokens`` tokens (rows of ``width``), its continuation projected."""
    device = next(model.parameters()).device
    vocab = int(getattr(getattr(model, "config", None), "vocab_size", 0) or 2)
    ids = torch.randint(0, vocab, (max(1, tokens // width), width), generator=torch.Generator().manual_seed(0))
    lens = torch.full((len(ids),), width)
    ks = torch.full((len(ids),), width // 2)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    with torch.no_grad():
        _chunk_nll(model, ids, lens, ks)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def auto_batch_tokens(model: torch.nn.Module, width: int = AUTO_WIDTH) -> int:
    """Tokens per scoring pass for ``batch_tokens: auto``, found once per model and cached (as lm-eval's auto batch
    size): on CUDA the largest power of two up to ``AUTO_MAX_TOKENS`` whose pass runs without running out of memory,
    halved once for headroom (other passes hold more: caches, gradients); on CPU the fastest per token of
    ``AUTO_CPU_TOKENS`` (best of two timed passes each; larger passes spill the caches, so the largest is not the
    fastest), which then also replaces the CPU cap (``CPU_CHUNK_TOKENS``) for this model."""
    if model in _AUTO_TOKENS:
        return _AUTO_TOKENS[model]
    device = next(model.parameters()).device
    if device.type == "cpu":
        rates = {}
        for tokens in AUTO_CPU_TOKENS:
            _trial(model, tokens, width)  # warm-up (allocator, kernels)
            rates[tokens] = min(_trial(model, tokens, width) for _ in range(2)) / tokens
        found = min(rates, key=lambda t: (rates[t], t))
        _FASTEST_CPU_TOKENS[model] = found
    else:
        found, tokens = 0, AUTO_MAX_TOKENS
        while tokens >= width and not found:
            try:
                _trial(model, tokens, width)
                found = max(width, tokens // 2)
            except torch.OutOfMemoryError:
                tokens //= 2
            finally:
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        if not found:
            raise RuntimeError(f"batch_tokens: auto: not even one sequence of {width} tokens fits on {device}")
    _AUTO_TOKENS[model] = found
    return found
