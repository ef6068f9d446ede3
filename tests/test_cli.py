"""The command line's own conventions: --version, -v/-q, user help with defaults, --device validation."""

import argparse
import logging

import pytest
import torch

import gatedattn
from gatedattn.cli.main import COMMANDS, build_parser, main


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.strip() == f"gatedattn {gatedattn.__version__}"


@pytest.mark.parametrize("flag, level", [("-v", logging.DEBUG), ("-q", logging.WARNING), (None, logging.INFO)])
def test_verbosity_flags_set_the_gatedattn_logger_level(flag, level, capsys):
    assert main([*([flag] if flag else []), "info", "tiny"]) == 0
    assert logging.getLogger("gatedattn").level == level
    assert "total parameters" in capsys.readouterr().out


def test_help_is_user_text_and_states_every_default(capsys):
    subs = _subparsers(build_parser())
    assert sorted(subs) == sorted(COMMANDS)
    for name, sub in subs.items():
        text = sub.format_help()
        # Developer notes and reST markup stay out of what users read.
        for marker in ("``", "add_parser", "GatedAttnError", "our model"):
            assert marker not in text, (name, marker)
        for action in sub._actions:
            unset = action.default is None or action.default is False or action.default == []
            if action.option_strings and action.help and not unset and action.default != argparse.SUPPRESS:
                help_line = sub._get_formatter()._get_help_string(action)
                assert "default" in help_line, (name, action.option_strings)
    assert "(default: 262144)" in subs["eval"].format_help().replace("\n", " ").replace("  ", " ")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("command", [["eval", "no-such-model"], ["generate", "no-such-model", "--prompt", "x"]])
def test_device_cuda_without_cuda_is_one_line_exit_2(command, capsys, tmp_path):
    assert main([*command, "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--device=cuda but no CUDA device" in err and "auto, cpu, cuda" in err


def test_device_rejects_unknown_names(capsys):
    with pytest.raises(SystemExit) as e:
        main(["eval", "x", "--device", "tpu"])
    assert e.value.code == 2 and "invalid choice" in capsys.readouterr().err
