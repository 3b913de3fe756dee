#!/usr/bin/env python3
"""Predict which sequences of a FASTA file are viral.

    python prediction.py input.fasta 500 [model_fastesm650_500.pth]

Each sequence is cut into chunks of the model's length (300 or 500 bp), every
stop-free frame of a chunk is embedded with DNABERT-S and the protein model
and scored by the classifier. A chunk is viral when its best viral score is
at least its best non-viral score.

Without a checkpoint, the classifier for the chunk length in the models folder
is used: the FastESM2_650 one installed by train_fastesm.py --install, else
the published ESM2-3B one (scripts/fetch_models.py fetches it and the models).

Input: FASTA or FASTQ, plain or compressed (gzip, bzip2, xz). Sequences
shorter than --min-length are not scored (reported as too_short); U is read
as T.

Outputs, in the output folder (default: <input without extension>_merged/):
  prediction_results.txt               per frame: Sequence_ID, Prediction, score1, score2
  prediction_results_highestscore.csv  per chunk: Modified_ID, Is_Virus (tab-separated, as published),
                                       Viral_score (best viral score), Viral_probability
  prediction_summary.tsv               per input sequence: length, chunks, chunks without a
                                       stop-free frame, viral chunks, best viral score, call
                                       (virus, others, below_threshold, or why it was not
                                       scored: no_frames, not_scored, too_short, no_sequence),
                                       Viral_probability and FDR
  viral_regions.tsv                    per viral region: sequence, 1-based start and end, length,
                                       chunks, mean and max of the chunks' best viral scores
  viral_regions.bed                    the same regions as BED (0-based start), name seq|start-end
  viral_regions.fna                    the regions' sequences, ids seq|start-end
  viral_sequences.fna                  the whole sequences called viral
  prediction.png                       with --plot: chunk scores and viral regions along the
                                       sequences with the highest viral scores
  run.json                             the settings, the run's state, its counts and thresholds

A sequence is called viral when at least half of its scored chunks are.
With a calibrated classifier (scripts/evaluate_compare.py writes
<classifier>.calibration.json beside it), Viral_probability is the
probability of being viral learnt on labelled validation sequences, and FDR
is the expected share of false calls among the virus calls whose probability
is at least this one's; --min-score and --max-fdr then filter the virus calls.
Without one, both columns say "uncalibrated".

A viral region is a run of viral chunks along a sequence, gaps of one chunk
(not viral, or without a stop-free frame) bridged, from its first chunk's
start to its last chunk's end; regions shorter than --min-region (default:
the chunk length) are left out. A sequence viral end to end is one region.

The input is processed in shards of --chunks-per-shard chunks (a long record
spread over several), so memory stays flat as the input grows; each shard is
embedded and scored in memory, and on a GPU the next shard's frames and tokens
are prepared in a background thread meanwhile. An interrupted run, re-run with the same arguments, resumes
at the first unfinished shard and ends with the same outputs. A finished run
is not redone (--overwrite starts over); one run at a time writes into an
output folder.

Several GPUs or machines: under torchrun (--nproc-per-node, --nnodes) or as
a SLURM array (sbatch --array=0-7 for 8 tasks), process k of N scores shards
k+1, k+1+N, ...; the results are assembled once, by process 0 of torchrun or
by the last array task to finish.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import hashlib
import heapq
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np

import engine
import units

FASTA_SUFFIXES = (".fasta", ".fa", ".fna", ".fas", ".fsa", ".ffn", ".seq", ".txt")
HIT_FILES = ("viral_regions.tsv", "viral_regions.bed", "viral_regions.fna", "viral_sequences.fna")
RESULT_FILES = ("prediction_results.txt", "prediction_results_highestscore.csv", "prediction_summary.tsv",
                *HIT_FILES)
REGION_COLUMNS = ["sequence_id", "start", "end", "length", "chunks", "mean_score", "max_score"]
FASTA_WIDTH = 80
RUN_FILE = "run.json"
PLOT_FILE = "prediction.png"
SPOOL_FILE = ".input.spool"          # input read from a pipe, while the run lasts
CHUNK_COLUMNS = ["chunk_id", "record_id", "record_length", "start", "end", "frames", "best_others", "best_virus"]
RECORD_COLUMNS = ["record_id", "length", "skipped"]     # skipped: "", too_short or no_sequence
SUMMARY_HEADER = ("Sequence_ID\tLength\tChunks\tChunks_without_frames\tViral_chunks\tBest_viral_score\tCall\t"
                  "Viral_probability\tFDR\n")
CHUNK_HEADER = "Modified_ID\tIs_Virus\tViral_score\tViral_probability\n"
UNCALIBRATED = "uncalibrated"
PLOTTED_SEQUENCES = 20


def default_output_dir(input_fasta: str) -> str:
    """``reads.fasta(.gz)`` -> ``reads_merged`` beside it, as published."""
    if os.path.exists(input_fasta) and not os.path.isfile(input_fasta) and not os.path.isdir(input_fasta):
        raise units.InputError(f"{input_fasta}: input from a pipe needs an output folder; give -o")
    stem = input_fasta[:-3] if input_fasta.endswith(".gz") else input_fasta
    for suffix in FASTA_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[:-len(suffix)]
            break
    return stem + "_merged"


def format_score(value) -> str:
    """As published: ``str`` of a float32 probability."""
    return str(np.float32(value))


# ---------------------------------------------------------------- input in shards
def shards(input_fasta: str, chunk_size: int, chunks_per_shard: int):
    """``(pieces, chunk count)`` of ``chunks_per_shard`` chunks each (the last
    one fewer): a piece is ``(record, first chunk, end chunk)``, so that a
    record longer than a shard (a chromosome-sized contig) is spread over
    several and memory stays flat whatever the records' lengths."""
    shard, room = [], chunks_per_shard
    for record in units.read_fasta(input_fasta, alphabet="dna", keep_empty=True):
        total, first = len(units.chunk_starts(len(record.sequence), chunk_size)), 0
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


