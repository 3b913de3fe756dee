#!/usr/bin/env python3
"""Evaluate the FastESM2_650 classifier on the test set, against the ESM2-3B baseline.

    python scripts/evaluate_compare.py [--model model_fastesm650_500.pth] \\
        --baseline-model model_esm2_3b_500.pth [--baseline-merge-dir data/data_merge_esm2_3b]

Both classifiers are scored on the test records of --split (the frames both
feature sets hold). Like for like: the baseline is the ESM2-3B classifier
trained by train_fastesm.py --pipeline esm2_3b on the same split. Each model
must record the split it was trained on (train_fastesm.py does): a model
trained on another split is refused, since some test records would be its
training data. The published 300_model.pth / 500_model.pth were trained on a
random per-frame split over all records, so they have seen the test genomes:
given as --baseline-model they are reported in a section of their own, as an
optimistic bound, and never enter the verdict.

Every metric comes with a 95% interval from a bootstrap over the split's
held-out groups (organisms by default), not frames; the verdict uses the interval of the paired accuracy
drop (ESM2-3B minus FastESM2_650): PASSED when its upper bound is under
--threshold (5 points), FAILED when its lower bound is at or above it,
INCONCLUSIVE otherwise (exit status 1 for FAILED). Precision and FDR are also
given at viral prevalences of 1%, 10% and 50%: the test set is balanced,
metagenomes are not.

Writes reports/validation_report.md (metrics with intervals, the paired
difference, prevalence table, confusion matrices, ROC curves as PNG, a
breakdown by frame length) and reports/metrics_<pipeline>.json, and prints a
summary.
"""
from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np

import evaluation
import units

METRICS = (("accuracy", "Accuracy"), ("precision", "Precision"), ("recall", "Recall"), ("f1", "F1"),
           ("roc_auc", "ROC-AUC"))
PIPELINE_OF = {"FastESM2_650": "fastesm650", "ESM2-3B": "esm2_3b"}
LENGTH_BINS = ((0, 150), (150, 300), (300, 450), (450, 10_000))
NEXT_STEPS = [
    "Check the training log: a validation loss still falling at the last epoch calls for more epochs "
    "or a larger --patience.",
    "Check the class balance and length distribution of the split (scripts/create_test_set.py report).",
    "Validate the features (scripts/validate_features.py) and look for failures in extraction_failures.log.",
    "Retrain with --save-best, or tune the learning rate (--lr) and batch size.",
]


def test_rows(features: units.FeatureSet, split: dict) -> np.ndarray:
    """Rows of held-out records, less the frames identical to a training frame."""
    test, excluded = set(split["test_accessions"]), set(split.get("excluded_test_frames", ()))
    return np.flatnonzero([units.accession_of(i) in test and i not in excluded for i in features.ids])


PREVALENCES = (0.01, 0.10, 0.50)


def load_model(model_path, pipeline, features, device, split_file, test: set):
    """The classifier and whether it was trained on this split (``False``
    for a published classifier, which records no split); a model trained on
    another split is refused."""
    model, metadata = units.load_checkpoint(model_path, pipeline, device, chunk_length=features.chunk_length())
    if metadata.get("checkpoint_version") == "published":
        return model, False
    recorded = metadata.get("split")
    if not isinstance(recorded, dict):
        raise units.InputError(f"{model_path}: does not record the split it was trained on, so it may have been "
                               f"trained on test records; retrain it with train_fastesm.py --split {split_file}")
    if recorded.get("test_records") != evaluation.record_fingerprint(test):
        raise units.InputError(f"{model_path}: trained with another split than {split_file} (its held-out records "
                               "differ), so some test records may be its training data; evaluate it with the split "
                               "it was trained with, or retrain it on this one")
    return model, True


def score(model, features, rows) -> np.ndarray:
    return units.predict_probabilities(model, features.rows(rows)).numpy()


def calls(probabilities: np.ndarray) -> np.ndarray:
    """The predicted class: viral when score2 > score1 ('others' on an exact tie, as published)."""
    return (probabilities[:, 1] > probabilities[:, 0]).astype(np.int64)


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


def length_breakdown(ids, labels, probabilities, lengths) -> list[dict]:
    breakdown = []
    for low, high in LENGTH_BINS:
        chosen = [k for k, i in enumerate(ids) if i in lengths and low <= lengths[i] < high]
        if chosen:
            metrics = evaluation.classification_metrics(labels[chosen], probabilities[chosen])
            breakdown.append({"bin": f"{low}-{high if high < 10_000 else ''} bp", **metrics})
    return breakdown


def roc_png(curves: dict, path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    figure, axis = plt.subplots(figsize=(5.5, 5))
    for name, (labels, probabilities) in curves.items():
        fpr, tpr, _ = roc_curve(labels, probabilities[:, 1])
        axis.plot(fpr, tpr, label=name)
    axis.plot([0, 1], [0, 1], color="lightgray", linestyle="--")
    axis.set_xlabel("false positive rate")
    axis.set_ylabel("true positive rate")
    axis.legend(loc="lower right")
    figure.tight_layout()
    with units.atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)


