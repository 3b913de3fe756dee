#!/usr/bin/env python3
"""Evaluate the FastESM2_650 classifier on the held-out records, against the ESM2-3B baseline.

    python scripts/evaluate_compare.py [--model model_fastesm650_500.pth] \\
        --baseline-model model_esm2_3b_500.pth [--baseline-merge-dir data/data_merge_esm2_3b]

Like for like: the baseline is the ESM2-3B classifier trained by
train_fastesm.py --pipeline esm2_3b on the same split. Each model must record
the split it was trained on (train_fastesm.py does): a model trained on
another split is refused, since some test records would be its training data.
The published 300_model.pth / 500_model.pth were trained on a random
per-frame split over all records, so they have seen the test genomes: given
as --baseline-model they are reported in a section of their own, as an
optimistic bound, and never enter the verdict.

Four levels, each labelled:
  sequences, chunks, frames  the held-out records cut into reads and contigs
                             (--fragment-lengths, up to --fragments-per-record
                             each) and run through prediction.py itself, with
                             each classifier: every chunk, every stop-free
                             frame, prediction's chunk rule and sequence rule
  frames of annotated CDS    the test frames of the merged features (the
                             training selection); --frames-only gives just
                             these (no language models needed)

Every metric comes with a 95% interval from a bootstrap over the split's
held-out groups (organisms by default), not rows. At each level the verdict
reads the interval of the paired accuracy drop (ESM2-3B minus FastESM2_650):
PASSED when its upper bound is under --threshold (5 points), FAILED when its
lower bound is at or above it, INCONCLUSIVE otherwise; the overall result is
the worst level's (exit status 1 for FAILED). Precision and FDR are also given
at viral prevalences of 1%, 10% and 50%: the test set is balanced, metagenomes
are not.

Calibration (not with --frames-only): each classifier trained on this split
is calibrated on its validation records (the genomes training held out for
early stopping, found again from its recorded settings), cut into reads and
contigs the same way and run through prediction.py: isotonic regression of
the label on the chunk scores, saved as <classifier>.calibration.json beside
it (and beside its installed copy in the models folder), where prediction.py
reads it for its Viral_probability and FDR columns. The report gives the
expected calibration error before and after on the test sequences, with a
reliability plot (reliability.png).

Writes reports/validation_report.md (per level: metrics with intervals and
the paired difference; prevalence table, confusion matrices, ROC curves as
PNG, breakdowns by sequence and frame length), reports/metrics_<pipeline>.json
and reports/validation_summary.json (result and verdict per level); the held-out sequences and the prediction
runs go to --work-dir (a re-run reuses finished prediction runs).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
from dataclasses import dataclass, field

import numpy as np

import evaluation
import units

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
METRICS = (("accuracy", "Accuracy"), ("precision", "Precision"), ("recall", "Recall"), ("f1", "F1"),
           ("roc_auc", "ROC-AUC"))
PIPELINE_OF = {"FastESM2_650": "fastesm650", "ESM2-3B": "esm2_3b"}
UNIT_OF = {"sequences": "sequences", "chunks": "chunks", "frames": "frames", "frames_cds": "frames"}
LEVEL_NOTES = {
    "sequences": "Each held-out read or contig gets prediction.py's call: viral when at least half of its scored "
                 "chunks are viral. ROC-AUC ranks by that fraction.",
    "chunks": "Every chunk of the held-out sequences with a stop-free frame: viral when its best viral score is at "
              "least its best non-viral score. ROC-AUC ranks by the difference of the two.",
    "frames": "Every stop-free frame prediction scores (not only annotated CDS frames): viral when score2 > score1.",
    "frames_cds": "The test frames of the merged features: frames matching an annotated CDS, as in training; frames "
                  "identical to a training frame left out.",
}
FRAME_LENGTH_BINS = ((0, 150), (150, 300), (300, 450), (450, 10_000))
VERDICT_ORDER = ("PASSED", "INCONCLUSIVE", "FAILED")
PREVALENCES = (0.01, 0.10, 0.50)
SUMMARY_FILE = "validation_summary.json"
FEW_CALIBRATION_SEQUENCES = 200
NEXT_STEPS = [
    "Check the training log: a validation loss still falling at the last epoch calls for more epochs "
    "or a larger --patience.",
    "Check the class balance and length distribution of the split (scripts/create_test_set.py report).",
    "Validate the features (scripts/validate_features.py) and look for failures in extraction_failures.log.",
    "Retrain with --save-best, or tune the learning rate (--lr) and batch size.",
]


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
    name: str
    path: str
    pipeline: str
    model: units.MLPClassifier
    features: units.FeatureSet
    like_for_like: bool
    metadata: dict


# ---------------------------------------------------------------- models and CDS frames
def load_model(model_path, pipeline, features, device, split_file, test: set):
    """The classifier, whether it was trained on this split (``False``
    for a published classifier, which records no split) and its metadata; a
    model trained on another split is refused."""
    model, metadata = units.load_checkpoint(model_path, pipeline, device, chunk_length=features.chunk_length())
    if metadata.get("checkpoint_version") == "published":
        return model, False, metadata
    recorded = metadata.get("split")
    if not isinstance(recorded, dict):
        raise units.InputError(f"{model_path}: does not record the split it was trained on, so it may have been "
                               f"trained on test records; retrain it with train_fastesm.py --split {split_file}")
    if recorded.get("test_records") != evaluation.record_fingerprint(test):
        raise units.InputError(f"{model_path}: trained with another split than {split_file} (its held-out records "
                               "differ), so some test records may be its training data; evaluate it with the split "
                               "it was trained with, or retrain it on this one")
    return model, True, metadata


def test_rows(features: units.FeatureSet, split: dict) -> np.ndarray:
    """Rows of held-out records, less the frames identical to a training frame."""
    test, excluded = set(split["test_accessions"]), set(split.get("excluded_test_frames", ()))
    return np.flatnonzero([units.accession_of(i) in test and i not in excluded for i in features.ids])


def cds_frames(classifiers: list[Classifier], split: dict, data_dir: str) -> Level:
    """The test frames of the merged features that every classifier's features hold."""
    ours = classifiers[0].features
    rows = test_rows(ours, split)
    indexes = [{i: k for k, i in enumerate(c.features.ids)} for c in classifiers[1:]]
    rows = np.array([r for r in rows if all(ours.ids[r] in index for index in indexes)], dtype=np.int64)
    if len(rows) == 0:
        raise units.InputError("no test frames to evaluate: check --split against --merge-dir "
                               "(and --baseline-merge-dir)")
    group_of = split.get("test_group_of", {})
    ids = [ours.ids[r] for r in rows]
    lengths = evaluation.frame_lengths(ours.files, data_dir)
    level = Level(ours.labels[rows], [group_of.get(units.accession_of(i), units.accession_of(i)) for i in ids],
                  lengths=[lengths.get(i) for i in ids])
    for classifier, index in zip(classifiers, [None, *indexes]):
        chosen = rows if index is None else np.array([index[i] for i in ids], dtype=np.int64)
        probabilities = units.predict_probabilities(classifier.model, classifier.features.rows(chosen)).numpy()
        level.calls[classifier.name] = evaluation.frame_calls(probabilities)
        level.scores[classifier.name] = probabilities[:, 1]
    return level


