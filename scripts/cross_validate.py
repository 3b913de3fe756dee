#!/usr/bin/env python3
"""Group-disjoint cross-validation: K splits, both classifiers trained and evaluated on each.

    python scripts/cross_validate.py --folds 5 [--group-by organism] [--frames-only]

The groups of related records (--group-by, as scripts/create_test_set.py) are
dealt into K folds of about equal size per class; for each fold k, fold k is
held out, the FastESM2_650 classifier and the ESM2-3B baseline (when
--baseline-merge-dir holds features) are trained on the rest with the same
recipe (train_fastesm.py), and scripts/evaluate_compare.py scores both. Every
held-out record is tested exactly once across the folds.

Writes reports/cross_validation.md: per level, each metric's mean and
standard deviation over the folds for each classifier and for the paired
difference (ESM2-3B minus FastESM2_650), and each fold's result. Each fold's
split, models, evaluation and report are kept in --work-dir/fold_<k>/; a
re-run reuses the finished ones (a work folder holding another
cross-validation's settings is refused).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import sys

from virnucpro.commands import options
from virnucpro.commands.cli import at_least, fraction, run_cli
from virnucpro.errors import InputError
from virnucpro.files import atomic_write, check_writable, check_writable_file
from virnucpro.log import logger
from virnucpro.runs import changed_settings, read_record
from virnucpro.training import report
from virnucpro.training.splits import GROUP_LEVELS

HERE = os.path.dirname(os.path.abspath(__file__))      # the steps' scripts, here as installed and in a clone
NAMES = (("fastesm650", "FastESM2_650"), ("esm2_3b", "ESM2-3B"))
SETTINGS_FILE = "cross_validation.json"


def parse_args(argv):
    parser = options.parser(__doc__)
    parser.add_argument("--folds", type=at_least(2), default=5, help="number of folds (default %(default)s)")
    parser.add_argument("--group-by", choices=GROUP_LEVELS, default="organism",
                        help="what is held out together (default: organism)")
    options.merge_dirs(parser, baseline=True)
    options.data_dir(parser, "genomes and lineages")
    parser.add_argument("--work-dir", default="data/cross_validation",
                        help="each fold's split, models and evaluation (default: %(default)s)")
    parser.add_argument("--report", default="reports/cross_validation.md", help="default: %(default)s")
    parser.add_argument("--seed", type=int, default=42, help="fold assignment seed (default 42)")
    parser.add_argument("--frames-only", action="store_true",
                        help="evaluate the frames of annotated CDS only (no prediction runs)")
    options.device(parser)
    options.models_dir(parser)
    options.language_models(parser, baseline=True)
    parser.add_argument("--epochs", type=int, help="passed to train_fastesm.py (default: its own)")
    parser.add_argument("--lr", type=float, help="passed to train_fastesm.py")
    parser.add_argument("--patience", type=int, help="passed to train_fastesm.py")
    parser.add_argument("--batch-size", type=int, help="passed to train_fastesm.py")
    parser.add_argument("--val-fraction", type=fraction,
                        help="passed to train_fastesm.py: the share of each fold's training genomes it validates on")
    args = parser.parse_args(argv)
    options.merge_dir_defaults(args)
    return args


def passed_on(args, names) -> list[str]:
    """``--name value`` for each of ``names`` the user gave."""
    given = []
    for name in names:
        value = getattr(args, name)
        if value is not None and value is not False:
            given += [f"--{name.replace('_', '-')}"] + ([] if value is True else [str(value)])
    return given


def run(script: str, *arguments, allowed=(0,)) -> None:
    """One of the project's scripts, as a user runs it; stop unless its exit status is ``allowed``."""
    command = [sys.executable, os.path.join(HERE, script), *map(str, arguments)]
    status = subprocess.run(command).returncode
    if status not in allowed:
        raise InputError(f"{script} stopped (exit status {status}; its message is above)")


