"""One error type for everything a user can get wrong, printed as one line by the entry points."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import NoReturn


class SuiteError(Exception):
    """A problem with the user's input: config, data, model path, method directory or reward."""


def die(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(1)


def run_cli(main: Callable[[], object]) -> None:
    """Run an entry point, turning a SuiteError into a one-line message and exit status 1."""
    try:
        main()
    except SuiteError as exc:
        die(str(exc))
    except KeyboardInterrupt:
        die("interrupted")
