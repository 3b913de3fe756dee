"""VirNucPro shared module: sequence handling, feature extraction, merging,
classifier and checkpoints.

Every entry script imports this one module. The public names of the published
VirNucPro ``units.py`` (``split_fasta_chunk``, ``translate_dna``,
``identify_seq``, ``create_refseq_pro_list``, ``split_fasta_file``, ...) keep
their signatures and, for the sequence layer, their exact output bytes: the
published models were trained on that output.

Sections:
  1. Constants and errors
  2. Files: text input (plain or gzip), atomic output, logging, CLI runner
  3. FASTA input with validation
  4. Chunking
  5. Translation and frame selection
  6. Language models: sources, devices, loading with weight verification
  7. Embedding extraction (DNABERT-S, FastESM2_650, ESM2-3B baseline)
  8. Merging DNA and protein features
  9. Merged feature sets
 10. Classifier, checkpoints and prediction
 11. Plots
"""
from __future__ import annotations

import bz2
import contextlib
import datetime
import gc
import gzip
import hashlib
import io
import itertools
import json
import logging
import lzma
import os
import shutil
import socket
import sys
import tempfile
import time
import warnings
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

import numpy as np
import torch

import dnabert_s

logger = logging.getLogger("virnucpro")


# =============================================================================
# 1. Constants and errors
# =============================================================================

class InputError(Exception):
    """A problem with the user's input or files, reported as one clear line."""


DNA_DIM = 768            # DNABERT-S embedding
PROTEIN_DIM = 1280       # FastESM2_650 embedding
MERGED_DIM = DNA_DIM + PROTEIN_DIM
ESM2_3B_DIM = 2560       # the published baseline's protein embedding


class DimensionError(InputError):
    """A feature vector whose length is not the one the pipeline expects."""

    def __init__(self, expected, actual, sequence_id, location):
        self.expected, self.actual, self.sequence_id, self.location = expected, actual, sequence_id, location
        super().__init__(f"{location}: expected a {expected}-value feature vector for '{sequence_id}', "
                         f"got {actual}; the features come from another model than this pipeline's")


# =============================================================================
# 2. Files: text input, atomic output, logging, CLI runner
# =============================================================================

# Compressed input is recognised by its first bytes, not by the file name.
_COMPRESSIONS = ((b"\x1f\x8b", lambda raw: gzip.GzipFile(fileobj=raw)), (b"BZh", bz2.BZ2File),
                 (b"\xfd7zXZ\x00", lzma.LZMAFile))
# What reading a damaged or unreadable file raises (gzip, bzip2 and xz errors included).
READ_ERRORS = (EOFError, OSError, zlib.error, lzma.LZMAError)


def open_raw(path: str | os.PathLike):
    """Open a file for reading its bytes as they are; a user's mistake is one line."""
    path = os.fspath(path)
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None


@contextlib.contextmanager
def open_binary(path: str | os.PathLike):
    """Open a file for reading bytes, decompressing gzip, bzip2 or xz.

    The file is read once, from its start, so a pipe works too.
    """
    with open_raw(path) as handle:
        start = handle.peek(6)[:6]
        decompress = next((opener for magic, opener in _COMPRESSIONS if start.startswith(magic)), None)
        if decompress is None:
            yield handle
        else:
            with decompress(handle) as stream:
                yield stream


@contextlib.contextmanager
def open_text(path: str | os.PathLike):
    """Open a UTF-8 text file (a leading BOM is dropped) for reading,
    decompressing gzip, bzip2 or xz."""
    with open_binary(path) as stream:
        yield io.TextIOWrapper(stream, encoding="utf-8-sig", newline=None)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w"):
    """Write ``path`` through a temporary file in the same folder, renamed
    into place only when the block finishes without error.

    A crash or an error never leaves a half-written ``path`` behind. The file
    gets the mode the user's umask gives a new file (mkstemp's is 0600).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.chmod(tmp, 0o666 & ~current_umask())
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


LOCK_FILE = ".virnucpro.lock"


LOCK_POLL_SECONDS = 1.0


def _lock_holder_alive(holder: dict) -> bool:
    """Whether the process that wrote a lock still runs (assumed so on another host)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return True
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


@contextlib.contextmanager
def folder_lock(folder: str | os.PathLike, option: str = "-o", name: str = LOCK_FILE, wait: bool = False):
    """Hold ``folder/<name>`` (default ``.virnucpro.lock``) while the block
    runs, so one run at a time writes into ``folder``; a lock left by a
    process that died on this host is taken over. Held by a live process, the
    lock is refused, or with ``wait`` waited for. Creates ``folder`` if needed
    and removes it again if it is still empty when the block ends."""
    folder = os.fspath(folder)
    created = not os.path.isdir(folder)
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, name)
    waiting = False
    while True:
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            break
        except FileExistsError:
            try:
                with open(path) as handle:
                    holder = json.load(handle)
            except (OSError, ValueError):
                holder = {}
            if not isinstance(holder, dict) or _lock_holder_alive(holder):
                held_by = f"pid {holder.get('pid')} on {holder.get('host')} since {holder.get('since')}" \
                    if isinstance(holder, dict) and holder else "a process that has not said who it is"
                if not wait:
                    raise InputError(f"{folder} is in use by another run ({held_by}); wait for it to end or give "
                                     f"another {option}; if no such run exists any more, delete {path}") from None
                if not waiting:
                    logger.info(f"{folder}: waiting for {held_by} to release {path}")
                    waiting = True
                time.sleep(LOCK_POLL_SECONDS)
                continue
            logger.warning(f"{folder}: taking over the lock of a run that ended without releasing it "
                           f"(pid {holder['pid']} on {holder['host']})")
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
    since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
    with os.fdopen(fd, "w") as handle:
        json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": since}, handle)
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
        if created and not os.listdir(folder):
            os.rmdir(folder)


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


