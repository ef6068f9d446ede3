"""Data: built-in corpora and user files, tokenizers, cached token streams, packing and resumable sampling."""

from .bigram_backcopy import BayesLoss, BigramBackcopy, StationaryLoss
from .corpora import BUILTIN_CORPORA, Document, split_documents, strip_gutenberg
from .files import Corpus, load_corpus
from .packing import PackedTokens, tokenize_to_stream
from .pipeline import DataBundle, prepare_data
from .sampler import EpochSampler
from .tokenizer import TextTokenizer, build_tokenizer

__all__ = ["BUILTIN_CORPORA", "BayesLoss", "BigramBackcopy", "StationaryLoss", "Corpus", "DataBundle", "Document", "EpochSampler", "PackedTokens",
           "TextTokenizer", "build_tokenizer", "load_corpus", "prepare_data", "split_documents",
           "strip_gutenberg", "tokenize_to_stream"]
