"""Translation and frame selection: the six frames of each chunk, the
stop-free ones kept, exactly as the published code does (byte for byte), but
translated a matrix of chunks at a time.
"""
from __future__ import annotations

import contextlib
import itertools
import os
from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import numpy as np

from virnucpro.files import atomic_write
from virnucpro.sequences.chunks import frame_id
from virnucpro.sequences.fasta import write_fasta_record

# The standard genetic code, as the published translate_dna; '*' is a stop.
_BASES = "TCAG"
_AMINO_ACIDS = "FFLLSSSSYY**CC*WLLLLPPPPHHQQRRRRIIIMTTTTNNKKSSRRVVVVAAAADDEEGGGG"
CODON_TABLE = {a + b + c: _AMINO_ACIDS[16 * i + 4 * j + k]
               for i, a in enumerate(_BASES) for j, b in enumerate(_BASES) for k, c in enumerate(_BASES)}

# Bases that make a chunk unusable for training (published list).
AMBIGUOUS_BASES = frozenset("NRYMKSWHBVD")

_COMPLEMENT = str.maketrans("ACGTacgt", "TGCAtgca")
_COMPLEMENT_BYTES = bytes.maketrans(b"ACGTacgt", b"TGCAtgca")

# Vectorised translation: upper-case A, C, G, T get codes 0-3, anything else 4,
# and each position gets the base-5 code of the triplet starting there. Two
# tables give the amino acid of a triplet read forward, and of the codon it
# forms on the reverse strand; a triplet holding a code 4 maps to 0 and is
# skipped, as in the published translate_dna.
_BASE_CODE = np.full(256, 4, dtype=np.uint8)
for _code, _base in enumerate("ACGT"):
    _BASE_CODE[ord(_base)] = _code
_FORWARD_AMINO_ACID = np.zeros(125, dtype=np.uint8)
_REVERSE_AMINO_ACID = np.zeros(125, dtype=np.uint8)
for _codon, _amino_acid in CODON_TABLE.items():
    _a, _b, _c = (int(_BASE_CODE[ord(base)]) for base in _codon)
    _FORWARD_AMINO_ACID[25 * _a + 5 * _b + _c] = ord(_amino_acid)
    _REVERSE_AMINO_ACID[25 * _a + 5 * _b + _c] = ord(CODON_TABLE[_codon.translate(_COMPLEMENT)[::-1]])
_STOP = ord("*")


def reverse_complement(sequence):
    """Reverse complement; like the published one, only ACGT/acgt are
    complemented and any other letter is kept as it is."""
    if sequence.isascii():                 # a byte table: several times faster than a str one
        return sequence.encode("ascii").translate(_COMPLEMENT_BYTES)[::-1].decode("ascii")
    return sequence.translate(_COMPLEMENT)[::-1]


def _six_frame_amino_acids(sequences: Sequence[str]) -> list[np.ndarray]:
    """For sequences of one length: the amino-acid byte matrices of frames
    F1, F2, F3, R1, R2, R3 (rows follow ``sequences``; 0 marks a skipped codon)."""
    length = len(sequences[0])
    codes = _BASE_CODE[np.frombuffer("".join(sequences).encode("ascii"), dtype=np.uint8)]
    codes = codes.reshape(len(sequences), length)
    triplets = codes[:, :-2] * 25 + codes[:, 1:-1] * 5 + codes[:, 2:]
    forward = [_FORWARD_AMINO_ACID[triplets[:, f::3]] for f in range(3)]
    # Codon j of reverse frame f is the reverse complement of the forward
    # triplet at length - 3 - j: read the triplets backwards.
    reverse = [_REVERSE_AMINO_ACID[triplets[:, length - 3 - f::-3]] if length - 3 - f >= 0
               else np.zeros((len(sequences), 0), dtype=np.uint8) for f in range(3)]
    return forward + reverse