@contextlib.contextmanager
def rare_garbage_collection():
    """Run Python's cycle collector rarely within the block. Prediction makes
    millions of small containers (token id lists, table rows) that hold no
    cycles; at the default pace (a collection every 700 new containers, each
    scanning the survivors) the collector took about a sixth of its host time."""
    thresholds = gc.get_threshold()
    gc.set_threshold(100_000, *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


# =============================================================================
# 3. FASTA input with validation
# =============================================================================

IUPAC_NUCLEOTIDES = "ACGTURYSWKMBDHVN"
PROTEIN_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ALPHABETS = {
    "dna": (IUPAC_NUCLEOTIDES, "an IUPAC nucleotide code"),
    "protein": (PROTEIN_LETTERS, "an amino-acid letter"),
}


class FastaRecord(NamedTuple):
    id: str            # first word of the header, as Biopython's record.id
    title: str         # the whole header line without '>'
    sequence: str      # as in the file (case kept), line breaks, spaces and tabs removed; U read as T for DNA
    number: int        # 1-based position of the record in the file
    line: int          # line number of its header


# The allowed letters in both cases, as bytes: bytes.translate deletes them in C (a str table costs a dict
# lookup per letter), so a valid sequence is checked in one call.
_ALLOWED_BYTES = {name: (letters + letters.lower()).encode("ascii") for name, (letters, _) in _ALPHABETS.items()}


def _first_invalid_letter(sequence: str, alphabet: str) -> str | None:
    """The first letter of ``sequence`` outside ``alphabet`` (either case), or None."""
    if sequence.isascii() and not sequence.encode("ascii").translate(None, _ALLOWED_BYTES[alphabet]):
        return None
    allowed = _ALLOWED_BYTES[alphabet].decode("ascii")
    return next((letter for letter in sequence if letter not in allowed), None)


class _RecordIds:
    """Refuses a record id seen before in a file. Keeps a set of the ids'
    hashes, not the ids (about 60 bytes a record instead of 200: flat memory
    for millions of reads); a repeated hash is confirmed, and the first record
    of that id found, by reading the file again up to it. A pipe cannot be
    read twice, so for one the ids themselves are kept."""

    def __init__(self, path: str):
        self.path = path
        self.hashes: set[int] = set()
        self.ids: dict[str, tuple[int, int]] | None = None if os.path.isfile(path) else {}

    def add(self, record_id: str, number: int, line: int) -> None:
        if self.ids is not None:
            first = self.ids.setdefault(record_id, (number, line))
        elif hash(record_id) in self.hashes:
            first = self._first_record(record_id)
        else:
            self.hashes.add(hash(record_id))
            return
        if first != (number, line):
            raise InputError(
                f"{self.path}: duplicate record id '{record_id}' at record {first[0]} (line {first[1]}) "
                f"and record {number} (line {line}); record ids must be unique, rename one of them")

    def _first_record(self, record_id: str) -> tuple[int, int]:
        """(number, header line) of the first record with this id: the one
        being read when its hash matched another id's."""
        lines = _numbered_lines(self.path)
        first = next((number, line) for number, line in lines if line)
        entries = _fastq_entries if first[1].startswith("@") else _fasta_entries
        return next((number, line) for number, (title, line, _)
                    in enumerate(entries(self.path, itertools.chain([first], lines)), start=1)
                    if title.split(None, 1)[0] == record_id)


def _numbered_lines(path: str) -> Iterator[tuple[int, str]]:
    """``(line number, stripped line)`` of a text file, decoded line by line
    so that bytes that are not UTF-8 are reported with their line."""
    with open_binary(path) as stream:
        for number, raw in enumerate(stream, start=1):
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                raise InputError(f"{path}: line {number} is not UTF-8 text (byte {raw[error.start]:#04x} at "
                                 f"column {error.start + 1}); save the file as plain UTF-8 or ASCII") from None
            yield number, (line.removeprefix("\ufeff") if number == 1 else line).strip()


def _fasta_entries(path: str, lines) -> Iterator[tuple[str, int, str]]:
    """``(header, header line number, sequence lines joined)`` of FASTA text."""
    header, header_line, parts = None, 0, []
    for number, line in lines:
        if not line:
            continue
        if line.startswith(">"):
            if header is not None:
                yield header, header_line, "".join(parts)
            header, header_line, parts = line[1:].strip(), number, []
        elif header is None:
            raise InputError(f"{path}: not a FASTA file (line {number} comes before any '>' header); "
                             "expected FASTA records ('>id') or FASTQ records ('@id')")
        else:
            parts.append(line)
    if header is not None:
        yield header, header_line, "".join(parts)


def _fastq_entries(path: str, lines) -> Iterator[tuple[str, int, str]]:
    """``(header, header line number, sequence)`` of FASTQ text: four lines a
    record (``@id``, sequence, ``+``, qualities), blank lines between records."""
    for number, line in lines:
        if not line:
            continue
        where = f"{path}: the FASTQ record at line {number}"
        if not line.startswith("@"):
            raise InputError(f"{where} does not start with '@'; a FASTQ record is four lines: "
                             "@id, sequence, +, qualities")
        sequence, plus, quality = (next(lines, (None, None)) for _ in range(3))
        if quality[1] is None:
            raise InputError(f"{where} is cut short; a FASTQ record is four lines: @id, sequence, +, qualities")
        if not plus[1].startswith("+"):
            raise InputError(f"{where} has no '+' line (line {plus[0]}); a FASTQ record is four lines: "
                             "@id, sequence, +, qualities")
        if len(quality[1]) != len(sequence[1]):
            raise InputError(f"{where} has {len(sequence[1])} bases but {len(quality[1])} quality values")
        yield line[1:].strip(), number, sequence[1]


def read_fasta(path: str | os.PathLike, alphabet: str | None = "dna",
               keep_empty: bool = False) -> Iterator[FastaRecord]:
    """Stream the records of a FASTA or FASTQ file (told apart by content;
    plain, gzip, bzip2 or xz), validated.

    ``alphabet`` is ``"dna"`` (IUPAC nucleotide codes), ``"protein"`` (letters)
    or ``None`` (no check of the residues). Lower case is accepted; spaces and
    tabs inside sequence lines, CR line ends and a UTF-8 BOM are dropped. For
    ``"dna"``, U (RNA) is read as T, with one warning per file.

    Raises ``InputError`` naming the file (and record or line) for: a missing,
    empty or non-FASTA/FASTQ file, a damaged compressed file, bytes that are
    not UTF-8, a malformed FASTQ record, a residue outside the alphabet, a
    duplicate record id, a header without an id, or a file without any
    sequence. A record without sequence is skipped with a warning, or yielded
    with ``keep_empty``.
    """
    path = os.fspath(path)
    record_ids = _RecordIds(path)
    with_sequence = 0
    rna_seen = False

    def record_of(number: int, title: str, line: int, sequence: str) -> FastaRecord | None:
        nonlocal rna_seen
        record_id = title.split(None, 1)[0] if title.strip() else ""
        if not record_id:
            raise InputError(f"{path}: record {number} (line {line}) has a header without an id; give every "
                             "record an id after '>'")
        record_ids.add(record_id, number, line)
        if " " in sequence or "\t" in sequence:
            sequence = sequence.replace(" ", "").replace("\t", "")
        if not sequence:
            if not keep_empty:
                logger.warning(f"{path}: record '{record_id}' (record {number}, line {line}) has no sequence; "
                               "skipped")
                return None
        elif alphabet is not None:
            invalid = _first_invalid_letter(sequence, alphabet)
            if invalid is not None:
                letters, what = _ALPHABETS[alphabet]
                raise InputError(
                    f"{path}: record '{record_id}' (record {number}, line {line}) contains {invalid!r}, which is "
                    f"not {what} ({letters}); fix or remove that record")
        if alphabet == "dna" and ("U" in sequence or "u" in sequence):
            if not rna_seen:
                warn_once(f"{path}: record '{record_id}' (record {number}, line {line}) holds U (RNA); U is read "
                          "as T in it and in every other record of this file")
                rna_seen = True
            sequence = sequence.replace("U", "T").replace("u", "t")
        return FastaRecord(record_id, title, sequence, number, line)

    try:
        lines = _numbered_lines(path)
        first = next(((number, line) for number, line in lines if line), None)
        if first is None:
            raise InputError(f"{path}: the file is empty; expected FASTA records ('>id') or FASTQ records ('@id')")
        entries = _fastq_entries if first[1].startswith("@") else _fasta_entries
        for number, (title, line, sequence) in enumerate(entries(path, itertools.chain([first], lines)), start=1):
            record = record_of(number, title, line, sequence)
            if record is not None:
                with_sequence += bool(record.sequence)
                yield record
    except READ_ERRORS as error:
        raise InputError(f"{path}: not a readable FASTA/FASTQ file, or a damaged compressed one "
                         f"({error.__class__.__name__}: {error})") from None
    if with_sequence == 0:
        raise InputError(f"{path}: no record has a sequence")


def write_fasta_record(handle, record_id: str, sequence: str, width: int | None = None) -> None:
    """Write one FASTA record; ``width`` wraps the sequence (Biopython writes 60)."""
    handle.write(f">{record_id}\n")
    if width is None:
        handle.write(f"{sequence}\n")
    else:
        handle.write("".join(f"{sequence[i:i + width]}\n" for i in range(0, len(sequence), width)))


def split_fasta_file(input_file, output_dir, sequences_per_file):
    """Split a FASTA file into ``output_dir/output_{n}.fa`` of
    ``sequences_per_file`` records each (published name and layout).

    Returns the paths written, in order.
    """
    if sequences_per_file < 1:
        raise InputError(f"sequences_per_file must be at least 1, got {sequences_per_file}")
    os.makedirs(output_dir, exist_ok=True)
    written = []
    batch: list[FastaRecord] = []

    def flush():
        path = os.path.join(output_dir, f"output_{len(written) + 1}.fa")
        with atomic_write(path) as out:
            for record in batch:
                write_fasta_record(out, record.title, record.sequence)
        written.append(path)
        batch.clear()

    for record in read_fasta(input_file, alphabet=None):
        batch.append(record)
        if len(batch) == sequences_per_file:
            flush()
    if batch:
        flush()
    return written


# =============================================================================
# 4. Chunking
# =============================================================================

def chunk_starts(length: int, chunk_size: int) -> list[int]:
    """Start offsets of the chunks that ``split_fasta_chunk`` cuts.

    This is the published arithmetic in closed form: ``n = ceil(length /
    chunk_size)`` chunks whose overlap ``n * chunk_size - length`` is spread
    over the chunk boundaries. For many lengths the published spread overshoots,
    so the last chunk is shorter than ``chunk_size`` (see README, Compatibility
    notes); chunk ``k`` is ``sequence[start_k : start_k + chunk_size]``.
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


def split_fasta_chunk(input_file, output_file, chunk_size):
    """Cut every sequence of ``input_file`` into chunks of ``chunk_size`` bases
    and write them to ``output_file`` as ``{id}_chunk_{k}`` (published format:
    case kept, 60 bases per line).

    Returns the number of chunks written.
    """
    chunk_size = int(chunk_size)
    written = 0
    with atomic_write(output_file) as out:
        for record in read_fasta(input_file, alphabet="dna"):
            for k, chunk in enumerate(iter_chunks(record.sequence, chunk_size), start=1):
                write_fasta_record(out, f"{record.id}_chunk_{k}", chunk, width=60)
                written += 1
    return written


# =============================================================================
# 5. Translation and frame selection
# =============================================================================

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


FRAME_NAMES = ("F1", "F2", "F3", "R1", "R2", "R3")


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
    ids = [chunks[positions[row]][0] + FRAME_NAMES[number] for row, number in zip(rows.tolist(), numbers.tolist())]
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


def identify_seq(seqid, sequence, refseq_pro_list=None, istraindata=False):
    """Stop-free frames of one (upper-case) chunk, as the published function:
    a list of ``{'seqid', 'nucleotide', 'protein'}``; in training mode ``None``
    for a chunk with an ambiguous base, and only frames whose protein occurs in
    ``refseq_pro_list`` (a list of proteins or, faster, a ``ProteinIndex``).
    """
    reference = None
    if istraindata:
        if has_ambiguous_base(sequence):
            return None
        reference = refseq_pro_list if isinstance(refseq_pro_list, ProteinIndex) \
            else ProteinIndex(refseq_pro_list or [])
    return [{"seqid": frame_id, "nucleotide": nucleotide, "protein": protein}
            for frame_id, nucleotide, protein in select_frames([(seqid, sequence)], reference)]


def read_genbank(gbff_file) -> tuple[dict[str, list[str]], dict[str, dict]]:
    """One pass over a GenBank file (plain or compressed): the ``/translation``
    of each CDS per record id ('' for a CDS without one, as published), and
    each record's ``{'organism', 'taxonomy'}`` (its lineage, as GenBank lists it)."""
    from Bio import SeqIO

    proteins, lineages = {}, {}
    with open_text(gbff_file) as handle:
        try:
            for record in SeqIO.parse(handle, "genbank"):
                proteins[record.id] = [feature.qualifiers.get("translation", [""])[0]
                                       for feature in record.features if feature.type == "CDS"]
                lineages[record.id] = {"organism": record.annotations.get("organism", ""),
                                       "taxonomy": list(record.annotations.get("taxonomy", []))}
        except ValueError as error:
            raise InputError(f"{os.fspath(gbff_file)}: not a readable GenBank file ({error})") from None
    return proteins, lineages


def create_refseq_pro_list(gbff_file):
    """Map each GenBank record id to the ``/translation`` of each of its CDS
    features ('' for a CDS without one), as published. Reads plain or gzip."""
    return read_genbank(gbff_file)[0]


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
        for frame_id, nucleotide, protein in frames:
            if protein:
                write_fasta_record(self._nucleotide, frame_id, nucleotide)
                write_fasta_record(self._protein, frame_id, protein)
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


def iter_fasta_chunks(fasta_file, chunk_size: int) -> Iterator[tuple[str, str]]:
    """``(chunk_id, upper-case chunk)`` for every chunk of every record."""
    for record in read_fasta(fasta_file, alphabet="dna"):
        sequence = record.sequence.upper()
        for k, chunk in enumerate(iter_chunks(sequence, chunk_size), start=1):
            yield f"{record.id}_chunk_{k}", chunk


# =============================================================================
# 6. Language models: sources, devices, loading with weight verification
# =============================================================================

@dataclass(frozen=True)
class ModelSpec:
    """A language model on the Hugging Face hub, pinned."""
    name: str
    key: str           # its folder in the models folder, and its name for scripts/fetch_models.py
    hub_id: str
    revision: str      # pinned commit of hub_id; other ids use their default branch
    dim: int
    option: str        # the command-line option that points elsewhere


@dataclass(frozen=True)
class PublishedClassifier:
    """A classifier of the published VirNucPro, a file of its GitHub repository."""
    key: str
    file: str
    repo: str
    blob_sha1: str     # git's id of the file's content: what it is fetched by and verified against
    chunk_length: int


# Everything VirNucPro downloads, pinned: scripts/fetch_models.py, the loaders and README draw on this table.
#                          name            key             source                           revision / git blob SHA-1
DNABERT_S = ModelSpec("DNABERT-S", "dnabert-s", "zhihan1996/DNABERT-S", "1cdf84d992ace6f3e75c7356774b4da088c8dc7c",
                      DNA_DIM, "--dna-model")
FASTESM2_650 = ModelSpec("FastESM2_650", "fastesm650", "Synthyra/FastESM2_650", "main",     # not pinned yet
                         PROTEIN_DIM, "--protein-model")
ESM2_3B = ModelSpec("ESM2-3B", "esm2-3b", "facebook/esm2_t36_3B_UR50D", "476b639933c8baad5ad09a60ac1a87f987b656fc",
                    ESM2_3B_DIM, "--protein-model")
CLASSIFIER_300 = PublishedClassifier("classifier-300", "300_model.pth", "Li-Jing-1997/VirNucPro",
                                     "a0b5b85e7c1e44f00cde146d091beb82b2c8e855", 300)
CLASSIFIER_500 = PublishedClassifier("classifier-500", "500_model.pth", "Li-Jing-1997/VirNucPro",
                                     "fc35d5ef9f1f4564eea7036f34f4f8ec6000d33d", 500)
ARTIFACTS = {item.key: item for item in (DNABERT_S, FASTESM2_650, ESM2_3B, CLASSIFIER_300, CLASSIFIER_500)}

# The models folder: what scripts/fetch_models.py fetches or unpacks, and where the loaders look first.
MODELS_ENV = "VIRNUCPRO_MODELS"
DEFAULT_MODELS_DIR = os.path.join("~", ".cache", "virnucpro", "models")
CLASSIFIERS = "classifiers"          # the subfolder holding classifiers, published and trained


def models_dir(given: str | None = None) -> str:
    """``--models-dir``, else ``$VIRNUCPRO_MODELS``, else ``~/.cache/virnucpro/models``."""
    return os.path.expanduser(given or os.environ.get(MODELS_ENV) or DEFAULT_MODELS_DIR)

# The ESM-2 alphabet (fair-esm order), shared by ESM2-3B and FastESM2_650.
ESM2_ALPHABET = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO.-", "<null_1>", "<mask>"]

# Parameters outside the encoder, not used for embeddings, may be absent from a checkpoint.
_HEAD_PREFIXES = ("pooler.", "contact_head.")
# Only data: configs, tokenizer files and weights; never a *.py.
_SNAPSHOT_FILES = ["*.json", "*.txt", "*.safetensors"]


def resolve_device(device: str | None = None) -> torch.device:
    """``None``/``"auto"``: the GPU when there is one, else the CPU (with a warning)."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        logger.warning("no CUDA GPU found; running on the CPU (slow for real workloads)")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device}: not a device; use cuda, cuda:N, cpu or auto") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    return resolved


def model_folder(spec: ModelSpec, model: str | None = None, models: str | None = None) -> str:
    """The local folder of a model: ``model`` itself when it is a folder; for
    the default model, its folder in the models folder (``models``) when
    scripts/fetch_models.py put it there; otherwise the Hugging Face snapshot
    of the id, from the local cache or downloaded (the default id at its
    pinned revision)."""
    if model is None and weight_files(os.path.join(models_dir(models), spec.key)):
        return os.path.join(models_dir(models), spec.key)
    model = model or spec.hub_id
    if os.path.isdir(model):
        return model
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise InputError(f"{spec.name}: {model} is neither a folder nor a Hugging Face id (owner/name); "
                         f"pass a model folder or id with {spec.option}")
    revision = spec.revision if model == spec.hub_id else None
    from huggingface_hub import constants, snapshot_download
    try:
        folder = snapshot_download(model, revision=revision, allow_patterns=_SNAPSHOT_FILES)
        if not weight_files(folder):   # no safetensors: take the PyTorch checkpoint
            folder = snapshot_download(model, revision=revision, allow_patterns=_SNAPSHOT_FILES + ["*.bin"])
    except OSError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
        fix = (f"run `python scripts/fetch_models.py {spec.key}` where there is internet (or unpack a bundle "
               "made there with --from-bundle)") if model == spec.hub_id else \
            f"fetch it where there is internet with `huggingface-cli download {model}` and share the cache (HF_HOME)"
        raise InputError(
            f"{spec.name}: {model} is not in the models folder ({models_dir(models)}) nor in the Hugging Face "
            f"cache ({constants.HF_HUB_CACHE}), and the hub could not be reached ({reason}); {fix}, "
            f"or pass a model folder with {spec.option}") from None
    return folder


_MODEL_FILE_SUFFIXES = (".json", ".txt", ".safetensors", ".bin")


def model_fingerprint(folder: str) -> dict:
    """What identifies a model folder's content, without hashing gigabytes:
    the commit of a Hugging Face snapshot folder, otherwise the names, sizes
    and modification times of its config, tokenizer and weight files."""
    parent, commit = os.path.split(os.path.normpath(os.path.abspath(folder)))
    if os.path.basename(parent) == "snapshots" and len(commit) == 40 and all(c in "0123456789abcdef" for c in commit):
        return {"snapshot": commit}
    files = {}
    for name in sorted(os.listdir(folder)):
        if name.endswith(_MODEL_FILE_SUFFIXES):
            stat = os.stat(os.path.join(folder, name))
            files[name] = [stat.st_size, stat.st_mtime_ns]
    return {"folder": os.path.abspath(folder), "files": files}


def _hexdigest(path, digest) -> str:
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_sha256(path) -> str:
    return _hexdigest(path, hashlib.sha256())


def git_blob_sha1(path) -> str:
    """Git's id of a file's content: SHA-1 of ``blob <size>\\0`` and the bytes."""
    return _hexdigest(path, hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode()))


def weight_files(folder: str) -> list[str]:
    """The checkpoint files transformers loads from ``folder``, safetensors first."""
    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index_path = os.path.join(folder, index)
        if os.path.exists(index_path):
            with open(index_path) as handle:
                shards = sorted(set(json.load(handle)["weight_map"].values()))
            return [os.path.join(folder, shard) for shard in shards]
        if os.path.exists(os.path.join(folder, single)):
            return [os.path.join(folder, single)]
    return []


def _checkpoint_tensors(folder: str) -> dict[str, Callable[[], torch.Tensor]]:
    """Checkpoint key -> loader of that tensor, reading lazily."""
    loaders = {}
    for path in weight_files(folder):
        if path.endswith(".safetensors"):
            from safetensors import safe_open
            handle = safe_open(path, framework="pt")
            loaders.update({key: (lambda h=handle, k=key: h.get_tensor(k)) for key in handle.keys()})
        else:
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            loaders.update({key: (lambda t=tensor: t) for key, tensor in state.items()})
    return loaders


def verify_weights(spec: ModelSpec, model: torch.nn.Module, folder: str) -> None:
    """Stop unless every encoder parameter of ``model`` equals its tensor in the
    checkpoint files of ``folder``.

    Checked against the files themselves, not against the loader's report: a
    transformers release that initialises some weights randomly (reported for
    remote-code models on 5.x) must never produce embeddings silently.
    """
    checkpoint = _checkpoint_tensors(folder)
    prefix = getattr(model, "base_model_prefix", "")
    problems = []
    for name, parameter in model.named_parameters():
        if name.startswith(_HEAD_PREFIXES):
            continue
        # transformers also loads old LayerNorm checkpoints that name weight/bias gamma/beta
        legacy = name.removesuffix(".weight") + ".gamma" if name.endswith(".weight") \
            else name.removesuffix(".bias") + ".beta"
        candidates = (name, f"{prefix}.{name}", legacy, f"{prefix}.{legacy}")
        key = next((k for k in candidates if k in checkpoint), None)
        if key is None:
            problems.append(f"{name} is not in the checkpoint")
        elif not torch.equal(parameter.detach().cpu(), checkpoint[key]().to(parameter.dtype)):
            problems.append(f"{name} differs from the checkpoint")
    if problems:
        raise InputError(
            f"{spec.name}: {len(problems)} encoder weights loaded from {folder} do not come from its checkpoint "
            f"(first: {problems[0]}); refusing to embed with random weights. Use the transformers version "
            f"pinned in pyproject.toml, or a model folder in the layout of {spec.hub_id}")


def _finish_loading(spec: ModelSpec, model, folder: str, device, dtype, expected_dim: int | None) -> torch.nn.Module:
    verify_weights(spec, model, folder)
    if expected_dim is not None and model.config.hidden_size != expected_dim:
        raise InputError(f"{spec.name}: {folder} gives {model.config.hidden_size}-value embeddings, "
                         f"not {expected_dim}; point {spec.option} at a {spec.name} model")
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    logger.info(f"{spec.name}: loaded from {folder} ({dtype_name(dtype)}, {device})")
    return model


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``: how precision is recorded in files."""
    return str(dtype).removeprefix("torch.")


def _read_config(spec: ModelSpec, folder: str) -> dict:
    """A model's ``config.json``, read as data (its ``auto_map`` is never followed)."""
    path = os.path.join(folder, "config.json")
    try:
        with open(path) as handle:
            config = json.load(handle)
    except FileNotFoundError:
        raise InputError(f"{spec.name}: {folder} is not a {spec.name} model folder (no config.json); "
                         f"point {spec.option} at a folder in the layout of {spec.hub_id}") from None
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{spec.name}: {path} is not a readable JSON config") from None
    if not isinstance(config, dict):
        raise InputError(f"{spec.name}: {path} is not a model config (expected a JSON object)")
    return config


def _require_weights(spec: ModelSpec, folder: str) -> None:
    if not weight_files(folder):
        raise InputError(f"{spec.name}: {folder} has no weights (no model.safetensors or pytorch_model.bin); "
                         f"point {spec.option} at a folder in the layout of {spec.hub_id}")


def _checkpoint_state(spec: ModelSpec, folder: str) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's checkpoint files (weights only)."""
    _require_weights(spec, folder)
    try:
        return {key: load() for key, load in _checkpoint_tensors(folder).items()}
    except Exception as error:
        raise InputError(f"{spec.name}: the weights in {folder} cannot be read as tensors "
                         f"({error.__class__.__name__}); the download may be incomplete") from None


def load_dnabert_s(model: str | None = None, device: str | torch.device | None = None,
                   expected_dim: int | None = DNA_DIM, dtype: torch.dtype = torch.float32):
    """DNABERT-S (768-d) and its tokenizer, from a Hugging Face id (default:
    the pinned ``zhihan1996/DNABERT-S``), a local folder or the offline cache.

    The network is this project's own (``dnabert_s.py``): the config is read
    as data, the checkpoint's tensors are mapped key for key onto the model
    (any missing, left-over or misshapen key stops the load) and the
    tokenizer is the fast BPE tokenizer of ``tokenizer.json``. Nothing in the
    folder is executed. ``expected_dim=None`` skips the width check.
    """
    from transformers import PreTrainedTokenizerFast

    device = device if isinstance(device, torch.device) else resolve_device(device)
    folder = model_folder(DNABERT_S, model)
    config = _read_config(DNABERT_S, folder)
    hint = f"point --dna-model at a DNABERT-S folder (layout of {DNABERT_S.hub_id})"
    if config.get("model_type", "bert") != "bert":
        raise InputError(f"DNABERT-S: {folder} is not a DNABERT-S folder: its config.json describes a "
                         f"{config['model_type']} model; {hint}")
    missing = dnabert_s.DnabertConfig.missing(config)
    if missing:
        raise InputError(f"DNABERT-S: {folder}/config.json lacks {', '.join(missing)}; {hint}")
    if not os.path.exists(os.path.join(folder, "tokenizer.json")):
        raise InputError(f"DNABERT-S: {folder} has no tokenizer.json; {hint}")
    network = dnabert_s.DnabertModel(dnabert_s.DnabertConfig.from_dict(config))
    _load_dnabert_state(network, _checkpoint_state(DNABERT_S, folder), folder)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    return _finish_loading(DNABERT_S, network, folder, device, dtype, expected_dim), tokenizer


def _load_dnabert_state(network: torch.nn.Module, state: dict[str, torch.Tensor], folder: str) -> None:
    """Copy the checkpoint into ``network``, whose parameter names are the
    published checkpoint keys: every key must be there, with its shape, and
    no other key may be left over."""
    expected = network.state_dict()
    where = f"DNABERT-S: {folder}"
    hint = f"point --dna-model at a DNABERT-S folder (layout of {DNABERT_S.hub_id})"
    absent = [key for key in expected if key not in state]
    if absent:
        known = ("encoder.layer.0.attention.self.Wqkv.weight", "encoder.layer.0.mlp.gated_layers.weight")
        what = "a DNABERT-S (MosaicBERT) checkpoint" if any(k in absent for k in known) else "complete"
        raise InputError(f"{where}: the weights are not {what}: {len(absent)} tensors missing "
                         f"(first: {absent[0]}); {hint}")
    extra = [key for key in state if key not in expected]
    if extra:
        raise InputError(f"{where}: the weights hold {len(extra)} tensors this DNABERT-S config has no place "
                         f"for (first: {extra[0]}); {hint}")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise InputError(f"{where}: {key} is {tuple(state[key].shape)} in the checkpoint but "
                             f"{tuple(tensor.shape)} in its config.json; {hint}")
    network.load_state_dict(state)


def esm_tokenizer():
    """The ESM-2 tokenizer, built from the fixed ESM-2 alphabet (no download)."""
    from transformers import EsmTokenizer

    with tempfile.TemporaryDirectory() as folder:
        vocab = os.path.join(folder, "vocab.txt")
        with open(vocab, "w") as handle:
            handle.write("\n".join(ESM2_ALPHABET) + "\n")
        return EsmTokenizer(vocab)


# Keys of a config.json that name code or classes, not the architecture:
# FastESM2_650's says model_type "fast_esm" with an auto_map to its remote code.
_CODE_CONFIG_KEYS = ("model_type", "auto_map", "architectures")


@contextlib.contextmanager
def _quiet_transformers():
    """Silence transformers' load report: unused head weights and buffers
    such as rotary ``inv_freq`` are expected, and ``verify_weights`` checks
    every encoder weight against the files itself."""
    from transformers.utils import logging as transformers_logging

    level = transformers_logging.get_verbosity()
    transformers_logging.set_verbosity_error()
    try:
        yield
    finally:
        transformers_logging.set_verbosity(level)


def _load_esm(spec: ModelSpec, model, device, dtype, expected_dim):
    from transformers import EsmConfig, EsmModel

    device = device if isinstance(device, torch.device) else resolve_device(device)
    folder = model_folder(spec, model)
    config = _read_config(spec, folder)
    if "hidden_size" not in config or config.get("vocab_size") != len(ESM2_ALPHABET):
        raise InputError(f"{spec.name}: {folder} is not an ESM-2 model (its config has no "
                         f"{len(ESM2_ALPHABET)}-token ESM-2 vocabulary); point {spec.option} at a {spec.name} model")
    config = EsmConfig.from_dict({k: v for k, v in config.items() if k not in _CODE_CONFIG_KEYS})
    _require_weights(spec, folder)
    with _quiet_transformers():
        network = EsmModel.from_pretrained(folder, config=config, local_files_only=True, add_pooling_layer=False,
                                           attn_implementation="sdpa", dtype=torch.float32)
    if dtype is None:
        dtype = torch.float16 if device.type == "cuda" and spec is FASTESM2_650 else torch.float32
    return _finish_loading(spec, network, folder, device, dtype, expected_dim), esm_tokenizer()


def load_fast_esm(model: str | None = None, device=None, dtype: torch.dtype | None = None,
                  expected_dim: int | None = PROTEIN_DIM):
    """FastESM2_650 (1280-d) and its tokenizer: an ESM-2 checkpoint run by
    transformers' own ESM with SDPA attention, in half precision on CUDA.
    FastESM2_650's folder (``model_type: fast_esm`` with an ``auto_map`` to
    remote code) is read as data; no remote code runs. ``expected_dim=None``
    skips the width check."""
    return _load_esm(FASTESM2_650, model, device, dtype, expected_dim)


def load_esm2_3b(model: str | None = None, device=None, dtype: torch.dtype | None = None,
                 expected_dim: int | None = ESM2_3B_DIM):
    """The published baseline ESM2-3B (2560-d), in full precision as published."""
    return _load_esm(ESM2_3B, model, device, dtype, expected_dim)


# =============================================================================
# 7. Embedding extraction (DNABERT-S, FastESM2_650, ESM2-3B baseline)
# =============================================================================

FAILURE_LOG = "extraction_failures.log"
DNA_TOKS_PER_BATCH = 16384


def model_precision(model: torch.nn.Module) -> str:
    """The dtype an encoder runs in, as recorded in feature files (``"float32"``)."""
    return dtype_name(next(model.parameters()).dtype)


def log_failures(failures: list[tuple[str, str, str]], source, folder) -> None:
    """Append ``time, source, id, kind, message`` lines (tab-separated) to
    the failure log in ``folder``, and say so once."""
    if not failures:
        return
    log_path = os.path.join(os.fspath(folder) or ".", FAILURE_LOG)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with open(log_path, "a") as log:
        for sequence_id, kind, message in failures:
            log.write(f"{now}\t{source}\t{sequence_id}\t{kind}\t{message}\n")
    logger.warning(f"{source}: {len(failures)} sequences failed ({failures[0][1]}: {failures[0][0]}, ...); "
                   f"see {log_path}")


def _embed_file(fasta_file, out_file, alphabet: str, encoder, tokenize, pad_id: int, toks_per_batch: int,
                desc: str) -> tuple[list[str], list[torch.Tensor]]:
    """Embed every sequence of a FASTA file through the engine; log the
    failures beside ``out_file``; ``(ids kept, their embeddings)``."""
    import engine

    ids, sequences = [], []
    for record in read_fasta(fasta_file, alphabet=alphabet):
        ids.append(record.id)
        sequences.append(record.sequence.upper())
    embeddings, failed = engine.embed_rows(encoder, tokenize(sequences), ids, pad_id, toks_per_batch,
                                           f"{desc} {os.path.basename(os.fspath(fasta_file))}")
    log_failures([(ids[row], *failed[row]) for row in sorted(failed)], os.fspath(fasta_file),
                 os.path.dirname(os.fspath(out_file)) if out_file else ".")
    kept = [row for row in range(len(ids)) if row not in failed]
    return [ids[row] for row in kept], list(embeddings[kept].cpu()) if kept else []


def _save(obj, out_file) -> None:
    if out_file is not None:
        with atomic_write(out_file, "wb") as handle:
            torch.save(obj, handle)


def save_dna_features(ids: list[str], vectors, model: torch.nn.Module, out_file=None) -> dict:
    """DNABERT-S features in the published layout plus the model's dtype,
    saved atomically when ``out_file`` is given: ``{'nucleotide': [ids], 'data':
    [{'label': id, 'mean_representation': tensor}], 'precision': dtype}``."""
    result = {"nucleotide": list(ids),
              "data": [{"label": i, "mean_representation": v.clone()} for i, v in zip(ids, vectors)],
              "precision": model_precision(model)}
    _save(result, out_file)
    return result


def save_protein_features(ids: list[str], vectors, model: torch.nn.Module, out_file=None) -> dict:
    """Protein features in the published layout plus the model's dtype, saved
    atomically when ``out_file`` is given: ``{'proteins': [ids], 'data':
    [tensor], 'precision': dtype}``."""
    result = {"proteins": list(ids), "data": [v.clone() for v in vectors], "precision": model_precision(model)}
    _save(result, out_file)
    return result


def extract_DNABERT_S(input_file, out_file=None, model_loaded=False, tokenizer=None, model=None,
                      toks_per_batch=DNA_TOKS_PER_BATCH):
    """DNABERT-S embeddings of every sequence of ``input_file``: the mean over
    all tokens, [CLS] and [SEP] included, padding excluded, exactly what the
    published one-at-a-time code computes, but in padded batches (through
    ``engine``, the path prediction takes).

    Saves (atomically) and returns ``{'nucleotide': [ids], 'data':
    [{'label': id, 'mean_representation': tensor(768)}], 'precision':
    'float32'}``: the published layout plus the dtype the model ran in. An
    existing ``out_file`` is loaded instead of being redone.
    Without ``model``, the default DNABERT-S is loaded (``model_loaded`` is
    accepted for compatibility with the published signature).
    """
    import engine

    if out_file is not None and os.path.exists(out_file):
        return torch.load(out_file, weights_only=True)
    if model is None:
        model, tokenizer = load_dnabert_s()
    kept_ids, kept = _embed_file(input_file, out_file, "dna", engine.DnaEncoder(model),
                                 lambda sequences: engine.dna_tokens(tokenizer, sequences), tokenizer.pad_token_id,
                                 toks_per_batch, "DNABERT-S")
    return save_dna_features(kept_ids, kept, model, out_file)


def _extract_protein(spec: ModelSpec, load, fasta_file, out_file, model, tokenizer, truncation_seq_length,
                     toks_per_batch):
    """Mean over residue positions only (no BOS/EOS, no padding) of the last
    layer, each sequence cut to ``truncation_seq_length`` residues, as the
    published fair-esm extraction; returned in fp32. An existing ``out_file`` is
    returned before any model is loaded; without ``model``, ``load()`` gives one."""
    import engine

    if out_file is not None and os.path.exists(out_file):
        return torch.load(out_file, weights_only=True)
    if model is None:
        model, tokenizer = load()
    table = engine.residue_table(tokenizer)
    kept_ids, kept = _embed_file(fasta_file, out_file, "protein", engine.ProteinEncoder(model),
                                 lambda sequences: engine.protein_tokens(tokenizer, table, sequences,
                                                                         truncation_seq_length),
                                 tokenizer.pad_token_id, toks_per_batch, spec.name)
    return save_protein_features(kept_ids, kept, model, out_file)


def extract_fast_esm(fasta_file, out_file=None, model=None, tokenizer=None,
                     truncation_seq_length=1024, toks_per_batch=2048):
    """FastESM2_650 embeddings (1280-d) of every protein of ``fasta_file``.

    Batches by token budget (longest first, BOS/EOS counted), splits a batch
    that runs out of GPU memory, logs sequences that still fail to
    ``extraction_failures.log`` beside ``out_file`` and goes on, and refuses
    any embedding that is not the model's width of finite values. Saves
    (atomically) and returns ``{'proteins': [ids], 'data': [tensor(1280)],
    'precision': dtype the model ran in}`` in input order; an
    existing ``out_file`` is loaded instead of being redone. Without
    ``model``, the default FastESM2_650 is loaded.
    """
    return _extract_protein(FASTESM2_650, load_fast_esm, fasta_file, out_file, model, tokenizer,
                            truncation_seq_length, toks_per_batch)


def extract_esm(fasta_file, model_location=ESM2_3B.hub_id, truncation_seq_length=1024, toks_per_batch=2048,
                out_file=None, model_loaded=False, model=None, alphabet=None):
    """The published ESM2-3B baseline (2560-d), through transformers instead
    of fair-esm, with the published pooling; ``alphabet`` is the tokenizer.
    Same batching, failure handling and output layout as ``extract_fast_esm``.
    ``model_loaded`` is accepted for compatibility: a model is loaded from
    ``model_location`` whenever ``model`` is not given."""
    return _extract_protein(ESM2_3B, lambda: load_esm2_3b(model_location), fasta_file, out_file, model, alphabet,
                            truncation_seq_length, toks_per_batch)


@dataclass(frozen=True)
class Pipeline:
    """An embedding pipeline: DNABERT-S plus one protein model."""
    name: str
    protein: ModelSpec
    load_protein: Callable

    @property
    def input_dim(self) -> int:
        return DNA_DIM + self.protein.dim


PIPELINES = {"fastesm650": Pipeline("fastesm650", FASTESM2_650, load_fast_esm),
             "esm2_3b": Pipeline("esm2_3b", ESM2_3B, load_esm2_3b)}


def extract_protein(pipeline: Pipeline, fasta_file, out_file, model, tokenizer, toks_per_batch=2048):
    """Protein features of ``fasta_file`` with the pipeline's protein model."""
    return _extract_protein(pipeline.protein, pipeline.load_protein, fasta_file, out_file, model, tokenizer,
                            1024, toks_per_batch)


# =============================================================================
# 8. Merging DNA and protein features
# =============================================================================

LABELS = {"viral": 1, "host": 0}


def _load_feature_file(path, ids_key):
    try:
        content = torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: no such feature file") from None
    except Exception as error:
        raise InputError(f"{path}: not a readable feature file ({error.__class__.__name__})") from None
    if not isinstance(content, dict) or ids_key not in content or "data" not in content \
            or len(content[ids_key]) != len(content["data"]):
        raise InputError(f"{path}: not a feature file (expected matching '{ids_key}' and 'data' lists)")
    return content


def _feature_vectors(path, ids, vectors, dim) -> dict[str, torch.Tensor]:
    checked = {}
    for sequence_id, vector in zip(ids, vectors):
        vector = torch.as_tensor(vector, dtype=torch.float32)
        if tuple(vector.shape) != (dim,):
            actual = vector.shape[-1] if vector.dim() == 1 else tuple(vector.shape)
            raise DimensionError(dim, actual, sequence_id, str(path))
        if not torch.isfinite(vector).all():
            raise InputError(f"{path}: the features of '{sequence_id}' hold NaN or infinite values")
        checked[sequence_id] = vector
    return checked


def merge_data(DNABERT_S_data, ESM_data, merged_file, data_type=None, protein_dim=PROTEIN_DIM, chunk_length=None):
    """Join DNABERT-S and protein features by sequence id into
    ``{'ids', 'data': tensor(n, 768 + protein_dim)}`` (plus ``'labels': [1]``
    for ``data_type='viral'``, ``[0]`` for ``'host'``, as published), and
    ``'precision': {'dna': ..., 'protein': ...}`` when both feature files
    record the dtype their encoder ran in, and ``'chunk_length'`` when given.

    Both inputs and the result are checked before anything is written
    (``DimensionError`` names the expected and actual size, the sequence and
    the file). Unlike the published code, an id present in only one file is
    left out instead of misaligning ids and rows; those ids are returned.
    """
    if data_type is not None and data_type not in LABELS:
        raise InputError(f"data_type must be 'viral', 'host' or None, got {data_type!r}")
    dna = _load_feature_file(DNABERT_S_data, "nucleotide")
    protein = _load_feature_file(ESM_data, "proteins")
    dna_vectors = _feature_vectors(DNABERT_S_data, dna["nucleotide"],
                                   [item["mean_representation"] for item in dna["data"]], DNA_DIM)
    protein_vectors = _feature_vectors(ESM_data, protein["proteins"], protein["data"], protein_dim)

    ids = [i for i in dna["nucleotide"] if i in protein_vectors]
    left_out = [i for i in dna["nucleotide"] if i not in protein_vectors] + \
               [i for i in protein["proteins"] if i not in dna_vectors]
    if not ids:
        raise InputError(f"{DNABERT_S_data} and {ESM_data} have no sequence id in common")
    data = torch.stack([torch.cat((dna_vectors[i], protein_vectors[i])) for i in ids])
    if data.shape[1] != DNA_DIM + protein_dim:
        raise DimensionError(DNA_DIM + protein_dim, data.shape[1], ids[0], f"{merged_file} (merged)")

    merged = {"ids": ids, "data": data}
    if data_type is not None:
        merged["labels"] = [LABELS[data_type]]
    if "precision" in dna and "precision" in protein:
        merged["precision"] = {"dna": dna["precision"], "protein": protein["precision"]}
    if chunk_length is not None:
        merged["chunk_length"] = chunk_length
    _save(merged, merged_file)
    if left_out:
        logger.warning(f"{merged_file}: {len(left_out)} ids are not in both feature files and were left out "
                       f"(first: {', '.join(left_out[:3])})")
    return left_out


# =============================================================================
# 9. Merged feature sets
# =============================================================================

def load_merged_file(path, expected_dim: int = MERGED_DIM) -> dict:
    """Load and check one merged training file (memory-mapped): ``expected_dim``-wide
    finite rows, one unique id per row, a label of 0 (host) or 1 (viral).
    Returns ``{'ids', 'data', 'label', 'precision', 'chunk_length'}`` (the last
    two ``None`` where the file does not record them); raises ``InputError``
    naming the file."""
    path = os.fspath(path)
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:
        raise InputError(f"{path}: not a readable merged feature file ({error.__class__.__name__})") from None
    if not isinstance(content, dict) or not {"ids", "data", "labels"} <= content.keys():
        raise InputError(f"{path}: a merged training file needs 'ids', 'data' and 'labels'")
    data, ids, labels = content["data"], content["ids"], content["labels"]
    if data.dim() != 2 or data.shape[1] != expected_dim:
        raise DimensionError(expected_dim, tuple(data.shape), ids[0] if ids else "-", path)
    if len(ids) != data.shape[0]:
        raise InputError(f"{path}: {len(ids)} ids for {data.shape[0]} rows")
    if len(set(ids)) != len(ids):
        raise InputError(f"{path}: repeated sequence ids")
    if not torch.isfinite(data).all():
        raise InputError(f"{path}: the features hold NaN or infinite values")
    if list(labels) not in ([0], [1]):
        raise InputError(f"{path}: labels must be [0] (host) or [1] (viral), got {list(labels)[:3]}")
    return {"ids": list(ids), "data": data, "label": int(labels[0]), "precision": content.get("precision"),
            "chunk_length": content.get("chunk_length")}


def find_merged_files(merge_dir) -> list[str]:
    merge_dir = os.fspath(merge_dir)
    if not os.path.isdir(merge_dir):
        raise InputError(f"{merge_dir}: no such folder; run features_extract.py first")
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(merge_dir)
                   for name in names if name.endswith("_merged.pt"))
    if not files:
        raise InputError(f"{merge_dir}: no *_merged.pt files; run features_extract.py first")
    return files


