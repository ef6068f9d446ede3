"""Data-parallel parity on this machine: ``torchrun --nproc_per_node 2`` (DDP, FSDP2) against one process with
the same global batch, resumes on another world size, and a rank killed with SIGKILL then resumed.

Every run is the CLI (``gatedattn train``), so this measures what users run. Each row's figure is the max
over logged steps of |loss - the reference's loss| (training loss per step; validation loss where logged).
CPU + gloo unless CUDA is there (NCCL then, one GPU per rank).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import harness

SRC = harness.ROOT / "src"


def sets(settings: dict) -> list[str]:
    return [a for k, v in settings.items() for a in ("--set", f"{k}={v}")]


def command(preset: str, out: Path, settings: dict, ranks: int) -> list[str]:
    head = ([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(ranks), "-m"]
            if ranks > 1 else [sys.executable, "-m"])
    return [*head, "gatedattn", "train", preset, "--out", str(out), "--no-progress", *sets(settings)]


def env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(SRC), os.environ.get(
        "PYTHONPATH", "")])}


def run(preset: str, out: Path, settings: dict, ranks: int) -> float:
    start = time.perf_counter()
    subprocess.run(command(preset, out, settings, ranks), env=env(), check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def curve(out: Path, key: str = "loss", after: int = 0) -> dict[int, float]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r[key] for r in records if key in r and r["step"] > after}


def max_diff(a: dict[int, float], b: dict[int, float]) -> float:
    if a.keys() != b.keys() or not a:
        raise SystemExit(f"the runs logged different steps: {sorted(a)} vs {sorted(b)}")
    return max(abs(a[s] - b[s]) for s in a)


def kill_rank_after(preset: str, out: Path, settings: dict, checkpoint_step: int) -> None:
    """Start a 2-rank run, SIGKILL rank 1 once checkpoint ``checkpoint_step`` exists."""
    proc = subprocess.Popen(command(preset, out, settings, 2), env=env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    marker = out / "checkpoints" / f"step_{checkpoint_step:07d}"
    while not marker.is_dir():
        if proc.poll() is not None:
            raise SystemExit("the run ended before the checkpoint to kill after")
        time.sleep(0.02)
    for child in Path("/proc").iterdir():
        try:
            if child.name.isdigit() and b"RANK=1" in (child / "environ").read_bytes().split(b"\0") and int(
                    (child / "stat").read_text().split(") ")[1].split()[1]) == proc.pid:
                os.kill(int(child.name), signal.SIGKILL)
        except OSError:
            continue
    proc.wait(timeout=300)
    if (out / "result.json").exists():
        raise SystemExit("the kill came after the run finished")


def main() -> None:
    p = harness.base_parser("distributed_parity", __doc__)
    p.add_argument("--preset", default="small")
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    half = args.steps // 2
    base = {"train.max_steps": args.steps, "train.checkpoint_every": half, "train.eval_every": half,
            "train.eval_batches": 2, "train.keep_checkpoints": 4}
    moe = {**base, "model.moe.num_experts": 8, "model.moe.top_k": 2, "model.moe.expert_ffn_dim": 64,
           "model.moe.load_balance_coef": 0.01}
    rows, seconds = [], {}
    root = Path(tempfile.mkdtemp(prefix="dist-parity-"))
    try:
        def train(name, settings, ranks, preset=args.preset):
            seconds[name] = run(preset, root / name, settings, ranks)
            return root / name

        single = train("single", base, 1)
        for name, extra in [("ddp", {"train.parallel": "ddp"}), ("fsdp", {"train.parallel": "fsdp"}),
                            ("fsdp+ac", {"train.parallel": "fsdp", "train.activation_checkpointing": True})]:
            out = train(name, {**base, **extra}, 2)
            rows.append({"case": f"2 ranks {name} vs 1 process", "loss": max_diff(curve(out), curve(single)),
                         "val_loss": max_diff(curve(out, "val_loss"), curve(single, "val_loss"))})
        moe_single = train("moe-single", moe, 1, "tiny")
        moe_fsdp = train("moe-fsdp", {**moe, "train.parallel": "fsdp"}, 2, "tiny")
        rows.append({"case": "tiny MoE: 2 ranks fsdp vs 1 process",
                     "loss": max_diff(curve(moe_fsdp), curve(moe_single)),
                     "load_balance_loss": max_diff(curve(moe_fsdp, "load_balance_loss"),
                                                   curve(moe_single, "load_balance_loss"))})
        fsdp = root / "fsdp"
        for parallel in ("none", "fsdp"):  # the 2-rank run cut at step `half`, resumed on 1 process
            out = root / f"resume-{parallel}"
            shutil.copytree(fsdp, out)
            for ckpt in (out / "checkpoints").iterdir():
                if int(ckpt.name.split("_")[1]) > half:
                    shutil.rmtree(ckpt)
            (out / "result.json").unlink()
            run(args.preset, out, {**base, "train.parallel": parallel}, 1)
            rows.append({"case": f"2 ranks fsdp -> 1 process ({parallel}) from step {half}",
                         "loss": max_diff(curve(out, after=half), curve(fsdp, after=half))})
        killed = root / "killed"
        kill_rank_after(args.preset, killed, {**base, "train.parallel": "fsdp"}, half)
        run(args.preset, killed, {**base, "train.parallel": "fsdp"}, 2)
        rows.append({"case": f"fsdp, rank 1 SIGKILLed after step {half}, resumed vs uninterrupted",
                     "loss": max_diff(curve(killed), curve(fsdp)),
                     "val_loss": max_diff(curve(killed, "val_loss"), curve(fsdp, "val_loss"))})
        throughput = {name: json.loads((root / name / "result.json").read_text())["tokens_per_s"]
                      for name in ("single", "ddp", "fsdp", "fsdp+ac")}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(harness.table(rows, [("case", "case", "s"), ("loss", "max |Δloss|", ".2e"),
                               ("val_loss", "max |Δval_loss|", ".2e"),
                               ("load_balance_loss", "max |Δbalance|", ".2e")]))
    print("tokens/s (whole run, all ranks):", ", ".join(f"{k} {v:,.0f}" for k, v in throughput.items()))
    harness.write_json(args.out, {"preset": args.preset, "steps": args.steps, "rows": rows, "tokens_per_s":
                                  throughput, "seconds": seconds, "environment": harness.environment(1)})


if __name__ == "__main__":
    main()
