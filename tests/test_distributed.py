"""Data parallelism (DDP, FSDP2) on CPU with gloo, 2 processes, against a single process with the same global
batch (the independent reference): losses, gradients, the MoE balance loss, sharded checkpoints resumed on
another world size, and a rank killed mid-run.

Tolerance: the ranks' results differ from one process's only in the order of fp32 sums (each rank's mean
over half the batch, then the mean of the two), so losses and gradients must agree to 1e-5 relative."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import write_plays

import gatedattn
from gatedattn import ConfigError, GatedAttnError, GatedLM, load_config, load_model
from gatedattn.artifacts import checkpoint_dirs
from gatedattn.config import TrainConfig
from gatedattn.training import read_metrics, train
from gatedattn.training.distributed import Parallel, clip_grad_norm, parallelize, setup_parallel

SRC = Path(gatedattn.__file__).resolve().parents[1]  # this checkout's source, for the child processes
MOE = {"moe.num_experts": 4, "moe.top_k": 2, "moe.expert_ffn_dim": 32, "moe.load_balance_coef": 0.1}
# name: (model overrides, train.parallel, activation checkpointing, train.fsdp_param_dtype)
CASES = {"ddp": ({}, "ddp", False, "float32"), "fsdp": ({}, "fsdp", False, "float32"),
         "fsdp+ac": ({}, "fsdp", True, "float32"), "moe-ddp": (MOE, "ddp", False, "float32"),
         "moe-fsdp": (MOE, "fsdp", False, "float32"), "fsdp-bf16": ({}, "fsdp", False, "bfloat16")}
LOSSES = ("loss", "lm_loss", "load_balance_loss", "z_loss")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _model(overrides: dict) -> GatedLM:
    torch.manual_seed(0)
    return GatedLM(load_config("tiny", {f"model.{k}": v for k, v in overrides.items()}).model).train()


def _batch() -> torch.Tensor:
    return torch.randint(0, 257, (4, 32), generator=torch.Generator().manual_seed(1))


def _step(forward, model: GatedLM, x: torch.Tensor, parallel: Parallel) -> dict:
    """One forward/backward: the global batch's losses, whole gradients and their norm."""
    out = forward(x, labels=x)
    out.loss.backward()
    losses = parallel.mean(torch.stack([getattr(out, k).detach().float() for k in LOSSES]))
    norm = clip_grad_norm([p for p in model.parameters()], float("inf"), parallel)
    grads = {n: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).clone()
             for n, p in model.named_parameters()}
    return {"losses": losses, "norm": norm, "grads": grads}


def _grad_worker(rank: int, world: int, port: int, out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        results = {}
        for name, (overrides, mode, ac, dtype) in CASES.items():
            parallel = Parallel(mode, torch.device("cpu"), rank, world)
            model = _model(overrides)
            tc = TrainConfig(parallel=mode, activation_checkpointing=ac, fsdp_param_dtype=dtype)
            forward = parallelize(model, tc, parallel)
            results[name] = _step(forward, model, parallel.shard(_batch()), parallel)
        try:
            setup_parallel(TrainConfig(parallel="ddp", batch_size=3), torch.device("cpu"))
        except GatedAttnError as e:
            results["odd batch"] = str(e)
        if rank == 0:
            torch.save(results, out)
    finally:
        dist.destroy_process_group()


def test_ddp_and_fsdp_losses_and_gradients_equal_one_process(tmp_path):
    out = tmp_path / "ranks.pt"
    mp.spawn(_grad_worker, args=(2, _free_port(), str(out)), nprocs=2)
    ranks = torch.load(out)
    assert ranks.pop("odd batch") == ("train.batch_size=3 (the global micro-batch) must be a multiple of the 2 "
                                      "ranks; e.g. train.batch_size=2")
    one = Parallel("none", torch.device("cpu"))
    for name, (overrides, _, _, dtype) in CASES.items():
        model = _model(overrides)
        ref = _step(model, model, _batch(), one)
        got = ranks[name]
        if dtype == "bfloat16":  # weights rounded to bf16 in compute: close, but not fp32-close
            assert 1e-6 < abs(float(got["losses"][0] - ref["losses"][0])) < 1e-3
            for param, grad in ref["grads"].items():
                assert got["grads"][param].dtype == torch.float32
                assert float((got["grads"][param] - grad).abs().max()) < 0.05 * float(grad.abs().max()), param
            continue
        torch.testing.assert_close(got["losses"], ref["losses"], rtol=1e-5, atol=1e-6, msg=name)
        assert got["norm"] == pytest.approx(ref["norm"], rel=1e-5), name
        assert got["grads"].keys() == ref["grads"].keys()
        for param, grad in ref["grads"].items():
            torch.testing.assert_close(got["grads"][param], grad, rtol=1e-5, atol=1e-7, msg=f"{name} {param}")


def test_settings_that_cannot_work_are_one_line_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="train.fsdp_param_dtype=bfloat16 needs train.parallel=fsdp"):
        load_config("tiny", {"train.fsdp_param_dtype": "bfloat16"})
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it
    with pytest.raises(GatedAttnError, match="torchrun started 2 processes but train.parallel=none"):
        train(load_config("tiny"), tmp_path, progress=False)
    assert not any(tmp_path.iterdir())  # nothing written


