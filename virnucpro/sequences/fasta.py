"""FASTA and FASTQ input, validated as it is read, and FASTA output.

Every script reads sequences through ``read_fasta``: a user's mistake in a
file stops with one line naming the file, the record or line and the fix.
"""
from __future__ import annotations

import functools
import io
import itertools
import os
import unicodedata
from typing import Iterator, NamedTuple

from virnucpro.errors import InputError
from virnucpro.files import READ_ERRORS, atomic_write, is_disk_full, open_binary
from virnucpro.log import logger, warn_once

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


class RecordIds:
    """Refuses an id seen before. Keeps a set of the ids' hashes, not the ids
    (about 60 bytes a record instead of 200: flat memory for millions of
    reads); a repeated hash is confirmed, and the first record of that id
    found, by ``locate(id) -> (number, line)``, which reads the file again up
    to it. Without ``locate`` (a pipe, which cannot be read twice) the ids
    themselves are kept. ``what`` names the records in the message."""

    def __init__(self, name: str, locate=None, what: str = "record"):
        self.name, self.locate, self.what = name, locate, what
        self.hashes: set[int] = set()
        self.ids: dict[str, tuple[int, int]] | None = None if locate else {}

    def add(self, record_id: str, number: int, line: int) -> None:
        if self.ids is not None:
            first = self.ids.setdefault(record_id, (number, line))
        elif hash(record_id) in self.hashes:
            first = self.locate(record_id)
        else:
            self.hashes.add(hash(record_id))
            return
        if first != (number, line):
            raise InputError(
                f"{self.name}: duplicate {self.what} id '{record_id}' at {self.what} {first[0]} (line {first[1]}) "
                f"and {self.what} {number} (line {line}); {self.what} ids must be unique, rename one of them")


def _first_record(path: str, name: str, record_id: str) -> tuple[int, int]:
    """(number, header line) of the first record with this id: the one being
    read when its hash matched another id's."""
    lines = _numbered_lines(path, name)
    first = next((number, line) for number, line in lines if line)
    entries = _fastq_entries if first[1].startswith("@") else _fasta_entries
    return next((number, line) for number, (title, line, _)
                in enumerate(entries(name, itertools.chain([first], lines)), start=1)
                if title.split(None, 1)[0] == record_id)


MAX_LINE = 1 << 29        # characters: a longer line is refused before more of it is read


def _numbered_lines(path: str, name: str, tap=None) -> Iterator[tuple[int, str]]:
    """``(line number, stripped line)`` of a text file. Lines may end in LF,
    CRLF or CR (old Mac editors); bytes that are not UTF-8 are reported with
    their line and column; a line is read at most ``MAX_LINE`` characters at
    a time, so a file without line ends cannot fill the memory."""
    with open_binary(path, name, tap) as stream:
        readline = io.TextIOWrapper(stream, encoding="utf-8-sig", errors="surrogateescape", newline=None).readline
        number = 0
        while line := readline(MAX_LINE):
            number += 1
            if not line.isascii():
                _check_utf8(line, name, number)
            if len(line) == MAX_LINE and not line.endswith("\n"):
                raise InputError(f"{name}: line {number} is longer than {MAX_LINE:,} characters; a FASTA or FASTQ "
                                 "file has shorter lines (wrap long sequences, e.g. seqkit seq -w 80)")
            yield number, line.strip()


def _check_utf8(line: str, name: str, number: int) -> None:
    """Refuse a line holding bytes that are not UTF-8 (decoded as lone surrogates), naming the first."""
    bad = next((k for k, char in enumerate(line) if "\udc80" <= char <= "\udcff"), None)
    if bad is not None:
        column = len(line[:bad].encode("utf-8", "surrogateescape")) + 1
        raise InputError(f"{name}: line {number} is not UTF-8 text (byte {ord(line[bad]) - 0xdc00:#04x} at column "
                         f"{column}); save the file as plain UTF-8 or ASCII")


def _fasta_entries(name: str, lines) -> Iterator[tuple[str, int, str]]:
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
            raise InputError(f"{name}: not a FASTA file (line {number} comes before any '>' header); "
                             "expected FASTA records ('>id') or FASTQ records ('@id')")
        else:
            parts.append(line)
    if header is not None:
        yield header, header_line, "".join(parts)


def _fastq_entries(name: str, lines) -> Iterator[tuple[str, int, str]]:
    """``(header, header line number, sequence)`` of FASTQ text: four lines a
    record (``@id``, sequence, ``+``, qualities), blank lines between records."""
    for number, line in lines:
        if not line:
            continue
        where = f"{name}: the FASTQ record at line {number}"
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


def _refuse_control_characters(title: str, name: str, number: int, line: int) -> None:
    """A header holding a control character other than a tab (a NUL, a file separator, ...) is refused:
    such a character ends or splits an id in one tool and not in another."""
    char = next((char for char in title if char != "\t" and unicodedata.category(char) == "Cc"), None)
    if char is not None:
        raise InputError(f"{name}: record {number} (line {line}) has a control character ({ord(char):#04x}) in its "
                         "header; ids and descriptions are printable text: remove it")


