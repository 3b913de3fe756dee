"""The evaluation's markdown: the validation report of scripts/evaluate_compare.py
(verdict per level, metrics with intervals, prevalence, calibration, confusion
matrices, ROC curves, breakdowns by length), its JSON summaries, and the
cross-validation report of scripts/cross_validate.py."""
from __future__ import annotations

import json
import math
import os

import numpy as np

from virnucpro.files import atomic_write
from virnucpro.prediction.plots import reliability_png, roc_png
from virnucpro.scoring.calibration import FEW_CALIBRATION_SEQUENCES
from virnucpro.training.evaluation import LEVELS, Calibrated, Classifier, Level, prevalence_rows, too_few_groups

METRICS = (("accuracy", "Accuracy"), ("precision", "Precision"), ("recall", "Recall"), ("f1", "F1"),
           ("roc_auc", "ROC-AUC"))
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
VERDICT_ORDER = ("PASSED", "INCONCLUSIVE", "FAILED")
SUMMARY_FILE = "validation_summary.json"
NEXT_STEPS = [
    "Check the training log: a validation loss still falling at the last epoch calls for more epochs "
    "or a larger --patience.",
    "Check the class balance and length distribution of the split (scripts/create_test_set.py report).",
    "Validate the features (scripts/validate_features.py) and look for failures in extraction_failures.log.",
    "Retrain with --save-best, or tune the learning rate (--lr) and batch size.",
]


def fmt(value) -> str:
    """A metric as the report writes it: four decimals, ``n/a`` when undefined."""
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def with_interval(value, interval) -> str:
    if interval is None:
        return fmt(value)
    return f"{fmt(value)} [{fmt(interval[0])}, {fmt(interval[1])}]"


def metrics_table(names, results, intervals, unit: str, difference=None) -> list[str]:
    """One level's metrics table: each classifier with its intervals, and the paired difference."""
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
    titles = dict(LEVELS)
    names = [n for n in ("FastESM2_650", "ESM2-3B") if n in results[next(iter(levels))]]
    compared = names if like_for_like else ["FastESM2_650"]
    overall = max(verdicts.values(), key=VERDICT_ORDER.index) if verdicts else \
        ("NO LIKE-FOR-LIKE BASELINE" if len(names) == 2 else "NO BASELINE")
    few = next((reason for reason in map(too_few_groups, (levels[name] for name in verdicts)) if reason), None)
    why = f" ({few})" if few and overall == "INCONCLUSIVE" else ""
    lines = ["# Validation report: FastESM2_650 against the ESM2-3B baseline", "", f"**Result: {overall}**{why}", ""]
    lines += [f"- {note}" for note in notes] + [""]
    if verdicts:
        lines += ["## Verdict by level", "",
                  f"The accuracy drop (ESM2-3B minus FastESM2_650) with its 95% interval at each level. A level "
                  f"PASSES when the upper bound is under {threshold * 100:g} points, FAILS when the lower bound is at "
                  "or above it, and is INCONCLUSIVE otherwise (the test set is too small to tell), or whatever the "
                  "interval when a class has fewer than 3 held-out groups (its interval has no width to trust); the "
                  "result is the worst level's.", "", "| level | accuracy drop (points) | 95% interval | verdict |",
                  "|---|---:|---:|---|"]
        for name, verdict in verdicts.items():
            drop = results[name]["ESM2-3B"]["accuracy"] - results[name]["FastESM2_650"]["accuracy"]
            low, high = intervals[name]["difference"]["accuracy"]
            lines.append(f"| {titles[name]} | {drop * 100:.2f} | [{low * 100:.2f}, {high * 100:.2f}] | "
                         f"{verdict_cell(verdict, levels[name])} |")
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
    with atomic_write(path) as handle:
        handle.write("\n".join(lines).rstrip("\n") + "\n")
    return overall


