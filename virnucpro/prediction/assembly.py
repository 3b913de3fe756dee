"""The assembly: the result files of a run, from its shards' tables and the
input, joined by record id. Each record read again from the input must be the
one the shards scored (same id, length and checksum): an input replaced or
edited during the run stops the assembly with one line, never a summary that
names one record and a hit file that holds another.

The summary, chunk and hit files are written a block of whole records at a
time, in array operations (the chunk and sequence rules of ``calls.py``); a
record continued in the next shard (a long contig) waits for it.
"""
from __future__ import annotations

import collections
import contextlib
import heapq
import shutil
from dataclasses import dataclass
from typing import Iterator

import numpy as np

from virnucpro.errors import InputError
from virnucpro.files import atomic_write
from virnucpro.prediction.inputs import Input
from virnucpro.prediction.outputs import (
    CHUNK_COLUMNS,
    CHUNKS_FILE,
    FRAME_COLUMNS,
    FRAMES_FILE,
    PAIRS_FILE,
    PLOT_FILE,
    PLOTTED_SEQUENCES,
    RESULT_FILES,
    SUMMARY_FILE,
    UNCALIBRATED,
    Hits,
    PairRow,
    SummaryRow,
    header,
    line,
    probability_cells,
    region_cell,
)
from virnucpro.prediction.plots import panel_label, plot_chunk_scores
from virnucpro.prediction.shards import DONE_MARK, checksum, read_columns
from virnucpro.scoring.calibration import Calibration, false_discovery_rates
from virnucpro.scoring.calls import chunk_is_viral, pair_call, sequence_calls, thresholded_call, viral_regions
from virnucpro.sequences.fasta import FastaRecord


@dataclass
class RecordBlock:
    """Consecutive whole records: the columns of their rows of records.tsv
    (input order) and of their chunk rows (none for a record not scored)."""
    records: dict[str, list[str]]
    chunks: dict[str, list[str]]

    def continued_by(self, later: RecordBlock) -> bool:
        """Whether ``later`` begins with more chunks of this block's last record."""
        mine, theirs = self.chunks["record_id"], later.chunks["record_id"]
        return bool(mine and theirs) and theirs[0] == mine[-1]

    def extended(self, later: RecordBlock) -> RecordBlock:
        return RecordBlock(*({name: column + theirs[name] for name, column in mine.items()}
                             for mine, theirs in ((self.records, later.records), (self.chunks, later.chunks))))


def record_blocks(shard_folders: list[str]) -> Iterator[RecordBlock]:
    """The input's records in order, a shard's at a time; a record whose
    chunks go on in the next shard (a long contig) waits for them."""
    pending = None
    for folder in shard_folders:
        block = RecordBlock(read_columns(f"{folder}/records.tsv"), read_columns(f"{folder}/{DONE_MARK}"))
        if pending is not None and pending.continued_by(block):
            pending = pending.extended(block)
            continue
        if pending is not None:
            yield pending
        pending = block
    if pending is not None:
        yield pending


@dataclass
class BlockScores:
    """What the chunk rule (and the calibration) make of a block: per chunk
    row, whether it was scored, is viral, and its probability; per scored
    record (records with chunk rows, in order), its first row, chunks,
    chunks without frames, scored and viral chunks, best viral score (as the
    tables write it), call and probability (NaN when none)."""
    scored: np.ndarray
    viral: np.ndarray
    chunk_probability: np.ndarray
    first: np.ndarray
    chunks: np.ndarray
    without_frames: np.ndarray
    scored_chunks: np.ndarray
    viral_chunks: np.ndarray
    best: np.ndarray
    call: np.ndarray
    probability: np.ndarray


def score_block(block: RecordBlock, calibration: Calibration | None) -> BlockScores:
    """The chunk rule on every record of a block, in array operations: a
    sequence is viral when at least half of its scored chunks are; a chunk is
    viral when its best viral score is at least its best non-viral score."""
    columns = block.chunks
    virus = np.array(columns["best_virus"], dtype=object)
    scored = virus != "NA"
    virus = np.where(scored, virus, "nan").astype(np.float32)
    others = np.where(scored, columns["best_others"], "nan").astype(np.float32)
    viral = scored & chunk_is_viral(virus, others)
    record_ids = np.array(columns["record_id"])
    first = np.flatnonzero(np.r_[True, record_ids[1:] != record_ids[:-1]]) if len(record_ids) else \
        np.empty(0, dtype=np.int64)
    chunks = np.diff(np.r_[first, len(record_ids)])

    def per_record(values):
        return np.add.reduceat(values, first) if len(first) else np.empty(0, dtype=np.int64)

    without_frames = per_record(np.array(columns["frames"]) == "0")
    scored_chunks, viral_chunks = per_record(scored), per_record(viral)
    best = np.fmax.reduceat(virus, first).astype(str) if len(first) else np.empty(0, dtype=str)
    best[scored_chunks == 0] = "NA"
    call = sequence_calls(chunks, without_frames, scored_chunks, viral_chunks)
    chunk_probability = np.full(len(virus), np.nan)
    probability = np.full(len(first), np.nan)
    if calibration is not None:
        chunk_probability[scored] = calibration.chunk_probabilities(virus[scored])
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = per_record(np.where(scored, chunk_probability, 0.0)) / scored_chunks
        probability[scored_chunks > 0] = calibration.sequence_probabilities(mean[scored_chunks > 0])
    return BlockScores(scored, viral, chunk_probability, first, chunks, without_frames, scored_chunks,
                       viral_chunks, best, call, probability)


