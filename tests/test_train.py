"""Training: schedule, optimizer groups, loss goes down, exact kill-and-resume, checkpoints, NaN guard, CLI."""

import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from conftest import kill_when_paused, write_plays
from safetensors.torch import load_file

from gatedattn import GatedAttnError, GatedLM, load_config
from gatedattn.cli.main import main
from gatedattn.artifacts import latest_checkpoint, load_model
from gatedattn.training import TrainingError, lr_factor, param_groups, prepare_data, read_metrics, train
from gatedattn.training.metrics import SpikeDetector
from gatedattn.training.compilation import has_cpp_compiler
from gatedattn.training.trainer import Trainer, load_init_weights

STEPS = 30
SETTINGS = {"data.vocab_size": 320, "data.seq_len": 32, "data.val_fraction": 0.2, "train.max_steps": STEPS,
            "train.warmup_steps": 3, "train.checkpoint_every": 10, "train.eval_every": 10, "train.eval_batches": 2,
            "train.device": "cpu", "train.lr": 3e-3,
            # A touchy spike detector, so that resumed runs must also restore its window and count.
            "train.spike_window": 3, "train.spike_factor": 1.001}


pytestmark = pytest.mark.usefixtures("shared_cache")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """6 plays, 20k characters each: enough for a tiny model's few steps, quick to tokenise."""
    return write_plays(tmp_path_factory.mktemp("corpus"), 6, 20000)


def _config(corpus, **overrides):
    return load_config("tiny", {**SETTINGS, "data.source": str(corpus), **overrides})


def _losses(run_dir):
    records = read_metrics(Path(run_dir) / "metrics.jsonl")
    return ([(r["step"], r["loss"]) for r in records if "loss" in r],
            [(r["step"], r["val_loss"]) for r in records if "val_loss" in r])


