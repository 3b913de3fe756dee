"""Evaluation: held-out groups of related records, metrics at the tool's
decision levels (frames, chunks, sequences) and their uncertainty.

Sections:
  1. Groups of related records (lineage or ANI) and group-disjoint splits
  2. Split files and record fingerprints
  3. Metrics, group-bootstrap intervals, prevalence
  4. Held-out sequences scored by prediction.py, read back per level
  5. Score calibration
"""
from __future__ import annotations

import csv
import hashlib
import json
import math
import os
import random
from collections import Counter
from typing import Iterable, Iterator, Sequence

import numpy as np

import units


# =============================================================================
# 1. Groups of related records and group-disjoint splits
# =============================================================================

GROUP_LEVELS = ("organism", "genus", "family", "ani", "record")
_FAMILY_ENDINGS = ("viridae", "aceae", "idae")      # virus, bacterial/plant/fungal and animal family names


def related_group(record: str, lineage: dict | None, level: str) -> str | None:
    """The group a record is held out with: its organism (segments, plasmids
    and chromosomes of one organism together), its genus (the last rank of
    its GenBank lineage), its family (the last lineage name with a family
    ending), or the record alone; ``None`` when the lineage does not say.
    ``ani`` starts from organisms, which :func:`ani_clusters` then joins."""
    if level == "record":
        return record
    if not lineage or not lineage.get("organism"):
        return None
    taxonomy = lineage.get("taxonomy") or []
    if level in ("organism", "ani"):
        return lineage["organism"]
    if level == "genus":
        return taxonomy[-1] if taxonomy else None
    return next((name for name in reversed(taxonomy) if name.endswith(_FAMILY_ENDINGS)), None)


def genome_split(accessions: Sequence[str], labels: np.ndarray, fraction: float, seed: int) -> set[str]:
    """Groups held out so that about ``fraction`` of each class's rows are
    held out, whole groups only (``accessions`` holds each row's group: a
    genome record, or a group of related records): frames of one chunk,
    overlapping chunks of one genome and relatives are near-duplicates and
    must not sit on both sides."""
    import random

    rng = random.Random(seed)
    held_out = set()
    for label in sorted(set(labels.tolist())):
        rows: dict[str, int] = {}
        for accession, row_label in zip(accessions, labels):
            if row_label == label:
                rows[accession] = rows.get(accession, 0) + 1
        order = sorted(rows)
        rng.shuffle(order)
        target, taken = fraction * sum(rows.values()), 0
        for accession in order:
            if abs(taken + rows[accession] - target) < abs(taken - target):
                held_out.add(accession)
                taken += rows[accession]
    return held_out


def validation_records(accessions: Sequence[str], labels: np.ndarray, test: set[str], fraction: float,
                       seed: int) -> set[str]:
    """The records train_fastesm.py validates on (early stopping) and
    evaluation calibrates on: a share of the non-test groups (``accessions``:
    each row's record)."""
    kept = [k for k, accession in enumerate(accessions) if accession not in test]
    return genome_split([accessions[k] for k in kept], labels[kept], fraction, seed)


ANI_PERCENT = 95.0          # the field's species-level convention
ALIGNED_FRACTION = 0.85     # of the shorter genome (the MIUViG rule for viral species clusters)


def ani_clusters(genomes: dict[str, list[str]], ani: float = ANI_PERCENT,
                 aligned: float = ALIGNED_FRACTION) -> dict[str, str]:
    """Single-linkage clusters of genomes (``{name: [contig, ...]}``): two
    genomes are linked when skani (through pyskani) finds an average
    nucleotide identity of at least ``ani`` percent over at least ``aligned``
    of the shorter one. Returns ``{name: cluster}``, a cluster named by its
    first member in sorted order."""
    try:
        import pyskani
    except ImportError:
        raise units.InputError("--group-by ani needs pyskani: python -m pip install pyskani") from None
    names = sorted(genomes)
    database = pyskani.Database()
    for name in names:
        database.sketch(name, *genomes[name])
    parent = {name: name for name in names}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for name in names:
        for hit in database.query(name, *genomes[name]):
            if hit.identity * 100 >= ani and max(hit.query_fraction, hit.reference_fraction) >= aligned:
                first, second = sorted((root(name), root(hit.reference_name)))
                parent[second] = first
    return {name: root(name) for name in names}