def count_chunks(input_fasta: str, chunk_size: int) -> tuple[int, int]:
    """Read (and validate) the whole input once: ``(records, chunks)``."""
    records = chunks = 0
    for record in units.read_fasta(input_fasta, alphabet="dna", keep_empty=True):
        records += 1
        chunks += len(units.chunk_starts(len(record.sequence), chunk_size))
    return records, chunks


# ---------------------------------------------------------------- one shard
def skip_reason(record, min_length: int) -> str:
    if not record.sequence:
        return "no_sequence"
    return "too_short" if len(record.sequence) < min_length else ""


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
        starts = units.chunk_starts(len(sequence), chunk_size)[first:end]
        pieces_of_record = [sequence[start:start + chunk_size].upper() for start in starts]
        ids = [f"{record.id}_chunk_{k}" for k in range(first + 1, end + 1)]
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
    ``chunks``); ``done`` when a previous run finished it."""
    folder: str
    chunk_count: int
    done: bool = False
    records: list = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    chunks: ShardChunks = field(default_factory=ShardChunks)
    frames: engine.Frames | None = None
    frame_chunks: np.ndarray | None = None


def prepare_shard(numbered, output_dir: str, chunk_size: int, min_length: int, scorer: engine.Engine,
                  team: Team) -> Shard:
    """Host work, run ahead in the background: chunks, stop-free frames (empty
    proteins are not scored), tokens; nothing for a shard another process of
    the team scores."""
    index, (pieces, chunk_count) = numbered
    folder = f"{output_dir}/shards/{index:06d}"
    if os.path.exists(f"{folder}/chunks.tsv") or not team.owns(index):
        return Shard(folder, chunk_count, done=True)
    records = [record for record, first, _ in pieces if first == 0]
    skipped = [skip_reason(record, min_length) for record in records]
    chunks, table = shard_chunks([piece for piece in pieces if not skip_reason(piece[0], min_length)], chunk_size)
    frames = units.stop_free_frames(chunks)
    if not all(frames.proteins):            # a chunk under 3 bp has an empty frame: nothing to embed
        frames = frames.take(np.flatnonzero(list(map(bool, frames.proteins))))
    return Shard(folder, chunk_count, False, records, skipped, table,
                 scorer.tokenize(frames.ids, frames.nucleotides, frames.proteins), frames.chunks)


def write_intermediates(folder: str, frames: engine.Frames, scores: engine.Scores, scorer: engine.Engine) -> None:
    """--keep-intermediate: the shard's frames and features in the formats of features_extract.py."""
    with units.IdentifiedWriter(f"{folder}/identified_nucleotide.fa", f"{folder}/identified_protein.faa") as writer:
        writer.write(zip(frames.ids, frames.nucleotides, frames.proteins))
    failed = {(frame_id, encoder) for frame_id, encoder, _, _ in scores.failures}
    dna_rows = [k for k, i in enumerate(frames.ids) if (i, "DNABERT-S") not in failed]
    protein_rows = [k for k, i in enumerate(frames.ids) if (i, scorer.protein_name) not in failed]
    units.save_dna_features([frames.ids[k] for k in dna_rows], scores.dna[dna_rows].cpu(), scorer.dna_encoder.model,
                            f"{folder}/DNABERT_S.pt")
    units.save_protein_features([frames.ids[k] for k in protein_rows], scores.protein[protein_rows].cpu(),
                                scorer.protein_encoder.model, f"{folder}/ESM.pt")
    units.merge_data(f"{folder}/DNABERT_S.pt", f"{folder}/ESM.pt", f"{folder}/merged.pt",
                     protein_dim=scorer.protein_encoder.width)


