#!/usr/bin/env python3
"""Train the FastESM2_650 classifier: MLPClassifier(2048, 512, 2) on merged features.

    python train_fastesm.py [--merge-dir data/data_merge] [--split data/test_set/test_metadata.json]
    python train_fastesm.py --pipeline esm2_3b       # the baseline, like for like: 3328-d, same split and recipe

Trains from scratch with the published hyperparameters by default (SGD, lr
2e-4, momentum 0.9, StepLR step 10 gamma 0.85, batch 32, up to 200 epochs)
and stops early when the validation loss has not improved for --patience
epochs. The test genomes of --split (scripts/create_test_set.py) are never
used; the validation set is a further share of the remaining genomes, whole
genomes only.

Every epoch is logged (train loss and accuracy; validation loss, accuracy,
F1, ROC-AUC; learning rate; time) to the terminal and to
training_log_<pipeline>.txt beside the model. Saves model_<pipeline>_<length>.pth
(300 or 500: the chunk length the features record; in data/ unless --output
says otherwise) with metadata, including
fingerprints of its training, validation and test record sets (evaluation
refuses a model trained on another split): the final model, or the best
validation epoch with --save-best. Records the split does not know (added
after it was made) are refused.
An interrupted run started again with the same arguments resumes at the
next epoch and ends with the same model.
"""
from __future__ import annotations

import os

import torch

import units
from virnucpro.commands import options
from virnucpro.commands.cli import at_least, fraction, positive_float, run_cli
from virnucpro.devices import resolve_device
from virnucpro.files import check_writable_file
from virnucpro.log import logger
from virnucpro.models.features import FeatureSet, find_merged_files
from virnucpro.models.loaders import PIPELINES
from virnucpro.scoring.calls import NUM_CLASSES
from virnucpro.scoring.checkpoints import HIDDEN_DIM, default_checkpoint_path, install_classifier
from virnucpro.training import fitting

STATE_SUFFIX = ".training_state.pt"


def parse_args(argv):
    parser = options.parser(__doc__)
    options.pipeline(parser)
    options.merge_dirs(parser)
    options.split(parser)
    parser.add_argument("--length", type=int, choices=(300, 500),
                        help="chunk length of the training frames; needed only when the merged files do not "
                             "record it (features extracted before they did)")
    parser.add_argument("--output", help="checkpoint to write, or a folder to write it in (default: "
                                         "data/model_<pipeline>_<length>.pth)")
    parser.add_argument("--install", action="store_true",
                        help="also install the checkpoint in the models folder, where prediction.py uses it "
                             "by default for its chunk length")
    options.models_dir(parser)
    parser.add_argument("--val-fraction", type=fraction, default=0.1,
                        help="share of the non-test genomes used for validation (default %(default)s)")
    parser.add_argument("--epochs", type=at_least(1), default=200, help="maximum epochs (default %(default)s)")
    parser.add_argument("--batch-size", type=at_least(2), default=32,
                        help="default %(default)s, as published (BatchNorm needs two rows a batch)")
    parser.add_argument("--lr", type=positive_float, default=2e-4, help="SGD learning rate (default %(default)s)")
    parser.add_argument("--momentum", type=fraction, default=0.9, help="default %(default)s")
    parser.add_argument("--step-size", type=at_least(1), default=10,
                        help="StepLR step in epochs (default %(default)s)")
    parser.add_argument("--gamma", type=positive_float, default=0.85, help="StepLR factor (default %(default)s)")
    parser.add_argument("--patience", type=at_least(1), default=5,
                        help="epochs without a better validation loss before stopping (default %(default)s)")
    parser.add_argument("--save-best", action="store_true", help="save the best validation epoch, not the last")
    parser.add_argument("--seed", type=int, default=42)
    options.device(parser)
    args = parser.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        parser.error("--val-fraction must be between 0 and 1, both excluded")
    if args.install and args.pipeline != "fastesm650":
        parser.error("--install installs FastESM2_650 classifiers; the ESM2-3B baseline is for evaluation")
    options.merge_dir_defaults(args)
    return args


def main(argv=None):
    args = parse_args(argv)
    pipeline = PIPELINES[args.pipeline]
    features = FeatureSet(find_merged_files(args.merge_dir), pipeline.input_dim)       # checks the width
    length = fitting.features_chunk_length(features, args.merge_dir, args.length)
    args.output = default_checkpoint_path(args.output, length, args.pipeline)
    check_writable_file(args.output, "--output", "the classifier")
    train, val, records = fitting.split_rows(features, args.split, args.val_fraction, args.seed)
    device = resolve_device(args.device)
    settings = fitting.settings_of(args, train, val)
    folder = os.path.dirname(os.path.abspath(args.output))
    os.makedirs(folder, exist_ok=True)
    log_path = os.path.join(folder, f"training_log_{args.pipeline}.txt")
    state_path = args.output + STATE_SUFFIX
    logger.info(f"{len(train)} training and {len(val)} validation rows, {len(features)} in all; on {device}")

    torch.manual_seed(args.seed)
    model = units.MLPClassifier(pipeline.input_dim, HIDDEN_DIM, NUM_CLASSES).to(device)
    progress = fitting.fit(model, features, train, val, settings, device, state_path, log_path)

    stopped_early = progress.since_best >= args.patience
    if args.save_best:
        model.load_state_dict(progress.best_state)
    saved = "best" if args.save_best else "final"
    precision = features.encoder_precision()
    if precision and any(value.startswith("mixed") for value in precision.values()):
        logger.warning(f"{args.merge_dir}: the features were made by encoders of different precisions "
                       f"(DNABERT-S {precision['dna']}, protein model {precision['protein']})")
    units.save_checkpoint(model, args.output, args.pipeline, chunk_length=length, encoder_precision=precision,
                          split=records, epochs_trained=progress.epoch, best_epoch=progress.best_epoch,
                          saved_epoch=progress.best_epoch if args.save_best else progress.epoch,
                          saved=saved, stopped_early=stopped_early,
                          validation=progress.best_metrics if args.save_best else progress.last_metrics,
                          hyperparameters=settings)
    os.remove(state_path)
    if args.install:
        logger.info(f"installed as {install_classifier(args.output, length, args.models_dir)}: "
                    f"prediction.py uses it for {length}-bp chunks when no checkpoint is given")
    logger.info(f"{'early stop' if stopped_early else 'done'} after {progress.epoch} epochs (best: epoch "
                f"{progress.best_epoch}); saved the {saved} model to {args.output}; log in {log_path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
