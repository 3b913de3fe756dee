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
"""
from __future__ import annotations

import contextlib
import gzip
import logging
import os
import sys
import tempfile
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

logger = logging.getLogger("virnucpro")


# =============================================================================
# 1. Constants and errors
# =============================================================================

class InputError(Exception):
    """A problem with the user's input or files, reported as one clear line."""


# =============================================================================
# 2. Files: text input, atomic output, logging, CLI runner
# =============================================================================

GZIP_MAGIC = b"\x1f\x8b"


def open_text(path: str | os.PathLike):
    """Open a text file for reading, transparently decompressing gzip.

    Gzip is recognised by its magic bytes, not by the file name.
    """
    path = os.fspath(path)
    try:
        with open(path, "rb") as probe:
            is_gzip = probe.read(2) == GZIP_MAGIC
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory, expected a file") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    if is_gzip:
        return gzip.open(path, "rt", encoding="utf-8", newline=None)
    return open(path, "r", encoding="utf-8", newline=None)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w"):
    """Write ``path`` through a temporary file in the same folder, renamed
    into place only when the block finishes without error.

    A crash or an error never leaves a half-written ``path`` behind.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def setup_logging(verbose: bool = False) -> None:
    """Log the tool's messages to stderr as ``warning: ...`` / ``info``-style lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.DEBUG if verbose else logging.INFO)
    logger.propagate = False


def run_cli(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> None:
    """Run a script's ``main`` and turn a user's mistake into one error line.

    ``InputError`` (bad input, missing file, ...) prints ``error: ...`` and exits
    with status 2; Ctrl-C exits with status 130. Anything else is a bug and
    keeps its traceback.
    """
    setup_logging()
    try:
        status = main(argv)
    except InputError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)


# =============================================================================
# 3. FASTA input with validation
# =============================================================================

IUPAC_NUCLEOTIDES = "ACGTURYSWKMBDHVN"
PROTEIN_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
_ALPHABETS = {
    "dna": (IUPAC_NUCLEOTIDES, "an IUPAC nucleotide code"),
    "protein": (PROTEIN_LETTERS, "an amino-acid letter"),
}


@dataclass(frozen=True)
class FastaRecord:
    id: str            # first word of the header, as Biopython's record.id
    title: str         # the whole header line without '>'
    sequence: str      # as in the file (case kept), line breaks and spaces removed
    number: int        # 1-based position of the record in the file
    line: int          # line number of its header


def _valid_letter_remover(letters: str) -> dict:
    """A str.translate table deleting the allowed letters in both cases."""
    return str.maketrans("", "", letters + letters.lower())


_REMOVERS = {name: _valid_letter_remover(letters) for name, (letters, _) in _ALPHABETS.items()}


def read_fasta(path: str | os.PathLike, alphabet: str | None = "dna") -> Iterator[FastaRecord]:
    """Stream the records of a plain or gzipped FASTA file, validated.

    ``alphabet`` is ``"dna"`` (IUPAC nucleotide codes), ``"protein"`` (letters)
    or ``None`` (no check of the residues). Lower case is accepted.

    Raises ``InputError`` naming the file (and record) for: a missing, empty or
    non-FASTA file, a residue outside the alphabet, a duplicate record id, a
    header without an id, or a file without any sequence. A record without
    sequence is skipped with a warning.
    """
    path = os.fspath(path)
    remover = _REMOVERS[alphabet] if alphabet else None
    seen: dict[str, tuple[int, int]] = {}
    yielded = 0
    header: tuple[str, int] | None = None
    parts: list[str] = []
    number = 0

    def finish() -> FastaRecord | None:
        title, line = header
        record_id = title.split(None, 1)[0] if title.strip() else ""
        where = f"record {number} (line {line})"
        if not record_id:
            raise InputError(f"{path}: {where} has a header without an id; give every record an id after '>'")
        if record_id in seen:
            first_number, first_line = seen[record_id]
            raise InputError(
                f"{path}: duplicate record id '{record_id}' at record {first_number} (line {first_line}) "
                f"and {where}; record ids must be unique, rename one of them")
        seen[record_id] = (number, line)
        sequence = "".join(parts).replace(" ", "")
        if not sequence:
            logger.warning(f"{path}: record '{record_id}' ({where}) has no sequence; skipped")
            return None
        if remover is not None:
            invalid = sequence.translate(remover)
            if invalid:
                letters, what = _ALPHABETS[alphabet]
                raise InputError(
                    f"{path}: record '{record_id}' ({where}) contains {invalid[0]!r}, which is not {what} "
                    f"({letters}); fix or remove that record")
        return FastaRecord(record_id, title, sequence, number, line)

    try:
        with open_text(path) as handle:
            for line_number, line in enumerate(handle, start=1):
                line = line.strip()
                if not line:
                    continue
                if line.startswith(">"):
                    if header is not None:
                        record = finish()
                        if record is not None:
                            yielded += 1
                            yield record
                    number += 1
                    header = (line[1:].strip(), line_number)
                    parts = []
                elif header is None:
                    raise InputError(
                        f"{path}: not a FASTA file (line {line_number} comes before any '>' header); "
                        "expected records starting with '>id'")
                else:
                    parts.append(line)
    except (UnicodeDecodeError, gzip.BadGzipFile, EOFError, OSError) as error:
        raise InputError(f"{path}: not a readable FASTA text file ({error.__class__.__name__}: {error})") from None
    if header is None:
        raise InputError(f"{path}: the file is empty; expected FASTA records starting with '>id'")
    record = finish()
    if record is not None:
        yielded += 1
        yield record
    if yielded == 0:
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


