"""Token streams cached as memory-mapped arrays, and their packing into fixed-length sequences.

A split is tokenised once into one stream, each document followed by EOS, stored as uint16 (vocabulary
<= 65536) or uint32 under ``$GATEDATTN_CACHE/tokens``, keyed by the tokenizer and the documents' hash.
Sequence i of length L is ``[BOS] + stream[i*(L-1) : (i+1)*(L-1)]``: every sequence starts with BOS and
the sequences cover the stream in order; training drops the last partial chunk, evaluation keeps it.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Iterator

import numpy as np
import torch

from ..errors import GatedAttnError
from ..fileio import atomic_write_text, tmp_name
from .cache import cache_dir, sha256_text
from .corpora import Document, corpus_hash
from .tokenizer import TextTokenizer

log = logging.getLogger("gatedattn.data")

_FORMAT = "stream-v1"
_ENCODE_CHUNK = 64  # documents per encode_batch call: bounded memory, parallel inside tokenizers


def stream_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= 1 << 16 else np.uint32)


def tokenize_to_stream(docs: list[Document], tokenizer: TextTokenizer, desc: str = "tokenize") -> np.ndarray:
    """The documents' tokens (each followed by EOS) as a read-only memmap, built once and cached."""
    from tqdm.auto import tqdm

    key = sha256_text(_FORMAT, tokenizer.fingerprint(), corpus_hash(docs))
    path = cache_dir("tokens") / f"{key[:32]}.bin"
    meta_path = path.with_suffix(".json")
    dtype = stream_dtype(tokenizer.vocab_size)
    if path.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if meta["tokens"] * dtype.itemsize == path.stat().st_size and meta["dtype"] == dtype.name:
                return np.memmap(path, dtype=dtype, mode="r", shape=(meta["tokens"],)) if meta["tokens"] else \
                    np.zeros(0, dtype)
        except (OSError, ValueError, KeyError):
            pass
        log.warning("token cache %s is inconsistent; tokenising again", path)
    tmp = tmp_name(path)
    total = 0
    with open(tmp, "wb") as f, tqdm(total=len(docs), desc=desc, unit="doc", leave=False) as bar:
        for start in range(0, len(docs), _ENCODE_CHUNK):
            chunk = docs[start:start + _ENCODE_CHUNK]
            for ids in tokenizer.encode_batch([d.text for d in chunk]):
                arr = np.asarray(ids + [tokenizer.eos_id], dtype=dtype)
                f.write(arr.tobytes())
                total += arr.size
            bar.update(len(chunk))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    atomic_write_text(meta_path, json.dumps({"tokens": total, "dtype": dtype.name, "documents": len(docs)}))
    return np.memmap(path, dtype=dtype, mode="r", shape=(total,)) if total else np.zeros(0, dtype)


class PackedTokens:
    """Fixed-length sequences, each ``[BOS] + seq_len - 1`` stream tokens, read from a token stream."""

    def __init__(self, stream: np.ndarray, seq_len: int, bos_id: int):
        if seq_len < 2:
            raise GatedAttnError(f"data.seq_len must be >= 2 (BOS + one token), got {seq_len}")
        self.stream, self.seq_len, self.bos_id = stream, seq_len, bos_id
        self.chunk = seq_len - 1

    @property
    def num_tokens(self) -> int:
        return int(self.stream.shape[0])

    def __len__(self) -> int:
        """Full sequences (what training samples from)."""
        return self.num_tokens // self.chunk

    def head(self, num_tokens: int) -> "PackedTokens":
        """The same packing over the first ``num_tokens`` stream tokens (an evaluation budget)."""
        return PackedTokens(self.stream[:num_tokens], self.seq_len, self.bos_id)

    def batch(self, indices) -> torch.Tensor:
        """Sequences ``indices`` as a (B, seq_len) int64 tensor."""
        idx = np.asarray(indices, dtype=np.int64)[:, None] * self.chunk + np.arange(self.chunk)
        body = np.asarray(self.stream[idx], dtype=np.int64)
        bos = np.full((len(idx), 1), self.bos_id, dtype=np.int64)
        return torch.from_numpy(np.concatenate([bos, body], 1))

    def eval_batches(self, batch_size: int, max_batches: int | None = None) -> Iterator[torch.Tensor]:
        """All sequences in order, then the shorter tail (if it has a token) as a batch of its own."""
        count = 0
        n = len(self)
        for start in range(0, n, batch_size):
            if max_batches is not None and count >= max_batches:
                return
            yield self.batch(range(start, min(start + batch_size, n)))
            count += 1
        tail = self.stream[n * self.chunk:]
        if len(tail) and (max_batches is None or count < max_batches):
            yield torch.from_numpy(np.concatenate([[self.bos_id], np.asarray(tail, dtype=np.int64)]))[None]

    def num_eval_batches(self, batch_size: int, max_batches: int | None = None) -> int:
        n = -(-len(self) // batch_size) + (self.num_tokens % self.chunk > 0)
        return n if max_batches is None else min(n, max_batches)
