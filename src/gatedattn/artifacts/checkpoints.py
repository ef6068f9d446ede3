"""Checkpoints of a training run: ``RUN/checkpoints/step_XXXXXXX/``.

Each holds ``config.json`` + ``model.safetensors`` (``GatedLM.save_pretrained``, so the folder is a model
directory), ``tokenizer.json``, ``run_config.yaml`` (the run's resolved config), ``trainer_state.pt``
(optimizer, scheduler, RNG states, data position, counters) and ``manifest.json`` (size and SHA-256 of
every other file).

A data-parallel run (``train.parallel`` ddp or fsdp) adds ``sharded/``: the model and optimizer state as a
``torch.distributed.checkpoint`` (DCP) directory, one file per rank plus ``.metadata``, loadable on any
number of ranks (resharded on load); its ``trainer_state.pt`` then holds no optimizer. ``model.safetensors``
is still the whole model, gathered on rank 0, so every checkpoint stays a model directory. All ranks write
into one temporary folder (on a file system they share); rank 0 writes the manifest, which covers every
rank's files, only after all of them have written, then renames the folder into place.

Every change to the folder is a rename, so a kill at any moment leaves nothing half-done under a final
name: a checkpoint is written into ``.tmp-step_*``, fsynced and renamed into place; an old one is renamed to
``.trash-step_*`` before it is deleted; one that fails its manifest is renamed ``step_*.unreadable-TIME``
(the newest few are kept for inspection). Leftover temporary and trash folders are removed at the next start.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from pathlib import Path
from typing import Callable, TypeVar

import torch

from ..errors import GatedAttnError
from ..fileio import fsync_path
from ..modeling.model import CONFIG_NAME, WEIGHTS_NAME

log = logging.getLogger("gatedattn.artifacts")

STATE_NAME, MANIFEST_NAME, TOKENIZER_NAME, RUN_CONFIG_NAME, SHARDED_DIR = (
    "trainer_state.pt", "manifest.json", "tokenizer.json", "run_config.yaml", "sharded")
CHECKPOINTS_DIR = "checkpoints"
MAX_UNREADABLE_KEPT = 3  # set-aside damaged checkpoints kept for inspection; older ones are deleted
_STEP_DIR = re.compile(r"^step_(\d+)$")
_UNREADABLE = re.compile(r"^step_\d+\.unreadable-\d+$")
T = TypeVar("T")


class CheckpointError(GatedAttnError):
    """A checkpoint folder that cannot be used (missing or damaged files)."""


def checkpoint_dirs(run_dir: str | Path) -> list[Path]:
    """``step_*`` folders of a run, newest first."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found, reverse=True)]