def _proteins(amino_acids: np.ndarray) -> list[str]:
    """The protein of each row of an amino-acid byte matrix (0 marks a skipped codon), in one decode."""
    rows, width = amino_acids.shape
    if width == 0:
        return [""] * rows
    text = amino_acids.tobytes().decode("ascii")
    proteins = [text[start:start + width] for start in range(0, len(text), width)]
    return [protein.replace("\0", "") for protein in proteins] if (amino_acids == 0).any() else proteins


def translate_dna(sequence):
    """Six-frame translation (F1-F3, then R1-R3 on the reverse complement).

    Codons holding a base other than upper-case A/C/G/T are skipped, as in the
    published code; stops are kept as '*'.
    """
    return [_proteins(frame)[0] for frame in _six_frame_amino_acids([sequence])]


class ProteinIndex:
    """The CDS translations of one genome record, searchable for a fragment.

    ``fragment in index`` equals the published
    ``any(fragment in protein for protein in proteins)`` but costs a few
    dictionary lookups instead of a scan over every protein: the proteins are
    joined into one text and every ``ANCHOR``-th window of it is indexed. A
    fragment of length ``>= 2 * ANCHOR - 1`` that occurs in the text covers at
    least one indexed window completely, so trying its first ``ANCHOR`` offsets
    finds every occurrence; shorter fragments fall back to a plain search.
    """

    ANCHOR = 16

    def __init__(self, proteins: Iterable[str]):
        self.proteins = list(proteins)
        self._text = "\n".join(self.proteins)   # '\n' never occurs in a fragment
        self._windows: dict[str, list[int]] = {}
        for start in range(0, len(self._text) - self.ANCHOR + 1, self.ANCHOR):
            self._windows.setdefault(self._text[start:start + self.ANCHOR], []).append(start)

    def __contains__(self, fragment: str) -> bool:
        if not fragment:
            return bool(self.proteins)
        if len(fragment) < 2 * self.ANCHOR - 1:
            return fragment in self._text
        for offset in range(self.ANCHOR):
            for start in self._windows.get(fragment[offset:offset + self.ANCHOR], ()):
                if start >= offset and self._text.startswith(fragment, start - offset):
                    return True
        return False


def has_ambiguous_base(sequence: str) -> bool:
    return not AMBIGUOUS_BASES.isdisjoint(sequence)


@dataclass
class StopFreeFrames:
    """Stop-free frames as columns, in the published order (chunk order,
    then F1-F3, R1-R3): the chunk of each (its index in the chunks given),
    its id, nucleotide and protein."""
    chunks: np.ndarray
    ids: list[str]
    nucleotides: list[str]
    proteins: list[str]

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, rows: np.ndarray) -> StopFreeFrames:
        """The frames at ``rows`` (indices), in that order."""
        picked = rows.tolist()
        return StopFreeFrames(self.chunks[rows], [self.ids[k] for k in picked], [self.nucleotides[k] for k in picked],
                              [self.proteins[k] for k in picked])


def stop_free_frames(chunks: Sequence[tuple[str, str]], reference: ProteinIndex | None = None) -> StopFreeFrames:
    """Every stop-free frame of ``(chunk_id, upper-case sequence)`` chunks,
    translated in one vectorised pass per sequence length; see
    ``select_frames`` for the rules."""
    by_length: dict[int, list[int]] = {}
    for position, (_, sequence) in enumerate(chunks):
        if reference is not None and has_ambiguous_base(sequence):
            continue
        by_length.setdefault(len(sequence), []).append(position)
    parts = [_stop_free_frames_of_length(chunks, positions, length) for length, positions in by_length.items()]
    if not parts:
        return StopFreeFrames(np.empty(0, dtype=np.int64), [], [], [])
    frames = StopFreeFrames(np.concatenate([part.chunks for part in parts]),
                            *(list(itertools.chain.from_iterable(columns)) for columns in zip(
                                *((part.ids, part.nucleotides, part.proteins) for part in parts))))
    if len(parts) > 1:                       # back to chunk order; frames of a chunk stay in order
        frames = frames.take(np.argsort(frames.chunks, kind="stable"))
    if reference is not None:
        frames = frames.take(np.flatnonzero([protein in reference for protein in frames.proteins]))
    return frames