@pytest.fixture(scope="module")
def reference_run(corpus, tmp_path_factory):
    """An uninterrupted run: what every interrupted one must reproduce exactly."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GATEDATTN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        torch.set_num_threads(1)
        out = tmp_path_factory.mktemp("reference")
        result = train(_config(corpus), out, progress=False)
    return out, result


# -- schedule, optimizer, spikes ------------------------------------------------------------------------------

def test_lr_schedule_equals_its_formula(reference_run):
    cfg = load_config("tiny", {"train.max_steps": 50, "train.warmup_steps": 5, "train.min_lr_ratio": 0.1})
    tc = cfg.train
    for s in range(50):
        if s < 5:
            want = (s + 1) / 5
        else:
            want = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 5) / (50 - 1 - 5)))
        assert lr_factor(s, tc) == pytest.approx(want, abs=1e-12)
    assert lr_factor(49, tc) == pytest.approx(0.1) and lr_factor(4, tc) == 1.0
    # The run's logged learning rates follow the same formula.
    out, _ = reference_run
    run_cfg = load_config(str(out / "config.yaml"))
    logged = [r["lr"] for r in read_metrics(out / "metrics.jsonl") if "lr" in r]
    assert logged == pytest.approx([run_cfg.train.lr * lr_factor(s, run_cfg.train) for s in range(STEPS)], rel=1e-12)


def test_no_weight_decay_on_norms_biases_gate_vectors_sinks_embeddings():
    cfg = load_config("tiny", {"model.attention.gate.position": "g1", "model.attention.gate.input_dependent": False,
                               "model.attention.sink": "learned", "model.attention.qkv_bias": True,
                               "model.attention.num_register_tokens": 2})
    model = GatedLM(cfg.model)
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    kept = {names[id(p)] for p in no_decay["params"]}
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert decayed == {n for n in names.values() if n.endswith(("q_proj.weight", "k_proj.weight", "v_proj.weight",
                                                                 "o_proj.weight", "gate_proj.weight", "up_proj.weight",
                                                                 "down_proj.weight"))}
    assert {"embed.weight", "register_tokens", "layers.0.attn.gate.vector", "layers.0.attn.sink_logit",
            "layers.0.attn.q_proj.bias", "layers.0.attn_norm.weight", "norm.weight"} <= kept
    assert len(decayed) + len(kept) == len(list(model.parameters()))


def test_spike_detector_matches_brute_force_median():
    losses = [5, 4.8, 4.9, 4.7, 9.0, 4.6, 4.5, float("nan"), 7.2, 4.4, 4.3, 30.0]
    det = SpikeDetector(window=4, factor=1.5)
    history = []
    for x in losses:
        last = sorted(history[-4:])
        want = len(last) == 4 and x > 1.5 * (last[1] + last[2]) / 2  # the median of four
        assert det.update(x) == want, x
        if x == x:
            history.append(x)
    assert [x for x in losses if x == x][-4:] == list(det.history)


# -- training -----------------------------------------------------------------------------------------------

def test_training_lowers_the_loss_and_writes_a_self_describing_run(reference_run):
    out, r = reference_run
    losses, vals = _losses(out)
    assert [s for s, _ in losses] == list(range(1, STEPS + 1))
    first, last = losses[0][1], sum(l for _, l in losses[-5:]) / 5
    assert first == pytest.approx(math.log(320), rel=0.05)  # a fresh model is near-uniform
    assert last < first - 0.5, (first, last)
    assert [s for s, _ in vals] == [10, 20, 30] and vals[-1][1] < vals[0][1]
    assert r.steps == STEPS and r.tokens == STEPS * 4 * 32 and r.val_loss == vals[-1][1]
    spikes = [x["step"] for x in read_metrics(out / "metrics.jsonl") if x.get("spike")]
    assert r.spikes == len(spikes) and any(s > 10 for s in spikes)  # resume tests compare them too
    record = read_metrics(out / "metrics.jsonl")[0]
    assert {"step", "loss", "lr", "tokens", "tokens_per_s", "grad_norm", "lm_loss", "aux_loss"} <= set(record)
    for name in ("config.yaml", "tokenizer.json", "environment.json", "data.json", "result.json", "loss.png"):
        assert (out / name).is_file(), name
    cfg = load_config(str(out / "config.yaml"))
    assert cfg.model.vocab_size == 320 and cfg.model.bos_token_id == 0  # set from the tokenizer
    env = json.loads((out / "environment.json").read_text())["sessions"][0]
    assert env["versions"]["torch"] == torch.__version__ and env["torch_threads"] == 1
    assert env["compile"] == "off"  # train.compile=auto: far too short a run to pay for compiling
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == ["step_0000020", "step_0000030"]
    assert latest_checkpoint(out).name == "step_0000030"
    model = load_model(out).model  # a run directory loads its latest weights
    saved = load_file(out / "checkpoints/step_0000030/model.safetensors")
    assert torch.equal(model.embed.weight, saved["embed.weight"])


def test_grad_accumulation_equals_a_larger_batch(corpus, tmp_path):
    a = train(_config(corpus, **{"train.max_steps": 3, "train.batch_size": 4}), tmp_path / "a", progress=False)
    b = train(_config(corpus, **{"train.max_steps": 3, "train.batch_size": 2, "train.grad_accum": 2}),
              tmp_path / "b", progress=False)
    la, lb = _losses(tmp_path / "a")[0], _losses(tmp_path / "b")[0]
    assert [x for _, x in la] == pytest.approx([x for _, x in lb], rel=1e-5)
    assert a.tokens == b.tokens
    wa, wb = a.model.state_dict(), b.model.state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-6)


def test_bf16_autocast_trains(corpus, tmp_path):
    r = train(_config(corpus, **{"train.max_steps": 12, "train.dtype": "bfloat16"}), tmp_path, progress=False)
    losses, _ = _losses(tmp_path)
    assert all(math.isfinite(x) for _, x in losses) and losses[-1][1] < losses[0][1]
    assert next(r.model.parameters()).dtype == torch.float32  # fp32 master weights


# -- kill and resume -------------------------------------------------------------------------------------------

# The child trains like `gatedattn train` and pauses (so the test can SIGKILL it there) at a point the test
# injects: after step N is logged ("step:N"), or in the middle of writing checkpoint N ("checkpoint:N").
_CHILD = """
import json, sys, time
import torch
from gatedattn import load_config
from gatedattn.training import Callback, train