# ---------------------------------------------------------------- held-out sequences through prediction.py
def run_prediction(args, classifier: Classifier, fasta: str, chunk_length: int, run: str = "prediction") -> str:
    """prediction.py on held-out sequences with one classifier, its raw
    scores (uncalibrated); its output folder, ``<run>_<pipeline>``."""
    output = os.path.join(args.work_dir, f"{run}_{classifier.pipeline}")
    protein_model = args.protein_model if classifier.pipeline == "fastesm650" else args.baseline_protein_model
    command = [sys.executable, os.path.join(ROOT, "prediction.py"), fasta, str(chunk_length), classifier.path,
               "-o", output, "--device", args.device, "--uncalibrated"]
    for option, value in (("--dna-model", args.dna_model), ("--protein-model", protein_model),
                          ("--models-dir", args.models_dir)):
        if value:
            command += [option, value]
    units.logger.info(f"{classifier.name}: prediction.py on {fasta} -> {output}")
    status = subprocess.run(command).returncode
    if status:
        raise units.InputError(f"prediction.py stopped on the held-out sequences {fasta} with {classifier.name} "
                               f"(exit status {status}; its message is above)")
    return output


def labelled_sequences(args, features: units.FeatureSet, records: set[str], group_of: dict, chunk_length: int,
                       name: str) -> tuple[str, dict[str, dict]]:
    """Reads and contigs cut from ``records`` (labelled by their features),
    written to ``<work-dir>/<name>.fasta`` with their table; ``(FASTA, rows by sequence id)``."""
    label_of = {a: int(label) for a, label in zip(features.accessions(), features.labels) if a in records}
    lengths = args.fragment_lengths or [chunk_length, 1000, 3000]
    fragments = evaluation.held_out_sequences(evaluation.genome_records(args.data_dir, set(label_of)), label_of,
                                              group_of, lengths, args.fragments_per_record)
    missing = sorted(set(label_of) - {row["record"] for row, _ in fragments})
    if missing:
        raise units.InputError(f"{len(missing)} {name.replace('_', '-')} records are not in the "
                               f"*{evaluation.GENOME_SUFFIX} files under {args.data_dir} (first: {missing[0]}); give "
                               "the --data-dir the genomes were downloaded to, or --frames-only")
    os.makedirs(args.work_dir, exist_ok=True)
    fasta, table = os.path.join(args.work_dir, f"{name}.fasta"), os.path.join(args.work_dir, f"{name}.tsv")
    evaluation.write_held_out(fragments, fasta, table)
    return fasta, evaluation.read_held_out(table)


