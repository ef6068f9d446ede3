"""RULER-style tasks: prompts fit their length, needles sit where the sample says, the scorer is RULER's, an
oracle that solves each task from the prompt text alone scores 1.0 and a random guesser scores chance."""

import random
import re
from collections import Counter

import pytest

pytest.importorskip("wonderwords")
from gatedattn import GatedAttnError  # noqa: E402
from gatedattn.data.tokenizer import gpt2_tokenizer  # noqa: E402
from gatedattn.evaluation.ruler import TASKS, generate_samples, make_sample, parse_tasks, score  # noqa: E402

ESSAY = " ".join(f"Sentence {i} tells of kings and fools, of storms at sea." for i in range(400))
UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"


@pytest.fixture(scope="module")
def count_tokens():
    tok = gpt2_tokenizer()
    return lambda text: len(tok.encode(text))


@pytest.fixture(scope="module")
def samples(count_tokens):
    return {(t, n): generate_samples(t, n, 3, count_tokens, ESSAY, seed=1) for t in TASKS for n in (1024, 4096)}


def _context(s):
    return s.prompt[s.context_span[0]:s.context_span[1]]


# -- an oracle that reads the prompt like a careful reader, and a guesser that picks from the context ------

def oracle(s) -> str:
    context, question = _context(s), s.prompt[s.context_span[1]:]
    if s.task.startswith("niah"):
        keys = re.search(r"special magic \w+ for (.+?) mentioned in the provided text\?", question).group(1)
        values = []
        for key in re.split(r", and |, ", keys):
            values += re.findall(rf"One of the special magic \w+ for {re.escape(key)} is: (\S+)\.", context)
        return " ".join(values)
    if s.task == "vt":
        value = re.search(r"assigned the value (\d+)", question).group(1)
        edges = re.findall(r"VAR ([A-Z]+) = (VAR [A-Z]+|\d+)", context)
        names, frontier = [], {value}
        while frontier:
            found = [a for a, b in edges if b.removeprefix("VAR ") in frontier and a not in names]
            names += found
            frontier = set(found)
        return " ".join(names)
    counts = Counter(re.findall(r"\d+\. (\S+)", context))
    return " ".join(w for w, _ in counts.most_common(10))


def candidates(s) -> list[str]:
    """Every string of the answers' kind that the context holds."""
    context = _context(s)
    if s.task.startswith("niah"):
        pattern = UUID if re.fullmatch(UUID, s.answers[0]) else r"\b\d{7}\b"
        return sorted(set(re.findall(pattern, context)))
    if s.task == "vt":
        return sorted(set(re.findall(r"VAR ([A-Z]+)", context)))
    return sorted(set(re.findall(r"\d+\. (\S+)", context)))


# -- tests -----------------------------------------------------------------------------------------------

def test_task_names_and_bad_names():
    assert parse_tasks("all") == list(TASKS)
    assert parse_tasks("vt, cwe") == ["vt", "cwe"]
    with pytest.raises(GatedAttnError, match="unknown task 'niah_single_9'; allowed: all, niah_single_1"):
        parse_tasks("vt,niah_single_9")


def test_scorer_is_rulers_string_match():
    answers = ["1234567", "7654321"]
    assert score("The numbers are 1234567 and 7654321.", answers) == 1.0
    assert score("7654321", answers) == 0.5  # string_match_all: recall of the references
    assert score("\x00 1234567\n", answers, "all") == 0.5
    assert score("none here", answers) == 0.0
    assert score("7654321", answers, "part") == 1.0  # string_match_part: any reference
    assert score("7654320", answers, "part") == 0.0
    assert score("CLEVER-FOX is it", ["clever-fox"]) == 1.0  # case-insensitive


