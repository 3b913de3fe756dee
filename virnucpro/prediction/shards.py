"""Shards: the input cut into pieces of a fixed number of chunks, each scored
in memory and written as small tables, so that memory stays flat as the input
grows and an interrupted run redoes at most one shard.

A shard's folder (``<output>/shards/000001``) holds ``records.tsv`` (the
records that start in it: id, length, why it was skipped, a checksum of its
sequence), ``frames.tsv`` (each scored frame's class and scores) and
``chunks.tsv`` (each chunk's place and best scores), written last: a shard is
done when its ``chunks.tsv`` exists. The assembly (``assembly.py``) reads them.
"""
from __future__ import annotations

import concurrent.futures
import os
import zlib
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch

from virnucpro.errors import InputError
from virnucpro.files import atomic_write
from virnucpro.models.features import log_failures, save_dna_features, save_merged_features, save_protein_features
from virnucpro.precision import model_precision
from virnucpro.prediction.inputs import Input
from virnucpro.prediction.outputs import SHARDS, deleted_during_the_run
from virnucpro.scoring.calls import frame_classes
from virnucpro.scoring.engine import Engine, Frames, Scores
from virnucpro.sequences.chunks import chunk_ids, chunk_starts
from virnucpro.sequences.fasta import BLOCK, FastaRecord
from virnucpro.sequences.frames import IdentifiedWriter, stop_free_frames

CHUNK_COLUMNS = ["chunk_id", "record_id", "record_length", "start", "end", "frames", "best_others", "best_virus"]
RECORD_COLUMNS = ["record_id", "length", "skipped", "checksum"]     # skipped: "", too_short or no_sequence
DONE_MARK = "chunks.tsv"


def shard_folder(output_dir: str, index: int) -> str:
    return f"{output_dir}/{SHARDS}/{index:06d}"


def is_done(folder: str) -> bool:
    return os.path.exists(f"{folder}/{DONE_MARK}")


def frame_count(shard: Shard) -> int:
    """The frames of a shard: those it scores, or for a shard done before, those its chunk table counts."""
    if shard.frames is not None:
        return len(shard.frames.ids)
    if is_done(shard.folder):
        return sum(map(int, read_columns(f"{shard.folder}/{DONE_MARK}")["frames"]))
    return 0


def checksum(sequence: str) -> str:
    """What the assembly checks a record it reads again against: CRC-32 of its sequence, as it was scored."""
    crc = 0
    for start in range(0, len(sequence), BLOCK):          # a block at a time: a chromosome is not copied whole
        crc = zlib.crc32(sequence[start:start + BLOCK].encode(), crc)
    return f"{crc:08x}"


# ---------------------------------------------------------------- the input in shards
def shards(source: Input, chunk_size: int, chunks_per_shard: int) -> Iterator[tuple[list, int]]:
    """``(pieces, chunk count)`` of ``chunks_per_shard`` chunks each (the last
    one fewer): a piece is ``(record, first chunk, end chunk)``, so that a
    record longer than a shard (a chromosome-sized contig) is spread over
    several and memory stays flat whatever the records' lengths."""
    shard, room = [], chunks_per_shard
    for record in source.reads():
        total, first = len(chunk_starts(len(record.sequence), chunk_size)), 0
        while True:
            taken = min(total - first, room)
            shard.append((record, first, first + taken))
            first, room = first + taken, room - taken
            if room == 0:
                yield shard, chunks_per_shard
                shard, room = [], chunks_per_shard
            if first == total:
                break
    if shard:
        yield shard, chunks_per_shard - room


def skip_reason(record: FastaRecord, min_length: int) -> str:
    if not record.sequence:
        return "no_sequence"
    return "too_short" if len(record.sequence) < min_length else ""


# ---------------------------------------------------------------- host work
@dataclass
class ShardChunks:
    """A shard's chunks as columns: id, its record's id and length, 0-based start and end."""
    ids: list[str] = field(default_factory=list)
    record_ids: list[str] = field(default_factory=list)
    record_lengths: list[int] = field(default_factory=list)
    starts: list[int] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)