def held_out_levels(args, classifiers: list[Classifier], split: dict,
                    chunk_length: int) -> tuple[dict[str, Level], dict[str, str], dict[str, dict]]:
    """Sequences, chunks and every stop-free frame of reads and contigs cut
    from the held-out records, as prediction.py calls them; also each
    classifier's prediction folder and the held-out sequences' rows."""
    fasta, sequences = labelled_sequences(args, classifiers[0].features, set(split["test_accessions"]),
                                          split.get("test_group_of", {}), chunk_length, "held_out")
    folders = {c.name: run_prediction(args, c, fasta, chunk_length) for c in classifiers}
    called = {name: evaluation.prediction_levels(folder) for name, folder in folders.items()}
    levels = {}
    for level_name in ("sequences", "chunks", "frames"):
        ids = sorted(set.intersection(*(set(c[level_name]) for c in called.values())))
        rows = [sequences[evaluation.sequence_of(level_name, i)] for i in ids]
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
    records = evaluation.validation_records(features.accessions(), features.labels, set(split["test_accessions"]),
                                            hyperparameters.get("val_fraction", 0.0), hyperparameters.get("seed", 0))
    if evaluation.record_fingerprint(records) != classifier.metadata["split"].get("validation_records"):
        raise units.InputError(f"{classifier.path}: its validation records cannot be found again from its features "
                               "and settings (the features changed since it was trained?), so there is nothing it "
                               "never trained on to calibrate it with; retrain it, or give --frames-only")
    return records


def level_scores(folder: str, sequences: dict[str, dict]) -> dict[str, tuple[list, np.ndarray]]:
    """``{level: (scores, labels)}`` of a prediction run: each chunk's best
    viral score, each sequence's list of them."""
    chunks, by_sequence = evaluation.calibration_scores(folder)
    label = {name: int(row["label"]) for name, row in sequences.items()}
    return {"chunks": (list(chunks.values()), np.array([label[evaluation.sequence_of("chunks", i)] for i in chunks])),
            "sequences": (list(by_sequence.values()), np.array([label[i] for i in by_sequence]))}


def installed_copies(checkpoint: str, chunk_length: int, models: str | None) -> list[str]:
    """The checkpoint itself and its installed copy in the models folder, if that one is the same classifier."""
    installed = os.path.join(units.models_dir(models), units.CLASSIFIERS, f"model_fastesm650_{chunk_length}.pth")
    same = (os.path.isfile(installed) and not os.path.samefile(installed, checkpoint)
            and units.file_sha256(installed) == units.file_sha256(checkpoint))
    return [checkpoint, installed] if same else [checkpoint]


