"""The ``gatedattn`` entry point: one small module per command, each with ``add_parser`` and ``run``.

Bad input (GatedAttnError) becomes one line on stderr and exit code 2; argparse does the same for bad flags.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from ..errors import GatedAttnError

COMMANDS = ["info", "analyze", "train", "eval", "generate", "compare", "sweep", "long-eval"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="gatedattn", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"gatedattn.cli.{name.replace('-', '_')}")
        p = sub.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__)
        module.add_parser(p)
        p.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
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
