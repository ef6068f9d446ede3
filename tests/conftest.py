import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from gatedattn import GatedLM, load_config


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(1)  # tiny ops: one thread avoids OpenMP overhead (and oversubscription on shared CPUs)


def tiny_model(**overrides) -> GatedLM:
    """A randomly initialised ``tiny`` model in float64 (tight comparisons); overrides are dotted keys."""
    cfg = load_config("tiny", {f"model.{k}": v for k, v in overrides.items()})
    return GatedLM(cfg.model).double().eval()


@pytest.fixture
def shared_cache(tmp_path_factory, monkeypatch):
    """One token/tokenizer cache for the whole test session, away from the user's."""
    monkeypatch.setenv("GATEDATTN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def write_plays(root: Path, count: int, chars: int) -> Path:
    """The first ``count`` built-in plays, cut to ``chars`` characters each, as .txt files: a small real corpus."""
    from gatedattn.data.corpora import shakespeare_documents

    for d in shakespeare_documents()[:count]:
        (root / f"{d.name}.txt").write_text(d.text[:chars])
    return root


def kill_when_paused(child_script: str, *args: str) -> None:
    """Run ``python -c child_script *args``; when it prints PAUSED on stderr (at the point the script
    injected), SIGKILL it there. Fails if the child ends before it pauses."""
    proc = subprocess.Popen([sys.executable, "-c", child_script, *args], stderr=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    watchdog = threading.Timer(180, proc.kill)
    watchdog.start()
    try:
        for line in proc.stderr:
            if "PAUSED" in line:
                os.kill(proc.pid, signal.SIGKILL)
                break
        proc.wait()
    finally:
        watchdog.cancel()
    assert proc.returncode == -signal.SIGKILL, "the run ended before it reached the pause point"
