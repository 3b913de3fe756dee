"""Evaluation at the tool's decision levels: reads and contigs cut from the
held-out records (labelled, grouped), scored through prediction.py itself and
read back per level (sequences, chunks, frames) from its output files; the
frames of annotated CDS as a fourth level; the calibration fitted on each
classifier's validation records; metrics, intervals and the verdict per level.
"""
from __future__ import annotations

import csv
import os
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from virnucpro.errors import InputError
from virnucpro.files import atomic_write, file_sha256
from virnucpro.log import plural
from virnucpro.models.features import FeatureSet
from virnucpro.models.pins import CLASSIFIERS, models_dir
from virnucpro.prediction.outputs import CHUNKS_FILE, FRAMES_FILE, SUMMARY_FILE
from virnucpro.scoring.calibration import save_calibration, save_evaluation_record
from virnucpro.scoring.engine import predict_probabilities
from virnucpro.scoring.metrics import (
    call_metrics,
    expected_calibration_error,
    fit_calibration,
    frame_calls,
    group_bootstrap,
    precision_at_prevalence,
    reliability,
)
from virnucpro.sequences.chunks import chunk_of_frame, record_of
from virnucpro.sequences.fasta import FastaRecord
from virnucpro.training.splits import (
    GENOME_SUFFIX,
    frame_lengths,
    genome_records,
    record_fingerprint,
    validation_records,
)

LEVELS = (("sequences", "Sequences"), ("chunks", "Chunks"), ("frames", "Frames (every stop-free frame)"),
          ("frames_cds", "Frames of annotated CDS (the training selection)"))
HELD_OUT_COLUMNS = ["sequence_id", "record", "group", "label", "start", "end", "length"]
FRAME_LENGTH_BINS = ((0, 150), (150, 300), (300, 450), (450, 10_000))
PREVALENCES = (0.01, 0.10, 0.50)


@dataclass
class Level:
    """One level's rows: true labels, held-out group of each row, and each classifier's calls and scores."""
    labels: np.ndarray
    groups: list[str]
    calls: dict[str, np.ndarray] = field(default_factory=dict)
    scores: dict[str, np.ndarray] = field(default_factory=dict)
    lengths: list[int] | None = None          # bp of each row, where known


@dataclass
class Classifier:
    """A classifier under evaluation, with the merged features of its pipeline; ``like_for_like`` when it was
    trained on the split (not a published one)."""
    name: str
    path: str
    pipeline: str
    model: torch.nn.Module
    features: FeatureSet
    like_for_like: bool
    metadata: dict


@dataclass(frozen=True)
class Fragments:
    """How held-out records are cut into the reads and contigs prediction.py scores, and where they go."""
    lengths: list[int]             # bp; a record not longer than a length is taken whole
    per_record: int                # at most this many of each length per record, spread evenly
    data_dir: str                  # where the genomes (*genomic.fna.gz) are
    work_dir: str                  # where the FASTA files, their tables and the prediction runs go


# prediction.py on a FASTA file with a classifier, its raw scores: ``predict(classifier, fasta, run name)``
# gives its output folder (``<work dir>/<run>_<pipeline>``).
Predict = Callable[["Classifier", str, str], str]


