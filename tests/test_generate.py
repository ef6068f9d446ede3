"""GatedLM.generate's HF habits, each against an independent reference: repetition penalty (transformers'
own processor on full forwards), EOS and stop strings, num_return_sequences, left padding."""

import pytest
import torch
from conftest import tiny_model

from gatedattn import GatedAttnError


def _greedy_reference(model, prompt, steps, process=None):
    """Full forwards (no cache), optional logits processor, argmax: what generate must reproduce."""
    tokens = prompt
    for _ in range(steps):
        logits = model(tokens).logits[:, -1]
        if process is not None:
            logits = process(tokens, logits)
        tokens = torch.cat([tokens, logits.argmax(-1)[:, None]], 1)
    return tokens


@pytest.mark.parametrize("penalty", [1.3, 0.7])
def test_repetition_penalty_equals_transformers_processor(penalty):
    from transformers import RepetitionPenaltyLogitsProcessor

    model = tiny_model(initializer_range=0.2)  # logits spread wide enough for the penalty to change picks
    prompt = torch.randint(0, 256, (2, 6))
    got = model.generate(prompt, max_new_tokens=12, repetition_penalty=penalty)
    expected = _greedy_reference(model, prompt, 12, RepetitionPenaltyLogitsProcessor(penalty))
    assert torch.equal(got, expected)
    assert not torch.equal(got, model.generate(prompt, max_new_tokens=12))  # the penalty changed something


def test_eos_stops_each_row_and_pads_the_finished_ones():
    model = tiny_model()
    prompt = torch.randint(0, 256, (2, 5))
    free = model.generate(prompt, max_new_tokens=10)
    eos = int(free[0, 5 + 3])  # row 0's 4th new token
    first = [next(j for j in range(5, 15) if free[r, j] == eos) if (free[r, 5:] == eos).any() else None
             for r in range(2)]
    got = model.generate(prompt, max_new_tokens=10, eos_token_id=eos)
    stop = max(f if f is not None else 14 for f in first)
    assert got.shape[1] == stop + 1  # ends when every row has its EOS (or the budget is spent)
    for r, f in enumerate(first):
        end = f if f is not None else 14
        assert torch.equal(got[r, :end + 1], free[r, :end + 1])
        assert (got[r, end + 1:] == eos).all()  # after EOS: the fill id (EOS by default)
    padded = model.generate(prompt, max_new_tokens=10, eos_token_id=[999, eos], pad_token_id=7)
    assert torch.equal(padded[0, :first[0] + 1], free[0, :first[0] + 1]) and (padded[0, first[0] + 1:] == 7).all()


class _Letters:
    """A stand-in tokenizer: id i decodes to one letter."""

    def decode(self, ids):
        return "".join(chr(ord("a") + i % 26) for i in ids)


def test_stop_strings_stop_once_the_new_text_contains_one():
    model = tiny_model()
    prompt = torch.randint(0, 256, (1, 5))
    free = model.generate(prompt, max_new_tokens=12)
    text = _Letters().decode(free[0, 5:].tolist())
    stop = text[4:6]
    end = text.index(stop) + len(stop)  # first place the new text contains it
    got = model.generate(prompt, max_new_tokens=12, stop_strings=stop, tokenizer=_Letters())
    assert torch.equal(got, free[:, :5 + end])
    with pytest.raises(GatedAttnError, match="stop_strings needs tokenizer="):
        model.generate(prompt, max_new_tokens=3, stop_strings=["x"])


def test_num_return_sequences_shapes_and_seeded_determinism():
    model = tiny_model()
    prompt = torch.randint(0, 256, (2, 4))

    def sample(seed, x=prompt, **kw):
        return model.generate(x, max_new_tokens=8, do_sample=True, temperature=1.5,
                              generator=torch.Generator().manual_seed(seed), **kw)

    a = sample(1, num_return_sequences=3)
    assert a.shape == (6, 12) and torch.equal(a[:, :4], prompt.repeat_interleave(3, 0))
    assert torch.equal(a, sample(1, num_return_sequences=3))
    assert torch.equal(a, sample(1, x=prompt.repeat_interleave(3, 0)))  # = the prompts repeated by hand
    assert len({tuple(row) for row in a[:3, 4:].tolist()}) > 1  # samples of one prompt differ
    with pytest.raises(GatedAttnError, match="do_sample=True"):
        model.generate(prompt, max_new_tokens=2, num_return_sequences=2)


def test_left_padding_equals_each_prompt_alone():
    model = tiny_model()
    long, short = torch.randint(0, 256, (1, 7)), torch.randint(0, 256, (1, 4))
    pad = 255
    batch = torch.cat([long, torch.cat([torch.full((1, 3), pad), short], 1)])
    mask = torch.tensor([[1] * 7, [0, 0, 0, 1, 1, 1, 1]])
    got = model.generate(batch, max_new_tokens=6, attention_mask=mask)
    assert got.shape == (2, 13)
    assert torch.equal(got[0], model.generate(long, max_new_tokens=6)[0])
    assert torch.equal(got[1, :3], torch.full((3,), pad)) and torch.equal(got[1, 3:],
                                                                         model.generate(short, max_new_tokens=6)[0])
    assert torch.equal(model.generate(batch, max_new_tokens=3, attention_mask=torch.ones_like(batch)),
                       model.generate(batch, max_new_tokens=3))
    with pytest.raises(GatedAttnError, match="left padding"):
        model.generate(batch, max_new_tokens=2, attention_mask=torch.tensor([[1] * 7, [1, 1, 1, 1, 0, 0, 0]]))


def test_unsupported_hf_arguments_are_named():
    model = tiny_model()
    with pytest.raises(GatedAttnError, match="unsupported argument.*num_beams.*supported: input_ids"):
        model.generate(torch.randint(0, 256, (1, 3)), max_new_tokens=2, num_beams=4)


def test_load_model_casts_the_weights_for_inference(tmp_path):
    from gatedattn.artifacts import load_model

    model = tiny_model(**{"attention.gate.position": "g1"}).float()
    model.save_pretrained(tmp_path / "m")
    x = torch.randint(0, 256, (1, 9))
    half = load_model(tmp_path / "m", dtype="bfloat16").model
    assert {p.dtype for p in half.parameters()} == {torch.bfloat16}
    torch.testing.assert_close(half(x).logits.float(), model(x).logits, rtol=0.05, atol=0.05)
    with pytest.raises(GatedAttnError, match="unknown weight dtype 'int8'; allowed: float32, bfloat16, float16"):
        load_model(tmp_path / "m", dtype="int8")