def test_the_moe_balance_loss_is_the_global_batchs():
    """Without summing the expert counts over ranks the ranks' mean balance loss would differ: the check
    above has something to catch."""
    model = _model(MOE)
    x = _batch()
    with torch.no_grad():
        whole = model(x, labels=x).load_balance_loss
        halves = torch.stack([model(h, labels=h).load_balance_loss for h in x.chunk(2)]).mean()
    assert abs((whole - halves).item()) > 1e-4


def test_each_rank_reads_a_disjoint_slice_and_together_the_whole_batch():
    batch = torch.arange(12)
    slices = [Parallel("ddp", torch.device("cpu"), rank, 3).shard(batch) for rank in range(3)]
    assert [len(s) for s in slices] == [4, 4, 4]
    assert torch.equal(torch.cat(slices), batch)


# -- the trainer under torchrun ---------------------------------------------------------------------------
SETTINGS = {"data.vocab_size": 300, "data.seq_len": 32, "data.val_fraction": 0.25, "train.max_steps": 16,
            "train.warmup_steps": 2, "train.checkpoint_every": 4, "train.eval_every": 8, "train.eval_batches": 1,
            "train.keep_checkpoints": 4, "train.device": "cpu"}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_plays(tmp_path_factory.mktemp("corpus"), 4, 12000)


def _torchrun(corpus: Path, out: Path, parallel: str, **kwargs) -> subprocess.Popen:
    sets = [a for k, v in {**SETTINGS, "train.parallel": parallel}.items() for a in ("--set", f"{k}={v}")]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m",
           "gatedattn", "train", "tiny", "--data", str(corpus), "--out", str(out), "--no-progress", *sets]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get(
        "PYTHONPATH", "")])}
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


def _run(corpus: Path, out: Path, parallel: str) -> None:
    proc = _torchrun(corpus, out, parallel)
    output, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, output


