"""The output folder: one table of its file names, the result files' formats,
the run record (run.json: settings, state, counts, thresholds) and the run's
last line. The assembly (``assembly.py``) writes the result files."""
from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
from typing import NamedTuple

import numpy as np

from virnucpro import __version__
from virnucpro.errors import InputError
from virnucpro.files import atomic_write
from virnucpro.log import plural
from virnucpro.runs import LOCK_FILE, changed_settings, read_record
from virnucpro.scoring.calls import ViralRegion
from virnucpro.sequences.chunks import chunk_of_frame, split_chunk_id
from virnucpro.sequences.fasta import FastaRecord, write_fasta_record

# The files of an output folder; RESULT_FILES make a complete run.
FRAMES_FILE = "prediction_results.txt"
CHUNKS_FILE = "prediction_results_highestscore.csv"
SUMMARY_FILE = "prediction_summary.tsv"
REGIONS_FILE, REGIONS_BED, REGIONS_FASTA = "viral_regions.tsv", "viral_regions.bed", "viral_regions.fna"
VIRAL_FASTA = "viral_sequences.fna"                  # the whole sequences called viral, headers kept
HIT_FILES = (REGIONS_FILE, REGIONS_BED, REGIONS_FASTA, VIRAL_FASTA)
RESULT_FILES = (FRAMES_FILE, CHUNKS_FILE, SUMMARY_FILE, *HIT_FILES)
PAIRS_FILE = "prediction_pairs.tsv"        # paired reads only: a row a pair
PLOT_FILE = "prediction.png"
RUN_FILE = "run.json"
SHARDS = "shards"                    # the shards' tables while the run lasts (shards.py)
SHARDS_MARK = ".virnucpro-shards"    # in shards/: the tool made this folder, and may remove it
SPOOLS = (".input.spool", ".mate2.spool")     # input (and second mates) read from a pipe, while the run lasts
WORKING_FILES = (LOCK_FILE, *SPOOLS, SHARDS)   # what a run keeps in the folder while it lasts

FASTA_SUFFIXES = (".fasta", ".fa", ".fna", ".fas", ".fsa", ".ffn", ".seq", ".txt")
FASTA_WIDTH = 80
UNCALIBRATED = "uncalibrated"


# ---------------------------------------------------------------- the result tables' columns, each once
class SummaryRow(NamedTuple):
    """prediction_summary.tsv: a row per input sequence (per mate of paired reads)."""
    Sequence_ID: str
    Length: int | str
    Chunks: int
    Chunks_without_frames: int
    Viral_chunks: int
    Best_viral_score: str
    Call: str
    Viral_probability: str
    FDR: str
    Viral_regions: str


class PairRow(NamedTuple):
    """prediction_pairs.tsv: a row per read pair."""
    Pair_ID: str
    Mate1_call: str
    Mate1_best_viral_score: str
    Mate2_call: str
    Mate2_best_viral_score: str
    Scored_chunks: int
    Viral_chunks: int
    Call: str


class RegionRow(NamedTuple):
    """viral_regions.tsv: a row per viral region."""
    sequence_id: str
    start: int
    end: int
    length: int
    chunks: int
    mean_score: str
    max_score: str


# The frame and chunk tables, written a shard or block at a time in array operations: their columns.
FRAME_COLUMNS = ("Sequence_ID", "Prediction", "score1", "score2")            # as published
CHUNK_COLUMNS = ("Modified_ID", "Is_Virus", "Viral_score", "Viral_probability")


def header(columns) -> str:
    """A result table's first line: its columns (a row class's fields, or a tuple of names)."""
    return "\t".join(getattr(columns, "_fields", columns)) + "\n"


def line(row: tuple) -> str:
    return "\t".join(map(str, row)) + "\n"
PLOTTED_SEQUENCES = 20


def default_output_dir(input_fasta: str) -> str:
    """``reads.fasta(.gz)`` -> ``reads_merged`` beside it, as published."""
    if input_fasta == "-" or os.path.exists(input_fasta) and not os.path.isfile(input_fasta) \
            and not os.path.isdir(input_fasta):
        raise InputError(f"{input_fasta}: input from a pipe needs an output folder; give -o")
    if input_fasta.endswith(".csv"):                   # a sample sheet
        return input_fasta[:-len(".csv")] + "_merged"
    stem = input_fasta[:-3] if input_fasta.endswith(".gz") else input_fasta
    for suffix in FASTA_SUFFIXES:
        if stem.lower().endswith(suffix):
            stem = stem[:-len(suffix)]
            break
    return stem + "_merged"


def format_score(value) -> str:
    """As published: ``str`` of a float32 probability."""
    return str(np.float32(value))


def probability_cells(scored: bool, calibrated: bool, probability: float | None,
                      fdr: float | None) -> tuple[str, str]:
    """The Viral_probability and FDR cells: NA where there is nothing to
    score (FDR: for virus calls only), ``uncalibrated`` without a calibration."""
    if not scored:
        return "NA", "NA"
    if not calibrated:
        return UNCALIBRATED, UNCALIBRATED
    return format_score(probability), "NA" if fdr is None else format_score(fdr)


