"""`studylib <command>`: one entry point; each command lives in the module that does its work.

A module provides `add_arguments(parser)` and `run(args) -> int`; this file only dispatches.
"""
from __future__ import annotations

import argparse
import importlib
import sys

COMMANDS = {
    "grid": ("studylib.study.runner", "run every cell of a grid file, skip finished ones, then collect"),
    "collect": ("studylib.study.collect", "read every run record into results/<study>/runs.parquet"),
    "serve": ("studylib.serve.server", "serve a trained run over HTTP"),
    "bench": ("studylib.bench", "benchmark the training loop against a bare step"),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="studylib", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    argv = sys.argv[1:] if argv is None else argv
    wanted = argv[0] if argv and argv[0] in COMMANDS else None
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text)
        if name == wanted:  # import only the module the user asked for: start-up stays fast
            importlib.import_module(module).add_arguments(p)
    args, rest = parser.parse_known_args(argv)
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    return int(importlib.import_module(COMMANDS[args.command][0]).run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
