"""RULER-style synthetic long-context tasks (Hsieh et al., 2024), generated locally from a seed.

The task names, needle formats, templates, answer prefixes and scoring follow RULER's synthetic suite:

  niah_single_1    noise haystack ("The grass is green. ..." repeated), word key, 7-digit number value
  niah_single_2    essay haystack, word key, number value
  niah_single_3    essay haystack, word key, UUID value
  niah_multikey_1  essay haystack, 4 keys (3 distractor needles), number values
  niah_multikey_2  haystack made of distractor needles (word keys, number values)
  niah_multikey_3  haystack made of distractor needles (UUID keys and values)
  niah_multivalue  essay haystack, one key with 4 values: all 4 must be recalled
  niah_multiquery  essay haystack, 4 keys, all 4 asked for
  vt               variable tracking: one chain of 4 hops (VAR X = 12345, VAR Y = VAR X, ...) in noise,
                   after a one-shot example; all 5 variables must be named
  cwe              common-words extraction: a numbered list where 10 words repeat often (30x; 6x under
                   4k tokens) and the rest rarely (3x; 1x under 4k), after a one-shot example

The essay is any long text (RULER uses Paul Graham's essays; here Shakespeare by default), repeated when
the target is longer than it. Keys are RULER's "adjective-noun" words and cwe draws from the same
noun/adjective/verb lists (the ``wonderwords`` package). A sample's length is counted in tokens of the
model's tokenizer: prompt + the task's generation budget fit in the target length, with the largest
haystack that fits (binary search). Scoring (RULER's): the prediction is stripped of control characters,
then ``all`` = the fraction of reference strings it contains (case-insensitive substring; every task
here), ``part`` = 1 if it contains any.
"""

from __future__ import annotations

import functools
import json
import re
import uuid
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from random import Random
from typing import Callable

from ..errors import GatedAttnError
from ..fileio import atomic_write_text

NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again."
NEEDLE = "One of the special magic {type_v} for {key} is: {value}."
NIAH_TEMPLATE = ("Some special magic {type_v} are hidden within the following text. Make sure to memorize it. "
                 "I will quiz you about the {type_v} afterwards.\n{context}\nWhat are all the special magic "
                 "{type_v} for {query} mentioned in the provided text?")
NIAH_PREFIX = " The special magic {type_v} for {query} mentioned in the provided text are"
VT_TEMPLATE = ("Memorize and track the chain(s) of variable assignment hidden in the following text.\n\n"
               "{context}\nQuestion: Find all variables that are assigned the value {query} in the text above.")
VT_PREFIX = (" Answer: According to the chain(s) of variable assignment in the text above, {num_v} variables "
             "are assgined the value {query}, they are: ")  # RULER's spelling, kept for comparability
CWE_TEMPLATE = ("Below is a numbered list of words. In these words, some appear more often than others. "
                "Memorize the ones that appear most often.\n{context}\nQuestion: What are the 10 most common "
                "words in the above list?")
CWE_PREFIX = " Answer: The top 10 words that appear most often in the list are:"
DEPTHS = [round(100 * i / 39) for i in range(40)]  # RULER's 40 needle depths (percent) in an essay
VT_HOPS = 4
VT_EXAMPLE_NOISE = 6  # noise sentences around the one-shot example's chain


class PromptTooLong(GatedAttnError):
    """A task's prompt with its smallest haystack does not fit the length (long-eval skips that cell)."""

    def __init__(self, what: str, tokens: int, limit: int):
        super().__init__(f"{what}: the prompt with a minimal haystack already takes {tokens} tokens of the "
                         f"{limit} left after the answer budget; use longer lengths (or a smaller --max-new-tokens)")
        self.tokens, self.limit = tokens, limit


@dataclass(frozen=True)
class TaskSpec:
    kind: str  # niah | vt | cwe
    haystack: str = "essay"  # niah: noise | essay | needle
    key: str = "words"
    value: str = "numbers"
    num_keys: int = 1
    num_values: int = 1
    num_queries: int = 1
    max_new_tokens: int = 128
    metric: str = "all"
    terminator: str = "\n"  # every answer is one line: decoding stops once it ends


TASKS: dict[str, TaskSpec] = {
    "niah_single_1": TaskSpec("niah", haystack="noise"),
    "niah_single_2": TaskSpec("niah"),
    "niah_single_3": TaskSpec("niah", value="uuids"),
    "niah_multikey_1": TaskSpec("niah", num_keys=4),
    "niah_multikey_2": TaskSpec("niah", haystack="needle"),
    "niah_multikey_3": TaskSpec("niah", haystack="needle", key="uuids", value="uuids"),
    "niah_multivalue": TaskSpec("niah", num_values=4),
    "niah_multiquery": TaskSpec("niah", num_keys=4, num_queries=4),
    "vt": TaskSpec("vt", max_new_tokens=30),
    "cwe": TaskSpec("cwe", max_new_tokens=120),
}