def calibrate(args, classifier: Classifier, split: dict, chunk_length: int, test_folder: str,
              test_sequences: dict[str, dict]) -> Calibrated:
    """Fit the classifier's calibration on its validation records (cut into
    reads and contigs like the held-out ones, run through prediction.py), save
    it beside the classifier, and measure it on the test sequences."""
    records = calibration_records(classifier, split)
    fasta, sequences = labelled_sequences(args, classifier.features, records, {}, chunk_length,
                                          f"validation_{classifier.pipeline}")
    fitted = level_scores(run_prediction(args, classifier, fasta, chunk_length, "validation"), sequences)
    calibration = evaluation.fit_calibration(*fitted["chunks"], *fitted["sequences"])
    fitted_on = {"records": len(records), "records_sha256": evaluation.record_fingerprint(records),
                 "chunks": len(fitted["chunks"][1]), "sequences": len(fitted["sequences"][1]),
                 "viral_share": {level: float(np.mean(labels)) for level, (_, labels) in fitted.items()},
                 "fragment_lengths": args.fragment_lengths or [chunk_length, 1000, 3000]}
    files = [units.save_calibration(path, calibration, fitted_on=fitted_on)
             for path in installed_copies(classifier.path, chunk_length, args.models_dir)]
    test = level_scores(test_folder, test_sequences)
    chunk_scores, chunk_labels = test["chunks"]
    sequence_scores, sequence_labels = test["sequences"]
    probabilities = {
        "chunks": (np.array(chunk_scores), calibration.chunk_probabilities(chunk_scores), chunk_labels),
        "sequences": (np.array([np.mean(s) for s in sequence_scores]),
                      np.array([calibration.sequence_probability(calibration.chunk_probabilities(s))
                                for s in sequence_scores]), sequence_labels)}
    ece = {level: (evaluation.expected_calibration_error(before, labels),
                   evaluation.expected_calibration_error(after, labels))
           for level, (before, after, labels) in probabilities.items()}
    curves = {level: {"before": evaluation.reliability(before, labels), "after": evaluation.reliability(after, labels)}
              for level, (before, after, labels) in probabilities.items()}
    return Calibrated(classifier.name, files, fitted_on, ece, curves)


def reliability_png(calibrated: list[Calibrated], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(8.4, 4.2), squeeze=False)
    for axis, level in zip(axes[0], ("chunks", "sequences")):
        for number, result in enumerate(calibrated):
            for stage, style in (("before", "--"), ("after", "-")):
                points = result.reliability[level][stage]
                axis.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", markersize=3,
                          color=f"C{number}", label=f"{result.classifier} {stage}")
        axis.plot([0, 1], [0, 1], color="lightgray", linestyle=":")
        axis.set_title(f"{level.capitalize()}, test set", fontsize=10)
        axis.set_xlabel("predicted probability of being viral")
        axis.set_ylabel("share viral")
        axis.legend(loc="upper left", fontsize=8)
    save_png(figure, path)


# ---------------------------------------------------------------- verdict and report
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
        precision = evaluation.precision_at_prevalence(metrics["recall"], specificity, prevalence)
        rows.append((prevalence, precision, 1 - precision))
    return rows


def breakdown(level: Level, bins, unit: str) -> list[dict]:
    """Metrics per length bin of each classifier."""
    rows = []
    for low, high in bins:
        chosen = [k for k, length in enumerate(level.lengths) if length is not None and low < length <= high]
        if chosen:
            cells = {name: evaluation.call_metrics(level.labels[chosen], calls[chosen], level.scores[name][chosen])
                     for name, calls in level.calls.items()}
            label = f"{low + 1}-{high} bp" if high < 10**9 else f"over {low} bp"
            rows.append({"bin": label, "n": len(chosen), "unit": unit, "metrics": cells})
    return rows


def save_png(figure, path: str) -> None:
    import matplotlib.pyplot as plt

    figure.tight_layout()
    with units.atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    plt.close(figure)


def roc_png(levels: dict[str, Level], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    titles = dict(evaluation.LEVELS)
    figure, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels), 4.2), squeeze=False)
    for axis, (name, level) in zip(axes[0], levels.items()):
        if len(set(level.labels.tolist())) == 2:
            for classifier, scores in level.scores.items():
                fpr, tpr, _ = roc_curve(level.labels, scores)
                axis.plot(fpr, tpr, label=classifier)
        axis.plot([0, 1], [0, 1], color="lightgray", linestyle="--")
        axis.set_title(titles[name].split(" (")[0], fontsize=10)
        axis.set_xlabel("false positive rate")
        axis.set_ylabel("true positive rate")
        axis.legend(loc="lower right", fontsize=8)
    save_png(figure, path)


def fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def with_interval(value, interval) -> str:
    if interval is None:
        return fmt(value)
    return f"{fmt(value)} [{fmt(interval[0])}, {fmt(interval[1])}]"


