"""`python -m training`: parse the command line (training.cli_parser, whose docstring is the operators'
overview that --help prints) and run the command (training.commands); bad input exits 2 with one log line.
Imports run one way: cli -> cli_parser -> cli_options, and cli -> commands -> steps -> cli_options."""

from __future__ import annotations

import json
import logging
import sys

from . import commands
from .cli_parser import build_parser

log = logging.getLogger("training")


def cmd_demo(ns) -> int:
    """Here, not in training.commands: the demo rebuild runs the other commands through main."""
    from .demo import build_demo

    print(json.dumps(build_demo(ns.work, ns.store, main, ns.skip_pretrain, ns.created_at), indent=1))
    return 0


COMMANDS = {**commands.COMMANDS, "demo": cmd_demo}


def main(argv: list[str] | None = None) -> int:
    ns = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if ns.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    from promptclip import ClipLoadError

    try:
        return COMMANDS[ns.command](ns)
    except (FileNotFoundError, ValueError, ClipLoadError) as e:  # bad input: say what, not where (-v: traceback)
        if ns.verbose:
            raise
        log.error("%s", e)
        return 2
