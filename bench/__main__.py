"""`python -m bench <name> [options]`: dispatch to one bench module's `main(argv)`."""

from __future__ import annotations

import importlib
import sys

from bench import BENCHES


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHES:
        names = ", ".join(BENCHES)
        print(f"usage: python -m bench <name> [options]   (names: {names}; <name> --help for options)")
        return 0 if argv and argv[0] in ("-h", "--help") else 2
    return importlib.import_module(BENCHES[argv[0]]).main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
