#!/usr/bin/env python3
"""Evaluate the FastESM2_650 classifier on the held-out records, against the ESM2-3B baseline.

    python scripts/evaluate_compare.py [--checkpoint data/model_fastesm650_500.pth] \\
        [--baseline-checkpoint data/model_esm2_3b_500.pth] [--baseline-merge-dir data/data_merge_esm2_3b]

Like for like: the baseline is the ESM2-3B classifier trained by
train_fastesm.py --pipeline esm2_3b on the same split (found in data/ when
--baseline-checkpoint is not given). Each model must record
the split it was trained on (train_fastesm.py does): a model trained on
another split is refused, since some test records would be its training data.
The published 300_model.pth / 500_model.pth were trained on a random
per-frame split over all records, so they have seen the test genomes: given
as --baseline-checkpoint they are reported in a section of their own, as an
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
lower bound is at or above it, INCONCLUSIVE otherwise, and INCONCLUSIVE
whatever the interval when a class has fewer than 3 held-out groups at that
level (the report says so: such an interval has no width to trust); the
overall result is the worst level's (exit status 1 for FAILED). Precision and FDR are also given
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

Writes, in -o (default reports/), validation_report.md (per level: metrics with intervals and
the paired difference; prevalence table, confusion matrices, ROC curves as
PNG, breakdowns by sequence and frame length), metrics_<pipeline>.json
and validation_summary.json (result and verdict per level); the held-out sequences and the prediction
runs go to --work-dir (a re-run reuses finished prediction runs).
"""
from __future__ import annotations

import os
import subprocess
import sys

import units
from virnucpro.commands import options
from virnucpro.commands.cli import at_least, fraction, run_cli
from virnucpro.devices import resolve_device
from virnucpro.errors import InputError
from virnucpro.files import check_writable
from virnucpro.log import logger
from virnucpro.models.features import FeatureSet, find_merged_files
from virnucpro.models.loaders import PIPELINES
from virnucpro.scoring.checkpoints import default_checkpoint_path
from virnucpro.training import evaluation, report
from virnucpro.training.splits import read_split, record_fingerprint

PREDICTION = os.path.join(os.path.dirname(os.path.abspath(__file__)), "prediction.py")      # beside, installed too


def load_model(model_path, pipeline, features, device, split_file, test: set):
    """The classifier, whether it was trained on this split (``False``
    for a published classifier, which records no split) and its metadata; a
    model trained on another split is refused."""
    model, metadata = units.load_checkpoint(model_path, pipeline, device, chunk_length=features.chunk_length())
    if metadata.get("checkpoint_version") == "published":
        return model, False, metadata
    recorded = metadata.get("split")
    if not isinstance(recorded, dict):
        raise InputError(f"{model_path}: does not record the split it was trained on, so it may have been "
                         f"trained on test records; retrain it with train_fastesm.py --split {split_file}")
    if recorded.get("test_records") != record_fingerprint(test):
        raise InputError(f"{model_path}: trained with another split than {split_file} (its held-out records "
                         "differ), so some test records may be its training data; evaluate it with the split "
                         "it was trained with, or retrain it on this one")
    return model, True, metadata


def load_classifiers(args, split: dict) -> list[evaluation.Classifier]:
    """The FastESM2_650 classifier and, with --baseline-checkpoint, the ESM2-3B one, each with its features."""
    test = set(split["test_accessions"])
    device = resolve_device(args.device)
    features = FeatureSet(find_merged_files(args.merge_dir))
    model_path = default_checkpoint_path(args.checkpoint, features.chunk_length())
    model, _, metadata = load_model(model_path, "fastesm650", features, device, args.split, test)
    classifiers = [evaluation.Classifier("FastESM2_650", model_path, "fastesm650", model, features, True, metadata)]
    trained_baseline = default_checkpoint_path(None, features.chunk_length(), "esm2_3b")
    if args.baseline_checkpoint is None and os.path.isfile(trained_baseline):
        args.baseline_checkpoint = trained_baseline
        logger.info(f"baseline: {trained_baseline}, the ESM2-3B classifier train_fastesm.py --pipeline esm2_3b wrote")
    if args.baseline_checkpoint:
        baseline = FeatureSet(find_merged_files(args.baseline_merge_dir), PIPELINES["esm2_3b"].input_dim)
        baseline_model, like_for_like, metadata = load_model(args.baseline_checkpoint, "esm2_3b", baseline, device,
                                                             args.split, test)
        classifiers.append(evaluation.Classifier("ESM2-3B", args.baseline_checkpoint, "esm2_3b", baseline_model,
                                                 baseline, like_for_like, metadata))
    return classifiers