@dataclass
class Needle:
    text: str
    start: int  # character offset in the prompt
    depth: float  # where it was asked to go: fraction of the haystack before it


@dataclass
class Sample:
    task: str
    length: int  # target tokens: prompt + generation budget
    index: int
    prompt: str
    answers: list[str]
    max_new_tokens: int
    metric: str
    prompt_tokens: int
    context_span: tuple[int, int]  # character range of the haystack (with needles) in the prompt
    needles: list[Needle] = field(default_factory=list)


def parse_tasks(spec: str) -> list[str]:
    """``"all"`` or a comma-separated list of task names; GatedAttnError naming an unknown one."""
    names = list(TASKS) if spec.strip() == "all" else [t.strip() for t in spec.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise GatedAttnError(f"unknown task {unknown[0] if unknown else spec!r}; allowed: all, {', '.join(TASKS)}")
    return names


# -- scoring ---------------------------------------------------------------------------------------------

def answer_ended(prediction: str, terminator: str) -> bool:
    """Whether a prediction holds a complete answer: the terminator after some text (a leading one is not
    the end of an answer)."""
    return terminator in prediction.lstrip()


def postprocess(prediction: str) -> str:
    return re.sub(r"[\x00-\x1f]", "\n", prediction.strip()).strip()


def score(prediction: str, answers: list[str], metric: str = "all") -> float:
    """RULER's string match: ``all`` = fraction of answers contained, ``part`` = 1 if any is contained."""
    pred = postprocess(prediction).lower()
    hits = [a.lower() in pred for a in answers]
    if metric == "all":
        return sum(hits) / len(hits)
    if metric == "part":
        return float(any(hits))
    raise GatedAttnError(f"unknown metric {metric!r}; allowed: all, part")


# -- random content ------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _wordlist(name: str) -> tuple[str, ...]:
    try:
        text = (resources.files("wonderwords") / "assets" / f"{name}list.txt").read_text("utf-8")
    except ModuleNotFoundError:
        raise GatedAttnError("RULER tasks draw words from the 'wonderwords' package: "
                             "pip install 'gatedattn[train]' (or pip install wonderwords)") from None
    return tuple(w.strip() for w in text.splitlines() if w.strip())


@functools.lru_cache(maxsize=None)
def _cwe_words() -> tuple[str, ...]:
    words = sorted(set(_wordlist("noun") + _wordlist("adjective") + _wordlist("verb")))
    return tuple(w for w in words if " " not in w)


def _random(kind: str, rng: Random) -> str:
    if kind == "numbers":
        return str(rng.randint(10 ** 6, 10 ** 7 - 1))
    if kind == "words":
        return f"{rng.choice(_wordlist('adjective'))}-{rng.choice(_wordlist('noun'))}"
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _distinct(kind: str, rng: Random, n: int, taken: set[str]) -> list[str]:
    out = []
    while len(out) < n:
        s = _random(kind, rng)
        if s not in taken:
            taken.add(s)
            out.append(s)
    return out


def _sentences(text: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", text) if s]


# -- builders: the random content of a sample is drawn once; the text for n haystack units is then a pure
# -- function of n, so the fit can search n.

@dataclass
class _Built:
    prompt: str
    answers: list[str]
    context_span: tuple[int, int]
    needles: list[Needle]


def _niah(spec: TaskSpec, rng: Random, essay: list[str]) -> Callable[[int], _Built]:
    taken: set[str] = set()
    keys = _distinct(spec.key, rng, spec.num_keys, taken)
    values = [_distinct(spec.value, rng, spec.num_values, taken) for _ in keys]
    needles = [NEEDLE.format(type_v=spec.value, key=k, value=v) for k, vs in zip(keys, values) for v in vs]
    rng.shuffle(needles)
    if spec.haystack == "essay":
        depths = sorted(d / 100 for d in rng.sample(DEPTHS, len(needles)))
    else:
        depths = sorted(rng.random() for _ in needles)
    queried = rng.sample(range(len(keys)), spec.num_queries)
    query = ", ".join(keys[i] for i in queried[:-1]) + ", and " + keys[queried[-1]] if len(queried) > 1 \
        else keys[queried[0]]
    answers = [v for i in queried for v in values[i]]
    distractor_rng, distractors = Random(rng.getrandbits(64)), []

    def build(n: int) -> _Built:
        if spec.haystack == "essay":
            units, sep = _sentences(" ".join(essay[i % len(essay)] for i in range(n))), " "
        elif spec.haystack == "noise":
            units, sep = [NOISE] * n, "\n"
        else:  # distractor needles, drawn once and reused as n grows
            while len(distractors) < n:
                k = _distinct(spec.key, distractor_rng, 1, taken)[0]
                v = _distinct(spec.value, distractor_rng, 1, taken)[0]
                distractors.append(NEEDLE.format(type_v=spec.value, key=k, value=v))
            units, sep = distractors[:n], "\n"
        slots = [int(len(units) * d) for d in depths]
        parts, at = [], 0
        for slot, needle in zip(slots, needles):
            parts += units[at:slot] + [needle]
            at = slot
        parts += units[at:]
        return _assemble(spec, parts, sep, needles, depths, query, answers)

    return build


def _assemble(spec: TaskSpec, parts: list[str], sep: str, needles: list[str], depths: list[float], query: str,
              answers: list[str]) -> _Built:
    type_v, template, prefix = spec.value, NIAH_TEMPLATE, NIAH_PREFIX
    if spec.num_queries * spec.num_values == 1:  # RULER's singular wording
        template = template.replace("Some", "A").replace("are all", "is").replace("are", "is")
        prefix = prefix.replace("are", "is")
        type_v = type_v[:-1]
    context = sep.join(parts)
    head = template.split("{context}")[0].format(type_v=type_v)
    prompt = head + context + template.split("{context}")[1].format(type_v=type_v, query=query) \
        + prefix.format(type_v=type_v, query=query)
    placed, cursor = [], len(head)
    for needle, depth in zip(needles, depths):
        start = prompt.index(needle, cursor)
        placed.append(Needle(needle, start, depth))
        cursor = start + len(needle)
    return _Built(prompt, answers, (len(head), len(head) + len(context)), placed)


def _vt_chain(rng: Random, hops: int, name_len: int) -> tuple[list[str], str, list[str], list[float]]:
    """Variable names, the value, the chain's lines and where (fractions of the noise) each line goes."""
    names: list[str] = []
    while len(names) < hops + 1:
        name = "".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(name_len))
        if name not in names:
            names.append(name)
    value = str(rng.randint(10000, 99999))
    chain = [f"VAR {names[0]} = {value}"] + [f"VAR {names[j + 1]} = VAR {names[j]}" for j in range(hops)]
    return names, value, chain, sorted(rng.random() for _ in chain)


def _vt(rng: Random) -> Callable[[int], _Built]:
    # The one-shot example RULER puts first (3-letter names, its answer given), in a shorter noise text.
    ex_names, ex_value, ex_chain, ex_pos = _vt_chain(rng, VT_HOPS, 3)
    example = VT_TEMPLATE.format(context=_vt_context(VT_EXAMPLE_NOISE, ex_chain, ex_pos), query=ex_value) \
        + VT_PREFIX.format(num_v=len(ex_names), query=ex_value) + " ".join(ex_names) + "\n\n"
    names, value, chain, positions = _vt_chain(rng, VT_HOPS, 5)

    def build(n: int) -> _Built:
        context = _vt_context(n, chain, positions)
        head = example + VT_TEMPLATE.split("{context}")[0]
        prompt = head + context + VT_TEMPLATE.split("{context}")[1].format(query=value) \
            + VT_PREFIX.format(num_v=len(names), query=value)
        placed, cursor = [], len(head)
        for line, depth in zip(chain, positions):
            start = prompt.index(line, cursor)
            placed.append(Needle(line, start, depth))
            cursor = start + len(line)
        return _Built(prompt, list(names), (len(head), len(head) + len(context)), placed)

    return build


def _vt_context(n: int, chain: list[str], positions: list[float]) -> str:
    """n noise sentences with the chain's lines inserted at the given fractions (RULER's layout)."""
    noise = [NOISE + "\n"] * n
    parts, at = [], 0
    for line, p in zip(chain, positions):
        slot = int(n * p)
        parts += noise[at:slot] + [line]
        at = slot
    parts += noise[at:]
    return " ".join(parts).strip()


def _cwe(rng: Random, length: int) -> tuple[Callable[[int], _Built], int]:
    short = length < 4096  # RULER: fewer repeats below 4k tokens
    words = list(_cwe_words())
    rng.shuffle(words)
    ex_freq, freq = ((3, 1), (6, 1)) if short else ((10, 3), (30, 3))
    ex_context, ex_common = _cwe_list(words[:20 if short else 40], *ex_freq, Random(rng.getrandbits(64)))
    example = CWE_TEMPLATE.format(context=ex_context) + CWE_PREFIX \
        + " " + " ".join(f"{i + 1}. {w}" for i, w in enumerate(ex_common)) + "\n"
    pool, order_seed = words[40:], rng.getrandbits(64)

    def build(n: int) -> _Built:
        context, common = _cwe_list(pool[:10 + n], *freq, Random(order_seed))
        head = example + CWE_TEMPLATE.split("{context}")[0]
        prompt = head + context + CWE_TEMPLATE.split("{context}")[1] + CWE_PREFIX
        return _Built(prompt, common, (len(head), len(head) + len(context)), [])

    return build, len(pool) - 10  # n = the number of rare words; the pool bounds it


def _cwe_list(words: list[str], common_repeats: int, rare_repeats: int, rng: Random) -> tuple[str, list[str]]:
    common, rare = words[:10], words[10:]
    items = common * common_repeats + rare * rare_repeats
    rng.shuffle(items)
    return " ".join(f"{i + 1}. {w}" for i, w in enumerate(items)), common


# -- samples of a target length --------------------------------------------------------------------------

def generate_samples(task: str, length: int, num_samples: int, count_tokens: Callable[[str], int],
                     essay: str, seed: int = 0, max_new_tokens: int | None = None) -> list[Sample]:
    """``num_samples`` samples of ``task`` (see ``make_sample``)."""
    return [make_sample(task, length, i, count_tokens, essay, seed, max_new_tokens) for i in range(num_samples)]


def make_sample(task: str, length: int, index: int, count_tokens: Callable[[str], int], essay: str,
                seed: int = 0, max_new_tokens: int | None = None) -> Sample:
    """Sample ``index`` of ``task`` whose prompt tokens + generation budget fit in ``length`` tokens, with
    the largest haystack that fits. ``count_tokens`` counts a prompt as the model will see it. The sample
    depends only on (seed, task, length, index)."""
    spec = TASKS[parse_tasks(task)[0]]
    budget = spec.max_new_tokens if max_new_tokens is None else max_new_tokens
    words = essay.split()
    if spec.kind == "niah" and spec.haystack == "essay" and not words:
        raise GatedAttnError("the essay text for the RULER haystack is empty")
    rng = Random(f"{seed}/{task}/{length}/{index}")
    if spec.kind == "niah":
        build, max_n = _niah(spec, rng, words), None
    elif spec.kind == "vt":
        build, max_n = _vt(rng), None
    else:
        build, max_n = _cwe(rng, length)
    built, tokens = _fit(build, count_tokens, length - budget, max_n, f"{task} at length {length}")
    return Sample(task, length, index, built.prompt, built.answers, budget, spec.metric, tokens,
                  built.context_span, built.needles)


def training_documents(task: str, count: int, max_units: int, essay: str = "", seed: str = "train") -> list[str]:
    """``count`` documents for training on a needle task: each a prompt of ``task`` with a haystack of 1 to
    ``max_units`` units (lines or essay words, uniformly) and its answer after the answer prefix, ending the
    line. Drawn from seeds of their own ("{seed}/i"), not those of the evaluation samples."""
    spec = TASKS[parse_tasks(task)[0]]
    if spec.kind != "niah":
        raise GatedAttnError(f"training documents exist for the niah tasks only, not {task}")
    docs = []
    for i in range(count):
        rng = Random(f"{seed}/{task}/{i}")
        built = _niah(spec, rng, essay.split())(rng.randint(1, max_units))
        docs.append(f"{built.prompt} {', '.join(built.answers)}.\n")
    return docs


def write_training_corpus(path: str, task: str, count: int, max_units: int, essay: str = "") -> None:
    """``training_documents`` as a JSONL corpus (one ``{"text": ...}`` per line) for ``gatedattn train --data``."""
    docs = training_documents(task, count, max_units, essay)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(path), "".join(json.dumps({"text": d}) + "\n" for d in docs))


def _fit(build: Callable[[int], _Built], count_tokens: Callable[[str], int], limit: int, max_n: int | None,
         what: str) -> tuple[_Built, int]:
    """The prompt with the largest haystack size n (>= 1, <= max_n) that has at most ``limit`` tokens:
    exponential search for a bracket, then binary search (token counts grow with n)."""
    counts: dict[int, int] = {}

    def tokens(n: int) -> int:
        if n not in counts:
            counts[n] = count_tokens(build(n).prompt)
        return counts[n]

    if tokens(1) > limit:
        raise PromptTooLong(what, tokens(1), limit)
    lo, hi = 1, 2
    while tokens(hi) <= limit:
        if max_n is not None and hi >= max_n:
            return build(max_n), tokens(max_n)  # as RULER: the haystack stops growing, the prompt is shorter
        lo, hi = hi, hi * 2 if max_n is None else min(hi * 2, max_n)
    while hi - lo > 1:  # invariant: tokens(lo) <= limit < tokens(hi)
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if tokens(mid) <= limit else (lo, mid)
    return build(lo), tokens(lo)