def fmt(value) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4f}"


def confusion_table(name, matrix) -> list[str]:
    (tn, fp), (fn, tp) = matrix
    return [f"**{name}**", "", "| | predicted host | predicted viral |", "|---|---:|---:|",
            f"| host | {tn} | {fp} |", f"| viral | {fn} | {tp} |", ""]


def with_interval(value, interval) -> str:
    if interval is None:
        return fmt(value)
    return f"{fmt(value)} [{fmt(interval[0])}, {fmt(interval[1])}]"


def metrics_table(names, results, intervals, difference=None) -> list[str]:
    header = "| metric | " + " | ".join(names) + (" | ESM2-3B minus FastESM2_650 |" if difference else " |")
    lines = [header, "|---|" + "---:|" * (len(names) + bool(difference))]
    for key, label in METRICS:
        cells = [with_interval(results[n][key], intervals.get(n, {}).get(key)) for n in names]
        if difference:
            value = results["ESM2-3B"][key] - results["FastESM2_650"][key]
            cells.append(with_interval(value, difference.get(key)))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    lines.append("| test frames | " + " | ".join(str(results[n]["n"]) for n in names) + (" | |" if difference else " |"))
    return lines


def write_report(path, results: dict, like_for_like: bool, verdict: str, intervals: dict, threshold: float,
                 breakdown: list, roc_file, notes: list) -> None:
    compared = [name for name in ("FastESM2_650", "ESM2-3B") if name in results and (like_for_like or
                                                                                        name == "FastESM2_650")]
    lines = ["# Validation report: FastESM2_650 against the ESM2-3B baseline", "", f"**Result: {verdict}**", ""]
    lines += [f"- {note}" for note in notes] + [""]
    lines += ["## Metrics", "", "Test frames of held-out records; in brackets the 95% interval from a bootstrap "
              "over test records (resampled within each class), since the frames of one record are not independent "
              "evidence. ROC-AUC has no interval.", ""]
    lines += metrics_table(compared, results, intervals, intervals.get("difference") if like_for_like else None)
    if like_for_like:
        low, high = intervals["difference"]["accuracy"]
        drop = results["ESM2-3B"]["accuracy"] - results["FastESM2_650"]["accuracy"]
        lines += ["", f"Accuracy drop (ESM2-3B minus FastESM2_650): {drop * 100:.2f} points, 95% interval "
                      f"[{low * 100:.2f}, {high * 100:.2f}]. PASSED when the upper bound is under "
                      f"{threshold * 100:g} points, FAILED when the lower bound is at or above it, INCONCLUSIVE "
                      "otherwise: the test set is too small to tell."]
    lines += ["", "## Precision at other viral prevalences", "",
              "The test set is balanced, so its precision holds only where half the sequences are viral; in a "
              "metagenome viral reads are usually rare. From the measured recall (sensitivity) and specificity, "
              "the precision and the false discovery rate (FDR) at other prevalences:", "",
              "| classifier | viral prevalence | precision | FDR |", "|---|---:|---:|---:|"]
    for name in compared:
        lines += [f"| {name} | {prevalence:.0%} | {fmt(precision)} | {fmt(fdr)} |"
                  for prevalence, precision, fdr in prevalence_rows(results[name])]
    if "ESM2-3B" in results and not like_for_like:
        lines += ["", "## The published ESM2-3B classifier: an optimistic bound, not in the verdict", "",
                  "It was trained by the published code on a random 10% per-frame split over all records, so it has "
                  "seen most of these test genomes. Train the baseline like for like with "
                  "`train_fastesm.py --pipeline esm2_3b`.", ""]
        lines += metrics_table(["ESM2-3B"], results, intervals)
    lines += ["", "## Confusion matrices", ""]
    for name in results:
        lines += confusion_table(name, results[name]["confusion_matrix"])
    if roc_file:
        lines += ["## ROC curves", "", f"![ROC curves]({os.path.basename(roc_file)})", ""]
    lines += ["## By frame length (FastESM2_650)", ""]
    if breakdown:
        lines += ["| frame length | frames | accuracy | F1 | ROC-AUC |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {b['bin']} | {b['n']} | {fmt(b['accuracy'])} | {fmt(b['f1'])} | {fmt(b['roc_auc'])} |"
                  for b in breakdown]
    else:
        lines.append("Frame lengths unknown: the split FASTA files are not under --data-dir.")
    if verdict in ("FAILED", "INCONCLUSIVE"):
        lines += ["", "## Next steps", ""] + [f"1. {step}" for step in NEXT_STEPS]
    with units.atomic_write(path) as handle:
        handle.write("\n".join(lines) + "\n")


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
    parser.add_argument("--threshold", type=float, default=0.05,
                        help="largest acceptable accuracy drop (default 0.05: 5 points)")
    parser.add_argument("--replicates", type=int, default=2000, help="bootstrap replicates (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--data-dir", default="data", help="where the split FASTA files are, for frame lengths")
    parser.add_argument("--report-dir", default="reports", help="where the report goes (default: reports)")
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default)")
    args = parser.parse_args(argv)
    if args.replicates < 100:
        parser.error("--replicates must be at least 100")
    return args


