"""User data: .txt files, folders of them (recursive), .jsonl and .parquet (a text field / column).

A folder contributes its .txt/.jsonl/.parquet files; a file named explicitly with another suffix (.md, .py)
is read as plain text.

Rules for bad data: a missing path, a JSONL or parquet file without the text field, or a JSONL file with no
valid line at all is an error (one line, exit code 2). An empty, binary or non-UTF-8 file, and single bad
JSONL lines, are skipped, counted and reported in one warning line, as long as some text remains; if none
remains, that is an error too. Never a silent zero-token run.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import GatedAttnError
from .corpora import BUILTIN_CORPORA, Document, builtin_documents, normalize_newlines

log = logging.getLogger("gatedattn.data")

DATA_SUFFIXES = (".txt", ".jsonl", ".parquet")


@dataclass
class Corpus:
    documents: list[Document]
    skipped: dict[str, str] = field(default_factory=dict)  # file -> reason
    skipped_rows: Counter = field(default_factory=Counter)  # reason -> count (JSONL lines, parquet nulls)

    def summary(self) -> dict:
        return {"documents": len(self.documents), "characters": sum(len(d.text) for d in self.documents),
                "skipped_files": dict(self.skipped), "skipped_rows": dict(self.skipped_rows)}


def _decode(raw: bytes) -> str | None:
    """The text of a file, or None when it is binary (has NUL bytes) or not UTF-8 (reason in the caller)."""
    if b"\0" in raw:
        return None
    try:
        return normalize_newlines(raw.decode("utf-8-sig"))
    except UnicodeDecodeError:
        return None


def _read_jsonl(path: Path, name: str, text: str, text_field: str, corpus: Corpus) -> None:
    rows = missing = bad = 0
    seen_keys: set[str] = set()
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        rows += 1
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            bad += 1
            continue
        if not isinstance(obj, dict):
            bad += 1
            continue
        value = obj.get(text_field)
        if not isinstance(value, str):
            missing += 1
            seen_keys.update(obj)
            continue
        if value.strip():
            corpus.documents.append(Document(f"{name}:{lineno}", normalize_newlines(value)))
        else:
            corpus.skipped_rows["empty text"] += 1
    if rows and bad == rows:
        raise GatedAttnError(f"{path} is not JSON lines: none of its {rows} lines is a JSON object")
    if rows and missing + bad == rows:
        raise GatedAttnError(f"{path} has no string field '{text_field}' (fields seen: "
                             f"{', '.join(sorted(seen_keys)) or 'none'}); set data.text_field to one of them")
    corpus.skipped_rows["invalid JSON line"] += bad
    corpus.skipped_rows[f"no '{text_field}' field"] += missing


def _read_parquet(path: Path, name: str, text_field: str, corpus: Corpus) -> None:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise GatedAttnError("reading .parquet needs pyarrow: pip install 'gatedattn[train]'") from None
    try:
        schema = pq.read_schema(path)
    except Exception as e:  # pyarrow raises several types for non-parquet bytes
        raise GatedAttnError(f"{path} is not a readable parquet file: {str(e).splitlines()[0]}") from None
    if text_field not in schema.names:
        raise GatedAttnError(f"{path} has no column '{text_field}' (columns: {', '.join(schema.names)}); "
                             "set data.text_field to one of them")
    kind = schema.field(text_field).type
    if not (pa.types.is_string(kind) or pa.types.is_large_string(kind)):
        raise GatedAttnError(f"{path}: column '{text_field}' holds {kind} values, not text")
    for row, value in enumerate(pq.read_table(path, columns=[text_field]).column(0).to_pylist()):
        if value is None:
            corpus.skipped_rows["null text"] += 1
        elif value.strip():
            corpus.documents.append(Document(f"{name}:{row}", normalize_newlines(value)))
        else:
            corpus.skipped_rows["empty text"] += 1


def _read_file(path: Path, name: str, text_field: str, corpus: Corpus) -> None:
    if path.suffix == ".parquet":
        before = len(corpus.documents)
        _read_parquet(path, name, text_field, corpus)
        if len(corpus.documents) == before:
            corpus.skipped[str(path)] = "no text"
        return
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise GatedAttnError(f"cannot read {path}: {e.strerror}") from None
    text = _decode(raw)
    if not raw.strip():
        corpus.skipped[str(path)] = "empty"
    elif text is None:
        corpus.skipped[str(path)] = "binary" if b"\0" in raw else "not UTF-8 text"
    elif path.suffix == ".jsonl":
        before = len(corpus.documents)
        _read_jsonl(path, name, text, text_field, corpus)
        if len(corpus.documents) == before:
            corpus.skipped[str(path)] = "no text"
    else:
        corpus.documents.append(Document(name, text))


def load_files(paths: list[str], text_field: str = "text") -> Corpus:
    """Documents from files and folders; a folder contributes its .txt/.jsonl/.parquet files, recursively.
    Document names are relative to the folder given (file name for a file), so the validation split does
    not depend on where the data lies."""
    corpus = Corpus([])
    for given in paths:
        root = Path(given).expanduser()
        if not root.exists():
            raise GatedAttnError(f"data path {given} does not exist; give .txt/.jsonl/.parquet files or folders, "
                                 f"or a built-in corpus ({', '.join(BUILTIN_CORPORA)})")
        if root.is_dir():
            files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in DATA_SUFFIXES)
            if not files:
                raise GatedAttnError(f"data folder {given} holds no {', '.join(DATA_SUFFIXES)} files")
            for f in files:
                _read_file(f, f.relative_to(root).as_posix(), text_field, corpus)
        else:
            _read_file(root, root.name, text_field, corpus)
    rows = {k: v for k, v in corpus.skipped_rows.items() if v}
    corpus.skipped_rows = Counter(rows)
    problems = [f"{p} ({why})" for p, why in corpus.skipped.items()] + [f"{n} rows ({why})" for why, n in rows.items()]
    if not corpus.documents:
        raise GatedAttnError(f"no usable text in {', '.join(paths)}: skipped " + "; ".join(problems))
    if problems:
        log.warning("data: skipped %s", "; ".join(problems))
    return corpus


def parse_source(source: str) -> list[str]:
    parts = [p.strip() for p in source.split(",") if p.strip()]
    if not parts:
        raise GatedAttnError(f"data.source is empty; give a built-in corpus ({', '.join(BUILTIN_CORPORA)}) "
                             "or paths, comma-separated")
    return parts


def load_corpus(source: str, text_field: str = "text") -> Corpus:
    """A built-in corpus by name, or user files/folders (comma-separated)."""
    parts = parse_source(source)
    if "bigram-backcopy" in parts:
        raise GatedAttnError("bigram-backcopy is a synthetic corpus of token ids, not text: it is read by "
                             "training and eval (data.source); for analyze, give its token ids (--token-ids)")
    if len(parts) == 1 and parts[0] in BUILTIN_CORPORA:
        return Corpus(builtin_documents(parts[0]))
    builtin = [p for p in parts if p in BUILTIN_CORPORA]
    if builtin:
        raise GatedAttnError(f"data.source: the built-in corpus '{builtin[0]}' cannot be mixed with paths")
    return load_files(parts, text_field)