def accession_of(frame_id: str) -> str:
    """The genome record a frame comes from: its id before ``_chunk_``."""
    return frame_id.rsplit("_chunk_", 1)[0]


class FeatureSet:
    """The rows of many merged files as one indexable set, memory-mapped so
    that millions of 2048-d rows need no more RAM than their ids.

    ``rows(indices)`` gathers any rows in one vectorised pass per file
    (the published Dataset walked every file for every single item).
    """

    def __init__(self, files: Sequence[str], expected_dim: int = MERGED_DIM):
        self.files = list(files)
        self._data, self.ids, labels, self._precisions, self._chunk_lengths = [], [], [], [], []
        for path in self.files:
            content = load_merged_file(path, expected_dim)
            self._data.append(content["data"])
            self._precisions.append(content["precision"])
            self._chunk_lengths.append(content["chunk_length"])
            self.ids += content["ids"]
            labels.append(np.full(len(content["ids"]), content["label"], dtype=np.int64))
        self.labels = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
        self._starts = np.cumsum([0] + [len(d) for d in self._data])
        self.dim = expected_dim

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, indices) -> torch.Tensor:
        indices = np.asarray(indices, dtype=np.int64)
        files = np.searchsorted(self._starts, indices, side="right") - 1
        out = torch.empty((len(indices), self.dim), dtype=torch.float32)
        for file in np.unique(files):
            where = np.flatnonzero(files == file)
            local = torch.from_numpy(indices[where] - self._starts[file])
            out[torch.from_numpy(where)] = self._data[file].index_select(0, local).float()
        return out

    def encoder_precision(self) -> dict | None:
        """The dtype each encoder ran in to make these features, e.g.
        ``{'dna': 'float32', 'protein': 'float16'}`` (``'mixed (...)'`` when
        files differ); ``None`` when no file records it."""
        if not any(self._precisions):
            return None
        precision = {}
        for encoder in ("dna", "protein"):
            values = sorted({p.get(encoder, "unrecorded") if p else "unrecorded" for p in self._precisions})
            precision[encoder] = values[0] if len(values) == 1 else f"mixed ({', '.join(values)})"
        return precision

    def chunk_length(self) -> int | None:
        """The chunk length of the frames these features come from (``None``
        when the files do not record it); files of two lengths are refused."""
        lengths = {length for length in self._chunk_lengths if length is not None}
        if len(lengths) > 1:
            first = {length: path for path, length in zip(self.files, self._chunk_lengths)}
            raise InputError("the features mix frames of " + " and ".join(
                f"{length}-bp chunks ({first[length]})" for length in sorted(lengths))
                + "; keep one chunk length per merge folder")
        return lengths.pop() if lengths else None

    def accessions(self) -> list[str]:
        return [accession_of(i) for i in self.ids]

    def spans(self) -> list[tuple[str, int, int]]:
        """``(file, first row, end row)`` of each file."""
        return [(path, int(start), int(end)) for path, start, end
                in zip(self.files, self._starts[:-1], self._starts[1:])]