class Hits:
    """The files of what was called viral: regions (TSV, BED, FASTA) and whole viral sequences (FASTA)."""

    def __init__(self, output_dir: str):
        self._stack = contextlib.ExitStack()
        self.tsv, self.bed, self.regions_fasta, self.sequences_fasta = (
            self._stack.enter_context(atomic_write(f"{output_dir}/{name}")) for name in HIT_FILES)
        self.tsv.write(header(RegionRow))
        self.regions = self.viral_sequences = 0

    def add(self, record: FastaRecord, call: str, regions: list[ViralRegion]) -> None:
        if call == "virus":
            write_fasta_record(self.sequences_fasta, record.title, record.sequence, width=FASTA_WIDTH)
            self.viral_sequences += 1
        for region in regions:
            name = f"{record.id}|{region.start}-{region.end}"
            self.tsv.write(line(RegionRow(record.id, region.start, region.end, region.length, region.chunks,
                                          f"{region.mean_score:.4f}", f"{region.max_score:.4f}")))
            self.bed.write(f"{record.id}\t{region.start - 1}\t{region.end}\t{name}\t"
                           f"{round(region.mean_score * 1000)}\t.\n")
            write_fasta_record(self.regions_fasta, name, record.sequence, FASTA_WIDTH, region.start - 1, region.end)
            self.regions += 1

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        return self._stack.__exit__(*exc_info)


def region_cell(regions: list[ViralRegion]) -> str:
    """The summary's Viral_regions cell: each region's 1-based start and end (``1-300,551-1200``), or NA."""
    return ",".join(f"{region.start}-{region.end}" for region in regions) or "NA"


def report(counts: dict, min_length: int, output_dir: str) -> str:
    """The run's last line: how many sequences got each call, and the viral regions."""
    calls = counts["calls"]
    reasons = (("no_frames", "without a stop-free frame"), ("not_scored", "whose frames all failed to embed"),
               ("too_short", f"shorter than {min_length} bp"), ("no_sequence", "without sequence"))
    skipped = [f"{calls[call]} {words}" for call, words in reasons if calls.get(call)]
    below = calls.get("below_threshold", 0)
    return (f"{plural(sum(calls.values()), 'sequence')}: {calls.get('virus', 0)} called viral, {calls.get('others', 0)} not"
            + (f", {below} viral by the chunk rule but below --min-score or over --max-fdr" if below else "")
            + f"; {counts['viral_regions']} viral regions"
            + (f"; {counts['pairs']} read pairs: {counts['pair_calls'].get('virus', 0)} called viral "
               f"(prediction_pairs.tsv)" if "pairs" in counts else "")
            + (f"; not scored: {', '.join(skipped)} (listed in prediction_summary.tsv)" if skipped else "")
            + f"; results in {output_dir}/")


RUN_FIX = "move it away or give another -o"


def read_run(output_dir: str) -> dict | None:
    """The folder's run.json, or None when it has none; a run.json this tool did not write is refused:
    it is never replaced, nor taken for a run's record."""
    return read_record(f"{output_dir}/{RUN_FILE}", "prediction.py", RUN_FIX, keys=("settings", "status"))


def run_state(output_dir: str, settings: dict, overwrite: bool) -> str:
    """``new``, ``resume`` or ``complete``. A folder holding another run or
    files of something else is refused, unless ``overwrite`` (then ``new``)."""
    if not os.path.isdir(output_dir):
        return "new"
    run = read_run(output_dir)
    shards = f"{output_dir}/{SHARDS}"
    if run is None and os.path.isdir(shards) and os.listdir(shards) and not own_shards(output_dir):
        raise InputError(f"{shards}: a folder this tool did not write, which a run would use for its shards; "
                         f"{RUN_FIX}")
    if overwrite:
        return "new"
    if run is None:
        others = sorted(set(os.listdir(output_dir)) - set(WORKING_FILES))             # shards: checked above
        if others:
            raise InputError(f"{output_dir} holds files but no prediction run of this tool "
                             f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); give another "
                             "-o, or --overwrite to replace its result files")
        return "new"
    if run["settings"] != settings:
        changed = changed_settings(run["settings"], settings)
        raise InputError(f"{output_dir} holds a run with other settings ({', '.join(changed)}); give "
                         "another -o, or --overwrite to start over in that folder")
    finished = all(os.path.exists(f"{output_dir}/{name}") for name in run.get("files", RESULT_FILES))
    if run.get("status") == "complete":
        return "complete" if finished else "new"
    return "resume"


def write_run(output_dir: str, settings: dict, status: str, counts: dict | None = None) -> None:
    """run.json: the settings, the state, and once complete the counts (sequences per call, chunks, viral
    sequences, regions), the files written and the thresholds that made them."""
    thresholds = {key: settings[key] for key in ("min_length", "min_region", "min_score", "max_fdr")}
    thresholds["scores"] = "calibrated" if settings["calibration"] else UNCALIBRATED
    with atomic_write(f"{output_dir}/{RUN_FILE}") as handle:
        json.dump({"version": __version__, "settings": settings, "status": status, **(counts or {"calls": {}}),
                   "thresholds": thresholds}, handle, indent=1)