def prediction_runner(args, chunk_length: int) -> evaluation.Predict:
    """prediction.py itself, as a user runs it, on held-out sequences with one classifier: its raw scores
    (--uncalibrated); its output folder is ``<work-dir>/<run>_<pipeline>``."""
    def predict(classifier: evaluation.Classifier, fasta: str, run: str) -> str:
        output = os.path.join(args.work_dir, f"{run}_{classifier.pipeline}")
        protein_model = args.protein_model if classifier.pipeline == "fastesm650" else args.baseline_protein_model
        command = [sys.executable, PREDICTION, fasta, str(chunk_length), classifier.path, "-o", output,
                   "--device", args.device, "--uncalibrated"]
        for option, value in (("--dna-model", args.dna_model), ("--protein-model", protein_model),
                              ("--models-dir", args.models_dir)):
            if value:
                command += [option, value]
        logger.info(f"{classifier.name}: prediction.py on {fasta} -> {output}")
        status = subprocess.run(command).returncode
        if status:
            raise InputError(f"prediction.py stopped on the held-out sequences {fasta} with {classifier.name} "
                             f"(exit status {status}; its message is above)")
        return output
    return predict


def parse_args(argv):
    parser = options.parser(__doc__)
    parser.add_argument("--checkpoint", help="FastESM2_650 classifier, or the folder holding it (default: "
                                             "data/model_fastesm650_<length>.pth, the chunk length the features "
                                             "record)")
    parser.add_argument("--baseline-checkpoint",
                        help="ESM2-3B classifier: train_fastesm.py --pipeline esm2_3b on the same split (default: "
                             "data/model_esm2_3b_<length>.pth when it is there), or a published one (reported apart)")
    options.merge_dirs(parser, baseline=True)
    options.split(parser)
    parser.add_argument("--frames-only", action="store_true",
                        help="only the frames of annotated CDS in the merged features: no prediction run, no "
                             "language models needed")
    parser.add_argument("--fragment-lengths", type=at_least(1), nargs="+", metavar="BP",
                        help="lengths of the reads and contigs cut from each held-out record (default: the chunk "
                             "length, 1000 and 3000; a record not longer than a length is taken whole)")
    parser.add_argument("--fragments-per-record", type=at_least(1), default=10,
                        help="at most this many of each length per record, spread evenly (default %(default)s)")
    parser.add_argument("--work-dir", default="data/test_set/evaluation",
                        help="held-out sequences and the prediction runs on them (default: %(default)s)")
    options.models_dir(parser)
    options.language_models(parser, baseline=True)
    parser.add_argument("--threshold", type=fraction, default=0.05,
                        help="largest acceptable accuracy drop (default 0.05: 5 points)")
    parser.add_argument("--replicates", type=at_least(100), default=2000,
                        help="bootstrap replicates (default %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    options.data_dir(parser, "where the genomes (*genomic.fna.gz) and the split FASTA files are")
    options.output_dir(parser, "the report, its plots and metrics", "reports")
    options.device(parser)
    args = parser.parse_args(argv)
    options.merge_dir_defaults(args)
    return args


def main(argv=None):
    args = parse_args(argv)
    check_writable(args.output_dir, "-o", "the report")
    if not args.frames_only:
        check_writable(args.work_dir, "--work-dir", "the held-out sequences and their prediction runs")
    split = read_split(args.split)
    classifiers = load_classifiers(args, split)
    like_for_like = len(classifiers) == 2 and classifiers[1].like_for_like
    levels = {"frames_cds": evaluation.cds_frames(classifiers, split, args.data_dir)}
    calibrated, lengths = [], args.fragment_lengths
    if not args.frames_only:
        chunk_length = classifiers[0].features.chunk_length() or classifiers[0].metadata.get("chunk_length")
        lengths = args.fragment_lengths or [chunk_length, 1000, 3000]
        fragments = evaluation.Fragments(lengths, args.fragments_per_record, args.data_dir, args.work_dir)
        predict = prediction_runner(args, chunk_length)
        held_out, folders, test_sequences = evaluation.held_out_levels(fragments, classifiers, split, predict)
        levels = {**held_out, **levels}
        calibrated = [evaluation.calibrate(fragments, c, split, predict, folders[c.name], test_sequences,
                                           chunk_length, args.models_dir)
                      for c in classifiers if c.like_for_like]

    order = [c.name for c in classifiers][::-1]              # the difference: ESM2-3B minus FastESM2_650
    results, intervals, verdicts = evaluation.scored_levels(levels, order, args.replicates, args.seed,
                                                            args.threshold if like_for_like else None)
    notes = report.notes_of(args.split, split, classifiers, levels, args.fragment_lengths, args.fragments_per_record,
                            args.work_dir)
    overall, report_file = report.write_evaluation(args.output_dir, levels, classifiers, calibrated, results,
                                                   intervals, verdicts, like_for_like, args.threshold,
                                                   evaluation.breakdowns(levels, lengths or []), notes)
    print("\n".join(report.console_lines(levels, results, intervals, verdicts)))
    print(f"result: {overall}\nreport: {report_file}")
    return 1 if overall == "FAILED" else 0


if __name__ == "__main__":
    run_cli(main)
