"""python -m fastcnn: the commands, one line each."""

from __future__ import annotations

import importlib
import sys

from . import __doc__ as summary
from . import __version__

COMMANDS = ("train", "evaluate", "predict", "compile")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["--version"], ["-V"]):
        print(f"fastcnn {__version__}")
        return 0
    lines = [f"fastcnn {__version__}: {summary.strip().removeprefix('fastcnn: ')}", "",
             "Commands (python -m fastcnn.COMMAND --help for the options of each):"]
    for name in COMMANDS:
        doc = importlib.import_module(f"fastcnn.{name}").__doc__ or ""
        lines.append(f"  {name:<9} {doc.split(':', 1)[1].split(chr(10))[0].strip()}")
    print("\n".join(lines))
    if args and args[0] not in ("-h", "--help"):
        print(f"\nerror: unknown argument {args[0]!r}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