# =============================================================================
# 10. Classifier, checkpoints and prediction
# =============================================================================

CHECKPOINT_VERSION = "2.0.0"
HIDDEN_DIM = 512
NUM_CLASSES = 2
CLASS_NAMES = {0: "others", 1: "virus"}


class MLPClassifier(torch.nn.Module):
    """The published classifier: Linear -> BatchNorm -> ReLU -> Dropout(0.5)
    -> Linear, Xavier-initialised (same attribute names, so published weights
    load into it)."""

    def __init__(self, input_dim, hidden_dim, num_class):
        super().__init__()
        self.hidden_layer = torch.nn.Linear(input_dim, hidden_dim)
        self.bn1 = torch.nn.BatchNorm1d(hidden_dim)
        self.output_layer = torch.nn.Linear(hidden_dim, num_class)
        self.dropout = torch.nn.Dropout(0.5)
        self.init_weights()

    def init_weights(self):
        torch.nn.init.xavier_uniform_(self.hidden_layer.weight)
        torch.nn.init.xavier_uniform_(self.output_layer.weight)

    def forward(self, x):
        x = torch.nn.functional.relu(self.bn1(self.hidden_layer(x)))
        return self.output_layer(self.dropout(x))



def _library_versions() -> dict:
    import platform

    import transformers
    return {"python": platform.python_version(), "torch": str(torch.__version__),
            "transformers": transformers.__version__, "numpy": np.__version__}