def read_fasta(path: str | os.PathLike, alphabet: str | None = "dna", keep_empty: bool = False,
               name: str | None = None, tap=None, unique: bool = True) -> Iterator[FastaRecord]:
    """Stream the records of a FASTA or FASTQ file (told apart by content;
    plain, gzip, bzip2, xz or zstd; ``-`` is standard input), validated.

    ``alphabet`` is ``"dna"`` (IUPAC nucleotide codes), ``"protein"`` (letters)
    or ``None`` (no check of the residues). Lower case is accepted; spaces and
    tabs inside sequence lines, CR line ends and a UTF-8 BOM are dropped. For
    ``"dna"``, U (RNA) is read as T, with one warning per file.

    Raises ``InputError`` naming the file (and record or line) for: a missing,
    empty or non-FASTA/FASTQ file, a damaged compressed file, bytes that are
    not UTF-8, a malformed FASTQ record, a residue outside the alphabet, a
    duplicate record id, a header without an id, or a file without any
    sequence. A record without sequence is skipped with a warning, or yielded
    with ``keep_empty``. Messages call the file ``name`` (default: its path);
    ``tap`` reads its raw bytes through (``files.open_binary``). With
    ``unique=False`` ids may repeat (the mates of an interleaved file).
    """
    path = os.fspath(path)
    name = name or path
    record_ids = RecordIds(name, functools.partial(_first_record, path, name) if os.path.isfile(path) else None) \
        if unique else None
    with_sequence = 0
    rna_seen = False

    def record_of(number: int, title: str, line: int, sequence: str) -> FastaRecord | None:
        nonlocal rna_seen
        if not title.isprintable():
            _refuse_control_characters(title, name, number, line)
        record_id = title.split(None, 1)[0] if title.strip() else ""
        if not record_id:
            raise InputError(f"{name}: record {number} (line {line}) has a header without an id; give every "
                             "record an id after '>'")
        if record_ids is not None:
            record_ids.add(record_id, number, line)
        if " " in sequence or "\t" in sequence:
            sequence = sequence.replace(" ", "").replace("\t", "")
        if not sequence:
            if not keep_empty:
                logger.warning(f"{name}: record '{record_id}' (record {number}, line {line}) has no sequence; "
                               "skipped")
                return None
        elif alphabet is not None:
            invalid = _first_invalid_letter(sequence, alphabet)
            if invalid is not None:
                letters, what = _ALPHABETS[alphabet]
                raise InputError(
                    f"{name}: record '{record_id}' (record {number}, line {line}) contains {invalid!r}, which is "
                    f"not {what} ({letters}); fix or remove that record")
        if alphabet == "dna" and ("U" in sequence or "u" in sequence):
            if not rna_seen:
                warn_once(f"{name}: record '{record_id}' (record {number}, line {line}) holds U (RNA); U is read "
                          "as T in it and in every other record of this file")
                rna_seen = True
            sequence = sequence.replace("U", "T").replace("u", "t")
        return FastaRecord(record_id, title, sequence, number, line)

    try:
        lines = _numbered_lines(path, name, tap)
        first = next(((number, line) for number, line in lines if line), None)
        if first is None:
            raise InputError(f"{name}: the file is empty; expected FASTA records ('>id') or FASTQ records ('@id')")
        entries = _fastq_entries if first[1].startswith("@") else _fasta_entries
        for number, (title, line, sequence) in enumerate(entries(name, itertools.chain([first], lines)), start=1):
            record = record_of(number, title, line, sequence)
            if record is not None:
                with_sequence += bool(record.sequence)
                yield record
    except READ_ERRORS as error:
        if is_disk_full(error):                 # writing a spool of it: the disk's fault, not the file's
            raise
        if isinstance(error, EOFError):
            raise InputError(f"{name}: truncated: it ends inside its compressed data ({error}); copy or "
                             "download it again") from None
        raise InputError(f"{name}: not a readable FASTA/FASTQ file, or a damaged compressed one "
                         f"({error.__class__.__name__}: {error})") from None
    if with_sequence == 0:
        raise InputError(f"{name}: no record has a sequence")


def write_fasta_record(handle, record_id: str, sequence: str, width: int | None = None, start: int = 0,
                       end: int | None = None) -> None:
    """Write one FASTA record: ``sequence[start:end]``; ``width`` wraps it (Biopython writes 60). A chromosome
    is written a block at a time, never copied whole."""
    handle.write(f">{record_id}\n")
    end = len(sequence) if end is None else end
    step = BLOCK - BLOCK % width if width else BLOCK       # whole lines a block
    for first in range(start, end, step):
        part = sequence[first:min(first + step, end)]
        handle.write("".join(f"{part[i:i + width]}\n" for i in range(0, len(part), width)) if width else part)
    if not width:
        handle.write("\n")


BLOCK = 1 << 20         # characters of a sequence copied at a time


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


def write_fasta(path, records) -> str:
    """Write ``(id, sequence)`` records to a FASTA file, one line a sequence; returns the path."""
    with atomic_write(path) as handle:
        for record_id, sequence in records:
            write_fasta_record(handle, record_id, sequence)
    return os.fspath(path)