def shard_chunks(pieces, chunk_size: int) -> tuple[list[tuple[str, str]], ShardChunks]:
    """``[(chunk_id, upper-case chunk)]`` and the chunk columns of a shard's pieces of scored records."""
    chunks, table = [], ShardChunks()
    for record, first, end in pieces:
        sequence = record.sequence
        starts = chunk_starts(len(sequence), chunk_size)[first:end]
        pieces_of_record = [sequence[start:start + chunk_size].upper() for start in starts]
        ids = chunk_ids(record.id, first, end)
        chunks += zip(ids, pieces_of_record)
        table.ids += ids
        table.record_ids += [record.id] * len(ids)
        table.record_lengths += [len(sequence)] * len(ids)
        table.starts += starts
        table.ends += [start + len(chunk) for start, chunk in zip(starts, pieces_of_record)]
    return chunks, table


@dataclass
class Shard:
    """One shard after its host work: the records that start in it, its
    chunks, its tokenized frames and the chunk of each frame (an index into
    ``chunks``); ``done`` when a previous run finished it, or another process
    of the team scores it."""
    folder: str
    chunk_count: int
    done: bool = False
    records: list = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    chunks: ShardChunks = field(default_factory=ShardChunks)
    frames: Frames | None = None
    frame_chunks: np.ndarray | None = None


def prepare_shard(numbered, output_dir: str, chunk_size: int, min_length: int, scorer: Engine, owns) -> Shard:
    """Host work, run ahead in the background: chunks, stop-free frames (empty
    proteins are not scored), tokens; nothing for a shard that is done or that
    this process does not own (``owns(index)``)."""
    index, (pieces, chunk_count) = numbered
    folder = shard_folder(output_dir, index)
    if is_done(folder) or not owns(index):
        return Shard(folder, chunk_count, done=True)
    records = [record for record, first, _ in pieces if first == 0]
    skipped = [skip_reason(record, min_length) for record in records]
    chunks, table = shard_chunks([piece for piece in pieces if not skip_reason(piece[0], min_length)], chunk_size)
    frames = stop_free_frames(chunks)
    if not all(frames.proteins):            # a chunk under 3 bp has an empty frame: nothing to embed
        frames = frames.take(np.flatnonzero(list(map(bool, frames.proteins))))
    return Shard(folder, chunk_count, False, records, skipped, table,
                 scorer.tokenize(frames.ids, frames.nucleotides, frames.proteins), frames.chunks)


# ---------------------------------------------------------------- device work and the shard's tables
def score_shard(shard: Shard, scorer: Engine, classifier_path: str) -> Scores:
    """Device work: the shard's frames embedded and scored; a classifier whose scores are not finite is
    refused."""
    scores = scorer.score(shard.frames)
    finite = np.isfinite(scores.probabilities).all(axis=1)
    if not finite.all():
        raise InputError(f"{classifier_path}: the classifier gives non-finite scores (first: frame "
                         f"{shard.frames.ids[scores.kept[np.argmin(finite)]]}); the checkpoint is damaged, use "
                         "another one")
    return scores


def write_shard(shard: Shard, scores: Scores, scorer: Engine, keep_intermediate: bool) -> None:
    """The shard's files (and the failures' log); its ``chunks.tsv``, written last, marks it done."""
    folder, frames = shard.folder, shard.frames
    try:
        os.mkdir(folder)
    except FileExistsError:
        pass                                                 # made by a run that stopped before its tables
    except FileNotFoundError:
        raise deleted_during_the_run(os.path.dirname(os.path.dirname(folder))) from None
    with atomic_write(f"{folder}/records.tsv") as out:       # ids hold no white space: no quoting
        out.write("\t".join(RECORD_COLUMNS) + "\n")
        out.writelines(f"{record.id}\t{len(record.sequence)}\t{reason}\t{checksum(record.sequence)}\n"
                       for record, reason in zip(shard.records, shard.skipped))
    for encoder in ("DNABERT-S", scorer.protein_name):
        log_failures([(i, kind, message) for i, which, kind, message in scores.failures if which == encoder],
                     f"{folder} ({encoder})", folder)
    # published: the arg-max class, 'others' on an exact tie; scores as str() of float32, in one array call
    probabilities = scores.probabilities.astype(np.float32)
    with atomic_write(f"{folder}/frames.tsv") as out:
        out.writelines(f"{frames.ids[row]}\t{name}\t{others}\t{virus}\n" for row, name, (others, virus)
                       in zip(scores.kept.tolist(), frame_classes(probabilities).tolist(),
                              probabilities.astype(str).tolist()))
    if keep_intermediate:
        write_intermediates(folder, frames, scores, scorer)
    write_chunk_table(folder, shard, scores.kept, probabilities)


