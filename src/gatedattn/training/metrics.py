"""Run bookkeeping: metrics.jsonl (+ TensorBoard when installed), loss-spike detection, the environment
record, and log lines that do not break the progress bar."""

from __future__ import annotations

import json
import logging
import math
import os
import platform
import statistics
import subprocess
import sys
from collections import deque
from pathlib import Path

import torch

from ..artifacts.runs import read_jsonl
from ..errors import MissingExtraError
from ..fileio import atomic_write_text
from ..reporting import LossCurves
from ..reporting import plot_loss_curves as plot_curves

log = logging.getLogger("gatedattn.training")


def _clean(value):
    """JSON has no NaN/Inf: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def tensorboard_tag(key: str) -> str:
    """The TensorBoard tag of a metrics.jsonl key, grouped by section: ``loss`` -> ``train/loss``,
    ``val_ppl`` -> ``val/ppl``; keys that name their section (``probe/...``) stay as they are."""
    if "/" in key:
        return key
    if key.startswith("val_"):
        return "val/" + key[len("val_"):]
    return "train/" + key


class MetricsLog:
    """Appends one JSON object per line to ``metrics.jsonl``; mirrors numbers to TensorBoard if available
    (tags from ``tensorboard_tag``; the JSONL keys stay as they are, other code reads them)."""

    def __init__(self, path: Path, tensorboard: bool = True):
        self.path = path
        self.file = open(path, "a", encoding="utf-8")
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:  # tensorboard is optional
                pass

    @staticmethod
    def truncate(path: Path, step: int) -> None:
        """Keep the records of steps <= ``step`` (a resumed run rewrites the later ones); drop a line cut
        short by a crash."""
        if not path.is_file():
            return
        kept = [json.dumps(r) for r in read_jsonl(path) if r.get("step", 0) <= step]
        atomic_write_text(path, "".join(line + "\n" for line in kept))

    def write(self, record: dict) -> None:
        self.file.write(json.dumps({k: _clean(v) for k, v in record.items()}) + "\n")
        self.file.flush()
        if self.tb is not None and "step" in record:
            for key, value in record.items():
                if isinstance(value, (int, float)) and not isinstance(value, bool) and key != "step":
                    self.tb.add_scalar(tensorboard_tag(key), value, record["step"])

    def close(self) -> None:
        self.file.close()
        if self.tb is not None:
            self.tb.close()


def read_metrics(path: str | Path) -> list[dict]:
    """The records of a metrics.jsonl (damaged lines skipped)."""
    return read_jsonl(Path(path))


def plot_loss_curves(runs: dict[str, str | Path], out_png: str | Path) -> Path | None:
    """Training loss (solid) and validation loss (dashed, markers) against tokens seen, one colour per run
    directory; None when matplotlib is not installed (a run needs no picture to be complete)."""
    curves = {name: LossCurves.from_records(read_metrics(Path(run_dir) / "metrics.jsonl"), x="tokens")
              for name, run_dir in runs.items()}
    try:
        return plot_curves(curves, out_png, xlabel="tokens")
    except MissingExtraError:
        return None


class SpikeDetector:
    """A loss is a spike when it exceeds ``factor`` x the median of the previous ``window`` finite losses
    (checked once the window is full). Every finite loss, spike or not, enters the window."""

    def __init__(self, window: int, factor: float, history: list[float] | None = None):
        self.factor = factor
        self.history: deque[float] = deque(history or [], maxlen=window)

    def update(self, loss: float) -> bool:
        if not math.isfinite(loss):
            return False
        spike = len(self.history) == self.history.maxlen and loss > self.factor * statistics.median(self.history)
        self.history.append(loss)
        return spike


def _git_revision() -> dict:
    here = Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return {}
    return {"git_revision": sha, "git_dirty": bool(dirty)} if sha else {}


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment_info(device: torch.device) -> dict:
    from .. import __version__

    versions = {"python": platform.python_version(), "torch": torch.__version__, "gatedattn": __version__}
    for name in ("numpy", "tokenizers", "safetensors", "transformers"):
        module = sys.modules.get(name)
        if module is None:
            try:
                module = __import__(name)
            except ImportError:
                continue
        versions[name] = getattr(module, "__version__", "?")
    info = {"versions": versions, **_git_revision(), "platform": platform.platform(), "cpu": _cpu_name(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
            "argv": sys.argv}
    if device.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
        info["cuda_version"] = torch.version.cuda
    return info


class _TqdmHandler(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        tqdm.write(self.format(record), file=sys.stderr)


def setup_cli_logging(level: int = logging.INFO) -> None:
    """Route gatedattn's log lines of ``level`` and above to stderr through tqdm, so they do not break the
    progress bar."""
    logger = logging.getLogger("gatedattn")
    if not any(isinstance(h, _TqdmHandler) for h in logger.handlers):
        handler = _TqdmHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
        logger.propagate = False
    logger.setLevel(level)
