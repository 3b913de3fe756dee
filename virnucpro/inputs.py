"""A run's input: what the user gave (a file, a pipe or ``-`` for standard
input), read once from end to end before any work to check every record,
count its chunks and identify it by its content (the SHA-256 of its bytes,
so that a file replaced by another of the same size and date is told apart).
A pipe, which can be read only once, is copied into the output folder as it
is read (never before it is checked); the later passes read the copy, and
messages always name what the user gave."""
from __future__ import annotations

import contextlib
import hashlib
import os
from dataclasses import dataclass
from typing import Iterator

from .chunks import chunk_starts
from .fasta import read_fasta
from .files import Tap
from .outputs import SPOOL_FILE


@dataclass(frozen=True)
class Input:
    """The path to read (the file itself, or the copy of a pipe) and the name messages give it; after the
    check, what identifies its content and how many records and chunks it holds."""
    path: str
    name: str
    identity: dict | None = None
    records: int | None = None
    chunks: int | None = None


def is_pipe(given: str) -> bool:
    """Whether the input can be read only once: ``-``, a pipe, a process substitution."""
    return given == "-" or not os.path.isfile(given)


def count_chunks(path: str, chunk_size: int, name: str | None = None, tap=None) -> tuple[int, int]:
    """Read (and validate) the whole input once: ``(records, chunks)``."""
    records = chunks = 0
    for record in read_fasta(path, alphabet="dna", keep_empty=True, name=name, tap=tap):
        records += 1
        chunks += len(chunk_starts(len(record.sequence), chunk_size))
    return records, chunks


@contextlib.contextmanager
def run_input(given: str, output_dir: str, chunk_size: int, check: bool) -> Iterator[Input]:
    """The input of a run writing into ``output_dir`` (which this process holds); with ``check``, read
    once, checked, counted and identified (another process of a torchrun team takes the file as it is)."""
    spool = os.path.join(output_dir, SPOOL_FILE)
    with contextlib.suppress(FileNotFoundError):
        os.remove(spool)                # left by a run that was killed; this process holds the folder now
    piped = is_pipe(given)
    if not check and not piped:
        yield Input(given, given)
        return
    digest, taps = hashlib.sha256(), []
    try:
        with open(spool, "wb") if piped else contextlib.nullcontext() as copy:
            def tap(raw):
                taps.append(Tap(raw, digest, copy))
                return taps[-1]

            records, chunks = count_chunks(given, chunk_size, given, tap)
        identity = {"sha256": digest.hexdigest(), "bytes": taps[0].size}
        yield Input(spool if piped else given, given, identity, records, chunks)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(spool)
