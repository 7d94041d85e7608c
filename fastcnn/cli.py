"""Shared command-line plumbing: one-line errors and exit codes, never a traceback."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable


class CLIError(Exception):
    """A problem the user can fix; printed as one line, exit code `code` (2 by default)."""

    def __init__(self, message: str, code: int = 2) -> None:
        super().__init__(message)
        self.code = code


class ArgumentParser(argparse.ArgumentParser):
    """argparse with one-line errors, and --version on every command."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        from . import __version__

        self.add_argument("--version", action="version", version=f"fastcnn {__version__}")

    def error(self, message: str) -> None:
        raise CLIError(f"{message} (see {self.prog} --help)")


def threads_option(n: int | None) -> int:
    """set_threads for a command's --threads: a bad value is a one-line error, exit 2."""
    from .threads import set_threads

    try:
        return set_threads(n)
    except ValueError as exc:
        raise CLIError(f"--threads: {exc}") from None


def run_cli(main: Callable[[list[str] | None], int], argv: list[str] | None) -> int:
    """Run `main`, turning user-facing failures into a one-line message and an exit code."""
    try:
        return main(argv)
    except CLIError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.code
    except OSError as exc:  # unwritable --out, missing model file, full disk, ...
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