def notes_of(split_file: str, split: dict, classifiers: list[Classifier], levels: dict[str, Level],
             fragment_lengths: list | None, fragments_per_record: int, work_dir: str) -> list[str]:
    """The report's opening notes: the split, the held-out sequences, the classifiers compared."""
    test = split["test_accessions"]
    grouping = split.get("grouping", {"level": "record"})
    held_out_by = grouping["level"] + (f" (ANI >= {grouping['ani_percent']:g}%)" if "ani_percent" in grouping else "")
    fold = f", fold {split['fold']['fold']} of {split['fold']['folds']}" if split.get("fold") else ""
    cds = levels["frames_cds"]
    notes = [f"Split {split_file}{fold}: {len(test)} held-out records in {len(split.get('test_groups', test))} "
             f"groups, held out by {held_out_by}; {len(set(cds.groups))} of the groups have test frames here; "
             f"{len(split.get('excluded_test_frames', ()))} test frames identical to training frames left out."]
    if "sequences" in levels:
        sequences = levels["sequences"]
        lengths = fragment_lengths or ["the chunk length", 1000, 3000]
        notes.append(f"Held-out sequences: up to {fragments_per_record} reads or contigs of each of "
                     f"{', '.join(map(str, lengths))} bp per held-out record (whole records when shorter), "
                     f"{int(sequences.labels.sum())} viral and {int(len(sequences.labels) - sequences.labels.sum())} "
                     f"host sequences scored by prediction.py (in {work_dir}).")
    else:
        notes.append("--frames-only: the levels prediction calls (sequences, chunks, every frame) were not run.")
    notes.append(f"FastESM2_650: {classifiers[0].path}, trained on this split.")
    if len(classifiers) == 1:
        notes.append("No baseline given (--baseline-checkpoint): FastESM2_650 metrics only.")
    elif classifiers[1].like_for_like:
        notes.append(f"ESM2-3B: {classifiers[1].path}, trained on this split with the same recipe; both are scored "
                     "on the same rows.")
    else:
        notes.append(f"ESM2-3B: {classifiers[1].path} is a published classifier, trained on these test genomes: "
                     "reported apart, not in the verdict.")
    return notes


def write_evaluation(report_dir: str, levels: dict[str, Level], classifiers: list[Classifier],
                     calibrated: list[Calibrated], results: dict, intervals: dict, verdicts: dict, like_for_like: bool,
                     threshold: float, breakdowns: dict, notes: list[str]) -> tuple[str, str]:
    """Every file of the evaluation in ``report_dir``: metrics_<pipeline>.json, roc_curves.png,
    reliability.png, validation_report.md and validation_summary.json; ``(overall result, report path)``."""
    os.makedirs(report_dir, exist_ok=True)
    for classifier in classifiers:
        with atomic_write(os.path.join(report_dir, f"metrics_{classifier.pipeline}.json")) as out:
            json.dump({name: {**results[name][classifier.name], "intervals_95": intervals[name][classifier.name]}
                       for name in levels}, out, indent=1)
    roc_file = os.path.join(report_dir, "roc_curves.png")
    roc_png(levels, dict(LEVELS), roc_file)
    calibration = []
    if calibrated:
        reliability_file = os.path.join(report_dir, "reliability.png")
        reliability_png(calibrated, reliability_file)
        calibration = calibration_lines(calibrated, classifiers, reliability_file)
    report = os.path.join(report_dir, "validation_report.md")
    overall = write_report(report, levels, results, intervals, verdicts, like_for_like, threshold, breakdowns,
                           roc_file, notes, calibration)
    with atomic_write(os.path.join(report_dir, SUMMARY_FILE)) as out:
        json.dump({"result": overall, "verdicts": verdicts, "threshold": threshold,
                   "too_few_groups": {name: too_few_groups(levels[name]) for name in verdicts
                                      if too_few_groups(levels[name])},
                   "accuracy_drop_95": {name: intervals[name].get("difference", {}).get("accuracy")
                                        for name in levels},
                   "calibration": {c.classifier: {"files": c.files, "fitted_on": c.fitted_on,
                                                  "ece_before_after": c.ece} for c in calibrated}}, out, indent=1)
    return overall, report