def metrics_table(names, results, intervals, unit: str, difference=None) -> list[str]:
    header = "| metric | " + " | ".join(names) + (" | ESM2-3B minus FastESM2_650 |" if difference else " |")
    lines = [header, "|---|" + "---:|" * (len(names) + bool(difference))]
    for key, label in METRICS:
        cells = [with_interval(results[n][key], intervals.get(n, {}).get(key)) for n in names]
        if difference:
            value = results["ESM2-3B"][key] - results["FastESM2_650"][key]
            cells.append(with_interval(value, difference.get(key)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append(f"| {unit} | " + " | ".join(str(results[n]["n"]) for n in names) + (" | |" if difference else " |"))
    return lines


def calibration_lines(calibrated: list[Calibrated], classifiers: list[Classifier], png: str) -> list[str]:
    """The report's calibration section."""
    lines = ["## Calibration", "",
             "Each classifier trained on this split gets a calibration: isotonic regression of the true label on a "
             "chunk's best viral score, then on the mean of a sequence's calibrated chunk probabilities, fitted on "
             "reads and contigs cut from its validation records (the genomes its training held out for early "
             "stopping; never the test records) and run through prediction.py. It is saved beside the classifier, "
             "where prediction.py reads it to write Viral_probability and FDR. Expected calibration error (ECE, 10 "
             "bins) on the test sequences, before (the best viral score; for a sequence, the mean of its chunks') and "
             "after:", "", "| classifier | fitted on | level | ECE before | ECE after |", "|---|---|---|---:|---:|"]
    for result in calibrated:
        fitted = (f"{result.fitted_on['records']} records: {result.fitted_on['chunks']} chunks, "
                  f"{result.fitted_on['sequences']} sequences")
        lines += [f"| {result.classifier} | {fitted} | {level} | {fmt(before)} | {fmt(after)} |"
                  for level, (before, after) in result.ece.items()]
    few = [result.classifier for result in calibrated if result.fitted_on["sequences"] < FEW_CALIBRATION_SEQUENCES]
    if few:
        lines += ["", f"{' and '.join(few)}: fitted on fewer than {FEW_CALIBRATION_SEQUENCES} sequences, too few for "
                  "a reliable calibration; more validation genomes (train_fastesm.py --val-fraction) give a better "
                  "one."]
    lines += ["", "Written: " + ", ".join(f"`{file}`" for result in calibrated for file in result.files) + "."]
    left = [c.name for c in classifiers if not c.like_for_like]
    if left:
        lines += ["", f"Not calibrated: {', '.join(left)} (a published classifier records no validation records; "
                  "prediction with it says 'uncalibrated')."]
    return lines + ["", f"![Reliability]({os.path.basename(png)})", ""]


def write_report(path, levels: dict, results: dict, intervals: dict, verdicts: dict, like_for_like: bool,
                 threshold: float, breakdowns: dict, roc_file: str, notes: list[str],
                 calibration: list[str]) -> str:
    """The markdown report; returns the overall result."""
    titles = dict(evaluation.LEVELS)
    names = [n for n in ("FastESM2_650", "ESM2-3B") if n in results[next(iter(levels))]]
    compared = names if like_for_like else ["FastESM2_650"]
    overall = max(verdicts.values(), key=VERDICT_ORDER.index) if verdicts else \
        ("NO LIKE-FOR-LIKE BASELINE" if len(names) == 2 else "NO BASELINE")
    lines = ["# Validation report: FastESM2_650 against the ESM2-3B baseline", "", f"**Result: {overall}**", ""]
    lines += [f"- {note}" for note in notes] + [""]
    if verdicts:
        lines += ["## Verdict by level", "",
                  f"The accuracy drop (ESM2-3B minus FastESM2_650) with its 95% interval at each level. A level "
                  f"PASSES when the upper bound is under {threshold * 100:g} points, FAILS when the lower bound is at "
                  "or above it, and is INCONCLUSIVE otherwise (the test set is too small to tell); the result is the "
                  "worst level's.", "", "| level | accuracy drop (points) | 95% interval | verdict |",
                  "|---|---:|---:|---|"]
        for name, verdict in verdicts.items():
            drop = results[name]["ESM2-3B"]["accuracy"] - results[name]["FastESM2_650"]["accuracy"]
            low, high = intervals[name]["difference"]["accuracy"]
            lines.append(f"| {titles[name]} | {drop * 100:.2f} | [{low * 100:.2f}, {high * 100:.2f}] | {verdict} |")
        lines.append("")
    lines += ["## Metrics by level", "",
              "In brackets the 95% interval from a bootstrap over the held-out groups (resampled within each class): "
              "the rows of one record, or of related records, are not independent evidence. ROC-AUC has no "
              "interval.", ""]
    for name in levels:
        lines += [f"### {titles[name]}", "", LEVEL_NOTES[name], ""]
        lines += metrics_table(compared, results[name], intervals[name], UNIT_OF[name],
                               intervals[name].get("difference") if like_for_like else None)
        lines.append("")
    prevalence_level = "sequences" if "sequences" in levels else "frames_cds"
    lines += ["## Precision at other viral prevalences", "",
              "The test set is balanced, so its precision holds only where half the sequences are viral; in a "
              "metagenome viral reads are usually rare. From the measured recall (sensitivity) and specificity "
              f"at the level of {titles[prevalence_level].lower()}, the precision and the false discovery rate "
              "(FDR) at other prevalences:", "",
              "| classifier | viral prevalence | precision | FDR |", "|---|---:|---:|---:|"]
    for name in compared:
        lines += [f"| {name} | {prevalence:.0%} | {fmt(precision)} | {fmt(fdr)} |"
                  for prevalence, precision, fdr in prevalence_rows(results[prevalence_level][name])]
    lines += [""] + calibration
    if len(names) == 2 and not like_for_like:
        lines += ["", "## The published ESM2-3B classifier: an optimistic bound, not in the verdict", "",
                  "It was trained by the published code on a random 10% per-frame split over all records, so it has "
                  "seen most of these test genomes. Train the baseline like for like with "
                  "`train_fastesm.py --pipeline esm2_3b`.", ""]
        for name in levels:
            lines += [f"**{titles[name]}**", ""] + metrics_table(["ESM2-3B"], results[name], intervals[name],
                                                                  UNIT_OF[name]) + [""]
    lines += ["", "## Confusion matrices", "", "| level | classifier | host called host | host called viral | "
              "viral called host | viral called viral |", "|---|---|---:|---:|---:|---:|"]
    for name in levels:
        for classifier in names:
            (tn, fp), (fn, tp) = results[name][classifier]["confusion_matrix"]
            lines.append(f"| {titles[name]} | {classifier} | {tn} | {fp} | {fn} | {tp} |")
    lines += ["", "## ROC curves", "", f"![ROC curves]({os.path.basename(roc_file)})", ""]
    for title, rows in breakdowns.values():
        lines += [f"## {title}", ""]
        if not rows:
            lines += ["Lengths unknown: the split FASTA files are not under --data-dir.", ""]
            continue
        lines += ["| length | " + rows[0]["unit"] + " | " + " | ".join(f"{c} accuracy | {c} F1" for c in names) + " |",
                  "|---|---:|" + "---:|---:|" * len(names)]
        lines += [f"| {row['bin']} | {row['n']} | " + " | ".join(
            f"{fmt(row['metrics'][c]['accuracy'])} | {fmt(row['metrics'][c]['f1'])}" for c in names) + " |"
            for row in rows]
        lines.append("")
    if overall in ("FAILED", "INCONCLUSIVE"):
        lines += ["## Next steps", ""] + [f"1. {step}" for step in NEXT_STEPS]
    with units.atomic_write(path) as handle:
        handle.write("\n".join(lines).rstrip("\n") + "\n")
    return overall


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="FastESM2_650 checkpoint, or the folder holding it (default: "
                                        "model_fastesm650_<length>.pth, the chunk length the features record)")
    parser.add_argument("--merge-dir", default="data/data_merge", help="FastESM2_650 merged features")
    parser.add_argument("--split", default="data/test_set/test_metadata.json", help="test split (create_test_set.py)")
    parser.add_argument("--baseline-model", help="ESM2-3B checkpoint: train_fastesm.py --pipeline esm2_3b on the "
                                                 "same split, or a published one (reported apart)")
    parser.add_argument("--baseline-merge-dir", default="data/data_merge_esm2_3b",
                        help="ESM2-3B merged features (features_extract.py --pipeline esm2_3b)")
    parser.add_argument("--frames-only", action="store_true",
                        help="only the frames of annotated CDS in the merged features: no prediction run, no "
                             "language models needed")
    parser.add_argument("--fragment-lengths", type=int, nargs="+", metavar="BP",
                        help="lengths of the reads and contigs cut from each held-out record (default: the chunk "
                             "length, 1000 and 3000; a record not longer than a length is taken whole)")
    parser.add_argument("--fragments-per-record", type=int, default=10,
                        help="at most this many of each length per record, spread evenly (default %(default)s)")
    parser.add_argument("--work-dir", default="data/test_set/evaluation",
                        help="held-out sequences and the prediction runs on them (default: %(default)s)")
    parser.add_argument("--models-dir", help=f"models folder (default: ${units.MODELS_ENV}, else "
                                             f"{units.DEFAULT_MODELS_DIR})")
    parser.add_argument("--dna-model", help="DNABERT-S: Hugging Face id or local folder")
    parser.add_argument("--protein-model", help="FastESM2_650: Hugging Face id or local folder")
    parser.add_argument("--baseline-protein-model", help="ESM2-3B: Hugging Face id or local folder")
    parser.add_argument("--threshold", type=float, default=0.05,
                        help="largest acceptable accuracy drop (default 0.05: 5 points)")
    parser.add_argument("--replicates", type=int, default=2000, help="bootstrap replicates (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--data-dir", default="data",
                        help="where the genomes (*genomic.fna.gz) and the split FASTA files are (default: data)")
    parser.add_argument("--report-dir", default="reports", help="where the report goes (default: reports)")
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default)")
    args = parser.parse_args(argv)
    if args.replicates < 100:
        parser.error("--replicates must be at least 100")
    if args.fragments_per_record < 1 or any(length < 1 for length in args.fragment_lengths or ()):
        parser.error("--fragments-per-record and --fragment-lengths must be at least 1")
    return args


