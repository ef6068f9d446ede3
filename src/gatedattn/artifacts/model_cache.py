"""Models that are slow to read (a GGUF file: parsed and dequantised on every load) converted once to a HF
safetensors model directory in the cache, ``$GATEDATTN_CACHE/models/<name>-<key>``.

The key is the source file's resolved path, size and modification time with the transformers version that
converted it (hashing the file would cost a good part of a cached load), so a replaced file or another
converter makes a new entry. An entry is built in a temporary directory and renamed into place; its
manifest, written last, records every file's size. An entry without a readable manifest or whose files
differ from it is removed and rebuilt, never read.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any, Callable

from ..data.cache import cache_dir, sha256_text
from ..fileio import atomic_write_text

MANIFEST = "gatedattn-conversion.json"


def entry_for(source: Path) -> Path:
    """Where the conversion of ``source`` lives (whether or not it exists yet)."""
    try:
        converter = metadata.version("transformers")
    except metadata.PackageNotFoundError:  # the load itself then says what to install
        converter = "none"
    st = source.stat()
    key = sha256_text(str(source.resolve()), str(st.st_size), str(st.st_mtime_ns), converter)
    return cache_dir("models") / f"{source.stem}-{key[:16]}"


def is_complete(entry: Path) -> bool:
    """The manifest is there and every file it lists has its recorded size."""
    try:
        files = json.loads((entry / MANIFEST).read_text())["files"]
        return bool(files) and all((entry / name).stat().st_size == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return False


def converted(source: Path, build: Callable[[], tuple[Any, Any]]) -> Path:
    """The cache entry holding ``source`` converted: ``build()`` returns (a transformers model, its tokenizer
    or None); it runs only when there is no complete entry."""
    from safetensors.torch import save_model

    entry = entry_for(source)
    if is_complete(entry):
        return entry
    model, tokenizer = build()
    tmp = Path(tempfile.mkdtemp(dir=entry.parent, prefix=f".tmp-{entry.name}-"))
    try:
        # The weights and config written directly: save_pretrained refuses a model that came from a GGUF.
        model.config.save_pretrained(tmp)
        save_model(model, str(tmp / "model.safetensors"))
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        atomic_write_text(tmp / MANIFEST, json.dumps({"source": str(source), "files": files}, indent=1))
        if entry.exists():  # damaged or incomplete: not trusted
            shutil.rmtree(entry, ignore_errors=True)
        try:
            os.rename(tmp, entry)
        except OSError:  # another process put its conversion there first
            if not is_complete(entry):
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return entry


def discard(entry: Path) -> None:
    """Remove an entry that could not be read (it is rebuilt on the next load)."""
    shutil.rmtree(entry, ignore_errors=True)