def scored_frame_count(chunks: Sequence[tuple[str, str]]) -> int:
    """How many frames of these (upper-case) chunks prediction scores: the stop-free ones with a protein
    (a chunk under 3 bp has only empty ones)."""
    return sum(map(bool, stop_free_frames(chunks).proteins))


def _stop_free_frames_of_length(chunks, positions: list[int], length: int) -> StopFreeFrames:
    """The stop-free frames of the chunks at ``positions``, all ``length`` long."""
    sequences = [chunks[p][1] for p in positions]
    amino_acids = _six_frame_amino_acids(sequences)
    stop_free = np.stack([~(frame == _STOP).any(axis=1) for frame in amino_acids], axis=1)
    rows, numbers = np.nonzero(stop_free)                   # row-major: chunk order, then frame order
    proteins = np.empty(len(rows), dtype=object)
    for number in range(6):
        selected = np.flatnonzero(numbers == number)
        proteins[selected] = _proteins(amino_acids[number][rows[selected]])
    proteins = proteins.tolist()
    # As published, a frame's nucleotide is [frame start : frame start + 3 * len(protein) + 1], cut at the
    # chunk's end; reverse frames are read from the reverse complement of all chunks joined (row r's is
    # then at row n - 1 - r).
    forward, reverse = "".join(sequences), reverse_complement("".join(sequences))
    spans = 3 * np.fromiter(map(len, proteins), dtype=np.int64, count=len(proteins)) + 1
    offsets = numbers % 3
    bases = np.where(numbers < 3, rows, len(sequences) - 1 - rows) * length
    starts = bases + offsets
    ends = np.minimum(starts + spans, bases + length)
    nucleotides = [(forward if number < 3 else reverse)[start:end] for number, start, end
                   in zip(numbers.tolist(), starts.tolist(), ends.tolist())]
    ids = [frame_id(chunks[positions[row]][0], number) for row, number in zip(rows.tolist(), numbers.tolist())]
    return StopFreeFrames(np.asarray(positions, dtype=np.int64)[rows], ids, nucleotides, proteins)


def select_frames(chunks: Sequence[tuple[str, str]], reference: ProteinIndex | None = None
                  ) -> Iterator[tuple[str, str, str]]:
    """Yield ``(frame_id, nucleotide, protein)`` for every stop-free frame of
    every chunk, in the published order (chunk order, then F1-F3, R1-R3).

    ``chunks`` are ``(chunk_id, upper-case sequence)`` pairs, translated
    together in one vectorised pass per sequence length. With a ``reference``
    (training mode) a chunk holding an ambiguous base yields nothing and a
    frame is kept only when its protein occurs in the reference.

    As published, the nucleotide of a frame is the slice
    ``[frame_start : frame_start + 3 * len(protein) + 1]`` (one base longer
    than its codons), and a frame whose protein is empty is yielded too.
    """
    frames = stop_free_frames(chunks, reference)
    yield from zip(frames.ids, frames.nucleotides, frames.proteins)


class IdentifiedWriter:
    """Writes the paired ``identified_nucleotide`` / ``identified_protein``
    FASTA files (one line per sequence, frames with an empty protein left out,
    as published), atomically: both appear only when the block succeeds."""

    def __init__(self, nucleotide_path, protein_path):
        self.paths = (os.fspath(nucleotide_path), os.fspath(protein_path))
        self.frames = 0

    def __enter__(self):
        self._stack = contextlib.ExitStack()
        # entered first, renamed last: once the nucleotide file exists, both are complete
        self._nucleotide = self._stack.enter_context(atomic_write(self.paths[0]))
        self._protein = self._stack.enter_context(atomic_write(self.paths[1]))
        return self

    def __exit__(self, *exc_info):
        return self._stack.__exit__(*exc_info)

    def write(self, frames: Iterable[tuple[str, str, str]]) -> None:
        for name, nucleotide, protein in frames:
            if protein:
                write_fasta_record(self._nucleotide, name, nucleotide)
                write_fasta_record(self._protein, name, protein)
                self.frames += 1


def batched(items: Iterable, size: int) -> Iterator[list]:
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch
