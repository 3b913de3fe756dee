"""How every script runs: a user's mistake is one ``error:`` line and exit
status 2, never a traceback; SIGTERM (what SLURM sends at a time limit or on
scancel) stops a run as Ctrl-C does, releasing what it holds, so that the
same command resumes; a full disk, or a folder that may not be written, is
one line too. And the checks of the scripts' arguments, alike everywhere."""
from __future__ import annotations

import argparse
import errno
import signal
import sys
from typing import Callable, Sequence

from virnucpro.errors import InputError
from virnucpro.files import is_disk_full
from virnucpro.log import setup_logging

RESUMES = "run the same command again to go on where it stopped: finished work is kept"


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled as Ctrl-C is: every lock, spool and temporary file is released on the way out."""


def _terminate(signum, frame):
    raise Terminated


def run_cli(main: Callable[[Sequence[str] | None], int | None]) -> None:
    """Run a script's ``main`` and turn what is not a bug into one line.

    ``InputError`` (bad input, missing file, ...), a full disk and a folder
    that may not be written print ``error: ...`` and exit with status 2;
    Ctrl-C exits with 130, SIGTERM with 143. Anything else is a bug and keeps
    its traceback.
    """
    setup_logging()
    signal.signal(signal.SIGTERM, _terminate)
    try:
        status = main(None)
    except InputError as error:
        fail(str(error))
    except Terminated:
        print(f"terminated (SIGTERM); {RESUMES}", file=sys.stderr)
        sys.exit(143)
    except KeyboardInterrupt:
        print(f"interrupted; {RESUMES}", file=sys.stderr)
        sys.exit(130)
    except OSError as error:
        if is_disk_full(error):
            fail(f"{error.filename or 'a file'}: no space left on its disk ({error.strerror}); free some space "
                 f"and {RESUMES}")
        if error.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            fail(f"{error.filename or 'a file'}: {error.strerror.lower()}; give a folder you can write to")
        raise
    sys.exit(status or 0)


def fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


# ---------------------------------------------------------------- arguments
def at_least(minimum: int):
    """An argparse type: an integer of at least ``minimum``."""
    def check(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below {minimum}; give at least {minimum}")
        return value
    return check


def positive_float(text: str) -> float:
    """An argparse type: a number greater than 0."""
    value = _number(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text} is not greater than 0")
    return value


def fraction(text: str) -> float:
    """An argparse type: a number between 0 and 1."""
    value = _number(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not between 0 and 1")
    return value


def _number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"{text} is not a finite number")
    return value