def score_shard(shard: Shard, scorer: engine.Engine, classifier_path: str, keep_intermediate: bool) -> None:
    """Device work and the shard's files; its ``chunks.tsv`` (written last) marks it done."""
    folder = shard.folder
    os.makedirs(folder, exist_ok=True)
    with units.atomic_write(f"{folder}/records.tsv") as out:       # ids hold no white space: no quoting
        out.write("\t".join(RECORD_COLUMNS) + "\n")
        out.writelines(f"{record.id}\t{len(record.sequence)}\t{reason}\n"
                       for record, reason in zip(shard.records, shard.skipped))
    frames = shard.frames
    scores = scorer.score(frames)
    for encoder in ("DNABERT-S", scorer.protein_name):
        units.log_failures([(i, kind, message) for i, which, kind, message in scores.failures if which == encoder],
                           f"{folder} ({encoder})", folder)
    finite = np.isfinite(scores.probabilities).all(axis=1)
    if not finite.all():
        raise units.InputError(f"{classifier_path}: the classifier gives non-finite scores (first: frame "
                               f"{frames.ids[scores.kept[np.argmin(finite)]]}); the checkpoint is damaged, use "
                               "another one")
    # published: the arg-max class, 'others' on an exact tie; scores as str() of float32, in one array call
    probabilities = scores.probabilities.astype(np.float32)
    classes = np.where(probabilities[:, 1] > probabilities[:, 0], "virus", "others")
    with units.atomic_write(f"{folder}/frames.tsv") as out:
        out.writelines(f"{frames.ids[row]}\t{name}\t{others}\t{virus}\n" for row, name, (others, virus)
                       in zip(scores.kept.tolist(), classes.tolist(), probabilities.astype(str).tolist()))
    if keep_intermediate:
        write_intermediates(folder, frames, scores, scorer)
    write_chunk_table(folder, shard, scores.kept, probabilities)


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
    with units.atomic_write(f"{folder}/chunks.tsv") as out:
        out.write("\t".join(CHUNK_COLUMNS) + "\n")
        out.writelines(f"{chunk_id}\t{record_id}\t{length}\t{start}\t{end}\t{count}\t{others}\t{virus}\n"
                       for chunk_id, record_id, length, start, end, count, (others, virus)
                       in zip(table.ids, table.record_ids, table.record_lengths, table.starts, table.ends,
                              frames_per_chunk.tolist(), cells.tolist()))


# ---------------------------------------------------------------- final outputs
def read_columns(path: str) -> dict[str, list[str]]:
    """The columns of a shard's table (tab-separated, a header, no quoting)."""
    with open(path) as handle:
        names = handle.readline().rstrip("\n").split("\t")
        rows = [line.rstrip("\n").split("\t") for line in handle]
    return {name: list(column) for name, column in zip(names, zip(*rows))} if rows else {name: [] for name in names}


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
        block = RecordBlock(read_columns(f"{folder}/records.tsv"), read_columns(f"{folder}/chunks.tsv"))
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


def score_block(block: RecordBlock, calibration: units.Calibration | None) -> BlockScores:
    """The chunk rule on every record of a block, in array operations: a
    sequence is viral when at least half of its scored chunks are; a chunk is
    viral when its best viral score is at least its best non-viral score."""
    columns = block.chunks
    virus = np.array(columns["best_virus"], dtype=object)
    scored = virus != "NA"
    virus = np.where(scored, virus, "nan").astype(np.float32)
    others = np.where(scored, columns["best_others"], "nan").astype(np.float32)
    viral = scored & (virus >= others)
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
    call = np.where(2 * viral_chunks >= scored_chunks, "virus", "others").astype(object)
    call[scored_chunks == 0] = np.where(without_frames == chunks, "no_frames", "not_scored")[scored_chunks == 0]
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
    chunk rule, in input order."""
    calibration: units.Calibration | None
    min_score: float | None
    max_fdr: float | None
    fdr: np.ndarray
    taken: int = 0

    @classmethod
    def of(cls, shard_folders, calibration, min_score, max_fdr) -> Calls:
        """A first pass over the chunk tables: the FDR needs every virus call's probability."""
        if calibration is None:
            return cls(None, min_score, max_fdr, np.empty(0))
        blocks = (score_block(block, calibration) for block in record_blocks(shard_folders))
        probabilities = np.concatenate([[], *(scores.probability[scores.call == "virus"] for scores in blocks)])
        return cls(calibration, min_score, max_fdr, units.false_discovery_rates(probabilities))

    def final(self, call: str, probability: float) -> tuple[str, float | None]:
        """``(call, FDR)`` of one scored sequence, taken in input order."""
        if call != "virus" or not self.calibration:
            return call, None
        fdr = float(self.fdr[self.taken])
        self.taken += 1
        missed = ((self.min_score is not None and probability < self.min_score)
                  or (self.max_fdr is not None and fdr > self.max_fdr))
        return ("below_threshold" if missed else call), fdr


def probability_cells(scored: bool, calibrated: bool, probability: float | None, fdr: float | None) -> str:
    """The Viral_probability and FDR cells: NA where there is nothing to
    score (FDR: for virus calls only), ``uncalibrated`` without a calibration."""
    if not scored:
        return "NA\tNA"
    if not calibrated:
        return f"{UNCALIBRATED}\t{UNCALIBRATED}"
    return f"{format_score(probability)}\t{'NA' if fdr is None else format_score(fdr)}"