def checkpoint_step(path: Path) -> int:
    return int(_STEP_DIR.match(path.name).group(1))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_checkpoint(path: Path) -> str | None:
    """Why ``path`` is not a readable checkpoint, or None when every file matches its manifest."""
    try:
        manifest = json.loads((path / MANIFEST_NAME).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{MANIFEST_NAME} is missing"
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return f"{MANIFEST_NAME} is unreadable"
    if not isinstance(manifest, dict) or not all(
            isinstance(v, dict) and isinstance(v.get("size"), int) and isinstance(v.get("sha256"), str)
            for v in manifest.values()):
        return f"{MANIFEST_NAME} is not a mapping of file name to size and SHA-256"
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if name not in manifest:
            return f"{MANIFEST_NAME} does not list {name}"
    for name, want in manifest.items():
        file = path / name
        try:
            if file.stat().st_size != want["size"] or sha256_file(file) != want["sha256"]:
                return f"{name} does not match its recorded size and SHA-256"
        except FileNotFoundError:
            return f"{name} is missing"
        except OSError as e:
            return f"{name} is unreadable ({e.strerror})"
    return None


def open_latest(run_dir: str | Path, load: Callable[[Path], T], attempts: int = 5) -> tuple[Path, T] | None:
    """``(folder, load(folder))`` for the newest checkpoint that passes its manifest and loads, or None.

    Each one that fails is reported on one line and the previous one tried. Safe while the run trains: when
    a concurrent prune takes a folder away mid-read, the folders are listed again (newer ones may exist by
    then) instead of falling back to ever older ones that are being pruned too.
    """
    for _ in range(attempts):
        raced = False
        for path in checkpoint_dirs(run_dir):
            reason = verify_checkpoint(path)
            if reason is None:
                try:
                    return path, load(path)
                except (GatedAttnError, OSError) as e:
                    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            if not path.exists():
                raced = True
                break
            log.warning("warning: checkpoint %s is unreadable (%s); trying the previous one", path, reason)
        if not raced:
            return None
    return None


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest checkpoint folder of a run that passes its manifest, or None."""
    found = open_latest(run_dir, lambda path: path)
    return found[0] if found is not None else None


def save_checkpoint(run_dir: Path, step: int, model, tokenizer, run_config: str, state: dict, keep: int) -> Path:
    """Write checkpoint ``step`` atomically, then keep only the newest ``keep`` checkpoints."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-{final.name}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    _finish_checkpoint(tmp, final, tokenizer, run_config, state)
    prune_checkpoints(run_dir, keep)
    return final


def _finish_checkpoint(tmp: Path, final: Path, tokenizer, run_config: str, state: dict) -> None:
    """Add the run's files and the manifest (of every file below ``tmp``) and rename ``tmp`` to ``final``."""
    tokenizer.save(tmp / TOKENIZER_NAME)
    (tmp / RUN_CONFIG_NAME).write_text(run_config, encoding="utf-8")
    torch.save(state, tmp / STATE_NAME)
    manifest = {}
    for file in sorted(p for p in tmp.rglob("*") if p.is_file()):
        fsync_path(file)
        manifest[file.relative_to(tmp).as_posix()] = {"size": file.stat().st_size, "sha256": sha256_file(file)}
    (tmp / MANIFEST_NAME).write_text(json.dumps(manifest, indent=1), encoding="utf-8")
    fsync_path(tmp / MANIFEST_NAME)
    for folder in sorted({p.parent for p in tmp.rglob("*")}, key=lambda p: len(p.parts), reverse=True):
        fsync_path(folder)
    os.rename(tmp, final)
    fsync_path(final.parent)


def save_sharded_checkpoint(run_dir: Path, step: int, model, optimizer, tokenizer, run_config: str, state: dict,
                            keep: int) -> Path:
    """Collective (every rank calls it): write checkpoint ``step`` of a data-parallel run, then prune.

    ``model`` is the (FSDP-sharded or plain) GatedLM, ``state`` the trainer state without the optimizer."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, get_state_dict

    rank = dist.get_rank()
    root = Path(run_dir) / CHECKPOINTS_DIR
    final = root / f"step_{step:07d}"
    tmp = root / f".tmp-{final.name}"  # one name for all ranks
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    dist.barrier()
    model_state, optim_state = get_state_dict(model, optimizer)
    # DCP's save ends by gathering every rank's write results on rank 0: when it returns there, all wrote.
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=str(tmp / SHARDED_DIR))
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if rank == 0:
        from ..modeling.model import GatedLM

        with torch.random.fork_rng(devices=[]):  # the export copy's initialisation must not move the run's RNG
            export = GatedLM(model.config)
        export.load_state_dict(full)
        export.save_pretrained(tmp)
        _finish_checkpoint(tmp, final, tokenizer, run_config, state)
        prune_checkpoints(run_dir, keep)
    dist.barrier()
    return final


def is_sharded(path: Path) -> bool:
    return (path / SHARDED_DIR).is_dir()


def load_sharded_state(path: Path, model, optimizer) -> None:
    """Load a checkpoint's ``sharded/`` model and optimizer state into ``model`` and ``optimizer``, resharded
    for this process group (or for one process without any)."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

    model_state, optim_state = get_state_dict(model, optimizer)
    state = {"model": model_state, "optimizer": optim_state}
    try:
        dcp.load(state, checkpoint_id=str(path / SHARDED_DIR), no_dist=not dist.is_initialized())
    except Exception as e:  # DCP wraps reader errors in CheckpointException and others
        raise CheckpointError(f"{path / SHARDED_DIR} cannot be loaded ({str(e).splitlines()[0][:200]})") from None
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def _delete(path: Path) -> None:
    """Remove a folder so that a kill at any point leaves no half folder under a name anyone reads."""
    trash = path.with_name(f".trash-{path.name}-{os.getpid()}")
    os.rename(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def prune_checkpoints(run_dir: Path, keep: int) -> None:
    for old in checkpoint_dirs(run_dir)[keep:]:
        _delete(old)


def tidy_run(run_dir: Path, resume_from: Path | None) -> None:
    """Before a run (re)starts: delete temporary and trash folders a killed process left, set aside (rename)
    checkpoints newer than the one resumed from (they are unreadable; their step will be written again),
    and keep only the newest ``MAX_UNREADABLE_KEPT`` of those set aside."""
    root = Path(run_dir) / CHECKPOINTS_DIR
    if not root.is_dir():
        return
    for leftover in [*root.glob(".tmp-step_*"), *root.glob(".trash-step_*")]:
        log.info("removing %s, left by an interrupted write or delete", leftover)
        shutil.rmtree(leftover, ignore_errors=True)
    start = checkpoint_step(resume_from) if resume_from is not None else -1
    moved = []
    for path in checkpoint_dirs(run_dir):
        if checkpoint_step(path) > start:
            aside = path.with_name(f"{path.name}.unreadable-{time.time_ns()}")
            path.rename(aside)
            moved.append(path.name)
    if not moved:
        return
    unreadable = sorted((p for p in root.iterdir() if _UNREADABLE.match(p.name)),
                        key=lambda p: int(p.name.rsplit("-", 1)[1]), reverse=True)
    for old in unreadable[MAX_UNREADABLE_KEPT:]:
        _delete(old)
    log.warning("warning: set aside unreadable checkpoint(s) %s as *.unreadable-*; %s now holds %d such "
                "(the newest %d are kept, older ones deleted)", ", ".join(moved), root,
                min(len(unreadable), MAX_UNREADABLE_KEPT), MAX_UNREADABLE_KEPT)


def load_trainer_state(path: Path) -> dict:
    """The trainer state of a checkpoint; a file that does not unpickle is a CheckpointError."""
    try:
        state = torch.load(path / STATE_NAME, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{STATE_NAME} is missing") from None
    except Exception as e:  # torch.load raises many types (UnpicklingError, RuntimeError, EOFError, ...)
        raise CheckpointError(f"{STATE_NAME} cannot be loaded ({type(e).__name__})") from None
    if not isinstance(state, dict) or "step" not in state:
        raise CheckpointError(f"{STATE_NAME} holds no trainer state")
    return state
