"""Crash-safe file writes and strict reads of small JSON files: the one implementation every layer uses.

A write goes to a temporary name beside the target, is fsynced, then renamed over it, so a crash leaves
either the old file or the new one, never a half-written file under the final name. Reads of JSON a user
may have damaged raise one-line ``GatedAttnError`` messages instead of tracebacks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .errors import GatedAttnError


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
    path = Path(path)
    tmp = tmp_name(path)
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_path(path.parent)


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def read_json_object(path: Path, what: str = "") -> dict:
    """The JSON object in ``path``; anything else (missing, not UTF-8, not JSON, not an object) is one line."""
    label = f"{what} {path}" if what else str(path)
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise GatedAttnError(f"{label} does not exist") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GatedAttnError(f"cannot read {label}: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise GatedAttnError(f"{label} must hold a JSON object, found {type(data).__name__}")
    return data
