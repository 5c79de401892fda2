"""Training data: documents tokenised into fixed-length blocks, and the deterministic order they are read in.

*Packed* (the default): every document is followed by the end-of-text token and the token stream is cut into
blocks of ``seq_len``; no position is padding, so every forward pass trains on ``seq_len`` real tokens.
*Padded* (``packing: false``, the published recipe): one document per row, truncated to ``seq_len`` and padded;
padding is masked out of attention and loss. The order of blocks is a fresh permutation per epoch drawn from
the seed and the data recipe (:func:`data_recipe`; not the entry name, so arms with the same recipe read the same
batches), so the block a step reads is a pure function of (seed, recipe, step): resuming needs only the step.
:func:`order_fingerprint` hashes the tokens an arm read, batch by batch, for the report to show paired arms read
the same data.
"""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from harness import DocumentSource, HarnessError, atomic_write_bytes, load_documents

IGNORE = -100  # label of positions that are not scored


@dataclass
class Blocks:
    """``ids[i]`` is one training row; ``lengths[i]`` its real tokens (all of them when packed)."""

    ids: np.ndarray  # (n, seq_len) int32
    lengths: np.ndarray  # (n,) int32
    pad_id: int

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def seq_len(self) -> int:
        return self.ids.shape[1]

    @property
    def packed(self) -> bool:
        return bool((self.lengths == self.seq_len).all())

    def batch(self, rows: Sequence[int]) -> dict[str, torch.Tensor]:
        """Model inputs for ``rows``: input ids, attention mask and labels (padding labelled ``IGNORE``)."""
        ids = torch.from_numpy(self.ids[np.asarray(rows)].astype(np.int64))
        mask = torch.arange(self.seq_len)[None, :] < torch.from_numpy(self.lengths[np.asarray(rows)])[:, None]
        labels = ids.masked_fill(~mask, IGNORE)
        return {"input_ids": ids, "attention_mask": mask.long(), "labels": labels}


def tokenize(texts: Sequence[str], tokenizer, batch: int = 512) -> list[np.ndarray]:
    """Token ids per text, as int32 arrays (a Python int per token would take ~10x the memory)."""
    out: list[np.ndarray] = []
    for i in range(0, len(texts), batch):
        ids = tokenizer(list(texts[i:i + batch]), add_special_tokens=False)["input_ids"]
        out.extend(np.asarray(x, dtype=np.int32) for x in ids)
    return out


def pack(docs: Sequence[Sequence[int]], seq_len: int, eos: int, pad_id: int) -> Blocks:
    """Concatenate ``doc + [eos]`` for every document and cut into full blocks (the tail shorter than a block is
    dropped)."""
    stream = np.empty(sum(len(d) + 1 for d in docs), dtype=np.int32)
    pos = 0
    for doc in docs:
        stream[pos:pos + len(doc)] = doc
        stream[pos + len(doc)] = eos
        pos += len(doc) + 1
    n = len(stream) // seq_len
    if n == 0:
        raise HarnessError(f"training data has {len(stream)} tokens, fewer than one block of seq_len={seq_len}; "
                           "fix: add documents or lower `seq_len`")
    ids = stream[: n * seq_len].reshape(n, seq_len)
    return Blocks(ids, np.full(n, seq_len, dtype=np.int32), pad_id)


def pad(docs: Sequence[Sequence[int]], seq_len: int, eos: int, pad_id: int) -> Blocks:
    """One document per row, ``doc + [eos]`` truncated to ``seq_len`` and right-padded."""
    ids = np.full((len(docs), seq_len), pad_id, dtype=np.int32)
    lengths = np.zeros(len(docs), dtype=np.int32)
    for i, doc in enumerate(docs):
        if len(doc) >= seq_len:  # truncated: no room for the end-of-text token
            ids[i] = doc[:seq_len]
            lengths[i] = seq_len
        else:
            ids[i, : len(doc)] = doc
            ids[i, len(doc)] = eos
            lengths[i] = len(doc) + 1
    keep = lengths >= 2  # a row needs one input and one target
    return Blocks(ids[keep], lengths[keep], pad_id)


def build_blocks(source: DocumentSource, tokenizer, seq_len: int, packing: bool, limit: int | None = None) -> Blocks:
    eos = tokenizer.eos_token_id
    if eos is None:
        raise HarnessError("the tokenizer has no end-of-text token, needed between packed documents; fix: use a "
                           "tokenizer with an eos token")
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
    docs = tokenize([d.text for d in load_documents(source)], tokenizer)
    blocks = (pack if packing else pad)(docs, seq_len, eos, pad_id)
    if limit is not None:
        blocks = Blocks(blocks.ids[:limit], blocks.lengths[:limit], pad_id)
    return blocks


def cached_blocks(path: Path, build: Callable[[], Blocks], is_main: bool, barrier: Callable[[], None]) -> Blocks:
    """Tokenise once per stage: the main process builds and saves ``path``; every process then reads it."""
    if is_main and not path.exists():
        blocks = build()
        buf = io.BytesIO()
        np.savez(buf, ids=blocks.ids, lengths=blocks.lengths, pad_id=np.int64(blocks.pad_id))
        atomic_write_bytes(path, buf.getvalue())
    barrier()
    with np.load(path) as f:
        return Blocks(f["ids"], f["lengths"], int(f["pad_id"]))


def block_order(n_blocks: int, epoch: int, generator: torch.Generator, shuffle: bool) -> np.ndarray:
    return torch.randperm(n_blocks, generator=generator).numpy() if shuffle else np.arange(n_blocks)


class BlockSchedule:
    """Which blocks global step ``s`` reads: ``global_batch`` positions of an endless stream of epochs."""

    def __init__(self, n_blocks: int, global_batch: int, shuffle: bool,
                 epoch_generator: Callable[[int], torch.Generator]) -> None:
        self.n_blocks, self.global_batch, self.shuffle = n_blocks, global_batch, shuffle
        self._epoch_generator = epoch_generator
        self._orders: dict[int, np.ndarray] = {}

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            self._orders = {epoch: block_order(self.n_blocks, epoch, self._epoch_generator(epoch), self.shuffle)}
        return self._orders[epoch]

    def rows(self, step: int) -> list[int]:
        start = step * self.global_batch
        out = []
        for pos in range(start, start + self.global_batch):
            epoch, within = divmod(pos, self.n_blocks)
            out.append(int(self._order(epoch)[within]))
        return out


def data_recipe(blocks: Blocks, global_batch: int, shuffle: bool) -> str:
    """What decides the stream of training batches, as a stable string: the training blocks themselves (the
    documents as tokenised, cut or padded to ``seq_len``: their content, not the files' paths, so the order does not
    depend on where a checkout lives), the global batch and ``shuffle``. The data order is keyed by it and the seed,
    never by the entry name."""
    h = hashlib.sha256(json.dumps({"global_batch": global_batch, "shuffle": shuffle}).encode())
    h.update(np.ascontiguousarray(blocks.ids).tobytes())
    h.update(np.ascontiguousarray(blocks.lengths).tobytes())
    return h.hexdigest()[:16]


def order_fingerprint(blocks: Blocks, schedule: BlockSchedule, steps: int) -> str:
    """sha256 of the token ids (and real lengths) of every global batch of steps ``0 .. steps-1``, in order: two
    arms with equal fingerprints trained on byte-identical batches."""
    h = hashlib.sha256()
    for step in range(steps):
        rows = np.asarray(schedule.rows(step))
        h.update(np.ascontiguousarray(blocks.ids[rows]).tobytes())
        h.update(np.ascontiguousarray(blocks.lengths[rows]).tobytes())
    return h.hexdigest()
