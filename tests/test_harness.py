"""The lm-evaluation-harness adapter against brute force and our perplexity; the local tasks end to end."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_plays

from gatedattn import load_config
from gatedattn.cli.main import main
from gatedattn.data.packing import PackedTokens
from gatedattn.evaluation.generation import generate_text
from gatedattn.evaluation.harness_tasks import lastword_docs, passkey_docs, write_tasks
from gatedattn.evaluation.perplexity import evaluate_perplexity
from gatedattn.training import train

pytest.importorskip("lm_eval", reason="the adapter needs lm-eval (pip install 'gatedattn[eval]')")
from gatedattn.evaluation.harness import GatedAttnLM, evaluate_local_tasks  # noqa: E402

TEXT = "ROMEO. But soft, what light through yonder window breaks? It is the east, and Juliet is the sun."


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("harness")
    (root / "corpus").mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GATEDATTN_CACHE", str(root / "cache"))
        cfg = load_config("tiny", {"data.source": str(write_plays(root / "corpus", 3, 8000)), "data.vocab_size": 300,
                                   "data.seq_len": 32, "train.max_steps": 3, "train.eval_batches": 0,
                                   "train.device": "cpu"})
        train(cfg, root / "run", progress=False)
    return root / "run"


def _requests(*args):
    return [SimpleNamespace(args=a) for a in args]


def _brute_force_logprob(model, ids: list[int], start: int) -> float:
    """log p(ids[start:] | ids[:start]) from one forward pass, summed token by token."""
    with torch.no_grad():
        logprobs = F.log_softmax(model(torch.tensor([ids])).logits[0].double(), -1)
    return sum(float(logprobs[i - 1, ids[i]]) for i in range(start, len(ids)))


def test_loglikelihood_equals_brute_force_and_batching_changes_nothing(run_dir):
    lm = GatedAttnLM(str(run_dir), max_length=256)  # no truncation (the run's 31 tokens would cut the contexts)
    tok, bos = lm.tok, lm.tok.bos_id
    pairs = [("ROMEO. But soft, what light", " through yonder window"), ("It is the east,", " and Juliet"),
             ("", "O Romeo, Romeo"), ("A", " b")]
    got = lm.loglikelihood(_requests(*pairs))
    for (context, continuation), (logprob, greedy) in zip(pairs, got):
        full = [bos] + tok.encode(context + continuation)
        start = 1 + len(tok.encode(context))
        assert logprob == pytest.approx(_brute_force_logprob(lm.model, full, start), rel=1e-5, abs=1e-5)
        assert isinstance(greedy, bool)
    batched = GatedAttnLM(str(run_dir), batch_size=3, max_length=256).loglikelihood(_requests(*pairs))
    assert [b[0] for b in batched] == pytest.approx([g[0] for g in got], rel=1e-5, abs=1e-5)


def test_rolling_loglikelihood_equals_our_perplexity_total_nll(run_dir):
    lm = GatedAttnLM(str(run_dir))
    assert lm.max_length == 31  # the run's data.seq_len - 1
    short = TEXT[:30]
    ids = lm.tok.encode(short)
    assert len(ids) <= lm.max_length
    r = evaluate_perplexity(lm.model, PackedTokens(np.array(ids), len(ids) + 1, lm.tok.bos_id))
    assert r.tokens == len(ids)
    assert lm.loglikelihood_rolling(_requests((short,)))[0] == pytest.approx(-r.loss * r.tokens, rel=1e-5)


def test_rolling_windows_predict_every_token_once_with_the_longest_context(run_dir):
    lm = GatedAttnLM(str(run_dir), max_length=8)
    ids = lm.tok.encode(TEXT)
    assert len(ids) > 2 * 8
    # lm_eval's rule: the first window is BOS + 7 tokens; each later one predicts the next 8 tokens from the
    # 8 tokens before each (the window starts one token before its predictions).
    expected = _brute_force_logprob(lm.model, [lm.tok.bos_id] + ids[:8], 1)
    for start in range(8, len(ids), 8):
        chunk = ids[start:start + 8]
        window = ids[start + len(chunk) - 9:start + len(chunk)]
        expected += _brute_force_logprob(lm.model, window, len(window) - len(chunk))
    assert lm.loglikelihood_rolling(_requests((TEXT,)))[0] == pytest.approx(expected, rel=1e-5)


def test_generate_until_is_greedy_generation_cut_at_the_stop(run_dir):
    lm = GatedAttnLM(str(run_dir))
    reference = generate_text(lm.model, lm.tok, "ROMEO.", max_new_tokens=6, temperature=0)
    assert lm.generate_until(_requests(("ROMEO.", {"max_gen_toks": 6})))[0] == reference
    stop = reference[2:4] if len(reference) > 4 else reference[-1:]
    cut = lm.generate_until(_requests(("ROMEO.", {"max_gen_toks": 6, "until": [stop]})))[0]
    assert cut == reference.split(stop)[0]


def test_local_tasks_are_well_formed():
    last = lastword_docs(50)
    assert len(last) == 50 and all(d["target"].startswith(" ") and d["target"][1:].isalpha() for d in last)
    assert all(len(d["context"].split()) + 1 >= 60 for d in last)
    keys = passkey_docs(20)
    assert all(d["answer"] in d["context"] and d["context"].endswith("The pass key is") for d in keys)
    assert passkey_docs(20) == keys  # seeded


def test_local_tasks_end_to_end_through_lm_eval(run_dir, tmp_path, capsys):
    folder = write_tasks(tmp_path / "tasks", count=3)
    scores = evaluate_local_tasks(str(run_dir), ["shakespeare_lastword", "passkey"], str(folder), limit=2)
    assert 0 <= scores["shakespeare_lastword"]["acc"] <= 1 and scores["shakespeare_lastword"]["perplexity"] > 1
    assert scores["passkey"]["exact_match"] in (0.0, 0.5, 1.0)
    assert main(["lm-eval", str(run_dir), "--tasks", "nosuch"]) == 2
    assert "unknown task 'nosuch'" in capsys.readouterr().err