class ShardWriter:
    """Writes shards' files (``write_shard``) in a background thread, one shard after the other, so that the
    device scores the next shard meanwhile; at once in this thread when ``background`` is off (on a CPU,
    whose cores the scoring uses). An error of a write is raised at the next shard, or at the end."""

    def __init__(self, background: bool):
        self.pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="shard-files") if background else None
        self.pending: concurrent.futures.Future | None = None

    def write(self, *arguments) -> None:
        if self.pool is None:
            write_shard(*arguments)
            return
        self.wait()
        self.pending = self.pool.submit(write_shard, *arguments)

    def wait(self) -> None:
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        try:
            if exc_info[0] is None:
                self.wait()
        finally:
            if self.pool is not None:
                self.pool.shutdown(wait=True)       # a write under way ends whole (atomic files) before leaving


def write_intermediates(folder: str, frames: Frames, scores: Scores, scorer: Engine) -> None:
    """--keep-intermediate: the shard's frames and features in the formats of features_extract.py."""
    with IdentifiedWriter(f"{folder}/identified_nucleotide.fa", f"{folder}/identified_protein.faa") as writer:
        writer.write(zip(frames.ids, frames.nucleotides, frames.proteins))
    failed = {(frame_id, encoder) for frame_id, encoder, _, _ in scores.failures}
    dna_rows = [k for k, i in enumerate(frames.ids) if (i, "DNABERT-S") not in failed]
    protein_rows = [k for k, i in enumerate(frames.ids) if (i, scorer.protein_name) not in failed]
    dna, protein = scores.dna[dna_rows].cpu(), scores.protein[protein_rows].cpu()
    save_dna_features([frames.ids[k] for k in dna_rows], dna, scorer.dna_encoder.model, f"{folder}/DNABERT_S.pt")
    save_protein_features([frames.ids[k] for k in protein_rows], protein, scorer.protein_encoder.model,
                          f"{folder}/ESM.pt")
    both = sorted(set(dna_rows) & set(protein_rows))
    precision = {"dna": model_precision(scorer.dna_encoder.model),
                 "protein": model_precision(scorer.protein_encoder.model)}
    merged = torch.cat((scores.dna[both], scores.protein[both]), dim=1).cpu()
    save_merged_features([frames.ids[k] for k in both], merged, f"{folder}/merged.pt", precision)


def write_chunk_table(folder: str, shard: Shard, kept: np.ndarray, probabilities: np.ndarray) -> None:
    """chunks.tsv: each chunk's frames, and its best score of each class over
    its scored frames (NA without one)."""
    table, chunk_count = shard.chunks, len(shard.chunks.ids)
    frames_per_chunk = np.bincount(shard.frame_chunks, minlength=chunk_count)
    scored_chunks = shard.frame_chunks[kept]
    best = np.full((chunk_count, 2), -np.inf, dtype=np.float32)
    np.maximum.at(best, scored_chunks, probabilities)
    cells = best.astype(str)
    cells[np.bincount(scored_chunks, minlength=chunk_count) == 0] = "NA"
    with atomic_write(f"{folder}/{DONE_MARK}") as out:
        out.write("\t".join(CHUNK_COLUMNS) + "\n")
        out.writelines(f"{chunk_id}\t{record_id}\t{length}\t{start}\t{end}\t{count}\t{others}\t{virus}\n"
                       for chunk_id, record_id, length, start, end, count, (others, virus)
                       in zip(table.ids, table.record_ids, table.record_lengths, table.starts, table.ends,
                              frames_per_chunk.tolist(), cells.tolist()))


def read_columns(path: str) -> dict[str, list[str]]:
    """The columns of a shard's table (tab-separated, a header, no quoting)."""
    with open(path) as handle:
        names = handle.readline().rstrip("\n").split("\t")
        rows = [line.rstrip("\n").split("\t") for line in handle]
    return {name: list(column) for name, column in zip(names, zip(*rows))} if rows else {name: [] for name in names}
