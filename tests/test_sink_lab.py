"""The sink lab: the Bigram-Backcopy generator's statistics, its Bayes-optimal loss two ways, its data bundle
and tokenizer, the loss split, sink probes during training (exact losses, exact resume, no duplicates) and
the CLI end to end."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from conftest import kill_when_paused
from gatedattn import GatedAttnError, load_config
from gatedattn.artifacts import latest_checkpoint, load_model
from gatedattn.cli.main import main
from gatedattn.config import BigramBackcopyConfig, ConfigError
from gatedattn.data import BigramBackcopy, prepare_data
from gatedattn.data.tokenizer import TextTokenizer
from gatedattn.evaluation import lab_loss
from gatedattn.training import read_metrics, train

LAB = {"data.source": "bigram-backcopy", "data.seq_len": 32, "data.bigram_backcopy.train_sequences": 300,
       "data.bigram_backcopy.val_sequences": 16, "data.bigram_backcopy.vocab": 24}
SETTINGS = {**LAB, "train.max_steps": 30, "train.warmup_steps": 3, "train.checkpoint_every": 10,
            "train.eval_every": 10, "train.eval_batches": 2, "train.device": "cpu", "train.lr": 3e-3,
            "train.probe_every": 5}


@pytest.fixture(autouse=True)
def _env(tmp_path_factory, monkeypatch):
    torch.set_num_threads(1)
    monkeypatch.setenv("GATEDATTN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))


def _lab(**kw) -> BigramBackcopy:
    return BigramBackcopy.from_config(BigramBackcopyConfig(**kw))


# -- the generator -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [{"matrix": "dirichlet", "vocab": 16, "dirichlet_alpha": 1.0},
                                {"matrix": "shakespeare", "vocab": 32, "triggers": 4}], ids=["dirichlet", "shakespeare"])
def test_copies_are_exact_and_bigram_frequencies_match_the_matrix(kw):
    lab = _lab(**kw)
    ids = lab.generate(4000, 64, np.random.default_rng(1))
    assert (ids[:, 0] == lab.bos_id).all() and (ids[:, 1:] < lab.vocab).all()
    trig = lab.is_trigger[ids]
    assert not trig[:, 1].any()  # the first token is ordinary, so every trigger has a token before it
    cur, nxt, prev = ids[:, 1:-1], ids[:, 2:], ids[:, :-2]
    after_trigger = trig[:, 1:-1]
    assert after_trigger.any() and (nxt[after_trigger] == prev[after_trigger]).all()  # every copy exact
    assert not (trig[:, 1:] & trig[:, :-1]).any()
    # Pearson chi-square of the transitions out of ordinary tokens against the matrix's rows.
    V = lab.vocab
    observed = np.bincount((cur * V + nxt)[~after_trigger], minlength=V * V).reshape(V, V)[lab.num_triggers:]
    expected = observed.sum(1, keepdims=True) * lab.transition[lab.num_triggers:]
    assert (observed[expected == 0] == 0).all()  # impossible transitions never happen
    cells = expected >= 5
    chi2 = float((((observed - expected) ** 2)[cells] / expected[cells]).sum())
    dof = int(cells.sum()) - int(cells.any(1).sum())
    assert dof > 50 and chi2 < dof + 5 * math.sqrt(2 * dof), (chi2, dof)  # a 5-sigma bound
    # ... and a statistic this small is not automatic: a 5%-perturbed matrix is rejected.
    wrong = 0.95 * lab.transition[lab.num_triggers:] + 0.05 / V
    wrong_expected = observed.sum(1, keepdims=True) * wrong
    chi2_wrong = float((((observed - wrong_expected) ** 2)[cells] / wrong_expected[cells]).sum())
    assert chi2_wrong > dof + 5 * math.sqrt(2 * dof)


def test_ids_follow_the_stationary_distribution_and_the_first_token_excludes_triggers():
    lab = _lab(matrix="dirichlet", vocab=12, triggers=3, dirichlet_alpha=0.5)
    pi = lab.stationary_unigram
    np.testing.assert_allclose(pi @ lab.transition, pi, atol=1e-12)
    assert (np.diff(pi) <= 0).all()  # t0 is the most frequent: triggers are t0..t{k-1}
    assert lab.triggers == [0, 1, 2] and lab.initial[:3].sum() == 0
    np.testing.assert_allclose(lab.initial[3:], pi[3:] / pi[3:].sum())


def test_generation_is_deterministic_from_the_seed():
    a, b = _lab(matrix="dirichlet", seed=3), _lab(matrix="dirichlet", seed=3)
    np.testing.assert_array_equal(a.transition, b.transition)
    assert not np.array_equal(a.transition, _lab(matrix="dirichlet", seed=4).transition)
    x, y = (lab.split_sequences("train", 20, 16, 3) for lab in (a, b))
    np.testing.assert_array_equal(x, y)
    assert not np.array_equal(np.asarray(x), np.asarray(a.split_sequences("val", 20, 16, 3)))


def test_shakespeare_matrix_is_the_normalised_character_bigram_counts(monkeypatch, tmp_path):
    from collections import Counter

    from gatedattn.data import corpora

    monkeypatch.setenv("GATEDATTN_CACHE", str(tmp_path))  # the counts are cached by the package's files

    docs = [corpora.Document("a", "the cat sat on the mat.\nthe end\n"), corpora.Document("b", "a tea, a toe\n")]
    monkeypatch.setattr(corpora, "shakespeare_documents", lambda: docs)
    lab = _lab(matrix="shakespeare", vocab=6, triggers=2)
    freq = Counter("".join(d.text for d in docs))
    keep = {c for c, _ in sorted(freq.items(), key=lambda kv: (-kv[1], kv[0]))[:6]}
    pairs = Counter()
    for d in docs:  # adjacent pairs of kept characters only
        pairs.update((a, b) for a, b in zip(d.text, d.text[1:]) if a in keep and b in keep)
    index = {s: i for i, s in enumerate(lab.symbols)}
    assert set(index) == keep
    for a in keep:
        row = sum(n for (x, _), n in pairs.items() if x == a)
        for b in keep:
            assert lab.transition[index[a], index[b]] == pytest.approx(pairs[a, b] / row, abs=1e-12)
    with pytest.raises(GatedAttnError, match="data.bigram_backcopy.vocab=40 exceeds the"):
        _lab(matrix="shakespeare", vocab=40)


@pytest.mark.parametrize("kw", [{"matrix": "dirichlet", "vocab": 20, "dirichlet_alpha": 0.3},
                                {"matrix": "shakespeare", "vocab": 48}], ids=["dirichlet", "shakespeare"])
def test_bayes_loss_two_ways_agree(kw):
    lab = _lab(**kw)
    L = 48
    exact = lab.expected_loss(L)
    ids = lab.generate(6000, L, np.random.default_rng(5))
    nll = -lab.true_log_probs(ids)
    assert np.isfinite(nll).all()
    per_seq = nll.mean(1)  # sequences are independent: the standard error of their mean
    se = per_seq.std() / math.sqrt(len(per_seq))
    assert abs(per_seq.mean() - exact.loss) < 4 * se, (per_seq.mean(), exact.loss, se)
    copy = lab.copy_targets(ids)
    assert (nll[copy] == 0).all()
    assert abs(copy.mean() - exact.copy_fraction) < 4 * copy.mean(1).std() / math.sqrt(len(ids))
    # Long sequences approach the stationary limit (renewal-reward over the chain of ordinary tokens).
    limit, long = lab.stationary(), lab.expected_loss(4000)
    assert long.loss == pytest.approx(limit.loss, abs=3e-3)
    assert long.copy_fraction == pytest.approx(limit.copy_fraction, abs=3e-3)
    assert long.bigram_loss == pytest.approx(limit.bigram_loss, abs=3e-3)
    # A wrong sequence has probability 0 under the task.
    bad = ids[:1].copy()
    t = int(np.argmax(lab.is_trigger[bad[0]]))
    bad[0, t + 1] = (bad[0, t - 1] + 1) % lab.vocab
    assert np.isinf(lab.true_log_probs(bad)[0, t])


# -- config, bundle, tokenizer ---------------------------------------------------------------------------------

@pytest.mark.parametrize("key,value,message", [
    ("vocab", 1, "data.bigram_backcopy.vocab must be in"), ("triggers", 8, "data.bigram_backcopy.triggers must be in"),
    ("matrix", "uniform", "allowed: shakespeare, dirichlet"), ("dirichlet_alpha", 0, "dirichlet_alpha must be positive"),
    ("train_sequences", 0, "train_sequences must be >= 1"), ("vocb", 3, "did you mean 'vocab'")])
def test_bad_lab_settings_are_one_line_naming_the_key(key, value, message):
    with pytest.raises(ConfigError, match=message) as e:
        load_config("tiny", {"data.bigram_backcopy.vocab": 8, f"data.bigram_backcopy.{key}": value})
    assert "\n" not in str(e.value)


def test_bundle_holds_exact_bos_sequences_with_its_own_tokenizer(tmp_path):
    cfg = load_config("tiny", LAB)
    bundle = prepare_data(cfg)
    lab = bundle.lab
    assert len(bundle.train) == 300 and len(bundle.val) == 16
    assert bundle.train.num_tokens == 300 * 31  # no partial tail: every sequence is exactly seq_len
    x = bundle.val.batch(range(16))
    assert x.shape == (16, 32) and (x[:, 0] == lab.bos_id).all()
    assert np.isfinite(lab.true_log_probs(x.numpy())).all()  # the packed sequences are the task's
    tok = bundle.tokenizer
    assert tok.vocab_size == 25 and tok.bos_id == tok.eos_id == 24
    assert tok.decode(x[0, :4].tolist()) == " ".join(f"t{i}" for i in x[0, 1:4].tolist())
    assert tok.encode("t3 t0 t23") == [3, 0, 23]
    tok.save(tmp_path / "tokenizer.json")
    again = TextTokenizer.from_file(tmp_path)
    assert again.fingerprint() == tok.fingerprint() and (again.bos_id, again.eos_id) == (24, 24)
    same = prepare_data(cfg, again)  # the cached streams, read back
    assert torch.equal(same.val.batch(range(16)), x) and torch.equal(same.train.batch([7]), bundle.train.batch([7]))
    assert bundle.info["bayes_loss"] == pytest.approx(lab.expected_loss(32).loss)
    other = prepare_data(load_config("tiny", {**LAB, "data.bigram_backcopy.vocab": 30})).tokenizer
    with pytest.raises(GatedAttnError, match="not the one of data.source=bigram-backcopy"):
        prepare_data(cfg, other)
    with pytest.raises(GatedAttnError, match="synthetic corpus of token ids"):
        from gatedattn.data import load_corpus
        load_corpus("bigram-backcopy")


class _Oracle(nn.Module):
    """A 'model' whose logits are the task's true log-probabilities: it must score exactly the Bayes loss."""

    def __init__(self, lab):
        super().__init__()
        self.lab = lab
        self.anchor = nn.Parameter(torch.zeros(()))

    def forward(self, ids):
        lab, (B, T) = self.lab, ids.shape
        logp = torch.full((B, T, lab.vocab + 1), float("-inf"), dtype=torch.float64)
        with np.errstate(divide="ignore"):
            P, first = torch.from_numpy(np.log(lab.transition)), torch.from_numpy(np.log(lab.initial))
        for b in range(B):
            for t in range(T):
                c = int(ids[b, t])
                if c == lab.bos_id:
                    logp[b, t, :lab.vocab] = first
                elif lab.is_trigger[c]:
                    logp[b, t, int(ids[b, t - 1])] = 0.0
                else:
                    logp[b, t, :lab.vocab] = P[c]
        return type("Out", (), {"logits": logp.clamp_min(-1e4)})()