@dataclass
class Calls:
    """The final calls: the chunk rule's, then, with a calibrated classifier,
    ``--min-score`` and ``--max-fdr`` (virus calls that miss them become
    ``below_threshold``). ``fdr`` holds the FDR of each virus call of the
    chunk rule, by record id."""
    calibration: Calibration | None
    min_score: float | None
    max_fdr: float | None
    fdr: dict[str, float]

    @classmethod
    def of(cls, shard_folders, calibration, min_score, max_fdr) -> Calls:
        """A first pass over the chunk tables: the FDR needs every virus call's probability."""
        if calibration is None:
            return cls(None, min_score, max_fdr, {})
        ids, probabilities = [], []
        for block in record_blocks(shard_folders):
            scores = score_block(block, calibration)
            virus = scores.call == "virus"
            ids += [block.chunks["record_id"][row] for row in scores.first[virus].tolist()]
            probabilities.append(scores.probability[virus])
        rates = false_discovery_rates(np.concatenate([[], *probabilities]))
        return cls(calibration, min_score, max_fdr, dict(zip(ids, rates.tolist())))

    def final(self, record_id: str, call: str, probability: float) -> tuple[str, float | None]:
        """``(call, FDR)`` of one scored sequence."""
        if call != "virus" or not self.calibration:
            return call, None
        fdr = self.fdr[record_id]
        return thresholded_call(call, probability, fdr, self.min_score, self.max_fdr), fdr


def checked_record(sequences: Iterator[FastaRecord], input_name: str, record_id: str, length: str,
                   crc: str) -> FastaRecord:
    """The input's next record, which must be the one the shards scored as ``record_id``."""
    record = next(sequences, None)
    if record is None:
        change = f"it now ends before '{record_id}', which the run scored"
    elif record.id != record_id or str(len(record.sequence)) != length:
        change = (f"record {record.number} is now '{record.id}' ({len(record.sequence)} bp), where the run scored "
                  f"'{record_id}' ({length} bp)")
    elif checksum(record.sequence) != crc:
        change = f"record {record.number}, '{record_id}', now holds another sequence than the one the run scored"
    else:
        return record
    raise InputError(f"{input_name}: the input changed during the run: {change}; run prediction again with "
                     "--overwrite on the input as it is now")