class Hits:
    """The files of what was called viral: regions (TSV, BED, FASTA) and whole viral sequences (FASTA)."""

    def __init__(self, output_dir: str):
        self._stack = contextlib.ExitStack()
        self.tsv, self.bed, self.regions_fasta, self.sequences_fasta = (
            self._stack.enter_context(units.atomic_write(f"{output_dir}/{name}")) for name in HIT_FILES)
        self.tsv.write("\t".join(REGION_COLUMNS) + "\n")
        self.regions = self.viral_sequences = 0

    def add(self, record: units.FastaRecord, call: str, regions: list[units.ViralRegion]) -> None:
        if call == "virus":
            units.write_fasta_record(self.sequences_fasta, record.id, record.sequence, width=FASTA_WIDTH)
            self.viral_sequences += 1
        for region in regions:
            name = f"{record.id}|{region.start}-{region.end}"
            self.tsv.write(f"{record.id}\t{region.start}\t{region.end}\t{region.length}\t{region.chunks}\t"
                           f"{region.mean_score:.4f}\t{region.max_score:.4f}\n")
            self.bed.write(f"{record.id}\t{region.start - 1}\t{region.end}\t{name}\t"
                           f"{round(region.mean_score * 1000)}\t.\n")
            units.write_fasta_record(self.regions_fasta, name, record.sequence[region.start - 1:region.end],
                                     width=FASTA_WIDTH)
            self.regions += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return self._stack.__exit__(*exc_info)





def write_outputs(output_dir: str, input_path: str, shard_folders: list[str], calls: Calls, chunk_size: int,
                  min_region: int, plot: bool) -> dict:
    """Assemble the final files from the shards and the input's sequences (each
    file written atomically); returns the run's counts: sequences per call,
    chunks, viral sequences and regions."""
    counted: collections.Counter = collections.Counter()
    chunks = 0
    plotted: list = []                      # a heap of the sequences with the highest viral scores
    calibrated = calls.calibration is not None
    with units.atomic_write(f"{output_dir}/prediction_results.txt") as frames_out:
        frames_out.write("Sequence_ID\tPrediction\tscore1\tscore2\n")
        for folder in shard_folders:
            with open(f"{folder}/frames.tsv") as handle:
                shutil.copyfileobj(handle, frames_out)
    sequences = units.read_fasta(input_path, alphabet="dna", keep_empty=True)
    with units.atomic_write(f"{output_dir}/prediction_results_highestscore.csv") as chunks_out, \
            units.atomic_write(f"{output_dir}/prediction_summary.tsv") as summary_out, Hits(output_dir) as hits:
        chunks_out.write(CHUNK_HEADER)
        summary_out.write(SUMMARY_HEADER)
        for block in record_blocks(shard_folders):
            scores = score_block(block, calls.calibration)
            chunks_out.writelines(chunk_lines(block, scores, calibrated))
            scored_records = zip(scores.first.tolist(), scores.chunks.tolist(), scores.without_frames.tolist(),
                                 scores.scored_chunks.tolist(), scores.viral_chunks.tolist(), scores.best.tolist(),
                                 scores.call.tolist(), scores.probability.tolist())
            records = block.records
            for record_id, length, skipped in zip(records["record_id"], records["length"], records["skipped"]):
                sequence = next(sequences)
                if skipped:
                    summary_out.write(f"{record_id}\t{length}\t0\t0\t0\tNA\t{skipped}\tNA\tNA\n")
                    counted[skipped] += 1
                    continue
                first, count, without_frames, scored, viral, best, call, probability = next(scored_records)
                call, fdr = calls.final(call, probability)
                summary_out.write(f"{record_id}\t{length}\t{count}\t{without_frames}\t{viral}\t"
                                  f"{best}\t{call}\t{probability_cells(scored > 0, calibrated, probability, fdr)}\n")
                counted[call] += 1
                chunks += count
                best_score = -1.0 if best == "NA" else float(best)
                drawn = plot and (len(plotted) < PLOTTED_SEQUENCES or best_score > plotted[0][0])
                if viral == 0 and not drawn:
                    continue                # nothing to draw or to write to the hit files
                track = chunk_track(block.chunks, scores, first, first + count)
                regions = units.viral_regions(track, min_region)
                hits.add(sequence, call, regions)
                if drawn:
                    entry = (best_score, -sequence.number, (record_id, len(sequence.sequence), track), regions)
                    (heapq.heappushpop if len(plotted) >= PLOTTED_SEQUENCES else heapq.heappush)(plotted, entry)
    counts = {"sequences": sum(counted.values()), "calls": dict(counted), "chunks": chunks,
              "viral_sequences": hits.viral_sequences, "viral_regions": hits.regions}
    if plot and plotted:
        shown = sorted(plotted, reverse=True)
        title = (f"the {len(shown)} of {counts['sequences']} sequences with the highest viral scores"
                 if counts["sequences"] > len(shown) else "")
        units.plot_chunk_scores([entry[2] for entry in shown], f"{output_dir}/{PLOT_FILE}", chunk_size,
                                [entry[3] for entry in shown], title)
    return counts


def chunk_lines(block: RecordBlock, scores: BlockScores, calibrated: bool) -> list[str]:
    """prediction_results_highestscore.csv lines of a block's scored chunks."""
    rows = np.flatnonzero(scores.scored)
    probabilities = scores.chunk_probability[rows].astype(np.float32).astype(str).tolist() if \
        calibrated else [UNCALIBRATED] * len(rows)
    ids, best = block.chunks["chunk_id"], block.chunks["best_virus"]
    return [f"{ids[row]}\t{viral}\t{best[row]}\t{probability}\n"
            for row, viral, probability in zip(rows.tolist(), scores.viral[rows].tolist(), probabilities)]