point, n = sys.argv[1].split(":")
n = int(n)

def pause():
    print("PAUSED", file=sys.stderr, flush=True)
    time.sleep(600)

class PauseAfterStep(Callback):
    def on_step_end(self, trainer, record):
        if point == "step" and trainer.state.step == n:
            pause()

save = torch.save
def save_then_pause(obj, *args, **kwargs):  # the trainer state is the last file written before the manifest
    if point == "checkpoint" and isinstance(obj, dict) and obj.get("step") == n:
        pause()
    return save(obj, *args, **kwargs)
torch.save = save_then_pause
torch.set_num_threads(1)
train(load_config("tiny", json.loads(sys.argv[2])), sys.argv[3], progress=False, callbacks=[PauseAfterStep()])
"""


def _kill_when_paused(corpus, out, pause: str) -> None:
    """Train in a subprocess that pauses at ``pause``, then SIGKILL it there."""
    kill_when_paused(_CHILD, pause, json.dumps({**SETTINGS, "data.source": str(corpus)}), str(out))


def _records(run_dir):
    """Every metrics record except wall-clock measurements and resume events."""
    return [{k: v for k, v in r.items() if k != "tokens_per_s"}
            for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "event" not in r]


def _assert_same_run(out, reference):
    ref_dir, _ = reference
    assert _losses(out) == _losses(ref_dir)  # exactly: every step's loss and every validation
    assert _records(out) == _records(ref_dir)  # and lr, grad norm, tokens, spike flags and counts
    mine, theirs = (load_file(d / "checkpoints/step_0000030/model.safetensors") for d in (out, ref_dir))
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)


def test_sigkill_mid_training_then_resume_reproduces_the_run_exactly(corpus, tmp_path, reference_run):
    _kill_when_paused(corpus, tmp_path, "step:13")
    assert latest_checkpoint(tmp_path).name == "step_0000010"
    assert max(s for s, _ in _losses(tmp_path)[0]) == 13
    r = train(_config(corpus), tmp_path, progress=False)  # the same command again: resumes from step 10
    assert r.resumed_from == 10
    _assert_same_run(tmp_path, reference_run)
    events = [x for x in read_metrics(tmp_path / "metrics.jsonl") if x.get("event") == "resume"]
    assert events == [{"step": 10, "event": "resume", "checkpoint": "step_0000010"}]


def test_sigkill_during_checkpoint_write_then_resume(corpus, tmp_path, reference_run):
    _kill_when_paused(corpus, tmp_path, "checkpoint:20")
    ckpts = tmp_path / "checkpoints"
    assert [p.name for p in ckpts.glob(".tmp-step_0000020-*")] and not (ckpts / "step_0000020").exists()
    assert latest_checkpoint(tmp_path).name == "step_0000010"  # the half-written one is never a candidate
    train(_config(corpus), tmp_path, progress=False)
    assert not list(ckpts.glob(".tmp-*"))
    _assert_same_run(tmp_path, reference_run)


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(corpus, tmp_path, reference_run, caplog):
    ref_dir, _ = reference_run
    run = tmp_path / "run"
    shutil.copytree(ref_dir, run)
    weights = run / "checkpoints/step_0000030/model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-5] ^= 0xFF  # same size, one flipped byte: only the checksum can tell
    weights.write_bytes(bytes(data))
    with caplog.at_level("WARNING", logger="gatedattn"):
        assert latest_checkpoint(run).name == "step_0000020"
    [warning] = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert "step_0000030" in warning and "SHA-256" in warning and "\n" not in warning
    ref20 = load_file(ref_dir / "checkpoints/step_0000020/model.safetensors")
    assert torch.equal(load_model(run).model.embed.weight, ref20["embed.weight"])
    r = train(_config(corpus), run, progress=False)  # resumes from 20, sets the damaged one aside
    assert r.resumed_from == 20 and list((run / "checkpoints").glob("step_0000030.unreadable-*"))
    _assert_same_run(run, reference_run)


def test_resume_with_other_settings_is_refused(corpus, tmp_path, reference_run):
    ref_dir, _ = reference_run
    shutil.copytree(ref_dir, tmp_path / "run")
    with pytest.raises(GatedAttnError, match=r"other settings \(train.lr: 0.003 -> 0.01\)"):
        train(_config(corpus, **{"train.lr": 0.01}), tmp_path / "run", progress=False)


# -- NaN guard ------------------------------------------------------------------------------------------------

def _nan_at(model, steps):
    """Make the forward pass of the given (1-based) training steps produce NaN."""
    calls = {"n": 0}

    def hook(module, inputs, output):
        if module.training:
            calls["n"] += 1
            if calls["n"] in steps:
                return output * float("nan")
    model.hook_embed.register_forward_hook(hook)


def test_nonfinite_steps_are_skipped_and_counted(corpus, tmp_path):
    cfg = _config(corpus, **{"train.max_steps": 8, "train.max_nonfinite": 3})
    torch.manual_seed(0)
    model = GatedLM(load_config("tiny", {"model.vocab_size": 320}).model)
    _nan_at(model, {3, 4})
    r = train(cfg, tmp_path, model=model, progress=False)
    records = {x["step"]: x for x in read_metrics(tmp_path / "metrics.jsonl") if "loss" in x}
    assert r.nonfinite_skips == 2 and records[8]["nonfinite_skips"] == 2
    assert records[3]["loss"] is None and records[4]["grad_norm"] is None and records[5]["loss"] is not None
    state = torch.load(tmp_path / "checkpoints/step_0000008/trainer_state.pt", weights_only=True)
    assert int(state["optimizer"]["state"][0]["step"]) == 6  # two updates skipped


def test_too_many_nonfinite_steps_stop_with_a_clear_error(corpus, tmp_path):
    cfg = _config(corpus, **{"train.max_steps": 20, "train.max_nonfinite": 3})
    model = GatedLM(load_config("tiny", {"model.vocab_size": 320}).model)
    _nan_at(model, set(range(4, 100)))
    with pytest.raises(TrainingError) as e:
        train(cfg, tmp_path, model=model, progress=False)
    msg = str(e.value)
    assert "stopped at step 6: 3 non-finite" in msg and "train.lr" in msg and "\n" not in msg


# -- init-from and the CLI ------------------------------------------------------------------------------------

def test_init_from_copies_weights_and_tokenizer_and_checks_shapes(corpus, tmp_path, reference_run):
    ref_dir, _ = reference_run
    cfg = _config(corpus, **{"model.rope.theta": 100000.0, "data.seq_len": 64, "train.max_steps": 2})
    model = GatedLM(load_config("tiny", {"model.vocab_size": 320, "model.rope.theta": 100000.0}).model)
    ref_model = load_model(ref_dir).model
    load_init_weights(model, ref_model, ref_dir)
    ref = ref_model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items())
    train(cfg, tmp_path / "long", init_from=ref_dir, progress=False)
    assert (tmp_path / "long/tokenizer.json").read_text() == (ref_dir / "tokenizer.json").read_text()
    assert json.loads((tmp_path / "long/data.json").read_text())["init_from"] == str(ref_dir)
    gated = _config(corpus, **{"model.attention.gate.position": "g1"})
    with pytest.raises(GatedAttnError, match="parameter 'layers.0.attn.q_proj.weight' is shape"):
        train(gated, tmp_path / "bad", init_from=ref_dir, progress=False)


def test_dsa_warm_up_from_a_dense_run_logs_the_indexer_kl(corpus, tmp_path, reference_run):
    """DeepSeek's first stage: a dense run's weights, fresh indexers, attention still dense (mode=dense)."""
    ref_dir, _ = reference_run
    dsa = {"model.attention.sparse.type": "dsa", "model.attention.sparse.top_k": 8,
           "model.attention.sparse.indexer_dim": 16, "model.attention.sparse.mode": "dense"}
    model = GatedLM(load_config("tiny", {"model.vocab_size": 320, **dsa}).model)
    ref_model = load_model(ref_dir).model
    load_init_weights(model, ref_model, ref_dir)
    ref = ref_model.state_dict()
    assert all(torch.equal(v, ref[k]) for k, v in model.state_dict().items() if ".indexer." not in k)
    assert any(".indexer." in k for k in model.state_dict())
    x = torch.randint(0, 320, (2, 16))
    model.eval()
    torch.testing.assert_close(model(x).logits, ref_model.eval()(x).logits, rtol=0, atol=0)  # dense mode
    cfg = _config(corpus, **{**dsa, "train.max_steps": 4, "train.log_every": 1, "train.trainable": "indexer"})
    warm = train(cfg, tmp_path / "warm", init_from=ref_dir, progress=False).model.state_dict()
    kls = [r["indexer_kl"] for r in read_metrics(tmp_path / "warm/metrics.jsonl") if "indexer_kl" in r]
    assert len(kls) == 4 and all(k > 0 for k in kls)
    assert all(torch.equal(v, ref[k]) for k, v in warm.items() if ".indexer." not in k)  # only indexers learn
    assert "indexer_kl" not in read_metrics(ref_dir / "metrics.jsonl")[0]


def test_shared_data_bundle_gives_two_runs_the_same_batches(corpus, tmp_path):
    cfg = _config(corpus, **{"train.max_steps": 2, "train.eval_batches": 0})
    bundle = prepare_data(cfg)
    gated = _config(corpus, **{"train.max_steps": 2, "train.eval_batches": 0, "model.attention.gate.position": "g1"})
    a = train(cfg, tmp_path / "a", data=bundle, progress=False)
    b = train(gated, tmp_path / "b", data=bundle, progress=False)
    assert a.tokens == b.tokens
    assert (a.out_dir / "tokenizer.json").read_text() == (b.out_dir / "tokenizer.json").read_text()
    with pytest.raises(GatedAttnError, match="other data settings"):
        train(_config(corpus, **{"data.seq_len": 16}), tmp_path / "c", data=bundle, progress=False)


def test_tensorboard_events_have_grouped_tags(reference_run):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, _ = reference_run
    events = EventAccumulator(str(out / "tensorboard"))
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"train/loss", "train/lr", "train/grad_norm", "val/loss", "val/ppl"} <= tags, tags
    assert all("/" in t for t in tags)  # no ungrouped tag
    logged = [(r["step"], r["loss"]) for r in read_metrics(out / "metrics.jsonl") if "loss" in r]
    assert [(e.step, pytest.approx(e.value)) for e in events.Scalars("train/loss")] == logged


def test_cli_train_eval_generate(corpus, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", "tiny", "--data", str(corpus), "--out", str(out), "--no-progress"] + [
        a for k, v in {**SETTINGS, "train.max_steps": 4}.items() for a in ("--set", f"{k}={v}")]
    assert main(args) == 0
    assert "4 steps" in capsys.readouterr().out
    assert main(args) == 0 and "nothing to do" in capsys.readouterr().out
    assert main(["eval", str(out), "--json", "--max-batches", "2"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["data"].endswith("(validation split)") and r["tokens"] == 2 * 8 * 31 and r["seq_len"] == 32
    assert math.isclose(r["perplexity"], math.exp(r["loss"]))
    assert main(["eval", str(out), "--json"]) == 0  # the default budget exceeds this split: all of it
    whole = json.loads(capsys.readouterr().out)
    assert whole["tokens"] == whole["available_tokens"] > 2 * 8 * 31
    assert main(["eval", str(out), "--json", "--max-tokens", "100"]) == 0  # exactly the first 100 tokens
    head = json.loads(capsys.readouterr().out)
    assert head["tokens"] == 100 and head["sequences"] == 4 and head["available_tokens"] == whole["tokens"]
    assert main(["eval", str(out), "--max-tokens", "100"]) == 0
    assert f"100 of {whole['tokens']:,} held-out tokens scored" in capsys.readouterr().out
    play = sorted(corpus.iterdir())[0]
    assert main(["eval", str(out / "checkpoints/step_0000004"), "--data", str(play), "--max-batches", "1",
                 "--batch-size", "2"]) == 0
    assert f"{play.name}: loss" in capsys.readouterr().out
    assert main(["generate", str(out), "--prompt", "ROMEO.", "--max-new-tokens", "5", "--seed", "1"]) == 0
    first = capsys.readouterr().out
    assert first.startswith("ROMEO.")
    assert main(["generate", str(out), "--prompt", "ROMEO.", "--max-new-tokens", "5", "--seed", "1"]) == 0
    assert capsys.readouterr().out == first  # seeded sampling is reproducible
    assert main(["generate", str(out), "--prompt", "ROMEO.", "--max-new-tokens", "5", "--dtype", "bfloat16"]) == 0
    assert capsys.readouterr().out.startswith("ROMEO.")
    assert main(["generate", str(tmp_path / "nothing"), "--prompt", "x"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_callbacks_see_every_step_eval_checkpoint_and_the_end(corpus, tmp_path):
    from gatedattn.training import Callback

    seen = []

    class Record(Callback):
        def on_train_start(self, trainer):
            seen.append(("start", trainer.state.step))

        def on_step_end(self, trainer, record):
            seen.append(("step", record["step"]))

        def on_eval(self, trainer, result):
            seen.append(("eval", trainer.state.step, round(result.loss, 6)))

        def on_checkpoint(self, trainer, path):
            seen.append(("checkpoint", path.name))

        def on_train_end(self, trainer, result):
            seen.append(("end", result.steps))

    cfg = _config(corpus, **{"train.max_steps": 4, "train.eval_every": 2, "train.checkpoint_every": 3})
    r = train(cfg, tmp_path, progress=False, callbacks=[Record()])
    vals = {x["step"]: round(x["val_loss"], 6) for x in r.history if "val_loss" in x}
    assert seen == [("start", 0), ("step", 1), ("eval", 2, vals[2]), ("step", 2), ("checkpoint", "step_0000003"),
                    ("step", 3), ("eval", 4, vals[4]), ("checkpoint", "step_0000004"), ("step", 4), ("end", 4)]
    seen.clear()
    train(cfg, tmp_path, progress=False, callbacks=[Record()])  # finished: only the end
    assert seen == [("end", 4)]


@pytest.mark.skipif(not has_cpp_compiler(), reason="inductor needs a C++ compiler")
def test_compiled_blocks_train_like_the_eager_run_and_leave_the_model_eager(reference_run, corpus, tmp_path):
    ref_out, ref = reference_run
    out = tmp_path / "blocks"
    torch.set_num_threads(1)
    trainer = Trainer(_config(corpus, **{"train.compile": "blocks"}), out, progress=False)
    torch._dynamo.utils.counters.clear()
    r = trainer.train()
    assert torch._dynamo.utils.counters["frames"]["ok"] > 0  # the blocks did run compiled
    (ref_losses, ref_vals), (losses, vals) = _losses(ref_out), _losses(out)
    # Inductor fuses and reorders float32 arithmetic, so the losses agree to rounding, not bit for bit.
    assert [s for s, _ in losses] == [s for s, _ in ref_losses] and r.steps == ref.steps
    assert [l for _, l in losses] == pytest.approx([l for _, l in ref_losses], rel=1e-4)
    assert [l for _, l in vals] == pytest.approx([l for _, l in ref_vals], rel=1e-4)  # validation: eager blocks
    assert json.loads((out / "environment.json").read_text())["sessions"][0]["compile"] == "blocks"
    assert trainer.model.compiled_blocks is None  # the model leaves the trainer eager