def save_checkpoint(model: MLPClassifier, path, pipeline: str = "fastesm650", chunk_length: int | None = None,
                    encoder_precision: dict | None = None, **training) -> dict:
    """Save the classifier's weights with the metadata that identifies what it
    was trained on (atomically): the pipeline, the chunk length of its
    training frames and the dtypes the encoders ran in to make its features.
    ``training`` adds details such as epochs."""
    spec = PIPELINES[pipeline]
    metadata = {
        "checkpoint_version": CHECKPOINT_VERSION,
        "embedding_model": pipeline,
        "protein_model": spec.protein.hub_id,
        "chunk_length": chunk_length,
        "encoder_precision": encoder_precision,
        "dna_dim": DNA_DIM, "protein_dim": spec.protein.dim, "merged_dim": spec.input_dim,
        "hidden_dim": model.hidden_layer.out_features, "num_classes": model.output_layer.out_features,
        "training_date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "library_versions": _library_versions(),
        **training,
    }
    state = {key: value.detach().cpu() for key, value in model.state_dict().items()}
    _save({"state_dict": state, "metadata": metadata}, path)
    with contextlib.suppress(FileNotFoundError):
        os.remove(calibration_path(path))           # fitted to the classifier this one replaces
    return metadata


def default_classifier(chunk_length: int, models: str | None = None) -> tuple[str, str, str]:
    """``(checkpoint, pipeline, why)`` when no checkpoint is given: the
    FastESM2_650 classifier installed for ``chunk_length`` if there is one,
    else the published ESM2-3B one fetched by scripts/fetch_models.py."""
    folder = os.path.join(models_dir(models), CLASSIFIERS)
    ours = os.path.join(folder, f"model_fastesm650_{chunk_length}.pth")
    if os.path.exists(ours):
        return ours, "fastesm650", f"the FastESM2_650 classifier installed for {chunk_length}-bp chunks"
    published = {item.chunk_length: item for item in PUBLISHED_BY_BLOB.values()}[chunk_length]
    if os.path.exists(os.path.join(folder, published.file)):
        return (os.path.join(folder, published.file), "esm2_3b",
                f"no FastESM2_650 classifier is installed for {chunk_length}-bp chunks, so the published ESM2-3B "
                "one is used (train_fastesm.py --install installs yours)")
    raise InputError(f"no classifier for {chunk_length}-bp chunks in {folder}; run `python scripts/fetch_models.py` "
                     "to fetch the published ones, install one trained with train_fastesm.py --install, or give "
                     "a checkpoint")