def group_folds(groups: Sequence[str], labels: np.ndarray, folds: int, seed: int) -> list[set[str]]:
    """``folds`` disjoint sets of groups covering all groups (``groups`` holds
    each row's group), each with about an equal share of each class's rows:
    the test sets of a group-disjoint cross-validation."""
    rng = random.Random(seed)
    assigned: list[set[str]] = [set() for _ in range(folds)]
    for label in sorted(set(labels.tolist())):
        rows = Counter(group for group, row_label in zip(groups, labels) if row_label == label)
        if len(rows) < folds:
            raise units.InputError(f"{folds} folds need at least {folds} groups of each class; class {label} has "
                                   f"{len(rows)}: use fewer --folds or a finer --group-by")
        order = sorted(rows)
        rng.shuffle(order)
        order.sort(key=rows.get, reverse=True)          # largest groups first, ties in shuffled order
        taken = [0] * folds
        for group in order:
            placed = next((k for k, fold in enumerate(assigned) if group in fold), None)
            if placed is None:                           # a group may hold rows of both classes
                placed = min(range(folds), key=lambda k: (taken[k], k))
                assigned[placed].add(group)
            taken[placed] += rows[group]
    return assigned


# =============================================================================
# 2. Split files and record fingerprints
# =============================================================================

def read_split(path) -> dict:
    """A split file of scripts/create_test_set.py: the records it holds out
    (``test_accessions``) and all the others it knows (``train_accessions``)."""
    try:
        with open(path) as handle:
            split = json.load(handle)
    except FileNotFoundError:
        raise units.InputError(f"{path}: no such split file; run scripts/create_test_set.py first") from None
    except (ValueError, UnicodeDecodeError):
        split = None
    if not isinstance(split, dict) or "test_accessions" not in split:
        raise units.InputError(f"{path}: not a split file from scripts/create_test_set.py")
    if "train_accessions" not in split:
        raise units.InputError(f"{path}: made by an older scripts/create_test_set.py that did not list every record; "
                         "run it again")
    return split


def record_fingerprint(records: Iterable[str]) -> str:
    """SHA-256 of a set of record ids: what a checkpoint records of the records
    it was trained, validated and tested on."""
    return hashlib.sha256("\n".join(sorted(set(records))).encode()).hexdigest()


def frame_lengths(merged_files: Sequence[str], data_dir) -> dict[str, int]:
    """Nucleotide length of the frames of merged files, read from the split
    FASTA files features_extract.py worked on (``<name>.identified_nucleotide/
    output_N.fa`` under ``data_dir``); frames whose file is gone are left out."""
    split_dirs = {}
    for root, folders, _ in os.walk(data_dir):
        for folder in folders:
            if folder.endswith(".identified_nucleotide"):
                split_dirs[folder[:-len(".identified_nucleotide")]] = os.path.join(root, folder)
    lengths = {}
    for path in merged_files:
        stem = os.path.basename(os.path.dirname(path))[:-len("_merged")]
        fasta = os.path.join(split_dirs.get(stem, ""), os.path.basename(path)[:-len("_merged.pt")] + ".fa")
        if stem in split_dirs and os.path.exists(fasta):
            lengths.update((record.id, len(record.sequence)) for record in units.read_fasta(fasta, alphabet=None))
    return lengths


# =============================================================================
# 3. Metrics, group-bootstrap intervals, prevalence
# =============================================================================

def call_metrics(labels, calls, scores) -> dict:
    """Accuracy, precision, recall, F1 (viral = positive) and the confusion
    matrix ``[[TN, FP], [FN, TP]]`` of 0/1 calls, and ROC-AUC of scores that
    rank viral rows higher."""
    from sklearn import metrics

    labels, calls = np.asarray(labels), np.asarray(calls).astype(int)
    both_classes = len(set(labels.tolist())) == 2
    return {
        "n": int(len(labels)),
        "accuracy": float(metrics.accuracy_score(labels, calls)),
        "precision": float(metrics.precision_score(labels, calls, zero_division=0)),
        "recall": float(metrics.recall_score(labels, calls, zero_division=0)),
        "f1": float(metrics.f1_score(labels, calls, zero_division=0)),
        "roc_auc": float(metrics.roc_auc_score(labels, scores)) if both_classes else float("nan"),
        "confusion_matrix": metrics.confusion_matrix(labels, calls, labels=[0, 1]).tolist(),
    }


def frame_calls(probabilities) -> np.ndarray:
    """A frame's class: viral when score2 > score1 ('others' on an exact tie, as published)."""
    probabilities = np.asarray(probabilities)
    return (probabilities[:, 1] > probabilities[:, 0]).astype(np.int64)