def load_classifiers(args, split: dict) -> list[Classifier]:
    test = set(split["test_accessions"])
    device = units.resolve_device(args.device)
    features = units.FeatureSet(units.find_merged_files(args.merge_dir))
    model_path = units.default_checkpoint_path(args.model, features.chunk_length())
    model, _, metadata = load_model(model_path, "fastesm650", features, device, args.split, test)
    classifiers = [Classifier("FastESM2_650", model_path, "fastesm650", model, features, True, metadata)]
    if args.baseline_model:
        baseline = units.FeatureSet(units.find_merged_files(args.baseline_merge_dir),
                                    units.PIPELINES["esm2_3b"].input_dim)
        baseline_model, like_for_like, metadata = load_model(args.baseline_model, "esm2_3b", baseline, device,
                                                             args.split, test)
        classifiers.append(Classifier("ESM2-3B", args.baseline_model, "esm2_3b", baseline_model, baseline,
                                      like_for_like, metadata))
    return classifiers


def notes_of(args, split: dict, classifiers: list[Classifier], levels: dict[str, Level]) -> list[str]:
    test = split["test_accessions"]
    grouping = split.get("grouping", {"level": "record"})
    held_out_by = grouping["level"] + (f" (ANI >= {grouping['ani_percent']:g}%)" if "ani_percent" in grouping else "")
    fold = f", fold {split['fold']['fold']} of {split['fold']['folds']}" if split.get("fold") else ""
    cds = levels["frames_cds"]
    notes = [f"Split {args.split}{fold}: {len(test)} held-out records in {len(split.get('test_groups', test))} "
             f"groups, held out by {held_out_by}; {len(set(cds.groups))} of the groups have test frames here; "
             f"{len(split.get('excluded_test_frames', ()))} test frames identical to training frames left out."]
    if "sequences" in levels:
        sequences = levels["sequences"]
        lengths = args.fragment_lengths or ["the chunk length", 1000, 3000]
        notes.append(f"Held-out sequences: up to {args.fragments_per_record} reads or contigs of each of "
                     f"{', '.join(map(str, lengths))} bp per held-out record (whole records when shorter), "
                     f"{int(sequences.labels.sum())} viral and {int(len(sequences.labels) - sequences.labels.sum())} "
                     f"host sequences scored by prediction.py (in {args.work_dir}).")
    else:
        notes.append("--frames-only: the levels prediction calls (sequences, chunks, every frame) were not run.")
    notes.append(f"FastESM2_650: {classifiers[0].path}, trained on this split.")
    if len(classifiers) == 1:
        notes.append("No baseline given (--baseline-model): FastESM2_650 metrics only.")
    elif classifiers[1].like_for_like:
        notes.append(f"ESM2-3B: {classifiers[1].path}, trained on this split with the same recipe; both are scored "
                     "on the same rows.")
    else:
        notes.append(f"ESM2-3B: {classifiers[1].path} is a published classifier, trained on these test genomes: "
                     "reported apart, not in the verdict.")
    return notes