def chunk_track(columns: dict[str, list[str]], scores: BlockScores, first: int, end: int
                ) -> list[tuple[int, int, float | None, bool]]:
    """``(start, end, best viral score or None, viral)`` of each chunk of a sequence (rows ``first:end``)."""
    return [(int(columns["start"][row]), int(columns["end"][row]),
             float(columns["best_virus"][row]) if scores.scored[row] else None, bool(scores.viral[row]))
            for row in range(first, end)]


def report(counts: dict, min_length: int, output_dir: str) -> str:
    """The run's last line: how many sequences got each call, and the viral regions."""
    calls = counts["calls"]
    reasons = (("no_frames", "without a stop-free frame"), ("not_scored", "whose frames all failed to embed"),
               ("too_short", f"shorter than {min_length} bp"), ("no_sequence", "without sequence"))
    skipped = [f"{calls[call]} {words}" for call, words in reasons if calls.get(call)]
    below = calls.get("below_threshold", 0)
    return (f"{sum(calls.values())} sequences: {calls.get('virus', 0)} called viral, {calls.get('others', 0)} not"
            + (f", {below} viral by the chunk rule but below --min-score or over --max-fdr" if below else "")
            + f"; {counts['viral_regions']} viral regions"
            + (f"; not scored: {', '.join(skipped)} (listed in prediction_summary.tsv)" if skipped else "")
            + f"; results in {output_dir}/")


# ---------------------------------------------------------------- run
@dataclass
class Team:
    """The processes of one run; process k of N scores shards k+1, k+1+N, ...
    One process alone is a team of one.

    Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK; --nnodes for several
    machines) the processes run together, on GPU LOCAL_RANK: process 0 holds
    the output folder, checks the input and the folder first and assembles
    the final files once every process has scored its shards. In a SLURM
    array (SLURM_ARRAY_TASK_ID, SLURM_ARRAY_TASK_COUNT) each task runs
    whenever the scheduler starts it: it checks for itself, holds the folder
    only to set the run up and to assemble, and the last task to finish
    assembles."""
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    array: bool = False

    @classmethod
    def from_environment(cls) -> Team:
        env = os.environ
        if int(env.get("WORLD_SIZE", 1)) > 1:
            return cls(int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0)))
        if int(env.get("SLURM_ARRAY_TASK_COUNT", 1)) > 1:
            world = int(env["SLURM_ARRAY_TASK_COUNT"])
            rank = int(env["SLURM_ARRAY_TASK_ID"]) - int(env.get("SLURM_ARRAY_TASK_MIN", 0))
            if not 0 <= rank < world:
                raise units.InputError(f"SLURM array task {env['SLURM_ARRAY_TASK_ID']} is not one of {world} "
                                       "consecutive tasks; give the array as one range, e.g. --array=0-7")
            return cls(rank, world, array=True)
        return cls()

    @property
    def together(self) -> bool:
        """Whether the processes run together (torchrun), so that they can wait for each other."""
        return self.world > 1 and not self.array

    @property
    def leads(self) -> bool:
        """Whether this process checks the input and the folder, and reports."""
        return self.rank == 0 or self.array

    def __enter__(self):
        if self.together:
            import datetime

            import torch.distributed
            # gloo: barriers and small objects only, on CPUs and GPUs alike; ranks may wait hours for each other
            torch.distributed.init_process_group("gloo", timeout=datetime.timedelta(days=7))
        return self

    def __exit__(self, *exc_info):
        if self.together:
            import torch.distributed
            torch.distributed.destroy_process_group()

    def owns(self, shard_index: int) -> bool:
        return (shard_index - 1) % self.world == self.rank

    def barrier(self) -> None:
        if self.together:
            import torch.distributed
            torch.distributed.barrier()

    def share(self, value):
        """Process 0's ``value``, in every process of a torchrun team."""
        if not self.together:
            return value
        import torch.distributed
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    def holding(self, output_dir: str):
        """The output folder's lock, for an array task (waited for, as its siblings take it too); process 0
        of any other team holds it for the whole run."""
        return units.folder_lock(output_dir, wait=True) if self.array else contextlib.nullcontext()

    def device(self, requested: str):
        device = units.resolve_device(requested)
        return units.resolve_device(f"cuda:{self.local_rank}") if device.type == "cuda" and self.together and \
            device.index is None else device


def warn_on_precision_change(model_path: str, metadata: dict, scorer: engine.Engine) -> None:
    """Warn when the classifier was trained on features of other encoder dtypes than this run's."""
    trained = metadata.get("encoder_precision")
    running = {"dna": units.model_precision(scorer.dna_encoder.model),
               "protein": units.model_precision(scorer.protein_encoder.model)}
    if trained and trained != running:
        units.logger.warning(
            f"{model_path}: trained on features of DNABERT-S in {trained['dna']} and the protein model in "
            f"{trained['protein']}; this run embeds in {running['dna']} and {running['protein']}, so scores may "
            "differ slightly from those of the training precision")


