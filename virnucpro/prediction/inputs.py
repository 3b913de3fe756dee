"""A run's input: what the user gave (a file, a pipe or ``-`` for standard
input; paired reads as two mate files or one interleaved file), read once
from end to end before any work to check every record, count its chunks and
identify it by its content (the SHA-256 of its bytes, so that a file
replaced by another of the same size and date is told apart). A pipe, which
can be read only once, is copied into the output folder as it is read (never
before it is checked); the later passes read the copy, and messages always
name what the user gave.

Mates (Illumina's R1 and R2, SRA's _1 and _2) carry the same id, or the same
but for a final /1 and /2 (or .1 and .2): each mate is scored as a read of
its own, named ``<pair>/1`` and ``<pair>/2``.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import itertools
import os
from dataclasses import dataclass
from typing import Iterator

from virnucpro.errors import InputError
from virnucpro.files import Tap, is_disk_full
from virnucpro.prediction.outputs import SPOOLS
from virnucpro.sequences.chunks import chunk_starts
from virnucpro.sequences.fasta import FastaRecord, RecordIds, read_fasta
from virnucpro.sequences.frames import scored_frame_count

MATE_SUFFIXES = (("/1", "/2"), (".1", ".2"))


@dataclass(frozen=True)
class Input:
    """The file(s) to read (the user's, or the copies of pipes) and the names messages give them; after the
    check, what identifies the content and how many reads and chunks it holds."""
    path: str
    name: str
    mate2: str | None = None
    mate2_name: str | None = None
    interleaved: bool = False
    identity: dict | None = None
    sequences: int | None = None
    chunks: int | None = None
    frames: int | None = None                 # the stop-free frames prediction scores

    @property
    def paired(self) -> bool:
        return self.mate2 is not None or self.interleaved

    def check_unchanged(self) -> None:
        """Stop at once when an input file checked by this process was deleted, or grew or shrank, since (a
        pipe's spool is the run's own copy): records appended during the run are never scored unchecked."""
        mate2 = (self.identity or {}).get("mate2")
        for path, name, identity in ((self.path, self.name, self.identity), (self.mate2, self.mate2_name, mate2)):
            if identity is None or path != name:
                continue
            try:
                size = os.path.getsize(path)
            except FileNotFoundError:
                raise InputError(f"{name}: deleted during the run; put it back and run the same command again to "
                                 "go on") from None
            if size != identity["bytes"]:
                raise InputError(f"{name}: the input changed during the run ({identity['bytes']} bytes when it was "
                                 f"checked, {size} now); run prediction again with --overwrite on the input as it "
                                 "is now")

    def reads(self, tap=None, tap2=None) -> Iterator[FastaRecord]:
        """The reads in run order, validated (mates one after the other, renamed ``<pair>/1``, ``/2``)."""
        if not self.paired:
            yield from read_fasta(self.path, alphabet="dna", keep_empty=True, name=self.name, tap=tap)
            return
        rereadable = not any(is_pipe(path) for path in (self.path, self.mate2) if path)
        locate = functools.partial(_first_pair, self) if rereadable else None
        pairs = RecordIds(self.name, locate, what="pair")
        for number, (one, two) in enumerate(self._mates(tap, tap2), start=1):
            pair = pair_of(one.id, two.id)
            if pair is None:
                raise InputError(self._not_mates(one, two))
            pairs.add(pair, number, one.line)
            yield _mate(one, pair, 1, 2 * number - 1)
            yield _mate(two, pair, 2, 2 * number)

    def _mates(self, tap=None, tap2=None) -> Iterator[tuple[FastaRecord, FastaRecord]]:
        """The (first, second) records of each pair, as the file(s) hold them."""
        if self.interleaved:
            records = read_fasta(self.path, "dna", True, self.name, tap, unique=False)
            for one, two in itertools.zip_longest(records, records):
                if two is None:
                    raise InputError(f"{self.name}: record {one.number} ('{one.id}') has no mate after it: an "
                                     "interleaved file holds each read's mates one after the other")
                yield one, two
            return
        firsts = read_fasta(self.path, "dna", True, self.name, tap)
        seconds = read_fasta(self.mate2, "dna", True, self.mate2_name, tap2)
        for number, (one, two) in enumerate(itertools.zip_longest(firsts, seconds), start=1):
            if one is None or two is None:
                longer, shorter = (self.name, self.mate2_name) if two is None else (self.mate2_name, self.name)
                raise InputError(f"{shorter}: ends before pair {number}, where {longer} goes on; mate files hold "
                                 "the same reads in the same order")
            yield one, two

    def _not_mates(self, one: FastaRecord, two: FastaRecord) -> str:
        if self.interleaved:
            return (f"{self.name}: records {one.number} and {two.number} ('{one.id}', '{two.id}') are not mates: "
                    "an interleaved file holds each read's mates one after the other, with the same id (or the "
                    "same but for /1 and /2)")
        return (f"{self.mate2_name}: record {two.number} ('{two.id}') is not the mate of record {one.number} of "
                f"{self.name} ('{one.id}'): mate files hold the same reads in the same order, with the same id "
                "(or the same but for /1 and /2)")


def is_pipe(given: str) -> bool:
    """Whether an input can be read only once: ``-``, a pipe, a process substitution."""
    return given == "-" or not os.path.isfile(given)


def pair_of(first: str, second: str) -> str | None:
    """The id two mates share, or None when they are not mates."""
    if first == second:
        return first
    return next((first[:-2] for one, two in MATE_SUFFIXES
                 if first.endswith(one) and second.endswith(two) and first[:-2] == second[:-2]), None)


def _mate(record: FastaRecord, pair: str, mate: int, number: int) -> FastaRecord:
    """A mate as a read of the run: its id ``<pair>/<mate>``, its description kept."""
    read_id = f"{pair}/{mate}"
    return FastaRecord(read_id, " ".join([read_id, *record.title.split(None, 1)[1:]]), record.sequence, number,
                       record.line)


def _first_pair(source: Input, pair: str) -> tuple[int, int]:
    """(number, line of its first mate) of the first pair with this id: the file(s) read again up to it."""
    return next((number, one.line) for number, (one, two) in enumerate(source._mates(), start=1)
                if pair_of(one.id, two.id) == pair)


COUNTED_CHUNKS = 4096          # chunks translated at a time while frames are counted


def count_chunks(source: Input, chunk_size: int, min_length: int, tap=None, tap2=None) -> tuple[int, int, int]:
    """Read (and validate) the whole input once: ``(reads, chunks, frames to score)``; the frames of the reads
    of at least ``min_length`` bp, as the run scores them."""
    reads = chunks = frames = 0
    pending: list[tuple[str, str]] = []
    for record in source.reads(tap, tap2):
        reads += 1
        starts = chunk_starts(len(record.sequence), chunk_size)
        chunks += len(starts)
        if record.sequence and len(record.sequence) >= min_length:
            pending += [("", record.sequence[start:start + chunk_size].upper()) for start in starts]
            if len(pending) >= COUNTED_CHUNKS:
                frames, pending = frames + scored_frame_count(pending), []
    return reads, chunks, frames + scored_frame_count(pending)


def _check_and_spool(given: Input, chunk_size: int, min_length: int, spools: list[str | None], digests, taps
                     ) -> tuple[int, int, int]:
    """``count_chunks`` of the input, each file's bytes hashed (``digests``) and, for a pipe, copied to its
    spool as they are read."""
    with contextlib.ExitStack() as copies:
        copy = [copies.enter_context(open(spool, "wb")) if spool else None for spool in spools]

        def tap_of(k: int):
            def tap(raw):
                taps[k].append(Tap(raw, digests[k], copy[k]))
                return taps[k][-1]
            return tap

        return count_chunks(given, chunk_size, min_length, *(tap_of(k) for k in range(len(spools))))


def _identity(given: str, mate2: str | None, interleaved: bool, digests, taps) -> dict:
    """What identifies an input by content (the SHA-256 of its bytes, and of its mates'); R1 given as its own
    mate is refused."""
    if mate2 and digests[0].digest() == digests[1].digest():
        raise InputError(f"{mate2}: the same reads as {given} (byte for byte): the first mates given as their own "
                         "mates; give the second mates' file (R2) with --mate2")
    identity = {"sha256": digests[0].hexdigest(), "bytes": taps[0][0].size}
    if mate2:
        identity["mate2"] = {"sha256": digests[1].hexdigest(), "bytes": taps[1][0].size}
    if interleaved:
        identity["interleaved"] = True
    return identity


def checked_files(given: str, mate2: str | None, chunk_size: int, min_length: int,
                  interleaved: bool = False) -> Input:
    """An input read once: checked, counted and identified, as ``run_input`` does, but copying no pipe (the
    input of a sample sheet, or of an estimate)."""
    files = [path for path in (given, mate2) if path]
    digests, taps = [hashlib.sha256() for _ in files], [[] for _ in files]
    reads, chunks, frames = _check_and_spool(Input(given, given, mate2, mate2, interleaved), chunk_size, min_length,
                                             [None] * len(files), digests, taps)
    return Input(given, given, mate2, mate2, interleaved, _identity(given, mate2, interleaved, digests, taps), reads,
                 chunks, frames)


@contextlib.contextmanager
def run_input(given: str, mate2: str | None, interleaved: bool, output_dir: str, chunk_size: int, min_length: int,
              check: bool) -> Iterator[Input]:
    """The input of a run writing into ``output_dir`` (which this process holds); with ``check``, read
    once, checked, counted and identified (another process of a torchrun team takes the files as they are)."""
    spools = [os.path.join(output_dir, name) for name in SPOOLS]
    for spool in spools:
        with contextlib.suppress(FileNotFoundError):
            os.remove(spool)            # left by a run that was killed; this process holds the folder now
    if given == "-" and mate2 == "-":
        raise InputError("- --mate2 -: standard input can carry one of the two mate files only; give the other as "
                         "a file, or as a process substitution such as --mate2 <(zcat R2.fq.gz)")
    givens = [given] + ([mate2] if mate2 else [])
    piped = [is_pipe(path) for path in givens]
    if not check and not any(piped):
        yield Input(given, given, mate2, mate2, interleaved)
        return
    digests, taps = [hashlib.sha256() for _ in givens], [[] for _ in givens]
    try:
        try:
            reads, chunks, frames = _check_and_spool(Input(given, given, mate2, mate2, interleaved), chunk_size,
                                                     min_length, [spool if pipe else None for spool, pipe in
                                                                  zip(spools, piped)], digests, taps)
        except OSError as error:
            if is_disk_full(error) and error.filename is None:
                error.filename = output_dir            # spooling a pipe: the output folder's disk is full
            raise
        identity = _identity(given, mate2, interleaved, digests, taps)
        paths = [spool if pipe else path for spool, pipe, path in zip(spools, piped, givens)]
        yield Input(paths[0], given, paths[1] if mate2 else None, mate2, interleaved, identity, reads, chunks, frames)
    finally:
        for spool in spools:
            with contextlib.suppress(FileNotFoundError):
                os.remove(spool)
