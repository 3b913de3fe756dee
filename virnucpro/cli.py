"""How every script runs: a user's mistake is one ``error:`` line and exit status 2, never a traceback."""
from __future__ import annotations

import sys
from typing import Callable, Sequence

from .errors import InputError
from .log import setup_logging


def run_cli(main: Callable[[Sequence[str] | None], int | None]) -> None:
    """Run a script's ``main`` and turn a user's mistake into one error line.

    ``InputError`` (bad input, missing file, ...) prints ``error: ...`` and exits
    with status 2; Ctrl-C exits with status 130. Anything else is a bug and
    keeps its traceback.
    """
    setup_logging()
    try:
        status = main(None)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)