def install_classifier(checkpoint: str, chunk_length: int, models: str | None = None) -> str:
    """Copy a trained FastESM2_650 classifier, and its calibration if it has
    one, to where prediction.py finds them by default."""
    target = os.path.join(models_dir(models), CLASSIFIERS, f"model_fastesm650_{chunk_length}.pth")
    for source_path, target_path in ((checkpoint, target), (calibration_path(checkpoint), calibration_path(target))):
        if not os.path.exists(source_path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(target_path)              # the replaced classifier's
            continue
        with open(source_path, "rb") as source, atomic_write(target_path, "wb") as out:
            shutil.copyfileobj(source, out)
    return target


def default_checkpoint_path(given: str | None, chunk_length: int | None, pipeline: str = "fastesm650") -> str:
    """``given`` itself, or ``model_<pipeline>_<length>.pth`` when it is a folder or not given."""
    if given and not os.path.isdir(given):
        return given
    if chunk_length is None:
        raise InputError("the features do not record their chunk length, so the classifier's name is unknown; "
                         "give the checkpoint's path")
    return os.path.join(given or "", f"model_{pipeline}_{chunk_length}.pth")


class _PublishedMLP(torch.nn.Module):
    """Receives the state of a published whole-model pickle; never runs."""


_PUBLISHED_PICKLE_GLOBALS = [(_PublishedMLP, "__main__.MLPClassifier"), torch.nn.Linear,
                             torch.nn.BatchNorm1d, torch.nn.Dropout, set]

PUBLISHED_BY_BLOB = {item.blob_sha1: item for item in (CLASSIFIER_300, CLASSIFIER_500)}


def _read_checkpoint(path) -> tuple[dict, dict | None]:
    """``(state_dict, metadata or None)``. A published whole-model pickle is
    read with torch's weights-only unpickler, admitting only the MLP and
    tensors: no code in the file runs."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(f"{path}: is a folder, not a checkpoint file; give the path of the .pth file")
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such checkpoint file; leave it out to use the installed classifier "
                         "(`python scripts/fetch_models.py` fetches the published ones), or train one with "
                         "train_fastesm.py")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: the checkpoint file is empty (0 bytes): it was not written or copied "
                         "completely; copy or train it again")
    try:
        with torch.serialization.safe_globals(_PUBLISHED_PICKLE_GLOBALS), warnings.catch_warnings():
            # published checkpoints use pickle protocol 4, which the weights-only reader handles
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        # torch's own message suggests weights_only=False, which would let the file run code: never echo it
        if "unsupported global" in str(error).lower():
            raise InputError(f"{path}: not a VirNucPro checkpoint: it holds Python objects other than weights, "
                             "which are refused because loading them could run code") from None
        raise InputError(f"{path}: not a VirNucPro checkpoint, or a corrupt or truncated one (torch cannot "
                         "read it as weights); copy or train it again") from None
    if isinstance(content, torch.nn.Module):
        state, metadata = content.state_dict(), None
    elif isinstance(content, dict) and "state_dict" in content and "metadata" in content:
        state, metadata = content["state_dict"], content["metadata"]
        if not isinstance(metadata, dict):
            raise InputError(f"{path}: not a VirNucPro checkpoint (its metadata is not a table)")
    else:
        state, metadata = content, None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: not a VirNucPro checkpoint (no classifier weights in it)")
    return state, metadata


def checkpoint_pipeline(state: dict, metadata: dict | None) -> str:
    """Which embedding pipeline a checkpoint was trained for."""
    if metadata is not None:
        return metadata.get("embedding_model", "unknown")
    weight = state.get("hidden_layer.weight")
    if weight is not None and weight.shape[1] == PIPELINES["esm2_3b"].input_dim:
        return "esm2_3b"
    return "unknown"


def _check_pipeline(path: str, pipeline: str, trained_for: str, metadata: dict | None) -> None:
    if pipeline not in PIPELINES:
        raise InputError(f"unknown pipeline {pipeline!r}; choose one of {', '.join(PIPELINES)}")
    if trained_for == pipeline:
        return
    if trained_for == "esm2_3b":
        hint = ("it is an ESM2-3B checkpoint (3328-d features, like the published 300_model.pth / "
                "500_model.pth); run it with --pipeline esm2_3b, or use a FastESM2_650 checkpoint "
                "trained with train_fastesm.py")
    elif metadata is None:
        hint = "it has no metadata, so what it was trained on is unknown; use a checkpoint saved by train_fastesm.py"
    else:
        hint = f"it was trained for the {trained_for} pipeline; run it with --pipeline {trained_for}"
    raise InputError(f"{path}: cannot be used by the {pipeline} pipeline: {hint}")


def _check_classifier_state(path: str, state: dict, input_dim: int, pipeline: str) -> None:
    """The published MLP's tensors, 2 classes, the pipeline's input width, finite values."""
    weight = state.get("hidden_layer.weight")
    if weight is not None and (weight.dim() != 2 or weight.shape[1] != input_dim):
        raise InputError(f"{path}: the classifier has {weight.shape[-1]}-d input; the {pipeline} pipeline "
                         f"needs {input_dim}-d input")
    hidden = weight.shape[0] if weight is not None else HIDDEN_DIM
    output = state.get("output_layer.weight")
    if output is not None and output.dim() == 2 and output.shape[0] != NUM_CLASSES:
        raise InputError(f"{path}: the classifier has {output.shape[0]} output classes; VirNucPro classifiers "
                         f"have {NUM_CLASSES} (others, virus)")
    expected = MLPClassifier(input_dim, hidden, NUM_CLASSES).state_dict()
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise InputError(f"{path}: the weights do not fit the VirNucPro classifier ("
                         + "; ".join(f"{what}: {', '.join(keys[:4])}" for what, keys in
                                     (("missing", missing), ("unexpected", unexpected)) if keys) + ")")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise InputError(f"{path}: the weights do not fit the VirNucPro classifier ({key} is "
                             f"{tuple(state[key].shape)}, expected {tuple(tensor.shape)})")
        if state[key].is_floating_point() and not torch.isfinite(state[key]).all():
            raise InputError(f"{path}: the classifier's {key} holds NaN or infinite values; the checkpoint is "
                             "damaged or its training diverged; use another checkpoint")


def _check_chunk_length(path: str, metadata: dict | None, chunk_length: int) -> None:
    """Refuse a classifier trained on chunks of another length; warn when unknown."""
    published = PUBLISHED_BY_BLOB.get(git_blob_sha1(path)) if metadata is None else None
    trained = metadata.get("chunk_length") if metadata is not None else published and published.chunk_length
    if trained is None:
        logger.warning(f"{path}: the checkpoint does not record the chunk length it was trained on; make sure "
                       f"it is a {chunk_length}-bp classifier")
    elif trained != chunk_length:
        raise InputError(f"{path}: the classifier was trained on {trained}-bp chunks, not {chunk_length}-bp; "
                         f"run with {trained}, or use a {chunk_length}-bp classifier")


def load_checkpoint(path, pipeline: str | None = None, device="cpu",
                    chunk_length: int | None = None) -> tuple[MLPClassifier, dict]:
    """Load a classifier for ``pipeline`` (default: the one its metadata names).

    The FastESM2_650 pipeline accepts only checkpoints whose metadata says
    ``fastesm650``: it refuses the published ``300_model.pth`` /
    ``500_model.pth`` (whole pickled models for ESM2-3B features, 3328-d),
    files without metadata and anything 3328-d. The ``esm2_3b`` pipeline runs
    those published checkpoints. Any file that is not a two-class classifier
    of the pipeline's width with finite weights is refused in one line; with
    ``chunk_length``, so is a classifier trained on chunks of another length.
    Returns ``(model in eval mode, metadata)``.
    """
    path = os.fspath(path)
    state, metadata = _read_checkpoint(path)
    trained_for = checkpoint_pipeline(state, metadata)
    pipeline = pipeline or (trained_for if metadata is not None else "fastesm650")
    _check_pipeline(path, pipeline, trained_for, metadata)
    spec = PIPELINES[pipeline]
    _check_classifier_state(path, state, spec.input_dim, pipeline)
    if chunk_length is not None:
        _check_chunk_length(path, metadata, chunk_length)
    model = MLPClassifier(spec.input_dim, state["hidden_layer.weight"].shape[0], NUM_CLASSES)
    model.load_state_dict(state)
    # the published classifiers were trained on features of fp32 encoders
    metadata = metadata or {"embedding_model": pipeline, "checkpoint_version": "published",
                            "encoder_precision": {"dna": "float32", "protein": "float32"}}
    return model.to(device).eval(), metadata


def predict_probabilities(model: MLPClassifier, features: torch.Tensor, batch_size: int = 4096) -> torch.Tensor:
    """Softmax class probabilities (float32, ``[others, virus]``) of each row."""
    device = next(model.parameters()).device
    model.eval()
    parts = []
    with torch.inference_mode():
        for start in range(0, len(features), batch_size):
            logits = model(features[start:start + batch_size].to(device))
            parts.append(torch.softmax(logits, dim=1).float().cpu())
    return torch.cat(parts) if parts else torch.empty(0, NUM_CLASSES)


CALIBRATION_FORMAT = "virnucpro-calibration/1"


def calibration_path(checkpoint) -> str:
    """Where a classifier's calibration lives: beside it, ``<checkpoint stem>.calibration.json``."""
    return os.path.splitext(os.fspath(checkpoint))[0] + ".calibration.json"


def _knots(value, what: str, path: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``(x, y)`` knots of a monotone map, checked: finite, x rising, y probabilities not falling."""
    try:
        x, y = (np.asarray(value[key], dtype=np.float64) for key in ("x", "y"))
    except (TypeError, KeyError, ValueError):
        x = y = np.empty(0)
    if (x.ndim != 1 or x.shape != y.shape or not len(x) or not np.isfinite(x).all() or not np.isfinite(y).all()
            or (np.diff(x) < 0).any() or (np.diff(y) < 0).any() or y.min() < 0 or y.max() > 1):
        raise InputError(f"{path}: damaged calibration ({what} map); run scripts/evaluate_compare.py again to "
                         "calibrate the classifier, or delete the file to predict uncalibrated")
    return x, y


@dataclass(frozen=True)
class Calibration:
    """Isotonic maps from a classifier's scores to the probability of being
    viral, fitted on labelled validation sequences (scripts/evaluate_compare.py).
    ``chunk`` maps a chunk's best viral score; ``sequence`` maps the mean of a
    sequence's calibrated chunk probabilities. Each map is a list of knots,
    linear between them and flat beyond them (as scikit-learn predicts)."""
    chunk: tuple[np.ndarray, np.ndarray]
    sequence: tuple[np.ndarray, np.ndarray]

    def chunk_probabilities(self, best_viral_scores) -> np.ndarray:
        return np.interp(np.asarray(best_viral_scores, dtype=np.float64), *self.chunk)

    def sequence_probability(self, chunk_probabilities) -> float:
        return float(self.sequence_probabilities(np.mean(chunk_probabilities)))

    def sequence_probabilities(self, mean_chunk_probabilities) -> np.ndarray:
        """Of sequences, from the mean of each one's calibrated chunk probabilities."""
        return np.interp(np.asarray(mean_chunk_probabilities, dtype=np.float64), *self.sequence)

    def to_json(self) -> dict:
        return {name: {"x": knots[0].tolist(), "y": knots[1].tolist()}
                for name, knots in (("chunk", self.chunk), ("sequence", self.sequence))}


def save_calibration(checkpoint, calibration: Calibration, **details) -> str:
    """Write a classifier's calibration beside it (JSON: data, never code),
    tied to the checkpoint's SHA-256; returns its path."""
    path = calibration_path(checkpoint)
    content = {"format": CALIBRATION_FORMAT, "classifier_sha256": file_sha256(checkpoint), "method": "isotonic",
               **calibration.to_json(), **details}
    with atomic_write(path) as handle:
        json.dump(content, handle, indent=1)
    return path


def load_calibration(checkpoint) -> Calibration | None:
    """The calibration installed beside a classifier, or ``None``; one that
    belongs to another classifier (retrained since) or is damaged is refused."""
    path = calibration_path(checkpoint)
    try:
        with open(path) as handle:
            content = json.load(handle)
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        content = None
    if not isinstance(content, dict) or content.get("format") != CALIBRATION_FORMAT:
        raise InputError(f"{path}: not a VirNucPro calibration file; run scripts/evaluate_compare.py again to "
                         "calibrate the classifier, or delete the file to predict uncalibrated")
    if content.get("classifier_sha256") != file_sha256(checkpoint):
        raise InputError(f"{path}: the calibration of another classifier than {checkpoint} (retrained or replaced "
                         "since); run scripts/evaluate_compare.py to calibrate this one, or delete the file to "
                         "predict uncalibrated")
    return Calibration(_knots(content.get("chunk"), "chunk", path), _knots(content.get("sequence"), "sequence", path))


def false_discovery_rates(probabilities) -> np.ndarray:
    """The FDR of each viral call, as geNomad defines it: with the calls
    sorted by their probability of being viral, highest first, the mean of
    ``1 - p`` over the calls up to and including this one; calls of equal
    probability share the FDR of the last of them (the order among ties is arbitrary)."""
    p = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(-p, kind="stable")
    falling = p[order]
    expected_false = np.cumsum(1 - falling) / np.arange(1, len(p) + 1)
    last_tied = np.searchsorted(-falling, -falling, side="right") - 1
    rates = np.empty_like(p)
    rates[order] = expected_false[last_tied]
    return rates


@dataclass(frozen=True)
class ViralRegion:
    """A stretch of a sequence called viral: 1-based inclusive coordinates."""
    start: int
    end: int
    chunks: int
    mean_score: float
    max_score: float

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def viral_regions(chunks: Sequence[tuple[int, int, float | None, bool]], min_length: int = 0,
                  max_gap: int = 1) -> list[ViralRegion]:
    """The viral regions along one sequence from its chunks, in order, as
    ``(start (0-based), end, best viral score or None, viral)``: runs of viral
    chunks, bridging gaps of at most ``max_gap`` chunks (not viral, or without
    a scored frame); a region runs from its first viral chunk's start to its
    last one's end, its scores are those of the scored chunks it spans.
    Regions shorter than ``min_length`` bp are left out."""
    runs: list[list[int]] = []
    for k in (k for k, chunk in enumerate(chunks) if chunk[3]):
        if runs and k - runs[-1][-1] - 1 <= max_gap:
            runs[-1].append(k)
        else:
            runs.append([k])
    regions = []
    for run in runs:
        spanned = chunks[run[0]:run[-1] + 1]
        scores = [chunk[2] for chunk in spanned if chunk[2] is not None]
        region = ViralRegion(spanned[0][0] + 1, max(chunk[1] for chunk in spanned), len(spanned),
                             float(np.mean(scores)), float(max(scores)))
        if region.length >= min_length:
            regions.append(region)
    return regions


# =============================================================================
# 11. Plots
# =============================================================================

def plot_chunk_scores(sequences: list[tuple[str, int, list[tuple[int, int, float | None, bool]]]], out_png,
                      chunk_size: int, regions: list[list[ViralRegion]] | None = None, title: str = "") -> None:
    """One panel per sequence, spanning its length: each chunk drawn at its
    position with its best viral score, red when the chunk is called viral,
    light grey along the bottom when it has no scored frame (the published
    drew_fig.py, with real coordinates), and each sequence's viral regions
    shaded. ``sequences`` holds ``(sequence id, length, [(start, end, best
    viral score or None, viral)])``."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(nrows=len(sequences), ncols=1, figsize=(14, 1.9 * len(sequences)),
                                squeeze=False)
    for number, (axis, (sequence_id, length, chunks)) in enumerate(zip(axes[:, 0], sequences)):
        for region in (regions[number] if regions else ()):
            axis.axvspan(region.start - 1, region.end, color="mistyrose", zorder=0)
        for start, end, score, viral in chunks:
            if score is None:
                axis.plot([start, end], [0, 0], color="lightgray", linewidth=5, solid_capstyle="butt")
            else:
                axis.plot([start, end], [score, score], color="red" if viral else "darkblue", linewidth=2.5)
        axis.axhline(0.5, color="lightgray", linewidth=0.8, zorder=0)
        axis.set_title(sequence_id, fontsize=11, loc="left")
        axis.set_xlim(0, length)
        axis.set_ylim(-0.05, 1.05)
        axis.set_ylabel("viral score")
        axis.spines[["top", "right"]].set_visible(False)
    axes[-1, 0].set_xlabel(f"position (bp); {chunk_size}-bp chunks: red viral, blue not viral, "
                           "grey no stop-free frame; shaded: viral regions")
    if title:
        figure.suptitle(title, fontsize=11)
    figure.tight_layout()
    with atomic_write(out_png, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)