def remove_temporaries(output_dir: str) -> None:
    """The temporary files of result files (atomic_write's ``.<name>.<random>.tmp``) that an assembly killed
    outright (SIGKILL, a node lost) left; the caller holds the folder."""
    own = (*RESULT_FILES, PAIRS_FILE, PLOT_FILE, RUN_FILE)
    for name in os.listdir(output_dir):
        if name.endswith(".tmp") and any(name.startswith(f".{file}.") for file in own):
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(output_dir, name))


def deleted_during_the_run(output_dir: str) -> InputError:
    return InputError(f"{output_dir}: the output folder (or its shards/) was deleted or moved during the run; run "
                      "the same command again to start over")


def start_over(output_dir: str, inputs: list[str], plot: bool) -> None:
    """Remove what a previous run of this tool left (its run.json, shards and plot) and the result files,
    so that no old result outlives a new run; nothing else of the folder. An input itself, when it is one
    of them (the viral sequences of an earlier run, say), is never removed: the run is refused."""
    previous = read_run(output_dir) or {}
    replaced = [*RESULT_FILES, PAIRS_FILE, RUN_FILE] + [PLOT_FILE] * (PLOT_FILE in previous.get("files", ()))
    shards = os.path.realpath(f"{output_dir}/{SHARDS}")
    for input_path in inputs:
        given = os.path.realpath(input_path) if input_path != "-" else None
        inside = [name for name in replaced if os.path.realpath(f"{output_dir}/{name}") == given]
        if given and os.path.commonpath([given, shards]) == shards:
            inside.append(SHARDS)
        if inside:
            raise InputError(f"{input_path}: the input is the {inside[0]} a run in {output_dir} replaces; copy "
                             "it elsewhere or give another -o")
    if plot and os.path.exists(f"{output_dir}/{PLOT_FILE}") and PLOT_FILE not in replaced:
        raise InputError(f"{output_dir}/{PLOT_FILE}: a plot this tool did not draw, which --plot would replace; "
                         f"{RUN_FIX}")
    remove_shards(output_dir)
    for name in replaced:
        with contextlib.suppress(FileNotFoundError):
            os.remove(f"{output_dir}/{name}")
    make_shards(output_dir)


def own_shards(output_dir: str) -> bool:
    return os.path.exists(f"{output_dir}/{SHARDS}/{SHARDS_MARK}")


def make_shards(output_dir: str) -> None:
    """The shards' folder, marked as this tool's."""
    os.makedirs(f"{output_dir}/{SHARDS}", exist_ok=True)
    with atomic_write(f"{output_dir}/{SHARDS}/{SHARDS_MARK}") as handle:
        handle.write("the shards of a run of prediction.py; removed when the run is complete\n")


def remove_shards(output_dir: str) -> None:
    """Remove the shards' folder (this tool's: ``run_state`` refuses another's): its content, and the folder
    itself unless it is a link (to scratch space, say), which stays for the next run."""
    folder = f"{output_dir}/{SHARDS}"
    if not os.path.isdir(folder):
        return
    for name in sorted(os.listdir(folder), key=lambda entry: entry == SHARDS_MARK):     # the mark last
        path = f"{folder}/{name}"
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    if not os.path.islink(folder):
        os.rmdir(folder)


def best_chunk_scores(results_file: str) -> dict[str, dict[int, tuple[np.float32, np.float32]]]:
    """From a prediction_results.txt, ours or the published tool's: sequence id -> chunk number -> (best
    score1, best score2) over the chunk's frames, in file order."""
    sequences: dict[str, dict[int, tuple]] = {}
    try:
        with open(results_file) as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            if tuple(reader.fieldnames or ()) != FRAME_COLUMNS:
                raise InputError(f"{results_file}: not a prediction_results.txt file "
                                 f"(expected the columns {', '.join(FRAME_COLUMNS)})")
            for row in reader:
                parsed = split_chunk_id(chunk_of_frame(row["Sequence_ID"]))
                if parsed is None:
                    raise InputError(f"{results_file}: {row['Sequence_ID']} is not a <sequence>_chunk_<k> frame id")
                sequence_id, number = parsed
                scores = (np.float32(row["score1"]), np.float32(row["score2"]))
                chunks = sequences.setdefault(sequence_id, {})
                previous = chunks.get(number, scores)
                chunks[number] = (max(previous[0], scores[0]), max(previous[1], scores[1]))
    except FileNotFoundError:
        raise InputError(f"{results_file}: no such file") from None
    return sequences


def summary_rows(output_dir: str) -> dict[str, dict[str, str]]:
    """Each sequence's row of the folder's prediction_summary.tsv ({} without one: the published tool's)."""
    path = os.path.join(output_dir, SUMMARY_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        return {row["Sequence_ID"]: row for row in csv.DictReader(handle, delimiter="\t")}
