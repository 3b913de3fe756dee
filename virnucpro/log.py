"""The tool's messages: ``INFO: ...`` and ``WARNING: ...`` lines on stderr."""
from __future__ import annotations

import logging
import sys

logger = logging.getLogger("virnucpro")

_WARNED: set[str] = set()


def warn_once(message: str) -> None:
    """Log a warning the first time this process meets it (a file read twice says it once)."""
    if message not in _WARNED:
        _WARNED.add(message)
        logger.warning(message)


def setup_logging() -> None:
    """Log the tool's messages to stderr as ``INFO: ...`` / ``WARNING: ...`` lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    logger.propagate = False


def plural(count: int, noun: str, nouns: str | None = None) -> str:
    """``1 sequence``, ``2 sequences``: a count with its noun (``nouns`` where adding an s is wrong)."""
    return f"{count} {noun if count == 1 else nouns or noun + 's'}"
