#!/usr/bin/env python3
"""Evaluate the FastESM2_650 classifier on the test set, against the ESM2-3B baseline.

    python scripts/evaluate_compare.py --model model_fastesm650_500.pth \\
        --baseline-model 500_model.pth --baseline-merge-dir data/data_merge_esm2_3b

Accuracy, precision, recall, F1, ROC-AUC and the confusion matrix of the
FastESM2_650 model on the test rows of --split, and of the ESM2-3B baseline
on the same test frames (its own features, from features_extract.py
--pipeline esm2_3b, and its own checkpoint), or from a metrics JSON written
by an earlier run (--baseline-metrics). Both are computed on the frames the two
feature sets share.

Writes reports/validation_report.md (metrics side by side, confusion matrices,
ROC curves as PNG, a breakdown by frame length) and metrics JSON files, and
prints a summary. PASSED when the accuracy drop is under 5 percentage points;
otherwise FAILED with suggested next steps and exit status 1. Without a
baseline the report says so plainly.
"""
from __future__ import annotations

import argparse
import json
import math
import os

import numpy as np

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


def test_rows(features: units.FeatureSet, test_accessions: set) -> np.ndarray:
    return np.flatnonzero([units.accession_of(i) in test_accessions for i in features.ids])


def score(model_path, pipeline, features, rows, device) -> np.ndarray:
    model, _ = units.load_checkpoint(model_path, pipeline, device, chunk_length=features.chunk_length())
    return units.predict_probabilities(model, features.rows(rows)).numpy()


def length_breakdown(ids, labels, probabilities, lengths) -> list[dict]:
    breakdown = []
    for low, high in LENGTH_BINS:
        chosen = [k for k, i in enumerate(ids) if i in lengths and low <= lengths[i] < high]
        if chosen:
            metrics = units.classification_metrics(labels[chosen], probabilities[chosen])
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


def write_report(path, results: dict, verdict: str, drop, breakdown: list, roc_file, notes: list) -> None:
    names = list(results)
    lines = ["# Validation report: FastESM2_650 against the ESM2-3B baseline", "", f"**Result: {verdict}**", ""]
    lines += [f"- {note}" for note in notes] + [""]
    lines += ["## Metrics", "", "| metric | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for key, label in METRICS:
        lines.append(f"| {label} | " + " | ".join(fmt(results[n][key]) for n in names) + " |")
    lines.append("| test frames | " + " | ".join(str(results[n].get("n", "n/a")) for n in names) + " |")
    if drop is not None:
        lines += ["", f"Accuracy drop (ESM2-3B minus FastESM2_650): {drop * 100:.2f} percentage points "
                      "(PASSED below 5)."]
    lines += ["", "## Confusion matrices", ""]
    for name in names:
        if results[name].get("confusion_matrix"):
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
    if verdict == "FAILED":
        lines += ["", "## Next steps", ""] + [f"1. {step}" for step in NEXT_STEPS]
    with units.atomic_write(path) as handle:
        handle.write("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", help="FastESM2_650 checkpoint, or the folder holding it (default: "
                                        "model_fastesm650_<length>.pth, the chunk length the features record)")
    parser.add_argument("--merge-dir", default="data/data_merge", help="FastESM2_650 merged features")
    parser.add_argument("--split", default="data/test_set/test_metadata.json", help="test split (create_test_set.py)")
    parser.add_argument("--baseline-model", help="ESM2-3B checkpoint, e.g. the published 500_model.pth")
    parser.add_argument("--baseline-merge-dir", default="data/data_merge_esm2_3b",
                        help="ESM2-3B merged features (features_extract.py --pipeline esm2_3b)")
    parser.add_argument("--baseline-metrics", help="baseline metrics JSON instead of --baseline-model")
    parser.add_argument("--data-dir", default="data", help="where the split FASTA files are, for frame lengths")
    parser.add_argument("--report-dir", default="reports", help="where the report goes (default: reports)")
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default)")
    args = parser.parse_args(argv)
    try:
        with open(args.split) as handle:
            test_accessions = set(json.load(handle)["test_accessions"])
    except FileNotFoundError:
        raise units.InputError(f"{args.split}: no such split file; run scripts/create_test_set.py first") from None
    device = units.resolve_device(args.device)

    features = units.FeatureSet(units.find_merged_files(args.merge_dir))
    model_path = units.default_checkpoint_path(args.model, features.chunk_length())
    rows = test_rows(features, test_accessions)
    notes, curves, results = [], {}, {}
    baseline = None
    if args.baseline_model:
        baseline = units.FeatureSet(units.find_merged_files(args.baseline_merge_dir), units.PIPELINES["esm2_3b"].input_dim)
        baseline_index = {i: k for k, i in enumerate(baseline.ids)}
        shared = [r for r in rows if features.ids[r] in baseline_index]
        notes.append(f"{len(shared)} of {len(rows)} test frames have ESM2-3B features; both models are scored on these.")
        rows = np.array(shared, dtype=np.int64)
    if len(rows) == 0:
        raise units.InputError("no test frames to evaluate: check --split against --merge-dir "
                               "(and --baseline-merge-dir)")
    labels = features.labels[rows]
    probabilities = score(model_path, "fastesm650", features, rows, device)
    results["FastESM2_650"] = units.classification_metrics(labels, probabilities)
    curves["FastESM2_650"] = (labels, probabilities)

    if baseline is not None:
        baseline_rows = np.array([baseline_index[features.ids[r]] for r in rows], dtype=np.int64)
        baseline_probabilities = score(args.baseline_model, "esm2_3b", baseline, baseline_rows, device)
        results["ESM2-3B"] = units.classification_metrics(baseline.labels[baseline_rows], baseline_probabilities)
        curves["ESM2-3B"] = (baseline.labels[baseline_rows], baseline_probabilities)
    elif args.baseline_metrics:
        with open(args.baseline_metrics) as handle:
            results["ESM2-3B"] = json.load(handle)
        notes.append(f"ESM2-3B metrics read from {args.baseline_metrics}, not recomputed on this test set.")

    os.makedirs(args.report_dir, exist_ok=True)
    for name, metrics in results.items():
        if name in curves:                       # computed here, not read from --baseline-metrics
            with units.atomic_write(os.path.join(args.report_dir, f"metrics_{PIPELINE_OF[name]}.json")) as out:
                json.dump(metrics, out, indent=1)
    if "ESM2-3B" in results:
        drop = results["ESM2-3B"]["accuracy"] - results["FastESM2_650"]["accuracy"]
        verdict = "PASSED" if drop < 0.05 else "FAILED"
    else:
        drop, verdict = None, "NO BASELINE"
        notes.append("No baseline given (--baseline-model or --baseline-metrics): nothing to compare against, "
                     "FastESM2_650 metrics only.")
    roc_file = os.path.join(args.report_dir, "roc_curves.png")
    roc_png(curves, roc_file)
    breakdown = length_breakdown([features.ids[r] for r in rows], labels, probabilities,
                                 units.frame_lengths(features.files, args.data_dir))
    report = os.path.join(args.report_dir, "validation_report.md")
    write_report(report, results, verdict, drop, breakdown, roc_file, notes)

    for name, metrics in results.items():
        print(f"{name:>13}: " + "  ".join(f"{label} {fmt(metrics.get(key))}" for key, label in METRICS))
    if drop is not None:
        print(f"accuracy drop: {drop * 100:.2f} points -> {verdict}")
    else:
        print("no baseline: FastESM2_650 metrics only")
    print(f"report: {report}")
    return 1 if verdict == "FAILED" else 0


if __name__ == "__main__":
    units.run_cli(main)