def _protein(amino_acids: np.ndarray) -> str:
    return amino_acids.tobytes().replace(b"\0", b"").decode("ascii")


def translate_dna(sequence):
    """Six-frame translation (F1-F3, then R1-R3 on the reverse complement).

    Codons holding a base other than upper-case A/C/G/T are skipped, as in the
    published code; stops are kept as '*'.
    """
    return [_protein(frame[0]) for frame in _six_frame_amino_acids([sequence])]


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

    def __len__(self):
        return len(self.proteins)

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
    by_length: dict[int, list[int]] = {}
    for position, (_, sequence) in enumerate(chunks):
        if reference is not None and has_ambiguous_base(sequence):
            continue
        by_length.setdefault(len(sequence), []).append(position)

    kept: dict[int, list[tuple[int, str]]] = {}   # chunk position -> [(frame number, protein)]
    for positions in by_length.values():
        frames = _six_frame_amino_acids([chunks[p][1] for p in positions])
        stop_free = np.stack([~(amino_acids == _STOP).any(axis=1) for amino_acids in frames], axis=1)
        for row in np.flatnonzero(stop_free.any(axis=1)):
            proteins = [(int(f) + 1, _protein(frames[f][row])) for f in np.flatnonzero(stop_free[row])]
            if reference is not None:
                proteins = [(number, protein) for number, protein in proteins if protein in reference]
            if proteins:
                kept[positions[row]] = proteins

    for position in sorted(kept):
        chunk_id, sequence = chunks[position]
        reverse = None
        for number, protein in kept[position]:
            span = 3 * len(protein) + 1
            if number <= 3:
                yield f"{chunk_id}F{number}", sequence[number - 1:number - 1 + span], protein
            else:
                if reverse is None:
                    reverse = reverse_complement(sequence)
                yield f"{chunk_id}R{number - 3}", reverse[number - 4:number - 4 + span], protein


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


def create_refseq_pro_list(gbff_file):
    """Map each GenBank record id to the ``/translation`` of each of its CDS
    features ('' for a CDS without one), as published. Reads plain or gzip."""
    from Bio import SeqIO

    proteins = {}
    with open_text(gbff_file) as handle:
        try:
            for record in SeqIO.parse(handle, "genbank"):
                proteins[record.id] = [feature.qualifiers.get("translation", [""])[0]
                                       for feature in record.features if feature.type == "CDS"]
        except ValueError as error:
            raise InputError(f"{os.fspath(gbff_file)}: not a readable GenBank file ({error})") from None
    return proteins


class IdentifiedWriter:
    """Writes the paired ``identified_nucleotide`` / ``identified_protein``
    FASTA files (one line per sequence, frames with an empty protein left out,
    as published), atomically: both appear only when the block succeeds."""

    def __init__(self, nucleotide_path, protein_path):
        self.paths = (os.fspath(nucleotide_path), os.fspath(protein_path))
        self.frames = 0

    def __enter__(self):
        self._stack = contextlib.ExitStack()
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


def write_identified(chunks: Iterable[tuple[str, str]], nucleotide_file, protein_file,
                     batch_size: int = 4096) -> int:
    """Prediction-mode frame selection: write the stop-free frames of
    ``(chunk_id, upper-case chunk)`` pairs to the identified files, batch by
    batch; return the number of frames written."""
    with IdentifiedWriter(nucleotide_file, protein_file) as writer:
        for batch in batched(chunks, batch_size):
            writer.write(select_frames(batch))
    return writer.frames


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
