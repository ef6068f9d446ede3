"""Checkpoints of a training run: ``RUN/checkpoints/step_XXXXXXX/``.

Each holds ``config.json`` + ``model.safetensors`` (``GatedLM.save_pretrained``, so the folder is a model
directory), ``tokenizer.json``, ``run_config.yaml`` (the run's resolved config), ``trainer_state.pt``
(optimizer, scheduler, RNG states, data position, counters) and ``manifest.json`` (size and SHA-256 of
every other file). A checkpoint is written into a temporary folder, every file fsynced, then renamed into
place, so a crash mid-write never leaves a half-written ``step_*`` folder; one damaged later (truncated,
edited) fails its manifest check, is reported and skipped in favour of the previous one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path

import torch

from ..data.cache import fsync_path
from ..modeling.model import CONFIG_NAME, WEIGHTS_NAME

log = logging.getLogger("gatedattn.training")

STATE_NAME, MANIFEST_NAME, TOKENIZER_NAME, RUN_CONFIG_NAME = (
    "trainer_state.pt", "manifest.json", "tokenizer.json", "run_config.yaml")
_STEP_DIR = re.compile(r"^step_(\d+)$")


def test_pause(point: str, step: int) -> None:
    """Test hook: with ``GATEDATTN_TEST_PAUSE=POINT:STEP`` (``step:N`` after update N is logged,
    ``checkpoint:N`` in the middle of writing checkpoint N) the process says so on stderr and sleeps, so a
    test can SIGKILL it at exactly that point."""
    if os.environ.get("GATEDATTN_TEST_PAUSE") == f"{point}:{step}":
        print(f"GATEDATTN_TEST_PAUSED {point}:{step}", file=sys.stderr, flush=True)
        time.sleep(600)


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """``step_*`` folders of a run, newest first."""
    root = Path(run_dir) / "checkpoints"
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def checkpoint_step(path: Path) -> int:
    return int(_STEP_DIR.match(path.name).group(1))


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checkpoint(path: Path) -> str | None:
    """Why ``path`` is not a readable checkpoint, or None when it is."""
    for name in (CONFIG_NAME, WEIGHTS_NAME, MANIFEST_NAME):
        if not (path / name).is_file():
            return f"{name} is missing"
    try:
        manifest = json.loads((path / MANIFEST_NAME).read_text())
    except (OSError, json.JSONDecodeError):
        return f"{MANIFEST_NAME} is unreadable"
    for name, want in manifest.items():
        file = path / name
        if not file.is_file():
            return f"{name} is missing"
        if file.stat().st_size != want["size"] or _sha256(file) != want["sha256"]:
            return f"{name} does not match its recorded size and SHA-256"
    return None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest readable checkpoint folder of a run (config.json + model.safetensors verified against
    the manifest); newer unreadable ones are reported with a warning line and skipped."""
    for path in checkpoint_dirs(run_dir):
        reason = verify_checkpoint(path)
        if reason is None:
            return path
        log.warning("warning: checkpoint %s is unreadable (%s); trying the previous one", path, reason)
    return None


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, run_config: str, state: dict, keep: int) -> Path:
    """Write checkpoint ``step`` atomically and keep only the newest ``keep`` checkpoints."""
    root = run_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save(tmp / TOKENIZER_NAME)
    (tmp / RUN_CONFIG_NAME).write_text(run_config)
    test_pause("checkpoint", step)
    torch.save(state, tmp / STATE_NAME)
    manifest = {}
    for file in sorted(tmp.iterdir()):
        fsync_path(file)
        manifest[file.name] = {"size": file.stat().st_size, "sha256": _sha256(file)}
    (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1))
    fsync_path(tmp / MANIFEST_NAME)
    fsync_path(tmp)
    os.rename(tmp, final)
    fsync_path(root)
    for old in checkpoint_dirs(run_dir)[keep:]:
        shutil.rmtree(old)
    return final


def tidy_before_resume(run_dir: Path, resume_from: Path | None) -> None:
    """Delete temporary folders left by a process killed mid-write, and set aside (rename, never delete)
    checkpoints newer than the one resumed from: they are unreadable, and their step will be written again."""
    root = run_dir / "checkpoints"
    for tmp in root.glob(".tmp-step_*") if root.is_dir() else ():
        log.info("removing %s, a checkpoint whose writing was interrupted", tmp)
        shutil.rmtree(tmp, ignore_errors=True)
    start = checkpoint_step(resume_from) if resume_from is not None else -1
    for path in checkpoint_dirs(run_dir):
        if checkpoint_step(path) > start:
            aside = path.with_name(f"{path.name}.unreadable-{int(time.time())}")
            log.warning("warning: moving unreadable checkpoint %s to %s", path, aside.name)
            path.rename(aside)


def load_trainer_state(path: Path) -> dict:
    return torch.load(path / STATE_NAME, map_location="cpu", weights_only=True)