def check_settings(args) -> None:
    """One cross-validation per work folder: finished folds are reused only for the same settings."""
    keys = ("folds", "group_by", "merge_dir", "baseline_merge_dir", "data_dir", "seed", "frames_only", "epochs",
            "lr", "patience", "batch_size", "val_fraction")
    settings = {key: getattr(args, key) for key in keys}
    path = os.path.join(args.work_dir, SETTINGS_FILE)
    fix = "give another --work-dir, or delete that one"
    recorded = read_record(path, "scripts/cross_validate.py", fix)
    if recorded is not None and recorded != settings:
        changed = ", ".join(changed_settings(recorded, settings))
        if any(os.path.exists(os.path.join(folder, "report", "validation_summary.json")) for folder in
               glob.glob(os.path.join(args.work_dir, "fold_*"))):
            raise InputError(f"{args.work_dir} holds a cross-validation with other settings ({changed}) and folds "
                             f"it finished; {fix}")
        logger.info(f"{args.work_dir}: starting over; the cross-validation there had other settings ({changed}) "
                    "and no finished fold")
        for folder in glob.glob(os.path.join(args.work_dir, "fold_*")):
            shutil.rmtree(folder)
    os.makedirs(args.work_dir, exist_ok=True)
    with atomic_write(path) as handle:
        json.dump(settings, handle, indent=1)


def run_fold(args, fold: int, baseline: bool) -> str:
    """Split, train and evaluate one fold; its report folder."""
    folder = os.path.join(args.work_dir, f"fold_{fold}")
    split, reports = os.path.join(folder, "test_metadata.json"), os.path.join(folder, "report")
    logger.info(f"fold {fold} of {args.folds}")
    if not os.path.exists(split):
        run("create_test_set.py", "--merge-dir", args.merge_dir, "--data-dir", args.data_dir, "--group-by",
            args.group_by, "--folds", args.folds, "--fold", fold, "--seed", args.seed, "--output", split)
    models = {}
    for pipeline, merge_dir in (("fastesm650", args.merge_dir), ("esm2_3b", args.baseline_merge_dir)):
        if pipeline == "esm2_3b" and not baseline:
            continue
        models[pipeline] = os.path.join(folder, f"model_{pipeline}.pth")
        if not os.path.exists(models[pipeline]):
            run("train_fastesm.py", "--pipeline", pipeline, "--merge-dir", merge_dir, "--split", split, "--output",
                models[pipeline], "--device", args.device, *passed_on(args, ("epochs", "lr", "patience", "batch_size", "val_fraction")))
    arguments = ["--checkpoint", models["fastesm650"], "--merge-dir", args.merge_dir, "--split", split, "--data-dir",
                 args.data_dir, "--work-dir", os.path.join(folder, "evaluation"), "--output-dir", reports,
                 "--device", args.device,
                 *passed_on(args, ("frames_only", "models_dir", "dna_model", "protein_model", "baseline_protein_model"))]
    if baseline:
        arguments += ["--baseline-checkpoint", models["esm2_3b"], "--baseline-merge-dir", args.baseline_merge_dir]
    if not os.path.exists(os.path.join(reports, "validation_summary.json")):
        run("evaluate_compare.py", *arguments, allowed=(0, 1))        # 1: this fold FAILED
    return reports


def read_fold(reports: str, baseline: bool) -> dict:
    """A finished fold's summary and each classifier's metrics."""
    fix = f"delete {os.path.dirname(reports)} to run the fold again"
    fold = {"summary": read_record(os.path.join(reports, "validation_summary.json"), "evaluate_compare.py", fix)}
    for pipeline, name in NAMES[:1 + baseline]:
        fold[name] = read_record(os.path.join(reports, f"metrics_{pipeline}.json"), "evaluate_compare.py", fix)
    return fold


def main(argv=None):
    args = parse_args(argv)
    check_writable(args.work_dir, "--work-dir", "the folds")
    check_writable_file(args.report, "--report", "the report")
    baseline = os.path.isdir(args.baseline_merge_dir)
    if not baseline:
        logger.warning(f"{args.baseline_merge_dir}: no ESM2-3B features; FastESM2_650 alone")
    check_settings(args)
    folds = [read_fold(run_fold(args, fold, baseline), baseline) for fold in range(1, args.folds + 1)]
    os.makedirs(os.path.dirname(os.path.abspath(args.report)), exist_ok=True)
    report.write_cross_validation(args.report, folds, args.group_by, args.seed, args.work_dir, baseline)
    results = [fold["summary"]["result"] for fold in folds]
    print(f"{args.folds} folds: " + ", ".join(f"{results.count(r)} {r}" for r in sorted(set(results)))
          + f"; report: {args.report}")
    return 0


if __name__ == "__main__":
    run_cli(main)
