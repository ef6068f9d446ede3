"""The ``gatedattn`` entry point: one small module per command, each with ``add_parser`` and ``run``.

Each command module's docstring is its ``--help`` text for users (first line: the summary in the command
list). Bad input (GatedAttnError) becomes one line on stderr and exit code 2; argparse does the same for
bad flags.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import GatedAttnError

COMMANDS = ["info", "analyze", "train", "eval", "generate", "compare", "sweep", "long-eval", "export", "import",
            "retrofit", "lm-eval"]
DESCRIPTION = """Gated attention for language models (Qiu et al., NeurIPS 2025): build, train, evaluate and
diagnose transformers with a sigmoid gate after attention. 'gatedattn COMMAND --help' says more."""


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Keeps the paragraphs of a command's description and appends "(default: X)" to each option whose help
    does not already state its default (None, False and empty defaults mean "not given" and show nothing)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        unset = action.default is None or action.default is False or action.default == []
        if "default" in text or unset or action.default == argparse.SUPPRESS or not action.option_strings:
            return text
        return super()._get_help_string(action)


def version() -> str:
    """The installed distribution's version, else the package's own (a source checkout on PYTHONPATH)."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("gatedattn")
    except PackageNotFoundError:
        from .. import __version__

        return __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatedattn", description=DESCRIPTION, formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"gatedattn {version()}")
    loudness = parser.add_mutually_exclusive_group()
    loudness.add_argument("-v", "--verbose", action="store_true", help="also print debugging messages")
    loudness.add_argument("-q", "--quiet", action="store_true", help="print warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"gatedattn.cli.{name.replace('-', '_')}")
        p = sub.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__,
                           formatter_class=HelpFormatter)
        module.add_parser(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ..training.metrics import setup_cli_logging

    setup_cli_logging(logging.DEBUG if args.verbose else logging.WARNING if args.quiet else logging.INFO)
    try:
        return args.run(args) or 0
    except GatedAttnError as e:
        print(f"gatedattn {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"gatedattn {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
