"""``prepare_data``: corpus -> split -> tokenizer -> cached token streams -> packed sequences, in one call.

Its result (a DataBundle) can be handed to several ``train()`` calls so they share the tokenizer, the data
and, with the same seed, the data order: what a controlled comparison of two models needs.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..config import Config, DataConfig
from ..errors import GatedAttnError
from .bigram_backcopy import NAME as BIGRAM_BACKCOPY
from .bigram_backcopy import BigramBackcopy
from .corpora import corpus_hash, split_documents
from .files import load_corpus
from .packing import PackedTokens, tokenize_to_stream
from .tokenizer import TextTokenizer, build_tokenizer

_MAX_NAMES = 100  # held-out document names recorded in the run's info


@dataclass
class DataBundle:
    tokenizer: TextTokenizer
    train: PackedTokens | None
    val: PackedTokens | None
    config: DataConfig
    info: dict
    lab: BigramBackcopy | None = None  # the task, when data.source=bigram-backcopy (its triggers, Bayes loss)


def prepare_data(config: Config | DataConfig, tokenizer: TextTokenizer | None = None,
                 splits: tuple[str, ...] = ("train", "val")) -> DataBundle:
    """Load ``data.source``, hold out the validation documents, build (or take) the tokenizer, tokenise the
    requested splits once (cached) and pack them into ``data.seq_len`` sequences."""
    cfg = config.data if isinstance(config, Config) else config
    if cfg.source.strip() == BIGRAM_BACKCOPY:
        return prepare_bigram_backcopy(cfg, tokenizer, splits)
    corpus = load_corpus(cfg.source, cfg.text_field)
    train_docs, val_docs = split_documents(corpus.documents, cfg.val_fraction)
    train_key = corpus_hash(train_docs)
    if tokenizer is None:
        tokenizer = build_tokenizer(cfg.tokenizer, cfg.vocab_size, train_docs, train_key)
    info = {"source": cfg.source, **corpus.summary(), "train_documents": len(train_docs),
            "val_documents": len(val_docs), "train_corpus_sha256": train_key,
            "tokenizer": {"spec": cfg.tokenizer, "vocab_size": tokenizer.vocab_size,
                          "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id}}
    if len(val_docs) <= _MAX_NAMES:
        info["val_document_names"] = [d.name for d in val_docs]
    train = val = None
    if "train" in splits:
        train = PackedTokens(tokenize_to_stream(train_docs, tokenizer, "tokenize train"), cfg.seq_len,
                             tokenizer.bos_id)
        if len(train) == 0:
            raise GatedAttnError(f"the training text has {train.num_tokens} tokens, fewer than one sequence of "
                                 f"data.seq_len={cfg.seq_len}; give more text or a smaller data.seq_len")
        info.update(train_tokens=train.num_tokens, train_sequences=len(train))
    if "val" in splits and val_docs:
        val = PackedTokens(tokenize_to_stream(val_docs, tokenizer, "tokenize val"), cfg.seq_len, tokenizer.bos_id)
        info.update(val_tokens=val.num_tokens, val_sequences=len(val))
    return DataBundle(tokenizer, train, val, dataclasses.replace(cfg), info)


def prepare_bigram_backcopy(cfg: DataConfig, tokenizer: TextTokenizer | None = None,
                            splits: tuple[str, ...] = ("train", "val")) -> DataBundle:
    """The synthetic task's sequences (``data.bigram_backcopy``), each exactly ``data.seq_len`` tokens starting
    with BOS, generated from the seed (and cached); its own tokenizer, or a given one with the same ids."""
    lab_cfg = cfg.bigram_backcopy
    lab = BigramBackcopy.from_config(lab_cfg)
    if tokenizer is None:
        tokenizer = lab.tokenizer()
    elif not lab.matches(tokenizer):
        raise GatedAttnError(f"the tokenizer is not the one of data.source={BIGRAM_BACKCOPY} with "
                             f"data.bigram_backcopy.vocab={lab.vocab} (tokens t0..t{lab.vocab - 1} and BOS id "
                             f"{lab.bos_id}); the model was trained on other data")
    info = {"source": BIGRAM_BACKCOPY, **lab.info(cfg.seq_len), "seed": lab_cfg.seed,
            "tokenizer": {"spec": BIGRAM_BACKCOPY, "vocab_size": tokenizer.vocab_size,
                          "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id}}
    packed = {}
    counts = {"train": lab_cfg.train_sequences, "val": lab_cfg.val_sequences}
    for split in ("train", "val"):
        if split in splits and counts[split]:
            stream = lab.split_sequences(split, counts[split], cfg.seq_len, lab_cfg.seed)
            packed[split] = PackedTokens(stream, cfg.seq_len, lab.bos_id)
            info.update({f"{split}_tokens": packed[split].num_tokens, f"{split}_sequences": counts[split]})
    return DataBundle(tokenizer, packed.get("train"), packed.get("val"), dataclasses.replace(cfg), info, lab)