def classification_metrics(labels, probabilities) -> dict:
    """:func:`call_metrics` of frames from their ``[others, virus]`` probabilities."""
    return call_metrics(labels, frame_calls(probabilities), np.asarray(probabilities)[:, 1])


BOOTSTRAP_METRICS = ("accuracy", "precision", "recall", "f1")


def _confusion_metrics(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"accuracy": (tp + tn) / (tp + fp + fn + tn), "precision": tp / (tp + fp),
                "recall": tp / (tp + fn), "f1": 2 * tp / (2 * tp + fp + fn)}


def _interval(values: np.ndarray) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles; NaN where no replicate defines the metric (precision without calls)."""
    defined = values[~np.isnan(values)]
    return tuple(float(v) for v in np.percentile(defined, [2.5, 97.5])) if len(defined) else (math.nan, math.nan)


def group_bootstrap(groups: Sequence[str], labels: np.ndarray, predicted: dict[str, np.ndarray],
                    replicates: int = 2000, seed: int = 0) -> dict:
    """95% percentile intervals of accuracy, precision, recall and F1 by
    resampling held-out groups (records, or groups of related records), not
    rows, with replacement within each class: rows of one group are not
    independent evidence.

    ``predicted`` maps a classifier's name to its 0/1 calls per row. Returns
    ``{name: {metric: (low, high)}}`` and, with two classifiers ``a``, ``b``
    (in that order), ``'difference'``: the interval of each metric of ``a``
    minus ``b`` on the same resamples."""
    rng = np.random.default_rng(seed)
    group_ids, group_of = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    group_label = np.zeros(len(group_ids), dtype=np.int64)
    np.maximum.at(group_label, group_of, labels)      # a group holding viral rows is resampled with the viral ones
    weights = np.zeros((replicates, len(group_ids)))
    for label in (0, 1):
        members = np.flatnonzero(group_label == label)
        if len(members):
            weights[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)),
                                                  size=replicates)
    replicated = {}
    for name, calls in predicted.items():
        outcome = np.zeros((len(group_ids), 4))           # tp, fp, fn, tn per group
        for column, (label, call) in enumerate(((1, 1), (0, 1), (1, 0), (0, 0))):
            np.add.at(outcome[:, column], group_of, (labels == label) & (calls == call))
        replicated[name] = _confusion_metrics(*(weights @ outcome).T)
    result = {name: {metric: _interval(values[metric]) for metric in BOOTSTRAP_METRICS}
              for name, values in replicated.items()}
    if len(predicted) == 2:
        first, second = (replicated[name] for name in predicted)
        result["difference"] = {metric: _interval(first[metric] - second[metric]) for metric in BOOTSTRAP_METRICS}
    return result


def precision_at_prevalence(recall: float, specificity: float, prevalence: float) -> float:
    """Precision (positive predictive value) when a fraction ``prevalence`` of
    the sequences is viral: sensitivity and specificity do not depend on the
    class balance of the test set, precision does."""
    true_calls, false_calls = recall * prevalence, (1 - specificity) * (1 - prevalence)
    return true_calls / (true_calls + false_calls) if true_calls + false_calls else float("nan")


# =============================================================================
# 4. Held-out sequences scored by prediction.py, read back per level
# =============================================================================

GENOME_SUFFIX = "genomic.fna.gz"           # the genome files scripts/download_data.py fetches
LEVELS = (("sequences", "Sequences"), ("chunks", "Chunks"), ("frames", "Frames (every stop-free frame)"),
          ("frames_cds", "Frames of annotated CDS (the training selection)"))
HELD_OUT_COLUMNS = ["sequence_id", "record", "group", "label", "start", "end", "length"]


def genome_records(data_dir: str, wanted: set[str]) -> Iterator[units.FastaRecord]:
    """The records named in ``wanted``, read from the genome files
    (``*genomic.fna.gz``) under ``data_dir``."""
    for root, folders, names in os.walk(data_dir):
        folders.sort()
        for name in sorted(names):
            if name.endswith(GENOME_SUFFIX):
                yield from (record for record in units.read_fasta(os.path.join(root, name), alphabet="dna")
                            if record.id in wanted)


def fragment_spans(length: int, fragment_length: int, count: int) -> list[tuple[int, int]]:
    """Up to ``count`` non-overlapping fragments of ``fragment_length`` spread
    evenly over a sequence of ``length`` (the whole sequence when it is not longer)."""
    if length <= fragment_length:
        return [(0, length)]
    count = min(count, length // fragment_length)
    last = length - fragment_length
    starts = [last // 2] if count == 1 else [round(k * last / (count - 1)) for k in range(count)]
    return [(start, start + fragment_length) for start in starts]


def held_out_sequences(records: Iterable[units.FastaRecord], label_of: dict[str, int], group_of: dict[str, str],
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
        with units.atomic_write(fasta) as handle:
            handle.write(text)
    with units.atomic_write(table) as handle:
        writer = csv.DictWriter(handle, HELD_OUT_COLUMNS, delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(row for row, _ in fragments)


def read_held_out(table: str) -> dict[str, dict]:
    with open(table) as handle:
        return {row["sequence_id"]: row for row in csv.DictReader(handle, delimiter="\t")}


def _sequence_of_chunk(chunk_id: str) -> str:
    return chunk_id.rsplit("_chunk_", 1)[0]


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
    with open(f"{folder}/prediction_results.txt") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            others, virus = float(row["score1"]), float(row["score2"])
            frames[row["Sequence_ID"]] = (int(row["Prediction"] == "virus"), virus)
            pair = best.setdefault(row["Sequence_ID"][:-2], [others, virus])
            pair[0], pair[1] = max(pair[0], others), max(pair[1], virus)
    chunks, viral_chunks = {}, {}
    with open(f"{folder}/prediction_results_highestscore.csv") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            call = int(row["Is_Virus"] == "True")
            others, virus = best[row["Modified_ID"]]
            chunks[row["Modified_ID"]] = (call, virus - others)
            viral_chunks.setdefault(_sequence_of_chunk(row["Modified_ID"]), []).append(call)
    sequences = {}
    with open(f"{folder}/prediction_summary.tsv") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            if row["Call"] in ("virus", "others"):
                calls = viral_chunks[row["Sequence_ID"]]
                sequences[row["Sequence_ID"]] = (int(row["Call"] == "virus"), sum(calls) / len(calls))
    return {"sequences": sequences, "chunks": chunks, "frames": frames}


def sequence_of(level: str, row_id: str) -> str:
    """The held-out sequence a row of a level belongs to."""
    if level == "frames":
        row_id = row_id[:-2]
    return row_id if level == "sequences" else _sequence_of_chunk(row_id)


# =============================================================================
# 5. Score calibration
# =============================================================================

CALIBRATION_BINS = 10


def calibration_scores(folder: str) -> tuple[dict[str, float], dict[str, list[float]]]:
    """From a prediction run (its output folder): each scored chunk's best
    viral score, and each scored sequence's chunk scores."""
    chunks: dict[str, float] = {}
    by_sequence: dict[str, list[float]] = {}
    with open(f"{folder}/prediction_results_highestscore.csv") as handle:
        for row in csv.DictReader(handle, delimiter="\t"):
            chunks[row["Modified_ID"]] = float(row["Viral_score"])
            by_sequence.setdefault(_sequence_of_chunk(row["Modified_ID"]), []).append(float(row["Viral_score"]))
    return chunks, by_sequence


