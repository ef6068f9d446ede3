"""A base install (torch, numpy, pyyaml, safetensors, tqdm; no extras) runs what needs no extra, and a
command that needs one fails with one line naming it (exit 2).

Each command runs in a subprocess where a ``sys.meta_path`` finder makes the extras' packages look absent.
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

import gatedattn

EXTRAS = ("matplotlib", "tokenizers", "transformers", "pyarrow", "wonderwords", "gguf", "accelerate", "lm_eval")

# argv[1] == "-c": run argv[2] as code; else run the gatedattn CLI with argv[1:].
BOOTSTRAP = f"""
import importlib.abc, importlib.util, runpy, sys
BLOCKED = {set(EXTRAS)!r}
def blocked(name):
    return name.partition(".")[0] in BLOCKED
assert not [m for m in sys.modules if blocked(m)], "an extra was imported at start-up"
class Absent(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if blocked(name):
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None
sys.meta_path.insert(0, Absent())
_find_spec = importlib.util.find_spec
importlib.util.find_spec = lambda name, package=None: None if blocked(name) else _find_spec(name, package)
if sys.argv[1] == "-c":
    exec(sys.argv[2])
else:
    sys.argv = ["gatedattn", *sys.argv[1:]]
    runpy.run_module("gatedattn.cli.main", run_name="__main__")
"""


def _base_install(*args: str, tmp_path) -> subprocess.CompletedProcess:
    """Run in ``tmp_path`` with the gatedattn these tests import (a relative PYTHONPATH would not reach it)."""
    src = str(Path(gatedattn.__file__).resolve().parents[1])
    env = {**os.environ, "GATEDATTN_CACHE": str(tmp_path / "cache"),
           "PYTHONPATH": os.pathsep.join([src, *filter(None, [os.environ.get("PYTHONPATH")])])}
    return subprocess.run([sys.executable, "-c", BOOTSTRAP, *args], capture_output=True, text=True, timeout=600,
                          cwd=tmp_path, env=env)


def test_base_install_runs_help_info_and_imports(tmp_path):
    proc = _base_install("-c", "import gatedattn.analysis, gatedattn.experiments, gatedattn.reporting, "
                               "gatedattn.training, gatedattn.evaluation\n"
                               "import sys; from gatedattn.cli.main import build_parser; build_parser()\n"
                               f"print(sorted(m for m in sys.modules if m.partition('.')[0] in {EXTRAS!r}))",
                         tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"
    proc = _base_install("--help", tmp_path=tmp_path)
    assert proc.returncode == 0 and "compare" in proc.stdout, proc.stderr
    proc = _base_install("info", "tiny", tmp_path=tmp_path)
    assert proc.returncode == 0 and "total parameters" in proc.stdout, proc.stderr


@pytest.mark.parametrize("args, extra", [
    (("train", "tiny", "--out", "run", "--no-progress"), "tokenizers"),
    (("compare", "--quick", "--out", "cmp", "--no-progress"), "matplotlib"),
    (("analyze", "tiny-run", "--text", "missing.txt", "--out", "report"), "matplotlib"),
])
def test_commands_needing_an_extra_say_which_in_one_line(tmp_path, args, extra):
    proc = _base_install(*args, tmp_path=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert extra in proc.stderr and "pip install 'gatedattn[train]'" in proc.stderr
    assert not (tmp_path / "cmp").exists() and not (tmp_path / "report").exists()


def test_lm_eval_without_its_extra_says_so_in_one_line(tmp_path):
    proc = _base_install("lm-eval", "smollm2", tmp_path=tmp_path)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert "pip install 'gatedattn[eval]'" in proc.stderr
