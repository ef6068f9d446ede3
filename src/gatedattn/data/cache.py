"""The on-disk cache (trained tokenizers, token arrays) and crash-safe file writes.

Cache directory: ``$GATEDATTN_CACHE`` if set, else ``~/.cache/gatedattn``. Entries are keyed by content
hashes, so a stale entry is never reused; every write goes to a temporary name, is fsynced, then renamed,
so a crash leaves either the old state or the new one, never a half-written file under the final name.
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


def fsync_path(path: Path) -> None:
    """Flush a file's (or a directory's entries') data to disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def tmp_name(path: Path) -> Path:
    return path.with_name(f".tmp-{os.getpid()}-{path.name}")


def atomic_write_bytes(path: Path, data: bytes) -> None:
    tmp = tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))
