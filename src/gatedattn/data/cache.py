"""The on-disk cache of trained tokenizers and token arrays (written with ``gatedattn.fileio``).

Cache directory: ``$GATEDATTN_CACHE`` if set, else ``~/.cache/gatedattn``. Entries are keyed by content
hashes, so a stale entry is never reused.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def cache_dir(*parts: str) -> Path:
    root = Path(os.environ.get("GATEDATTN_CACHE") or Path.home() / ".cache" / "gatedattn")
    path = root.joinpath(*parts)
    path.mkdir(parents=True, exist_ok=True)
    return path


def sha256_text(*parts: str) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p.encode("utf-8", "surrogatepass"))
        h.update(b"\0")
    return h.hexdigest()