def fragment_spans(length: int, fragment_length: int, count: int) -> list[tuple[int, int]]:
    """Up to ``count`` non-overlapping fragments of ``fragment_length`` spread
    evenly over a sequence of ``length`` (the whole sequence when it is not longer)."""
    if length <= fragment_length:
        return [(0, length)]
    count = min(count, length // fragment_length)
    last = length - fragment_length
    starts = [last // 2] if count == 1 else [round(k * last / (count - 1)) for k in range(count)]
    return [(start, start + fragment_length) for start in starts]


def held_out_sequences(records: Iterable[FastaRecord], label_of: dict[str, int], group_of: dict[str, str],
                       fragment_lengths: Sequence[int], per_record: int) -> list[tuple[dict, str]]:
    """``(table row, sequence)`` of the held-out fragments: reads and contigs
    of each length cut from the held-out records, as a user's input would be."""
    fragments = []
    for record in records:
        spans = sorted({span for length in fragment_lengths
                        for span in fragment_spans(len(record.sequence), length, per_record)})
        for start, end in spans:
            row = {"sequence_id": f"{record.id}:{start + 1}-{end}", "record": record.id,
                   "group": group_of.get(record.id, record.id), "label": label_of[record.id], "start": start + 1,
                   "end": end, "length": end - start}
            fragments.append((row, record.sequence[start:end]))
    return fragments


def write_held_out(fragments: list[tuple[dict, str]], fasta: str, table: str) -> None:
    """The held-out FASTA and its table (label and group of each sequence).
    An unchanged FASTA is left as it is, so that a prediction run on it resumes."""
    text = "".join(f">{row['sequence_id']}\n{sequence}\n" for row, sequence in fragments)
    try:
        with open(fasta) as handle:
            unchanged = handle.read() == text
    except FileNotFoundError:
        unchanged = False
    if not unchanged:
        with atomic_write(fasta) as handle:
            handle.write(text)
    with atomic_write(table) as handle:
        writer = csv.DictWriter(handle, HELD_OUT_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(row for row, _ in fragments)


def read_held_out(table: str) -> dict[str, dict]:
    with open(table) as handle:
        return {row["sequence_id"]: row for row in csv.DictReader(handle, delimiter="\t")}


def prediction_levels(folder: str) -> dict[str, dict[str, dict]]:
    """What a prediction run (its output folder) called at each level:
    ``{level: {id: (call, score)}}`` for frames, chunks and sequences, in
    prediction's own words: a frame's call from prediction_results.txt
    (score: score2), a chunk's from prediction_results_highestscore.csv
    (score: best score2 minus best score1 of its frames; viral when >= 0), a
    sequence's from prediction_summary.tsv (score: the fraction of its scored
    chunks that are viral; viral when >= 1/2). Sequences prediction did not
    score (too short, no stop-free frame) are left out."""
    frames, best = {}, {}
    with open(os.path.join(folder, FRAMES_FILE)) as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            others, virus = float(row["score1"]), float(row["score2"])
            frames[row["Sequence_ID"]] = (int(row["Prediction"] == "virus"), virus)
            pair = best.setdefault(chunk_of_frame(row["Sequence_ID"]), [others, virus])
            pair[0], pair[1] = max(pair[0], others), max(pair[1], virus)
    chunks, viral_chunks = {}, {}
    with open(os.path.join(folder, CHUNKS_FILE)) as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            call = int(row["Is_Virus"] == "True")
            others, virus = best[row["Modified_ID"]]
            chunks[row["Modified_ID"]] = (call, virus - others)
            viral_chunks.setdefault(record_of(row["Modified_ID"]), []).append(call)
    sequences = {}
    with open(os.path.join(folder, SUMMARY_FILE)) as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if row["Call"] in ("virus", "others"):
                calls = viral_chunks[row["Sequence_ID"]]
                sequences[row["Sequence_ID"]] = (int(row["Call"] == "virus"), sum(calls) / len(calls))
    return {"sequences": sequences, "chunks": chunks, "frames": frames}


def sequence_of(level: str, row_id: str) -> str:
    """The held-out sequence a row of a level belongs to."""
    return row_id if level == "sequences" else record_of(row_id)


def calibration_scores(folder: str) -> tuple[dict[str, float], dict[str, list[float]]]:
    """From a prediction run (its output folder): each scored chunk's best
    viral score, and each scored sequence's chunk scores."""
    chunks: dict[str, float] = {}
    by_sequence: dict[str, list[float]] = {}
    with open(os.path.join(folder, CHUNKS_FILE)) as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            chunks[row["Modified_ID"]] = float(row["Viral_score"])
            by_sequence.setdefault(record_of(row["Modified_ID"]), []).append(float(row["Viral_score"]))
    return chunks, by_sequence


# ---------------------------------------------------------------- the levels
def test_rows(features: FeatureSet, split: dict) -> np.ndarray:
    """Rows of held-out records, less the frames identical to a training frame."""
    test, excluded = set(split["test_accessions"]), set(split.get("excluded_test_frames", ()))
    return np.flatnonzero([record_of(i) in test and i not in excluded for i in features.ids])


def cds_frames(classifiers: list[Classifier], split: dict, data_dir: str) -> Level:
    """The test frames of the merged features that every classifier's features hold."""
    ours = classifiers[0].features
    rows = test_rows(ours, split)
    indexes = [{i: k for k, i in enumerate(c.features.ids)} for c in classifiers[1:]]
    rows = np.array([r for r in rows if all(ours.ids[r] in index for index in indexes)], dtype=np.int64)
    if len(rows) == 0:
        raise InputError("no test frames to evaluate: check --split against --merge-dir "
                         "(and --baseline-merge-dir)")
    group_of = split.get("test_group_of", {})
    ids = [ours.ids[r] for r in rows]
    lengths = frame_lengths(ours.files, data_dir)
    level = Level(ours.labels[rows], [group_of.get(record_of(i), record_of(i)) for i in ids],
                  lengths=[lengths.get(i) for i in ids])
    for classifier, index in zip(classifiers, [None, *indexes]):
        chosen = rows if index is None else np.array([index[i] for i in ids], dtype=np.int64)
        probabilities = predict_probabilities(classifier.model, classifier.features.rows(chosen)).numpy()
        level.calls[classifier.name] = frame_calls(probabilities)
        level.scores[classifier.name] = probabilities[:, 1]
    return level


def labelled_sequences(fragments: Fragments, features: FeatureSet, records: set[str], group_of: dict,
                       name: str) -> tuple[str, dict[str, dict]]:
    """Reads and contigs cut from ``records`` (labelled by their features),
    written to ``<work-dir>/<name>.fasta`` with their table; ``(FASTA, rows by sequence id)``."""
    label_of = {a: int(label) for a, label in zip(features.accessions(), features.labels) if a in records}
    cut = held_out_sequences(genome_records(fragments.data_dir, set(label_of)), label_of, group_of,
                             fragments.lengths, fragments.per_record)
    missing = sorted(set(label_of) - {row["record"] for row, _ in cut})
    if missing:
        raise InputError(f"{len(missing)} {name.replace('_', '-')} records are not in the *{GENOME_SUFFIX} "
                         f"files under {fragments.data_dir} (first: {missing[0]}); give the --data-dir the genomes "
                         "were downloaded to, or --frames-only")
    os.makedirs(fragments.work_dir, exist_ok=True)
    fasta, table = (os.path.join(fragments.work_dir, f"{name}.{suffix}") for suffix in ("fasta", "tsv"))
    write_held_out(cut, fasta, table)
    return fasta, read_held_out(table)


def held_out_levels(fragments: Fragments, classifiers: list[Classifier], split: dict,
                    predict: Predict) -> tuple[dict[str, Level], dict[str, str], dict[str, dict]]:
    """Sequences, chunks and every stop-free frame of reads and contigs cut
    from the held-out records, as prediction.py calls them; also each
    classifier's prediction folder and the held-out sequences' rows."""
    fasta, sequences = labelled_sequences(fragments, classifiers[0].features, set(split["test_accessions"]),
                                          split.get("test_group_of", {}), "held_out")
    folders = {c.name: predict(c, fasta, "prediction") for c in classifiers}
    called = {name: prediction_levels(folder) for name, folder in folders.items()}
    levels = {}
    for level_name in ("sequences", "chunks", "frames"):
        ids = sorted(set.intersection(*(set(c[level_name]) for c in called.values())))
        rows = [sequences[sequence_of(level_name, i)] for i in ids]
        level = Level(np.array([int(row["label"]) for row in rows], dtype=np.int64), [row["group"] for row in rows],
                      lengths=[int(row["length"]) for row in rows] if level_name == "sequences" else None)
        for name, by_level in called.items():
            level.calls[name] = np.array([by_level[level_name][i][0] for i in ids], dtype=np.int64)
            level.scores[name] = np.array([by_level[level_name][i][1] for i in ids])
        levels[level_name] = level
    return levels, folders, sequences


# ---------------------------------------------------------------- calibration
@dataclass
class Calibrated:
    """A classifier's calibration: where it was written, what it was fitted
    on, and its reliability before and after on the test sequences."""
    classifier: str
    files: list[str]
    fitted_on: dict
    ece: dict[str, tuple[float, float]]
    reliability: dict[str, dict[str, list]]


def calibration_records(classifier: Classifier, split: dict) -> set[str]:
    """The classifier's validation records, found again from its recorded
    settings and checked against its fingerprint of them."""
    hyperparameters = classifier.metadata.get("hyperparameters") or {}
    features = classifier.features
    records = validation_records(features.accessions(), features.labels, set(split["test_accessions"]),
                                            hyperparameters.get("val_fraction", 0.0), hyperparameters.get("seed", 0))
    if record_fingerprint(records) != classifier.metadata["split"].get("validation_records"):
        raise InputError(f"{classifier.path}: its validation records cannot be found again from its features "
                         "and settings (the features changed since it was trained?), so there is nothing it "
                         "never trained on to calibrate it with; retrain it, or give --frames-only")
    return records


def level_scores(folder: str, sequences: dict[str, dict]) -> dict[str, tuple[list, np.ndarray]]:
    """``{level: (scores, labels)}`` of a prediction run: each chunk's best
    viral score, each sequence's list of them."""
    chunks, by_sequence = calibration_scores(folder)
    label = {name: int(row["label"]) for name, row in sequences.items()}
    return {"chunks": (list(chunks.values()), np.array([label[sequence_of("chunks", i)] for i in chunks])),
            "sequences": (list(by_sequence.values()), np.array([label[i] for i in by_sequence]))}


def installed_copies(checkpoint: str, chunk_length: int, models: str | None) -> list[str]:
    """The checkpoint itself and its installed copy in the models folder, if that one is the same classifier."""
    installed = os.path.join(models_dir(models), CLASSIFIERS, f"model_fastesm650_{chunk_length}.pth")
    same = (os.path.isfile(installed) and not os.path.samefile(installed, checkpoint)
            and file_sha256(installed) == file_sha256(checkpoint))
    return [checkpoint, installed] if same else [checkpoint]


def record_sensitivity(classifier: Classifier, test_sequences: dict[str, dict], test_folder: str, chunk_length: int,
                       models: str | None) -> None:
    """Save beside the classifier (and its installed copy) its sensitivity and specificity on the held-out
    sequences of its chunk length (the reads), as prediction called them: what corrects a cohort's viral
    fraction for its errors."""
    calls = prediction_levels(test_folder)["sequences"]
    reads = [(int(test_sequences[name]["label"]), calls[name][0]) for name in calls
             if int(test_sequences[name]["length"]) <= chunk_length]
    positives = [call for label, call in reads if label == 1]
    negatives = [call for label, call in reads if label == 0]
    if not positives or not negatives:
        return
    for path in installed_copies(classifier.path, chunk_length, models):
        save_evaluation_record(path, chunk_length, sum(positives) / len(positives),
                               1 - sum(negatives) / len(negatives),
                               f"{len(positives)} viral and {len(negatives)} host held-out reads of "
                               f"{chunk_length} bp")


def calibrate(fragments: Fragments, classifier: Classifier, split: dict, predict: Predict, test_folder: str,
              test_sequences: dict[str, dict], chunk_length: int, models: str | None) -> Calibrated:
    """Fit the classifier's calibration on its validation records (cut into
    reads and contigs like the held-out ones, run through prediction.py), save
    it beside the classifier, and measure it on the test sequences."""
    records = calibration_records(classifier, split)
    fasta, sequences = labelled_sequences(fragments, classifier.features, records, {},
                                          f"validation_{classifier.pipeline}")
    fitted = level_scores(predict(classifier, fasta, "validation"), sequences)
    calibration = fit_calibration(*fitted["chunks"], *fitted["sequences"])
    fitted_on = {"records": len(records), "records_sha256": record_fingerprint(records),
                 "chunks": len(fitted["chunks"][1]), "sequences": len(fitted["sequences"][1]),
                 "viral_share": {level: float(np.mean(labels)) for level, (_, labels) in fitted.items()},
                 "fragment_lengths": fragments.lengths}
    files = [save_calibration(path, calibration, fitted_on=fitted_on)
             for path in installed_copies(classifier.path, chunk_length, models)]
    record_sensitivity(classifier, test_sequences, test_folder, chunk_length, models)
    test = level_scores(test_folder, test_sequences)
    chunk_scores, chunk_labels = test["chunks"]
    sequence_scores, sequence_labels = test["sequences"]
    probabilities = {
        "chunks": (np.array(chunk_scores), calibration.chunk_probabilities(chunk_scores), chunk_labels),
        "sequences": (np.array([np.mean(s) for s in sequence_scores]),
                      np.array([calibration.sequence_probability(calibration.chunk_probabilities(s))
                                for s in sequence_scores]), sequence_labels)}
    ece = {level: (expected_calibration_error(before, labels),
                   expected_calibration_error(after, labels))
           for level, (before, after, labels) in probabilities.items()}
    curves = {level: {"before": reliability(before, labels), "after": reliability(after, labels)}
              for level, (before, after, labels) in probabilities.items()}
    return Calibrated(classifier.name, files, fitted_on, ece, curves)


# ---------------------------------------------------------------- metrics and verdicts
MIN_GROUPS_PER_CLASS = 3       # a bootstrap over fewer held-out groups of a class gives intervals of no width


def too_few_groups(level: Level) -> str | None:
    """Why a level's intervals cannot carry a verdict: fewer than ``MIN_GROUPS_PER_CLASS`` held-out groups
    of a class; None when there are enough."""
    few = []
    for label, name in ((1, "viral"), (0, "host")):
        count = len({group for group, row_label in zip(level.groups, level.labels) if row_label == label})
        if count < MIN_GROUPS_PER_CLASS:
            few.append(plural(count, f"{name} held-out group"))
    return (f"{' and '.join(few)}, fewer than the {MIN_GROUPS_PER_CLASS} per class an interval needs" if few
            else None)


def verdict_of(drop_interval, threshold: float) -> str:
    low, high = drop_interval
    if high < threshold:
        return "PASSED"
    return "FAILED" if low >= threshold else "INCONCLUSIVE"


def prevalence_rows(metrics: dict) -> list[tuple[float, float, float]]:
    """``(prevalence, precision, FDR)`` from the measured recall and specificity."""
    (tn, fp), _ = metrics["confusion_matrix"]
    specificity = tn / (tn + fp) if tn + fp else float("nan")
    rows = []
    for prevalence in PREVALENCES:
        precision = precision_at_prevalence(metrics["recall"], specificity, prevalence)
        rows.append((prevalence, precision, 1 - precision))
    return rows


def breakdown(level: Level, bins, unit: str) -> list[dict]:
    """Metrics per length bin of each classifier."""
    rows = []
    for low, high in bins:
        chosen = [k for k, length in enumerate(level.lengths) if length is not None and low < length <= high]
        if chosen:
            cells = {name: call_metrics(level.labels[chosen], calls[chosen], level.scores[name][chosen])
                     for name, calls in level.calls.items()}
            label = f"{low + 1}-{high} bp" if high < 10**9 else f"over {low} bp"
            rows.append({"bin": label, "n": len(chosen), "unit": unit, "metrics": cells})
    return rows


def scored_levels(levels: dict[str, Level], order: list[str], replicates: int, seed: int, threshold: float | None):
    """Per level: each classifier's metrics, the group-bootstrap intervals (and of the difference ``order[0]``
    minus ``order[1]``), and with a like-for-like baseline (``threshold`` given) the verdict."""
    results, intervals, verdicts = {}, {}, {}
    for name, level in levels.items():
        results[name] = {c: call_metrics(level.labels, level.calls[c], level.scores[c]) for c in level.calls}
        intervals[name] = group_bootstrap(level.groups, level.labels, {c: level.calls[c] for c in order},
                                          replicates, seed)
        if threshold is not None:
            verdicts[name] = "INCONCLUSIVE" if too_few_groups(level) else \
                verdict_of(intervals[name]["difference"]["accuracy"], threshold)
    return results, intervals, verdicts


def breakdowns(levels: dict[str, Level], fragment_lengths: list[int]) -> dict[str, tuple[str, list[dict]]]:
    """The report's tables by length: held-out sequences by the fragment lengths, CDS frames by fixed bins."""
    tables = {"frames_cds": ("By frame length (frames of annotated CDS)",
                             breakdown(levels["frames_cds"], FRAME_LENGTH_BINS, "frames"))}
    if "sequences" in levels:
        edges = sorted(set(fragment_lengths))
        bins = list(zip([0] + edges, edges)) + [(edges[-1], 10**9)]
        tables = {"sequences": ("By held-out sequence length", breakdown(levels["sequences"], bins, "sequences")),
                  **tables}
    return tables