def main(argv=None):
    args = parse_args(argv)
    split = evaluation.read_split(args.split)
    test = set(split["test_accessions"])
    device = units.resolve_device(args.device)
    features = units.FeatureSet(units.find_merged_files(args.merge_dir))
    model_path = units.default_checkpoint_path(args.model, features.chunk_length())
    model, _ = load_model(model_path, "fastesm650", features, device, args.split, test)
    rows = test_rows(features, split)
    like_for_like = False
    if args.baseline_model:
        baseline = units.FeatureSet(units.find_merged_files(args.baseline_merge_dir),
                                    units.PIPELINES["esm2_3b"].input_dim)
        baseline_model, like_for_like = load_model(args.baseline_model, "esm2_3b", baseline, device, args.split, test)
        baseline_index = {i: k for k, i in enumerate(baseline.ids)}
        rows = np.array([r for r in rows if features.ids[r] in baseline_index], dtype=np.int64)
    if len(rows) == 0:
        raise units.InputError("no test frames to evaluate: check --split against --merge-dir "
                               "(and --baseline-merge-dir)")
    labels = features.labels[rows]
    group_of = split.get("test_group_of", {})            # resample the split's groups, e.g. organisms
    groups = [group_of.get(a, a) for a in (units.accession_of(features.ids[r]) for r in rows)]
    probabilities = {"FastESM2_650": score(model, features, rows)}
    if args.baseline_model:
        probabilities["ESM2-3B"] = score(baseline_model, baseline,
                                         np.array([baseline_index[features.ids[r]] for r in rows], dtype=np.int64))
    results = {name: evaluation.classification_metrics(labels, p) for name, p in probabilities.items()}
    ordered = sorted(probabilities, key=lambda name: name != "ESM2-3B")          # difference: ESM2-3B minus ours
    intervals = evaluation.group_bootstrap(groups, labels, {name: calls(probabilities[name]) for name in ordered},
                                      args.replicates, args.seed)
    if like_for_like:
        verdict = verdict_of(intervals["difference"]["accuracy"], args.threshold)
    else:
        verdict = "NO LIKE-FOR-LIKE BASELINE" if args.baseline_model else "NO BASELINE"
    grouping = split.get("grouping", {"level": "record"})
    notes = [f"Split {args.split}: {len(test)} held-out records in {len(split.get('test_groups', test))} groups, "
             f"held out by {grouping['level']}; {len(set(groups))} of the groups have test frames here "
             f"({int(labels.sum())} viral and {int(len(labels) - labels.sum())} host frames); "
             f"{len(split.get('excluded_test_frames', ()))} test frames identical to training frames left out.",
             f"FastESM2_650: {model_path}, trained on this split."]
    if like_for_like:
        notes.append(f"ESM2-3B: {args.baseline_model}, trained on this split with the same recipe; both are scored "
                     "on the frames the two feature sets share.")
    elif args.baseline_model:
        notes.append(f"ESM2-3B: {args.baseline_model} is a published classifier, trained on these test genomes: "
                     "reported apart, not in the verdict.")
    else:
        notes.append("No baseline given (--baseline-model): FastESM2_650 metrics only.")

    os.makedirs(args.report_dir, exist_ok=True)
    for name, metrics in results.items():
        with units.atomic_write(os.path.join(args.report_dir, f"metrics_{PIPELINE_OF[name]}.json")) as out:
            json.dump({**metrics, "intervals_95": intervals[name]}, out, indent=1)
    roc_file = os.path.join(args.report_dir, "roc_curves.png")
    roc_png({name: (labels, p) for name, p in probabilities.items()}, roc_file)
    breakdown = length_breakdown([features.ids[r] for r in rows], labels, probabilities["FastESM2_650"],
                                 evaluation.frame_lengths(features.files, args.data_dir))
    report = os.path.join(args.report_dir, "validation_report.md")
    write_report(report, results, like_for_like, verdict, intervals, args.threshold, breakdown, roc_file, notes)

    for name, metrics in results.items():
        print(f"{name:>13}: " + "  ".join(f"{label} {fmt(metrics.get(key))}" for key, label in METRICS))
    if like_for_like:
        low, high = intervals["difference"]["accuracy"]
        print(f"accuracy drop 95% interval: [{low * 100:.2f}, {high * 100:.2f}] points -> {verdict}")
    else:
        print(verdict.lower())
    print(f"report: {report}")
    return 1 if verdict == "FAILED" else 0


if __name__ == "__main__":
    units.run_cli(main)