def _losses(run: Path, after: int = 0) -> list[float]:
    return [r["loss"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r and r["step"] > after]


def _max_diff(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b) and a
    return max(abs(x - y) for x, y in zip(a, b))


@pytest.fixture(scope="module")
def single(corpus, tmp_path_factory):
    """The reference: one process, train.parallel=none."""
    out = tmp_path_factory.mktemp("single")
    with pytest.MonkeyPatch.context() as patch:  # the session's cache (module fixtures precede shared_cache)
        patch.setenv("GATEDATTN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        train(load_config("tiny", {**SETTINGS, "data.source": str(corpus)}), out, progress=False)
    return out


@pytest.fixture(scope="module")
def fsdp_run(corpus, tmp_path_factory):
    out = tmp_path_factory.mktemp("fsdp")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("GATEDATTN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        _run(corpus, out, "fsdp")
    return out


@pytest.mark.usefixtures("shared_cache")
def test_torchrun_fsdp_trains_like_one_process_and_exports_the_whole_model(single, fsdp_run):
    assert _max_diff(_losses(fsdp_run), _losses(single)) < 1e-4
    val = [[r["val_loss"] for r in read_metrics(run / "metrics.jsonl") if "val_loss" in r] for run in
           (fsdp_run, single)]
    assert _max_diff(*val) < 1e-4
    ckpt = checkpoint_dirs(fsdp_run)[0]
    assert (ckpt / "sharded" / ".metadata").is_file() and len(list((ckpt / "sharded").glob("*.distcp"))) == 2
    ours, ref = load_model(fsdp_run).model.state_dict(), load_model(single).model.state_dict()
    assert ours.keys() == ref.keys()
    for name, weight in ref.items():
        torch.testing.assert_close(ours[name], weight, rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.slow
@pytest.mark.usefixtures("shared_cache")
def test_torchrun_ddp_trains_like_one_process(single, corpus, tmp_path):
    _run(corpus, tmp_path, "ddp")
    assert _max_diff(_losses(tmp_path), _losses(single)) < 1e-4


@pytest.mark.usefixtures("shared_cache")
@pytest.mark.parametrize("parallel", ["none", "fsdp"])
def test_a_two_rank_checkpoint_resumes_on_one_process(fsdp_run, corpus, tmp_path, parallel):
    run = tmp_path / "run"
    shutil.copytree(fsdp_run, run)
    for ckpt in checkpoint_dirs(run)[:2]:  # as if the run had stopped at step 8
        shutil.rmtree(ckpt)
    (run / "result.json").unlink()
    cfg = load_config("tiny", {**SETTINGS, "data.source": str(corpus), "train.parallel": parallel})
    r = train(cfg, run, progress=False)
    assert r.resumed_from == 8 and r.steps == 16
    assert _max_diff(_losses(run, after=8), _losses(fsdp_run, after=8)) < 1e-4


@pytest.mark.usefixtures("shared_cache")
def test_a_damaged_shard_is_reported_and_the_previous_checkpoint_resumed(fsdp_run, corpus, tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(fsdp_run, run)
    newest = checkpoint_dirs(run)[0]
    shard = next((newest / "sharded").glob("*.distcp"))
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    cfg = load_config("tiny", {**SETTINGS, "data.source": str(corpus)})
    r = train(cfg, run, progress=False)
    assert r.resumed_from == 12 and r.steps == 16
    assert f"{newest.name} is unreadable (sharded/{shard.name} does not match" in caplog.text
    assert _max_diff(_losses(run, after=12), _losses(fsdp_run, after=12)) < 1e-4


def _rewound_to_step_8(single, tmp_path):
    """A copy of the single-process run with its last two checkpoints (and its result) removed."""
    run = tmp_path / "run"
    shutil.copytree(single, run)
    for ckpt in checkpoint_dirs(run)[:2]:
        shutil.rmtree(ckpt)
    (run / "result.json").unlink()
    return run


@pytest.mark.usefixtures("shared_cache")
def test_a_single_process_checkpoint_resumes_under_fsdp(single, corpus, tmp_path):
    run = _rewound_to_step_8(single, tmp_path)
    r = train(load_config("tiny", {**SETTINGS, "data.source": str(corpus), "train.parallel": "fsdp"}), run,
              progress=False)
    assert r.resumed_from == 8 and r.steps == 16
    assert _max_diff(_losses(run, after=8), _losses(single, after=8)) < 1e-4


@pytest.mark.slow
@pytest.mark.usefixtures("shared_cache")
def test_a_single_process_checkpoint_resumes_on_two_fsdp_ranks(single, corpus, tmp_path):
    run = _rewound_to_step_8(single, tmp_path)
    _run(corpus, run, "fsdp")
    assert _max_diff(_losses(run, after=8), _losses(single, after=8)) < 1e-4


def test_info_reports_training_memory_per_rank(capsys):
    from gatedattn.cli.main import main
    from gatedattn.modeling.stats import model_stats

    cfg = load_config("paper-dense-1.7b-28l")
    assert main(["info", "paper-dense-1.7b-28l", "--ranks", "8", "--json"]) == 0
    memory = json.loads(capsys.readouterr().out)["training_memory"]
    total = model_stats(cfg.model)["total_params"]
    assert memory["whole_state_bytes"] == 16 * total and memory["fsdp_state_bytes_per_rank"] == 2 * total
    assert memory["largest_unit_params"] == cfg.model.vocab_size * cfg.model.d_model + cfg.model.d_model
    assert main(["info", "tiny", "--ranks", "0"]) == 2
    assert "--ranks must be a positive integer, got 0" in capsys.readouterr().err


def _rank_pid(launcher: int, rank: int) -> int | None:
    """The pid of the torchrun worker with ``rank`` (a child of the launcher process)."""
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or int((proc / "stat").read_text().split(") ")[1].split()[1]) != launcher:
                continue
            if f"RANK={rank}".encode() in (proc / "environ").read_bytes().split(b"\0"):
                return int(proc.name)
        except OSError:
            continue
    return None


@pytest.mark.usefixtures("shared_cache")
def test_kill_9_of_a_rank_mid_run_then_resume_reproduces_the_uninterrupted_run(fsdp_run, corpus, tmp_path):
    out = tmp_path / "killed"
    proc = _torchrun(corpus, out, "fsdp", start_new_session=True)
    try:
        deadline = time.time() + 240
        while not (out / "checkpoints" / "step_0000004").is_dir():
            assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.02)
        pid = _rank_pid(proc.pid, 1)
        assert pid is not None, "no rank-1 worker found"
        os.kill(pid, signal.SIGKILL)
        proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode != 0
    assert not (out / "result.json").exists(), "the kill came after the run finished; nothing was interrupted"
    _run(corpus, out, "fsdp")
    assert _losses(out) == _losses(fsdp_run)  # same ranks, same reduction order: bit for bit on CPU