def run_settings(args, input_identity: dict, dna_folder: str, protein_folder: str, calibrated: bool) -> dict:
    """What the results depend on, by content; a resumed run must match it."""
    calibration = units.calibration_path(args.model_path)
    return {"input": input_identity, "chunk_length": args.expect_length, "min_length": args.min_length,
            "min_region": args.min_region, "min_score": args.min_score, "max_fdr": args.max_fdr,
            "calibration": {"path": os.path.abspath(calibration), "sha256": units.file_sha256(calibration)}
            if calibrated else None,
            "classifier": {"path": os.path.abspath(args.model_path), "sha256": units.file_sha256(args.model_path)},
            "pipeline": args.pipeline, "dna_model": units.model_fingerprint(dna_folder),
            "protein_model": units.model_fingerprint(protein_folder), "chunks_per_shard": args.chunks_per_shard}


@contextlib.contextmanager
def readable_input(path: str, output_dir: str):
    """``(path to read, what identifies its content)``. A regular file is read
    in place (identified by path, size and modification time); a pipe or a
    process substitution, which can be read only once, is copied into the
    output folder (identified by its SHA-256) and removed at the end."""
    spool = os.path.join(output_dir, SPOOL_FILE)
    with contextlib.suppress(FileNotFoundError):
        os.remove(spool)                # left by a run that was killed; this process holds the folder now
    if os.path.isfile(path):
        stat = os.stat(path)
        yield path, {"path": os.path.abspath(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        return
    digest = hashlib.sha256()
    try:
        with units.open_raw(path) as source, open(spool, "wb") as copy:
            for block in iter(lambda: source.read(1 << 20), b""):
                digest.update(block)
                copy.write(block)
        yield spool, {"stream_sha256": digest.hexdigest()}
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(spool)


def check_writable(output_dir: str) -> None:
    """Stop at once, before any work, when the results could not be written."""
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise units.InputError(f"-o {output_dir}: is a file, not a folder; give a folder for the results")
    existing = os.path.abspath(output_dir)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    try:
        if not os.path.isdir(existing):
            raise NotADirectoryError(f"{existing} is a file")
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        reason = error.strerror or str(error)
        raise units.InputError(f"{output_dir}: the results cannot be written there ({existing}: {reason}); "
                               "give -o a folder you can write to") from None


def read_run(output_dir: str) -> dict | None:
    path = f"{output_dir}/{RUN_FILE}"
    try:
        with open(path) as handle:
            run = json.load(handle)
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        run = None
    if not isinstance(run, dict) or not isinstance(run.get("settings"), dict):
        raise units.InputError(f"{path}: damaged, or written by another version of prediction.py; "
                               "give another -o, or --overwrite to start over in that folder")
    return run


def run_state(output_dir: str, settings: dict, overwrite: bool) -> str:
    """``new``, ``resume`` or ``complete``. A folder holding another run or
    files of something else is refused, unless ``overwrite`` (then ``new``)."""
    if not os.path.isdir(output_dir) or overwrite:
        return "new"
    run = read_run(output_dir)
    if run is None:
        others = sorted(set(os.listdir(output_dir)) - {units.LOCK_FILE, SPOOL_FILE})
        if others:
            raise units.InputError(f"{output_dir} holds files but no prediction run of this tool "
                                   f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); give another "
                                   "-o, or --overwrite to replace its result files")
        return "new"
    if run["settings"] != settings:
        changed = sorted(key for key in settings if run["settings"].get(key) != settings[key])
        raise units.InputError(f"{output_dir} holds a run with other settings ({', '.join(changed)}); give "
                               "another -o, or --overwrite to start over in that folder")
    finished = all(os.path.exists(f"{output_dir}/{name}") for name in RESULT_FILES)
    if run.get("status") == "complete":
        return "complete" if finished else "new"
    return "resume"


def write_run(output_dir: str, settings: dict, status: str, counts: dict | None = None) -> None:
    """run.json: the settings, the state, and once complete the counts (sequences per call, chunks, viral
    sequences, regions) and the thresholds that made them."""
    thresholds = {key: settings[key] for key in ("min_length", "min_region", "min_score", "max_fdr")}
    thresholds["scores"] = "calibrated" if settings["calibration"] else UNCALIBRATED
    with units.atomic_write(f"{output_dir}/{RUN_FILE}") as handle:
        json.dump({"settings": settings, "status": status, **(counts or {"calls": {}}), "thresholds": thresholds},
                  handle, indent=1)


def start_over(output_dir: str) -> None:
    """Remove what a previous run left, so that no old result outlives a new run."""
    shutil.rmtree(f"{output_dir}/shards", ignore_errors=True)
    for name in (*RESULT_FILES, PLOT_FILE, RUN_FILE):
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{output_dir}/{name}")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input_fasta", help="FASTA or FASTQ file of reads or contigs (plain, gzip, bzip2 or xz)")
    parser.add_argument("expect_length", type=int, choices=(300, 500), help="chunk length of the model: 300 or 500")
    parser.add_argument("model_path", nargs="?",
                        help="classifier checkpoint (.pth); default: the one installed in the models folder for "
                             "this chunk length (FastESM2_650 if installed, else the published ESM2-3B one)")
    parser.add_argument("--models-dir", help=f"models folder (default: ${units.MODELS_ENV}, else "
                                             f"{units.DEFAULT_MODELS_DIR})")
    parser.add_argument("-o", "--output-dir", help="output folder (default: <input without extension>_merged)")
    parser.add_argument("--min-length", type=int,
                        help="shortest sequence scored, in bp (default: half the chunk length, 150 or 250); "
                             "shorter ones are listed as too_short")
    parser.add_argument("--min-region", type=int,
                        help="shortest viral region reported, in bp (default: the chunk length)")
    parser.add_argument("--min-score", type=float,
                        help="a sequence the chunk rule calls viral stays a virus call only when its calibrated "
                             "Viral_probability is at least this (0-1; needs a calibrated classifier); "
                             "else its call is below_threshold")
    parser.add_argument("--max-fdr", type=float,
                        help="keep as virus calls only those with an FDR of at most this (0-1; needs a calibrated "
                             "classifier), e.g. 0.05; the others are called below_threshold")
    parser.add_argument("--uncalibrated", action="store_true",
                        help="ignore the classifier's calibration: the raw scores only (evaluation uses this)")
    parser.add_argument("--pipeline", choices=sorted(units.PIPELINES),
                        help="embedding pipeline (default: the one the checkpoint was trained for; "
                             "esm2_3b runs the published baseline and its 300_model.pth / 500_model.pth)")
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default: GPU if any)")
    parser.add_argument("--dna-model", help=f"DNABERT-S: Hugging Face id or local folder "
                                            f"(default {units.DNABERT_S.hub_id})")
    parser.add_argument("--protein-model", help="protein model: Hugging Face id or local folder (default "
                                                f"{units.FASTESM2_650.hub_id}, or {units.ESM2_3B.hub_id} for esm2_3b)")
    parser.add_argument("--dna-batch-tokens", type=int, default=units.DNA_TOKS_PER_BATCH,
                        help="DNABERT-S tokens per batch (default %(default)s; batches that run out of "
                             "GPU memory are split)")
    parser.add_argument("--protein-batch-tokens", type=int, default=16384,
                        help="protein-model tokens per batch (default %(default)s)")
    parser.add_argument("--chunks-per-shard", type=int, default=10000,
                        help="chunks processed together; bounds memory and the work redone on resume "
                             "(default %(default)s)")
    parser.add_argument("--keep-intermediate", action="store_true",
                        help="keep each shard's tables, frame FASTA files and feature files (the formats of "
                             "features_extract.py) under <output>/shards/")
    parser.add_argument("--plot", action="store_true",
                        help=f"also draw prediction.png: chunk scores and viral regions along the {PLOTTED_SEQUENCES} "
                             "sequences with the highest viral scores")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over: redo a finished run, replace a run of other settings or the result "
                             "files of something else in the output folder")
    args = parser.parse_args(argv)
    for option in ("dna_batch_tokens", "protein_batch_tokens", "chunks_per_shard"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    if args.min_region is None:
        args.min_region = args.expect_length
    elif args.min_region < 1:
        parser.error("--min-region must be at least 1")
    for option in ("min_score", "max_fdr"):
        value = getattr(args, option)
        if value is not None and not 0 <= value <= 1:
            parser.error(f"--{option.replace('_', '-')} must be between 0 and 1")
    if args.uncalibrated and (args.min_score is not None or args.max_fdr is not None):
        parser.error("--min-score and --max-fdr filter on calibrated probabilities; leave out --uncalibrated")
    if args.min_length is None:
        args.min_length = args.expect_length // 2
    elif args.min_length < 1:
        parser.error("--min-length must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.model_path is None:
        args.model_path, pipeline, why = units.default_classifier(args.expect_length, args.models_dir)
        args.pipeline = args.pipeline or pipeline
        units.logger.info(f"classifier {args.model_path}, {args.pipeline} pipeline: {why}")
    classifier, metadata = units.load_checkpoint(args.model_path, args.pipeline, chunk_length=args.expect_length)
    args.pipeline = metadata["embedding_model"]
    calibration = None if args.uncalibrated else units.load_calibration(args.model_path)
    if calibration is None and (args.min_score is not None or args.max_fdr is not None):
        raise units.InputError(f"{args.model_path}: the classifier is not calibrated, so there is no probability for "
                               "--min-score or --max-fdr; calibrate it with scripts/evaluate_compare.py (it writes "
                               f"{os.path.basename(units.calibration_path(args.model_path))} beside the classifier)")
    if calibration is None and not args.uncalibrated:
        units.logger.info(f"{args.model_path}: not calibrated, so Viral_probability and FDR say "
                          f"'{UNCALIBRATED}' (scripts/evaluate_compare.py calibrates a classifier it evaluates)")
    output_dir = args.output_dir or default_output_dir(args.input_fasta)
    check_writable(output_dir)
    team = Team.from_environment()
    if team.world > 1 and not os.path.isfile(args.input_fasta):
        raise units.InputError(f"{args.input_fasta}: under torchrun or in a SLURM array every process reads the "
                               "input; give a file, not a pipe")
    if team.array and args.overwrite:
        raise units.InputError(f"--overwrite in a SLURM array would make every task start over; remove {output_dir} "
                               "or give another -o instead")
    lock = units.folder_lock(output_dir) if team.rank == 0 and not team.array else contextlib.nullcontext()
    with team, lock, readable_input(args.input_fasta, output_dir) as (input_path, input_identity), \
            units.rare_garbage_collection():
        counts = predict(args, input_path, input_identity, classifier, metadata, calibration, output_dir, team)
    if counts is not None:
        units.logger.info(report(counts, args.min_length, output_dir))
    return 0


def predict(args, input_path: str, input_identity: dict, classifier, metadata: dict,
            calibration: units.Calibration | None, output_dir: str, team: Team) -> dict | None:
    """The run: check the input and the folder, then score shard by shard,
    and assemble; the counts, or ``None`` when this process did not assemble
    (the run was complete, or another process of the team assembles)."""
    from tqdm import tqdm

    pipeline = units.PIPELINES[args.pipeline]
    dna_folder = units.model_folder(units.DNABERT_S, args.dna_model, args.models_dir)
    protein_folder = units.model_folder(pipeline.protein, args.protein_model, args.models_dir)
    settings = run_settings(args, input_identity, dna_folder, protein_folder, calibration is not None)
    if team.leads:
        n_records, n_chunks = count_chunks(input_path, args.expect_length)
        with team.holding(output_dir):
            state = run_state(output_dir, settings, args.overwrite)
            if team.array and state == "new":           # the first task to start sets the run up
                begin_run(output_dir, settings)
    state, n_chunks = team.share((state, n_chunks) if team.leads else None)
    if state == "complete":
        if team.leads:
            units.logger.info(f"{output_dir}: this run is already complete (see its prediction_summary.tsv); "
                              "--overwrite runs it again")
        return None
    device = team.device(args.device)
    if team.leads:
        units.logger.info(f"{args.input_fasta}: {n_records} sequences, {n_chunks} {args.expect_length}-bp chunks; "
                          f"{pipeline.name} pipeline on {device}"
                          + (f", task {team.rank + 1} of a SLURM array of {team.world}" if team.array else
                             f", {team.world} processes" if team.world > 1 else ""))
    scorer = engine.Engine(units.load_dnabert_s(dna_folder, device), pipeline.load_protein(protein_folder, device),
                           classifier.to(device), args.dna_batch_tokens, args.protein_batch_tokens,
                           pipeline.protein.name)
    warn_on_precision_change(args.model_path, metadata, scorer)
    if team.rank == 0 and not team.array:
        if state == "new":
            begin_run(output_dir, settings)
        else:
            units.logger.info(f"resuming the run in {output_dir}")
    team.barrier()

    folders = []
    prepare = functools.partial(prepare_shard, output_dir=output_dir, chunk_size=args.expect_length,
                                min_length=args.min_length, scorer=scorer, team=team)
    numbered = enumerate(shards(input_path, args.expect_length, args.chunks_per_shard), start=1)
    with tqdm(total=n_chunks, desc="chunks", unit="chunk", disable=not team.leads) as progress:
        for shard in engine.prefetched(numbered, prepare, ahead=int(device.type != "cpu")):
            if not shard.done:
                score_shard(shard, scorer, args.model_path, args.keep_intermediate)
            folders.append(shard.folder)
            progress.update(shard.chunk_count)
    team.barrier()                          # every shard scored, by whichever process
    if team.array:
        with team.holding(output_dir):
            return assemble_when_all_scored(args, input_path, output_dir, folders, calibration, settings, team)
    return assemble(args, input_path, output_dir, folders, calibration, settings) if team.rank == 0 else None


def begin_run(output_dir: str, settings: dict) -> None:
    start_over(output_dir)
    write_run(output_dir, settings, "running")


def assemble(args, input_path: str, output_dir: str, folders: list[str], calibration: units.Calibration | None,
             settings: dict) -> dict:
    """The final files from every shard; the run is complete."""
    calls = Calls.of(folders, calibration, args.min_score, args.max_fdr)
    counts = write_outputs(output_dir, input_path, folders, calls, args.expect_length, args.min_region, args.plot)
    if not args.keep_intermediate:
        shutil.rmtree(f"{output_dir}/shards")
    write_run(output_dir, settings, "complete", counts)
    return counts


def assemble_when_all_scored(args, input_path: str, output_dir: str, folders: list[str],
                             calibration: units.Calibration | None, settings: dict, team: Team) -> dict | None:
    """An array task, holding the folder: assemble when no shard waits for another task any more."""
    run = read_run(output_dir)
    complete = run is not None and run.get("status") == "complete"
    waiting = 0 if complete else sum(not os.path.exists(f"{folder}/chunks.tsv") for folder in folders)
    if not complete and waiting == 0:
        return assemble(args, input_path, output_dir, folders, calibration, settings)
    units.logger.info(f"SLURM array task {team.rank + 1} of {team.world}: its shards are scored; "
                      + ("another task has assembled the results" if complete else
                         f"{waiting} of {len(folders)} shards wait for other tasks, and the last task to finish "
                         "assembles the results"))
    return None


if __name__ == "__main__":
    units.run_cli(main)