def test_loss_split_of_an_oracle_is_the_bayes_loss_and_of_a_model_is_its_cross_entropy():
    bundle = prepare_data(load_config("tiny", {**LAB, "data.bigram_backcopy.matrix": "dirichlet"}))
    lab = bundle.lab
    r = lab_loss(_Oracle(lab), lab, bundle.val, batch_size=5)
    assert r.sequences == 16 and r.tokens == 16 * 31 and r.bigram_positions + r.copy_positions == r.tokens
    assert r.copy_positions == int(lab.copy_targets(bundle.val.batch(range(16)).numpy()).sum()) > 0
    # (lab_loss takes the cross-entropy in float32, as evaluate_perplexity does)
    assert r.loss == pytest.approx(r.bayes_loss, rel=1e-6) and r.excess_loss == pytest.approx(0, abs=1e-6)
    assert r.copy_loss == pytest.approx(0, abs=1e-6) and r.bigram_loss == pytest.approx(r.bayes_bigram_loss, rel=1e-6)
    from conftest import tiny_model

    model = tiny_model(vocab_size=lab.vocab + 1, bos_token_id=lab.bos_id, eos_token_id=lab.bos_id)
    x = bundle.val.batch(range(16))
    r = lab_loss(model, lab, x, batch_size=7)
    with torch.no_grad():
        nll = torch.nn.functional.cross_entropy(model(x).logits[:, :-1].transpose(1, 2), x[:, 1:], reduction="none")
    copy = torch.from_numpy(lab.copy_targets(x.numpy()))
    assert r.loss == pytest.approx(float(nll.mean()), rel=1e-6)
    assert r.copy_loss == pytest.approx(float(nll[copy].mean()), rel=1e-6)
    assert r.bigram_loss == pytest.approx(float(nll[~copy].mean()), rel=1e-6)
    assert r.bayes_loss == pytest.approx(float(-lab.true_log_probs(x.numpy()).mean()), rel=1e-12)