def _isotonic_knots(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.isotonic import IsotonicRegression

    fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, labels)
    return fitted.X_thresholds_.astype(np.float64), fitted.y_thresholds_.astype(np.float64)


def fit_calibration(chunk_scores, chunk_labels, sequence_chunk_scores: Sequence[Sequence[float]],
                    sequence_labels) -> units.Calibration:
    """Isotonic regression of the label on the chunks' best viral scores, then
    on the mean of each sequence's calibrated chunk probabilities."""
    chunk = _isotonic_knots(np.asarray(chunk_scores, dtype=np.float64), np.asarray(chunk_labels))
    means = [float(np.mean(np.interp(scores, *chunk))) for scores in sequence_chunk_scores]
    return units.Calibration(chunk, _isotonic_knots(np.asarray(means), np.asarray(sequence_labels)))


def reliability(probabilities, labels, bins: int = CALIBRATION_BINS) -> list[tuple[float, float, int]]:
    """``(mean probability, share viral, rows)`` of each non-empty bin of equal width."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    index = np.minimum((probabilities * bins).astype(int), bins - 1)
    return [(float(probabilities[index == k].mean()), float(labels[index == k].mean()), int((index == k).sum()))
            for k in range(bins) if (index == k).any()]


def expected_calibration_error(probabilities, labels, bins: int = CALIBRATION_BINS) -> float:
    """The rows' weighted mean of |share viral - mean probability| over bins of equal width."""
    return sum(count * abs(share - mean) for mean, share, count in reliability(probabilities, labels, bins)) \
        / max(len(probabilities), 1)