@pytest.mark.parametrize("task", list(TASKS))
def test_prompts_fill_their_length_and_needles_sit_where_they_say(task, samples, count_tokens):
    spec = TASKS[task]
    for length in (1024, 4096):
        for s in samples[task, length]:
            tokens = count_tokens(s.prompt)
            assert tokens == s.prompt_tokens and tokens + spec.max_new_tokens <= length
            assert tokens + spec.max_new_tokens > 0.9 * length  # the haystack was grown to fit
            context = _context(s)
            for a in s.answers:
                assert a in context
            if task == "cwe":
                continue
            assert len(s.needles) == (spec.num_keys * spec.num_values if spec.kind == "niah" else 5)
            haystack = context
            for n in s.needles:
                assert s.prompt[n.start:n.start + len(n.text)] == n.text
                assert s.context_span[0] <= n.start < s.context_span[1]
                haystack = haystack.replace(n.text, "")
            # Needles go between haystack units (sentences, lines), so their place is exact to one unit.
            split = r"(?<=[.!?])\s+" if spec.kind == "niah" and spec.haystack == "essay" else r"\n"
            unit = max(len(u) for u in re.split(split, haystack))
            before = 0
            for n in s.needles:  # position in the haystack alone, against the asked-for depth
                where = (n.start - s.context_span[0] - before) / len(haystack)
                assert abs(where - n.depth) < 0.005 + 1.2 * unit / len(haystack), (task, length, n)
                before += len(n.text)


@pytest.mark.parametrize("task", list(TASKS))
def test_an_oracle_scores_one_and_samples_are_deterministic(task, samples, count_tokens):
    for length in (1024, 4096):
        for s in samples[task, length]:
            assert score(oracle(s), s.answers, s.metric) == 1.0, (task, s.index)
    again = make_sample(task, 1024, 2, count_tokens, ESSAY, seed=1)
    assert again.prompt == samples[task, 1024][2].prompt and again.answers == samples[task, 1024][2].answers
    other = make_sample(task, 1024, 2, count_tokens, ESSAY, seed=2)
    assert other.prompt != again.prompt


@pytest.mark.parametrize("task", list(TASKS))
def test_a_random_guesser_scores_chance(task, samples):
    """A guesser naming k = len(answers) distinct strings of the answers' kind found in the context has
    expected recall k / (number of such strings); its measured mean must match that chance level."""
    rng = random.Random(0)
    measured, chance = [], []
    for length in (1024, 4096):
        for s in samples[task, length]:
            pool = candidates(s)
            assert set(s.answers) <= set(pool)
            k = len(s.answers)
            chance.append(k / len(pool))
            measured.append(sum(score(" ".join(rng.sample(pool, k)), s.answers) for _ in range(400)) / 400)
    mean_measured, mean_chance = sum(measured) / len(measured), sum(chance) / len(chance)
    assert abs(mean_measured - mean_chance) < 0.04, (task, mean_measured, mean_chance)
    if task in ("niah_multikey_2", "niah_multikey_3", "cwe"):  # distractors galore: chance is low
        assert mean_chance < 0.1
    if task == "niah_multikey_1":  # 3 distractor needles beside the real one
        assert mean_chance == pytest.approx(0.25)


def test_too_short_a_length_is_one_clear_error(count_tokens):
    with pytest.raises(GatedAttnError, match="vt at length 200: .*use longer lengths"):
        make_sample("vt", 200, 0, count_tokens, ESSAY)


def test_training_documents_hold_a_needle_and_end_with_its_answer(tmp_path):
    import json

    from gatedattn.evaluation.ruler import NEEDLE, training_documents, write_training_corpus

    docs = training_documents("niah_single_1", 30, 8)
    assert docs == training_documents("niah_single_1", 30, 8) and len(set(docs)) == 30
    sizes = set()
    for doc in docs:
        needle = re.search(r"One of the special magic numbers for (\S+) is: (\d{7})\.", doc)
        assert needle and doc.count("One of the special magic") == 1
        key, value = needle.groups()
        assert doc.endswith(f"The special magic number for {key} mentioned in the provided text is {value}.\n")
        sizes.add(doc.count("The grass is green."))
    assert min(sizes) >= 1 and max(sizes) <= 8 and len(sizes) > 3
    assert NEEDLE.startswith("One of the special magic {type_v} for {key} is: {value}")
    path = tmp_path / "corpus" / "train.jsonl"
    write_training_corpus(str(path), "niah_single_1", 5, 8)
    assert [json.loads(line)["text"] for line in path.read_text().splitlines()] == training_documents(
        "niah_single_1", 5, 8)
    with pytest.raises(GatedAttnError, match="niah tasks only"):
        training_documents("vt", 1, 4)