def main(argv=None):
    args = parse_args(argv)
    split = evaluation.read_split(args.split)
    classifiers = load_classifiers(args, split)
    like_for_like = len(classifiers) == 2 and classifiers[1].like_for_like
    levels = {"frames_cds": cds_frames(classifiers, split, args.data_dir)}
    calibrated = []
    if not args.frames_only:
        chunk_length = classifiers[0].features.chunk_length() or units.load_checkpoint(classifiers[0].path)[1].get(
            "chunk_length")
        held_out, folders, test_sequences = held_out_levels(args, classifiers, split, chunk_length)
        levels = {**held_out, **levels}
        calibrated = [calibrate(args, c, split, chunk_length, folders[c.name], test_sequences)
                      for c in classifiers if c.like_for_like]

    results, intervals, verdicts = {}, {}, {}
    ordered = [c.name for c in classifiers][::-1]              # the difference: ESM2-3B minus FastESM2_650
    for name, level in levels.items():
        results[name] = {c: evaluation.call_metrics(level.labels, level.calls[c], level.scores[c])
                         for c in level.calls}
        intervals[name] = evaluation.group_bootstrap(level.groups, level.labels,
                                                     {c: level.calls[c] for c in ordered}, args.replicates,
                                                     args.seed)
        if like_for_like:
            verdicts[name] = verdict_of(intervals[name]["difference"]["accuracy"], args.threshold)

    os.makedirs(args.report_dir, exist_ok=True)
    for classifier in classifiers:
        with units.atomic_write(os.path.join(args.report_dir, f"metrics_{classifier.pipeline}.json")) as out:
            json.dump({name: {**results[name][classifier.name], "intervals_95": intervals[name][classifier.name]}
                       for name in levels}, out, indent=1)
    roc_file = os.path.join(args.report_dir, "roc_curves.png")
    roc_png(levels, roc_file)
    breakdowns = {"frames_cds": ("By frame length (frames of annotated CDS)",
                                 breakdown(levels["frames_cds"], FRAME_LENGTH_BINS, "frames"))}
    if "sequences" in levels:
        edges = sorted(set(args.fragment_lengths or [chunk_length, 1000, 3000]))
        bins = list(zip([0] + edges, edges)) + [(edges[-1], 10**9)]
        breakdowns = {"sequences": ("By held-out sequence length", breakdown(levels["sequences"], bins,
                                                                             "sequences")), **breakdowns}
    calibration = []
    if calibrated:
        reliability_file = os.path.join(args.report_dir, "reliability.png")
        reliability_png(calibrated, reliability_file)
        calibration = calibration_lines(calibrated, classifiers, reliability_file)
    report = os.path.join(args.report_dir, "validation_report.md")
    overall = write_report(report, levels, results, intervals, verdicts, like_for_like, args.threshold, breakdowns,
                           roc_file, notes_of(args, split, classifiers, levels), calibration)
    with units.atomic_write(os.path.join(args.report_dir, SUMMARY_FILE)) as out:
        json.dump({"result": overall, "verdicts": verdicts, "threshold": args.threshold,
                   "accuracy_drop_95": {name: intervals[name].get("difference", {}).get("accuracy")
                                        for name in levels},
                   "calibration": {c.classifier: {"files": c.files, "fitted_on": c.fitted_on,
                                                  "ece_before_after": c.ece} for c in calibrated}}, out, indent=1)

    titles = dict(evaluation.LEVELS)
    for name in levels:
        for classifier, metrics in results[name].items():
            print(f"{titles[name].split(' (')[0]:>22} {classifier:>13}: "
                  + "  ".join(f"{label} {fmt(metrics.get(key))}" for key, label in METRICS))
        if name in verdicts:
            low, high = intervals[name]["difference"]["accuracy"]
            print(f"{'':>22} accuracy drop 95% interval: [{low * 100:.2f}, {high * 100:.2f}] points -> "
                  f"{verdicts[name]}")
    print(f"result: {overall}\nreport: {report}")
    return 1 if overall == "FAILED" else 0


if __name__ == "__main__":
    units.run_cli(main)