def verdict_cell(verdict: str, level: Level) -> str:
    """A level's verdict, with the reason when too few held-out groups made it INCONCLUSIVE."""
    reason = too_few_groups(level)
    return f"{verdict} ({reason})" if reason else verdict


def console_lines(levels: dict, results: dict, intervals: dict, verdicts: dict) -> list[str]:
    """What the evaluation prints: each level's metrics per classifier, and its verdict."""
    titles, lines = dict(LEVELS), []
    for name in levels:
        for classifier, metrics in results[name].items():
            lines.append(f"{titles[name].split(' (')[0]:>22} {classifier:>13}: "
                         + "  ".join(f"{label} {fmt(metrics.get(key))}" for key, label in METRICS))
        if name in verdicts:
            low, high = intervals[name]["difference"]["accuracy"]
            lines.append(f"{'':>22} accuracy drop 95% interval: [{low * 100:.2f}, {high * 100:.2f}] points -> "
                         f"{verdict_cell(verdicts[name], levels[name])}")
    return lines


def mean_sd(values) -> str:
    """``mean ± standard deviation`` over the folds that define the metric."""
    values = np.array([v for v in values if v is not None and not np.isnan(v)], dtype=float)
    if not len(values):
        return "n/a"
    return f"{values.mean():.4f} ± {values.std(ddof=1) if len(values) > 1 else 0:.4f}"


def write_cross_validation(path: str, folds: list[dict], group_by: str, seed: int, work_dir: str,
                           baseline: bool) -> None:
    """reports/cross_validation.md: each metric's mean and spread over the folds, and each fold's result."""
    titles = dict(LEVELS)
    names = ["FastESM2_650", "ESM2-3B"][:1 + baseline]
    lines = ["# Cross-validation: FastESM2_650 against the ESM2-3B baseline", "",
             f"{len(folds)} group-disjoint folds, records held out by {group_by} (seed {seed}); in each "
             "fold both classifiers were trained on the other folds with the same recipe and scored on the held-out "
             "one, so every record was tested once. Mean ± standard deviation over the folds.", ""]
    for level in titles:
        if level not in folds[0][names[0]]:
            continue
        header = "| metric | " + " | ".join(names) + (" | ESM2-3B minus FastESM2_650 | range |" if baseline else " |")
        lines += [f"## {titles[level]}", "", header, "|---|" + "---:|" * (len(names) + 2 * baseline)]
        for key, label in METRICS:
            cells = [mean_sd(fold[name][level][key] for fold in folds) for name in names]
            if baseline:
                differences = [fold["ESM2-3B"][level][key] - fold["FastESM2_650"][level][key] for fold in folds]
                cells += [mean_sd(differences), f"{min(differences):.4f} to {max(differences):.4f}"]
            lines.append(f"| {label} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Folds", "", "| fold | result | " + " | ".join(titles[level].split(" (")[0] for level in titles
                                                              if level in folds[0][names[0]]) + " |"]
    levels = [level for level in titles if level in folds[0][names[0]]]
    lines.append("|---|---|" + "---|" * len(levels))
    for k, fold in enumerate(folds, start=1):
        verdicts = fold["summary"]["verdicts"]
        lines.append(f"| {k} | {fold['summary']['result']} | " + " | ".join(
            f"{fold[names[0]][level]['n']} rows" + (f", {verdicts[level]}" if level in verdicts else "")
            for level in levels) + " |")
    lines += ["", f"Each fold's report: {work_dir}/fold_<k>/report/validation_report.md."]
    with atomic_write(path) as handle:
        handle.write("\n".join(lines) + "\n")