def write_outputs(output_dir: str, source: Input, shard_folders: list[str], calls: Calls, chunk_size: int,
                  min_region: int, plot: bool) -> dict:
    """Assemble the final files from the shards and the input's sequences (each
    file written atomically); returns the run's counts: sequences per call,
    chunks, viral sequences and regions."""
    counted: collections.Counter = collections.Counter()
    chunks = 0
    plotted: list = []                      # a heap of the sequences with the highest viral scores
    calibrated = calls.calibration is not None
    sequences = source.reads()
    pairs = Pairs(output_dir) if source.paired else None
    # every file is renamed into place only once all are complete: a stopped assembly leaves none
    with atomic_write(f"{output_dir}/{FRAMES_FILE}") as frames_out, \
            atomic_write(f"{output_dir}/{CHUNKS_FILE}") as chunks_out, \
            atomic_write(f"{output_dir}/{SUMMARY_FILE}") as summary_out, Hits(output_dir) as hits, \
            pairs or contextlib.nullcontext():
        frames_out.write(header(FRAME_COLUMNS))
        for folder in shard_folders:
            with open(f"{folder}/frames.tsv") as handle:
                shutil.copyfileobj(handle, frames_out)
        chunks_out.write(header(CHUNK_COLUMNS))
        summary_out.write(header(SummaryRow))
        for block in record_blocks(shard_folders):
            scores = score_block(block, calls.calibration)
            chunks_out.writelines(chunk_lines(block, scores, calibrated))
            per_record = list(zip(scores.first.tolist(), scores.chunks.tolist(), scores.without_frames.tolist(),
                                  scores.scored_chunks.tolist(), scores.viral_chunks.tolist(), scores.best.tolist(),
                                  scores.call.tolist(), scores.probability.tolist()))
            scored = {block.chunks["record_id"][row[0]]: row for row in per_record}
            records = block.records
            for record_id, length, skipped, crc in zip(records["record_id"], records["length"], records["skipped"],
                                                       records["checksum"]):
                sequence = checked_record(sequences, source.name, record_id, length, crc)
                if skipped:
                    summary_out.write(line(SummaryRow(record_id, length, 0, 0, 0, "NA", skipped, "NA", "NA", "NA")))
                    counted[skipped] += 1
                    if pairs:
                        pairs.add(record_id, skipped, "NA", 0, 0)
                    continue
                if record_id not in scored:
                    raise InputError(f"{output_dir}/shards: the tables of record '{record_id}' are incomplete; "
                                     "run prediction again with --overwrite")
                first, count, without_frames, scored_chunks, viral, best, call, probability = scored[record_id]
                call, fdr = calls.final(record_id, call, probability)
                best_score = -1.0 if best == "NA" else float(best)
                drawn = plot and (len(plotted) < PLOTTED_SEQUENCES or best_score > plotted[0][0])
                # only sequences with a viral chunk have regions, hit sequences or tracks to draw
                track = chunk_track(block.chunks, scores, first, first + count) if viral or drawn else []
                regions = viral_regions(track, min_region) if viral else []
                summary_out.write(line(SummaryRow(
                    record_id, length, count, without_frames, viral, best, call,
                    *probability_cells(scored_chunks > 0, calibrated, probability, fdr), region_cell(regions))))
                counted[call] += 1
                chunks += count
                if pairs:
                    pairs.add(record_id, call, best, scored_chunks, viral)
                if viral:
                    hits.add(sequence, call, regions)
                if drawn:
                    entry = (best_score, -sequence.number, (sequence.title, len(sequence.sequence), track), regions,
                             panel_label(call, best))
                    (heapq.heappushpop if len(plotted) >= PLOTTED_SEQUENCES else heapq.heappush)(plotted, entry)
        extra = next(sequences, None)
        if extra is not None:
            raise InputError(f"{source.name}: the input changed during the run: record {extra.number}, "
                             f"'{extra.id}', is new; run prediction again with --overwrite on the input as it is now")
    counts = {"sequences": sum(counted.values()), "calls": dict(counted), "chunks": chunks,
              "viral_sequences": hits.viral_sequences, "viral_regions": hits.regions,
              "files": [*RESULT_FILES, *[PAIRS_FILE] * bool(pairs), *[PLOT_FILE] * bool(plot and plotted)]}
    if pairs:
        counts["pairs"], counts["pair_calls"] = pairs.count, dict(pairs.calls)
    if plot and plotted:
        shown = sorted(plotted, reverse=True)
        title = (f"the {len(shown)} of {counts['sequences']} sequences with the highest viral scores"
                 if counts["sequences"] > len(shown) else "")
        plot_chunk_scores([entry[2] for entry in shown], f"{output_dir}/{PLOT_FILE}", chunk_size,
                          [entry[3] for entry in shown], title, [entry[4] for entry in shown])
    return counts


class Pairs:
    """prediction_pairs.tsv of a run of paired reads: a row a pair, from its two mates' rows, written as the
    second mate's is (mates follow each other in the run's order)."""

    def __init__(self, output_dir: str):
        self._file = atomic_write(f"{output_dir}/{PAIRS_FILE}")
        self.first: tuple | None = None
        self.count, self.calls = 0, collections.Counter()

    def __enter__(self):
        self.out = self._file.__enter__()
        self.out.write(header(PairRow))
        return self

    def __exit__(self, *exc_info):
        return self._file.__exit__(*exc_info)

    def add(self, read_id: str, call: str, best: str, scored: int, viral: int) -> None:
        pair, mate = read_id.rsplit("/", 1)
        if mate == "1":
            self.first = (pair, call, best, scored, viral)
            return
        first_pair, first_call, first_best, first_scored, first_viral = self.first
        together = pair_call(first_scored + scored, first_viral + viral, first_call, call)
        self.out.write(line(PairRow(pair, first_call, first_best, call, best, first_scored + scored,
                                    first_viral + viral, together)))
        self.count += 1
        self.calls[together] += 1


def chunk_lines(block: RecordBlock, scores: BlockScores, calibrated: bool) -> list[str]:
    """prediction_results_highestscore.csv lines of a block's scored chunks."""
    rows = np.flatnonzero(scores.scored)
    probabilities = scores.chunk_probability[rows].astype(np.float32).astype(str).tolist() if \
        calibrated else [UNCALIBRATED] * len(rows)
    ids, best = block.chunks["chunk_id"], block.chunks["best_virus"]
    return [f"{ids[row]}\t{viral}\t{best[row]}\t{probability}\n"
            for row, viral, probability in zip(rows.tolist(), scores.viral[rows].tolist(), probabilities)]


def chunk_track(columns: dict[str, list[str]], scores: BlockScores, first: int, end: int
                ) -> list[tuple[int, int, float | None, bool, float | None]]:
    """``(start, end, best viral score or None, viral, margin or None)`` of each chunk of a sequence (rows
    ``first:end``); the margin, best viral less best non-viral score, is what decides the call (viral at 0
    or above)."""
    return [(int(columns["start"][row]), int(columns["end"][row]),
             float(columns["best_virus"][row]) if scores.scored[row] else None, bool(scores.viral[row]),
             float(columns["best_virus"][row]) - float(columns["best_others"][row]) if scores.scored[row] else None)
            for row in range(first, end)]
