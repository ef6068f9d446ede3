"""Arguments and helpers shared by several commands."""

from __future__ import annotations

import argparse

from ..config import Config, load_config, parse_overrides


def add_config_args(p: argparse.ArgumentParser, positional: bool = True) -> None:
    if positional:
        p.add_argument("config", metavar="CONFIG_OR_PRESET",
                       help="a preset (tiny, small, paper-dense-1.7b-28l, paper-dense-1.7b-48l, "
                            "paper-moe-15a2b) or a YAML file")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="dotted override, e.g. model.attention.gate.position=g1 (repeatable)")


def config_from_args(args: argparse.Namespace, name: str | None = None) -> Config:
    return load_config(name if name is not None else args.config, parse_overrides(args.overrides))
