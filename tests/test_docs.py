"""The README and docs as users read them: every ```python block runs as written, and every `gatedattn`
command they show names a real command whose flags exist.

A block that cannot run here (a large model, a model trained by an earlier recipe) is marked in the
markdown by an HTML comment just before it, ``<!-- not-run: reason -->``; the marks are counted, so the
test cannot pass by skipping everything."""

import argparse
import re
import shlex
from pathlib import Path

import pytest

from gatedattn.cli.main import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
NOT_RUN = re.compile(r"<!--\s*not-run:\s*(\S.*?)\s*-->")


def code_blocks(language: str) -> list[tuple[str, str, str | None]]:
    """(where, code, not-run reason) of every fenced ``language`` block."""
    blocks = []
    for path in DOCS:
        lines = path.read_text().splitlines()
        i = 0
        while i < len(lines):
            if lines[i].strip() == f"```{language}":
                start = i + 1
                end = next(j for j in range(start, len(lines)) if lines[j].strip() == "```")
                before = next((lines[j] for j in range(i - 1, -1, -1) if lines[j].strip()), "")
                mark = NOT_RUN.search(before)
                blocks.append((f"{path.name}:{start}", "\n".join(lines[start:end]), mark and mark.group(1)))
                i = end
            i += 1
    return blocks


PYTHON = code_blocks("python")


def test_python_blocks_are_found_and_few_are_exempt():
    runnable = [b for b in PYTHON if b[2] is None]
    exempt = [b for b in PYTHON if b[2] is not None]
    assert len(runnable) >= 3 and len(exempt) < len(runnable), (runnable, exempt)
    assert all(len(reason) > 10 for _, _, reason in exempt)  # each says why


@pytest.mark.parametrize("where, code", [(w, c) for w, c, reason in PYTHON if reason is None],
                         ids=[w for w, _, reason in PYTHON if reason is None])
def test_python_block_runs_as_written(where, code, tmp_path, monkeypatch, shared_cache):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, where, "exec"), {"__name__": "__docs__"})


def _commands(text: str) -> list[tuple[str, bool]]:
    """(line, whether it is a whole command to parse) of each `gatedattn ...`: in bash blocks (continuation
    lines joined, comments cut; whole unless a synopsis with [ ] | ... or CAPITAL placeholders) and in
    inline code spans (often a fragment, such as a heading's `gatedattn analyze`)."""
    found = []
    for _, code, _ in code_blocks("bash"):
        for line in code.replace("\\\n", " ").splitlines():
            line = line.split(" #", 1)[0].strip()
            if line.startswith("gatedattn "):
                found.append((line, not re.search(r"[\[\]|]|\.\.\.|\b[A-Z]{2,}\b", line)))
    found += [(span, False) for span in re.findall(r"`(gatedattn [^`]+)`", text)]
    return found


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


COMMAND_LINES = _commands("\n".join(p.read_text() for p in DOCS))


def test_every_command_in_the_docs_exists_and_its_flags_parse():
    assert len(COMMAND_LINES) >= 15
    subs = _subparsers()
    global_flags = {"-v", "--verbose", "-q", "--quiet", "--version"}
    for line, whole in COMMAND_LINES:
        words = line.split()[1:]
        command = next((w for w in words if w not in global_flags), None)
        if command is None or command.isupper():  # `gatedattn --version`, `gatedattn COMMAND --help`
            assert command is not None or set(words) <= global_flags, line
            continue
        assert command in subs, f"{line!r}: no command {command!r} (allowed: {', '.join(COMMANDS)})"
        options = {s for a in subs[command]._actions for s in a.option_strings} | global_flags
        for flag in re.findall(r"(?<![\w-])(--?[a-zA-Z][\w-]*)", line.split(command, 1)[1]):
            assert flag in options, f"{line!r}: {command} has no option {flag}"
        if whole:
            try:
                build_parser().parse_args(shlex.split(line)[1:])
            except SystemExit as e:
                pytest.fail(f"{line!r} does not parse (exit {e.code})")


@pytest.mark.parametrize("command", COMMANDS)
def test_help_of_every_command(command, capsys):
    with pytest.raises(SystemExit) as e:
        main([command, "--help"])
    assert e.value.code == 0 and f"usage: gatedattn {command}" in capsys.readouterr().out