# -- probes during training ------------------------------------------------------------------------------------

def _probe_records(run_dir):
    return [r for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "probe/sink_rate" in r]


def _records(run_dir):
    return [{k: v for k, v in r.items() if k != "tokens_per_s"}
            for r in read_metrics(Path(run_dir) / "metrics.jsonl") if "event" not in r]


@pytest.fixture(scope="module")
def probed_run(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GATEDATTN_CACHE", str(tmp_path_factory.getbasetemp() / "cache"))
        torch.set_num_threads(1)
        out = tmp_path_factory.mktemp("probed")
        train(load_config("tiny", SETTINGS), out, progress=False)
    return out


def test_probes_are_logged_every_n_steps_and_leave_the_losses_untouched(probed_run, tmp_path):
    probes = _probe_records(probed_run)
    assert [r["step"] for r in probes] == [0, 5, 10, 15, 20, 25, 30]
    p = probes[-1]
    assert 0 <= p["probe/sink_rate"] <= 1 and p["probe/sink_eps"] == 0.3
    assert p["probe/f_attn_dormant"] is not None and p["probe/f_attn_active"] is not None
    assert np.array(p["probe/first_token_share_per_head"]).shape == (2, 4)  # tiny: 2 layers x 4 heads
    assert np.array(p["probe/value_drain_per_head"]).shape == (2, 2)  # per KV head
    assert len(p["probe/residual_peak_per_layer"]) == 2
    # The probe batch is the first validation sequences: the same numbers from the final model.
    from gatedattn.analysis.probes import plot_probe_curves, sink_probe

    loaded = load_model(probed_run)
    bundle = prepare_data(loaded.run_config)
    x = bundle.val.batch(range(4))
    again = sink_probe(loaded.model, x, torch.from_numpy(bundle.lab.active_queries(x.numpy())))
    assert again.f_attn_dormant == pytest.approx(p["probe/f_attn_dormant"], rel=1e-5)
    # Training without probes gives the same losses, bit for bit.
    plain = tmp_path / "plain"
    train(load_config("tiny", {**SETTINGS, "train.probe_every": 0}), plain, progress=False)
    assert not _probe_records(plain)
    assert _records(plain) == [r for r in _records(probed_run) if "probe/sink_rate" not in r]
    png = plot_probe_curves({"probed": probed_run, "records": read_metrics(probed_run / "metrics.jsonl")},
                            tmp_path / "probes.png")
    assert png is not None and png.stat().st_size > 10000


# The child trains and pauses (so the test can SIGKILL it there) after step N's callbacks ("step:N") or right
# after checkpoint N is in place, before the probe of step N runs ("checkpoint:N").
_CHILD = """
import json, sys, time
import torch
from gatedattn import load_config
from gatedattn.training import Callback, train

point, n = sys.argv[1].split(":")
n = int(n)

class Pause(Callback):
    def pause(self):
        print("PAUSED", file=sys.stderr, flush=True)
        time.sleep(600)

    def on_step_end(self, trainer, record):
        if point == "step" and trainer.state.step == n:
            self.pause()

    def on_checkpoint(self, trainer, path):
        if point == "checkpoint" and trainer.state.step == n:
            self.pause()

torch.set_num_threads(1)
train(load_config("tiny", json.loads(sys.argv[2])), sys.argv[3], progress=False, callbacks=[Pause()])
"""


def _kill_when_paused(out, pause: str) -> None:
    kill_when_paused(_CHILD, pause, json.dumps(SETTINGS), str(out))


@pytest.mark.parametrize("pause,probes_before", [("step:13", [0, 5, 10]), ("checkpoint:20", [0, 5, 10, 15])])
def test_kill_and_resume_with_probes_on_is_exact_and_writes_each_probe_once(probed_run, tmp_path, pause,
                                                                           probes_before):
    _kill_when_paused(tmp_path, pause)
    assert [r["step"] for r in _probe_records(tmp_path)] == probes_before  # checkpoint:20 killed before probe 20
    r = train(load_config("tiny", SETTINGS), tmp_path, progress=False)
    assert r.resumed_from == (10 if pause == "step:13" else 20)
    assert _records(tmp_path) == _records(probed_run)  # losses, validations and probes, exactly, in order
    assert [x["step"] for x in _probe_records(tmp_path)] == [0, 5, 10, 15, 20, 25, 30]


def test_cli_train_on_the_lab_with_probes_then_eval(tmp_path, capsys):
    out = tmp_path / "run"
    sets = {k: v for k, v in SETTINGS.items() if k != "data.source"}
    args = ["train", "tiny", "--data", "bigram-backcopy", "--out", str(out), "--no-progress",
            "--set", "train.max_steps=6"] + [a for k, v in sets.items() if k != "train.max_steps" for a in ("--set", f"{k}={v}")]
    assert main(args) == 0
    assert "6 steps" in capsys.readouterr().out
    assert [r["step"] for r in _probe_records(out)] == [0, 5, 6]
    info = json.loads((out / "data.json").read_text())
    assert info["source"] == "bigram-backcopy" and info["triggers"] == [0, 1, 2] and info["val_sequences"] == 16
    assert main(["eval", str(out), "--json"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["data"] == "bigram-backcopy (validation split)" and r["tokens"] == 16 * 31
    loaded = load_model(out)
    assert loaded.tokenizer.bos_id == loaded.model.config.bos_token_id == 24
    assert latest_checkpoint(out).name == "step_0000006"
    assert main(["train", "tiny", "--data", "bigram-backcopy", "--out", str(tmp_path / "bad"),
                 "--set", "data.bigram_backcopy.matrix=uniform"]) == 2
    assert "allowed: shakespeare, dirichlet" in capsys.readouterr().err


def test_a_run_from_before_a_key_existed_resumes_when_the_key_is_at_its_default(tmp_path):
    import yaml

    from gatedattn.artifacts.checkpoints import sha256_file

    cfg = {**SETTINGS, "train.max_steps": 5, "train.checkpoint_every": 5, "train.probe_every": 0}
    train(load_config("tiny", cfg), tmp_path, progress=False)
    ckpt = latest_checkpoint(tmp_path)
    saved = yaml.safe_load((ckpt / "run_config.yaml").read_text())
    del saved["train"]["probe_every"], saved["data"]["bigram_backcopy"]["seed"]  # as an older version wrote it
    (ckpt / "run_config.yaml").write_text(yaml.safe_dump(saved))
    manifest = json.loads((ckpt / "manifest.json").read_text())
    manifest["run_config.yaml"] = {"size": (ckpt / "run_config.yaml").stat().st_size,
                                   "sha256": sha256_file(ckpt / "run_config.yaml")}
    (ckpt / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(GatedAttnError, match="data.bigram_backcopy.seed: None -> 1"):
        train(load_config("tiny", {**cfg, "train.max_steps": 7, "data.bigram_backcopy.seed": 1}), tmp_path,
              progress=False)
    r = train(load_config("tiny", {**cfg, "train.max_steps": 7}), tmp_path, progress=False)
    assert r.resumed_from == 5 and r.steps == 7
