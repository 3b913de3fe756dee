"""Chunks of a sequence, and the one format of chunk and frame ids.

A record ``R`` is cut into chunks ``R_chunk_1``, ``R_chunk_2``, ... (1-based,
the published format); a frame of a chunk is the chunk id followed by its
frame's name (``R_chunk_1F1`` ... ``R_chunk_1R3``). Every file of the tool
writes and reads ids through these functions.
"""
from __future__ import annotations

from typing import Iterator

from virnucpro.errors import InputError
from virnucpro.sequences.fasta import read_fasta

CHUNK_MARK = "_chunk_"
FRAME_NAMES = ("F1", "F2", "F3", "R1", "R2", "R3")


def chunk_starts(length: int, chunk_size: int) -> list[int]:
    """Start offsets of the chunks that ``split_fasta_chunk`` cuts.

    This is the published arithmetic in closed form: ``n = ceil(length /
    chunk_size)`` chunks whose overlap ``n * chunk_size - length`` is spread
    over the chunk boundaries. For many lengths the published spread overshoots,
    so the last chunk is shorter than ``chunk_size`` (see docs/compatibility.md);
    chunk ``k`` is ``sequence[start_k : start_k + chunk_size]``.
    """
    if chunk_size < 1:
        raise InputError(f"chunk size must be a positive number of bases, got {chunk_size}")
    if length <= 0:
        return []
    if length <= chunk_size:
        return [0]                          # a read: one chunk (the common case, kept cheap)
    n_chunks = -(-length // chunk_size)
    overlap = n_chunks * chunk_size - length
    step_back = overlap // n_chunks
    longer_steps = overlap - step_back * (n_chunks - 1)
    return [k * (chunk_size - step_back) - min(k, longer_steps) for k in range(n_chunks)]


def iter_chunks(sequence: str, chunk_size: int) -> Iterator[str]:
    for start in chunk_starts(len(sequence), chunk_size):
        yield sequence[start:start + chunk_size]


def chunk_id(record_id: str, number: int) -> str:
    """The id of chunk ``number`` (1-based) of a record."""
    return f"{record_id}{CHUNK_MARK}{number}"


def chunk_ids(record_id: str, first: int, end: int) -> list[str]:
    """The ids of a record's chunks ``first`` to ``end`` (0-based, end excluded)."""
    return [f"{record_id}{CHUNK_MARK}{number}" for number in range(first + 1, end + 1)]


def frame_id(chunk: str, frame_number: int) -> str:
    """The id of frame ``frame_number`` (0-5: F1-F3, R1-R3) of a chunk."""
    return chunk + FRAME_NAMES[frame_number]


def chunk_of_frame(frame: str) -> str:
    """The chunk a frame belongs to: its id less the frame's name."""
    return frame[:-2]


def record_of(item_id: str) -> str:
    """The record a chunk or frame comes from: its id before the last ``_chunk_``."""
    return item_id.rsplit(CHUNK_MARK, 1)[0]


def split_chunk_id(item_id: str) -> tuple[str, int] | None:
    """``(record, chunk number)`` of a chunk id, or None when it is not one."""
    record, mark, number = item_id.rpartition(CHUNK_MARK)
    return (record, int(number)) if mark and number.isdigit() else None


def iter_fasta_chunks(fasta_file, chunk_size: int) -> Iterator[tuple[str, str]]:
    """``(chunk_id, upper-case chunk)`` for every chunk of every record."""
    for record in read_fasta(fasta_file, alphabet="dna"):
        sequence = record.sequence.upper()
        for k, chunk in enumerate(iter_chunks(sequence, chunk_size), start=1):
            yield chunk_id(record.id, k), chunk
