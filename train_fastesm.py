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
(300 or 500: the chunk length the features record) with metadata, including
fingerprints of its training, validation and test record sets (evaluation
refuses a model trained on another split): the final model, or the best
validation epoch with --save-best. Records the split does not know (added
after it was made) are refused.
An interrupted run started again with the same arguments resumes at the
next epoch and ends with the same model.
"""
from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch

import evaluation
import units

STATE_SUFFIX = ".training_state.pt"


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pipeline", choices=sorted(units.PIPELINES), default="fastesm650",
                        help="fastesm650 (default) or esm2_3b, the baseline trained on the same split")
    parser.add_argument("--merge-dir", help="merged features (default: data/data_merge, or data/data_merge_esm2_3b "
                                            "for --pipeline esm2_3b)")
    parser.add_argument("--split", default="data/test_set/test_metadata.json",
                        help="test split from scripts/create_test_set.py (default: %(default)s)")
    parser.add_argument("--length", type=int, choices=(300, 500),
                        help="chunk length of the training frames; needed only when the merged files do not "
                             "record it (features extracted before they did)")
    parser.add_argument("--output", help="checkpoint to write, or a folder to write it in (default: "
                                         "model_<pipeline>_<length>.pth)")
    parser.add_argument("--install", action="store_true",
                        help="also install the checkpoint in the models folder, where prediction.py uses it "
                             "by default for its chunk length")
    parser.add_argument("--models-dir", help=f"models folder for --install (default: ${units.MODELS_ENV}, else "
                                             f"{units.DEFAULT_MODELS_DIR})")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of the non-test genomes used for validation (default %(default)s)")
    parser.add_argument("--epochs", type=int, default=200, help="maximum epochs (default %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="default %(default)s, as published")
    parser.add_argument("--lr", type=float, default=2e-4, help="SGD learning rate (default %(default)s)")
    parser.add_argument("--momentum", type=float, default=0.9, help="default %(default)s")
    parser.add_argument("--step-size", type=int, default=10, help="StepLR step in epochs (default %(default)s)")
    parser.add_argument("--gamma", type=float, default=0.85, help="StepLR factor (default %(default)s)")
    parser.add_argument("--patience", type=int, default=5,
                        help="epochs without a better validation loss before stopping (default %(default)s)")
    parser.add_argument("--save-best", action="store_true", help="save the best validation epoch, not the last")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default)")
    args = parser.parse_args(argv)
    if not 0 < args.val_fraction < 1:
        parser.error("--val-fraction must be between 0 and 1")
    if args.install and args.pipeline != "fastesm650":
        parser.error("--install installs FastESM2_650 classifiers; the ESM2-3B baseline is for evaluation")
    args.merge_dir = args.merge_dir or ("data/data_merge" if args.pipeline == "fastesm650" else
                                        "data/data_merge_esm2_3b")
    return args


def chunk_length(features: units.FeatureSet, merge_dir: str, given: int | None) -> int:
    """The chunk length the features record, checked against --length."""
    recorded = features.chunk_length()
    if recorded is None and given is None:
        raise units.InputError(f"{merge_dir}: the merged files do not record their chunk length; "
                               "give --length 300 or --length 500")
    if recorded is not None and given is not None and recorded != given:
        raise units.InputError(f"--length {given}, but the features in {merge_dir} come from "
                               f"{recorded}-bp chunks")
    return recorded or given


def split_rows(features: units.FeatureSet, split_file: str, val_fraction: float, seed: int):
    """Train and validation row indices, and the record fingerprints to keep
    with the model; test records are left out, unknown ones refused."""
    split = evaluation.read_split(split_file)
    test = set(split["test_accessions"])
    accessions = np.array(features.accessions(), dtype=object)
    unknown = sorted(set(accessions) - test - set(split["train_accessions"]))
    if unknown:
        raise units.InputError(f"{len(unknown)} records of the features are not in {split_file} (first: "
                               f"{unknown[0]}): they were added after the split was made; run "
                               "scripts/create_test_set.py again")
    kept = np.flatnonzero([a not in test for a in accessions])
    validation = evaluation.validation_records(accessions.tolist(), features.labels, test, val_fraction, seed)
    is_validation = np.array([a in validation for a in accessions[kept]], dtype=bool)
    train, val = kept[~is_validation], kept[is_validation]
    for name, rows in (("training", train), ("validation", val)):
        if len(set(features.labels[rows].tolist())) < 2:
            raise units.InputError(f"the {name} set lacks a class ({len(rows)} rows); more genomes are needed")
    records = {"file": os.path.abspath(split_file), "test_records": evaluation.record_fingerprint(test),
               "train_records": evaluation.record_fingerprint(accessions[train]),
               "validation_records": evaluation.record_fingerprint(accessions[val])}
    return train, val, records


def evaluate(model, features, rows, device, batch=4096):
    model.eval()
    probabilities, loss = [], 0.0
    with torch.inference_mode():
        for start in range(0, len(rows), batch):
            chosen = rows[start:start + batch]
            logits = model(features.rows(chosen).to(device))
            targets = torch.from_numpy(features.labels[chosen]).to(device)
            loss += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
            probabilities.append(torch.softmax(logits, dim=1).float().cpu().numpy())
    metrics = evaluation.classification_metrics(features.labels[rows], np.concatenate(probabilities))
    return loss / len(rows), metrics


def train_epoch(model, optimizer, features, rows, batch_size, device, generator):
    model.train()
    order = rows[torch.randperm(len(rows), generator=generator).numpy()]
    total_loss, correct = 0.0, 0
    for start in range(0, len(order), batch_size):
        chosen = order[start:start + batch_size]
        if len(chosen) < 2:            # BatchNorm needs two rows
            continue
        inputs = features.rows(chosen).to(device)
        targets = torch.from_numpy(features.labels[chosen]).to(device)
        optimizer.zero_grad()
        logits = model(inputs)
        loss = torch.nn.functional.cross_entropy(logits, targets)
        loss.backward()
        optimizer.step()
        total_loss += loss.item() * len(chosen)
        correct += (logits.argmax(dim=1) == targets).sum().item()
    return total_loss / len(order), correct / len(order)


def settings_of(args, train, val) -> dict:
    keys = ("pipeline", "merge_dir", "split", "val_fraction", "epochs", "batch_size", "lr", "momentum", "step_size",
            "gamma", "patience", "seed")
    return {**{key: getattr(args, key) for key in keys}, "train_rows": int(len(train)), "val_rows": int(len(val))}


def main(argv=None):
    args = parse_args(argv)
    pipeline = units.PIPELINES[args.pipeline]
    features = units.FeatureSet(units.find_merged_files(args.merge_dir), pipeline.input_dim)   # checks the width
    length = chunk_length(features, args.merge_dir, args.length)
    args.output = units.default_checkpoint_path(args.output, length, args.pipeline)
    train, val, records = split_rows(features, args.split, args.val_fraction, args.seed)
    device = units.resolve_device(args.device)
    settings = settings_of(args, train, val)
    log_path = os.path.join(os.path.dirname(os.path.abspath(args.output)), f"training_log_{args.pipeline}.txt")
    state_path = args.output + STATE_SUFFIX

    torch.manual_seed(args.seed)
    model = units.MLPClassifier(pipeline.input_dim, units.HIDDEN_DIM, units.NUM_CLASSES).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=args.momentum)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=args.step_size, gamma=args.gamma)
    progress = {"epoch": 0, "best_loss": float("inf"), "best_epoch": 0, "since_best": 0, "best_state": None,
                "best_metrics": None, "last_metrics": None}
    if os.path.exists(state_path):
        state = torch.load(state_path, map_location=device, weights_only=True)
        if state["settings"] != settings:
            raise units.InputError(f"{state_path} belongs to a training run with other settings; delete it to "
                                   "start over, or run with the same arguments to resume")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        progress = state["progress"]
        units.logger.info(f"resuming after epoch {progress['epoch']}")
    else:
        with open(log_path, "w") as log:
            log.write(f"# train_fastesm.py {json.dumps(settings)}\n")
    units.logger.info(f"{len(train)} training and {len(val)} validation rows, {len(features)} in all; on {device}")

    while progress["epoch"] < args.epochs and progress["since_best"] < args.patience:
        epoch = progress["epoch"] + 1
        torch.manual_seed(args.seed + epoch)              # dropout and order depend on the epoch only
        started = time.time()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_accuracy = train_epoch(model, optimizer, features, train, args.batch_size, device,
                                                 torch.Generator().manual_seed(args.seed + epoch))
        val_loss, metrics = evaluate(model, features, val, device)
        scheduler.step()
        line = (f"epoch {epoch}/{args.epochs}  train loss {train_loss:.4f} acc {train_accuracy:.4f} | val loss "
                f"{val_loss:.4f} acc {metrics['accuracy']:.4f} F1 {metrics['f1']:.4f} AUC {metrics['roc_auc']:.4f}"
                f" | lr {lr:.2e} | {time.time() - started:.1f} s")
        print(line, flush=True)
        with open(log_path, "a") as log:
            log.write(line + "\n")
        progress.update(epoch=epoch, last_metrics={**metrics, "val_loss": val_loss})
        if val_loss < progress["best_loss"]:
            progress.update(best_loss=val_loss, best_epoch=epoch, since_best=0,
                            best_metrics={**metrics, "val_loss": val_loss},
                            best_state={k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
        else:
            progress["since_best"] += 1
        with units.atomic_write(state_path, "wb") as handle:
            torch.save({"settings": settings, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "progress": progress}, handle)

    stopped_early = progress["since_best"] >= args.patience
    if args.save_best:
        model.load_state_dict(progress["best_state"])
    saved = "best" if args.save_best else "final"
    precision = features.encoder_precision()
    if precision and any(value.startswith("mixed") for value in precision.values()):
        units.logger.warning(f"{args.merge_dir}: the features were made by encoders of different precisions "
                             f"(DNABERT-S {precision['dna']}, protein model {precision['protein']})")
    units.save_checkpoint(model, args.output, args.pipeline, chunk_length=length, encoder_precision=precision,
                          split=records,
                          epochs_trained=progress["epoch"], best_epoch=progress["best_epoch"],
                          saved_epoch=progress["best_epoch"] if args.save_best else progress["epoch"],
                          saved=saved, stopped_early=stopped_early,
                          validation=progress["best_metrics"] if args.save_best else progress["last_metrics"],
                          hyperparameters=settings)
    os.remove(state_path)
    if args.install:
        units.logger.info(f"installed as {units.install_classifier(args.output, length, args.models_dir)}: "
                          f"prediction.py uses it for {length}-bp chunks when no checkpoint is given")
    units.logger.info(f"{'early stop' if stopped_early else 'done'} after {progress['epoch']} epochs (best: epoch "
                      f"{progress['best_epoch']}); saved the {saved} model to {args.output}; log in {log_path}")
    return 0


if __name__ == "__main__":
    units.run_cli(main)
