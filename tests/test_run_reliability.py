"""Run directories under damage, kills and concurrent readers: every case falls back, finishes or refuses
with one line, and loses nothing."""

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_plays

from gatedattn import GatedAttnError, GatedLM, load_config
from gatedattn.artifacts import checkpoint_dirs, latest_checkpoint, load_model, open_latest
from gatedattn.artifacts.checkpoints import sha256_file
from gatedattn.artifacts.checkpoints import MAX_UNREADABLE_KEPT, prune_checkpoints
from gatedattn.training import read_metrics, train

SETTINGS = {"data.vocab_size": 300, "data.seq_len": 32, "data.val_fraction": 0.25, "train.max_steps": 12,
            "train.warmup_steps": 2, "train.checkpoint_every": 4, "train.eval_every": 4, "train.eval_batches": 1,
            "train.keep_checkpoints": 2, "train.device": "cpu"}


pytestmark = pytest.mark.usefixtures("shared_cache")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """4 plays, 12k characters each: enough for a tiny model's few steps, quick to tokenise."""
    return write_plays(tmp_path_factory.mktemp("corpus"), 4, 12000)


def _config(corpus, **overrides):
    return load_config("tiny", {**SETTINGS, "data.source": str(corpus), **overrides})


@pytest.fixture(scope="module")
def finished(corpus, tmp_path_factory):
    """A finished run (checkpoints at steps 8 and 12) and its metrics."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GATEDATTN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        torch.set_num_threads(1)
        out = tmp_path_factory.mktemp("finished")
        train(_config(corpus), out, progress=False)
    return out


def _copy(finished, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(finished, run)
    return run


def _losses(run):
    return [(r["step"], r.get("loss"), r.get("val_loss")) for r in read_metrics(run / "metrics.jsonl")
            if "event" not in r]


def _rewrite_manifest_entry(ckpt: Path, name: str) -> None:
    """Make ``name`` pass the manifest again after it was changed (damage the manifest cannot see)."""
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest[name] = {"size": (ckpt / name).stat().st_size, "sha256": sha256_file(ckpt / name)}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))


def _resume_from_8_reproduces(run, finished, corpus):
    r = train(_config(corpus), run, progress=False)
    assert r.resumed_from == 8 and r.steps == 12
    assert _losses(run) == _losses(finished)


def test_a_manifest_that_is_not_an_object_falls_back_to_the_previous_checkpoint(finished, corpus, tmp_path, caplog):
    run = _copy(finished, tmp_path)
    (run / "checkpoints/step_0000012/manifest.json").write_text("[1, 2, 3]")
    with caplog.at_level("WARNING", logger="gatedattn"):
        assert latest_checkpoint(run).name == "step_0000008"
    assert any("step_0000012" in r.getMessage() and "manifest.json" in r.getMessage() for r in caplog.records)
    assert load_model(run).path.name == "step_0000008"
    _resume_from_8_reproduces(run, finished, corpus)


def test_a_trainer_state_that_does_not_unpickle_falls_back(finished, corpus, tmp_path):
    run = _copy(finished, tmp_path)
    ckpt = run / "checkpoints/step_0000012"
    (ckpt / "trainer_state.pt").write_bytes(b"not a pickle at all" * 10)
    _rewrite_manifest_entry(ckpt, "trainer_state.pt")  # the manifest matches: only loading can tell
    _resume_from_8_reproduces(run, finished, corpus)
    assert list((run / "checkpoints").glob("step_0000012.unreadable-*"))


def test_garbage_run_config_and_lost_tokenizer_and_a_stray_byte_in_metrics_still_resume(finished, corpus, tmp_path):
    run = _copy(finished, tmp_path)
    shutil.rmtree(run / "checkpoints/step_0000012")
    (run / "config.yaml").write_bytes(b"\x00\xff: [unclosed")
    (run / "tokenizer.json").unlink()  # every checkpoint holds a copy
    with open(run / "metrics.jsonl", "ab") as f:
        f.write(b'{"step": 9, "loss": \xff\xfe}\n')
    assert load_model(run).run_config.train.max_steps == 12  # from the checkpoint's own copy
    _resume_from_8_reproduces(run, finished, corpus)
    assert load_config(str(run / "config.yaml")).train.max_steps == 12  # rewritten
    assert (run / "tokenizer.json").read_text() == (finished / "tokenizer.json").read_text()


def test_finishing_is_idempotent_after_a_kill_right_after_the_final_checkpoint(finished, corpus, tmp_path, capsys):
    run = _copy(finished, tmp_path)
    # The state a SIGKILL leaves between renaming the final checkpoint into place and the end of the run:
    # the old checkpoint not yet pruned, no result.json, no loss.png.
    shutil.copytree(run / "checkpoints/step_0000008", run / "checkpoints/step_0000004")
    (run / "result.json").unlink()
    (run / "loss.png").unlink()
    r = train(_config(corpus), run, progress=False)
    assert r.resumed_from == 12 and r.steps == 12 and r.model is not None
    assert [p.name for p in checkpoint_dirs(run)] == ["step_0000012", "step_0000008"]
    assert (run / "loss.png").is_file()
    mine, theirs = (json.loads((d / "result.json").read_text()) for d in (run, finished))
    same = ("steps", "tokens", "train_loss", "val_loss", "spikes", "nonfinite_skips", "tokens_per_s")
    assert {k: mine[k] for k in same} == {k: theirs[k] for k in same}
    assert _losses(run) == _losses(finished)


def test_pruning_renames_before_it_deletes_and_leftovers_are_cleaned(finished, corpus, tmp_path, monkeypatch):
    run = _copy(finished, tmp_path)

    def killed(path, *args, **kwargs):  # the process dies inside the delete
        raise KeyboardInterrupt

    monkeypatch.setattr(shutil, "rmtree", killed)
    with pytest.raises(KeyboardInterrupt):
        prune_checkpoints(run, 1)
    monkeypatch.undo()
    names = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert names[0].startswith(".trash-step_0000008") and names[1:] == ["step_0000012"]
    assert latest_checkpoint(run).name == "step_0000012"
    train(_config(corpus, **{"train.max_steps": 16}), run, progress=False)
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step_0000012", "step_0000016"]


def test_a_reader_survives_a_prune_that_takes_its_checkpoint_away(finished, tmp_path):
    run = _copy(finished, tmp_path)
    calls = []

    def load(path):
        calls.append(path.name)
        if len(calls) == 1:  # meanwhile the trainer writes step 16 and prunes step 12
            shutil.copytree(path, run / "checkpoints/step_0000016")
            os.rename(path, run / "checkpoints/.trash-step_0000012-1")
            raise FileNotFoundError(2, "No such file or directory", str(path / "model.safetensors"))
        return GatedLM.from_pretrained(path)

    path, model = open_latest(run, load)
    assert calls == ["step_0000012", "step_0000016"] and path.name == "step_0000016"
    assert isinstance(model, GatedLM)


_TRAINER = """
import json, sys
import torch
from gatedattn import load_config
from gatedattn.training import train
torch.set_num_threads(1)
train(load_config("tiny", json.loads(sys.argv[1])), sys.argv[2], progress=False)
"""


def test_reading_a_run_while_it_checkpoints_and_prunes_every_step(corpus, tmp_path):
    run = tmp_path / "live"
    overrides = {**SETTINGS, "data.source": str(corpus), "train.max_steps": 400, "train.checkpoint_every": 1,
                 "train.keep_checkpoints": 1, "train.eval_every": 0, "train.eval_batches": 0}
    proc = subprocess.Popen([sys.executable, "-c", _TRAINER, json.dumps(overrides), str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.time() + 120
        while not checkpoint_dirs(run) and time.time() < deadline:
            time.sleep(0.05)
        steps = []
        for _ in range(8):  # each read races the trainer's write + prune of the next step
            assert proc.poll() is None, "the trainer finished before the reads were done"
            steps.append(int(load_model(run).path.name.split("_")[1]))
        assert steps == sorted(steps) and steps[-1] > steps[0]
    finally:
        proc.kill()
        proc.wait()


def test_set_aside_checkpoints_are_counted_and_capped(finished, corpus, tmp_path, caplog):
    run = _copy(finished, tmp_path)
    for i in range(5):
        shutil.copytree(run / "checkpoints/step_0000008", run / f"checkpoints/step_0000004.unreadable-{i + 1}")
    weights = run / "checkpoints/step_0000012/model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1] + b"\x00")
    with caplog.at_level("WARNING", logger="gatedattn"):
        train(_config(corpus), run, progress=False)
    aside = sorted(p.name for p in (run / "checkpoints").glob("*.unreadable-*"))
    assert len(aside) == MAX_UNREADABLE_KEPT and any(n.startswith("step_0000012.") for n in aside)
    [warning] = [r.getMessage() for r in caplog.records if "set aside" in r.getMessage()]
    assert f"holds {MAX_UNREADABLE_KEPT} such" in warning and "\n" not in warning


# -- one line, exit 2, through the CLI ----------------------------------------------------------------------

def _cli(*args, cwd=None):
    proc = subprocess.run([sys.executable, "-m", "gatedattn.cli.main", *map(str, args)], capture_output=True,
                          text=True, timeout=300, cwd=cwd)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("flags, message", [
    (["--top-k", "-3"], "top_k must be >= 0"),
    (["--temperature", "nan"], "temperature must be a finite number"),
    (["--top-p", "0"], "top_p must be in (0, 1]"),
    (["--max-new-tokens", "100000"], "exceeds model.max_position_embeddings=2048"),
])
def test_generate_refuses_settings_out_of_range(finished, flags, message):
    code, err = _cli("generate", finished, "--prompt", "ROMEO.", *flags)
    assert code == 2 and message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_model_config_that_is_not_an_object_is_one_line(finished, tmp_path):
    model_dir = tmp_path / "model"
    shutil.copytree(finished / "checkpoints/step_0000012", model_dir)
    (model_dir / "config.json").write_text('{"model_type": "gatedattn", "d_model": [1, 2]}')
    code, err = _cli("generate", model_dir, "--prompt", "x")
    assert code == 2 and "d_model" in err and "Traceback" not in err
    (model_dir / "config.json").write_text("[1, 2]")
    with pytest.raises(GatedAttnError, match="must hold a JSON object"):
        GatedLM.from_pretrained(model_dir)


class _Payload:
    """Unpickling this would create a folder: the proof that a pickle ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def test_a_hf_checkpoint_holding_a_pickle_payload_is_refused_in_one_line(tmp_path):
    pytest.importorskip("transformers")
    hf = tmp_path / "hf"
    hf.mkdir()
    (hf / "config.json").write_text(json.dumps({
        "model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 64, "hidden_size": 16,
        "intermediate_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "num_key_value_heads": 2}))
    marker = tmp_path / "payload-ran"
    with open(hf / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.embed_tokens.weight": _Payload(str(marker))}, f)
    (tmp_path / "t.txt").write_text("some text to analyse " * 10)
    code, err = _cli("analyze", hf, "--token-ids", _ids_file(tmp_path))
    assert code == 2 and "cannot load" in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def _ids_file(tmp_path) -> Path:
    path = tmp_path / "ids.txt"
    path.write_text(" ".join(str(i) for i in range(1, 20)))
    return path


def test_asking_for_cuda_without_one_creates_nothing(corpus, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(GatedAttnError, match="no CUDA device"):
        train(_config(corpus, **{"train.device": "cuda"}), tmp_path / "never", progress=False)
    assert not (tmp_path / "never").exists()


def test_more_steps_on_resume_keep_the_planned_schedule_and_hold_its_floor(finished, corpus, tmp_path, caplog):
    run = _copy(finished, tmp_path)
    with caplog.at_level("INFO", logger="gatedattn"):
        train(_config(corpus, **{"train.max_steps": 16}), run, progress=False)
    lrs = {r["step"]: r["lr"] for r in read_metrics(run / "metrics.jsonl") if "lr" in r}
    before = {r["step"]: r["lr"] for r in read_metrics(finished / "metrics.jsonl") if "lr" in r}
    cfg = _config(corpus).train
    assert all(lrs[s] == before[s] for s in before)  # the first 12 steps are untouched
    assert [lrs[s] for s in (13, 14, 15, 16)] == pytest.approx([cfg.lr * cfg.min_lr_ratio] * 4, rel=1e-12)
    assert any("planned for 12" in r.getMessage() for r in caplog.records)
