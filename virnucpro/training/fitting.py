"""Training the classifier: train and validation rows of the merged features
(whole genomes held out, the test split's records never used), SGD epochs
with early stopping on the validation loss, resumable after every epoch."""
from __future__ import annotations

import dataclasses
import json
import os
import time
from dataclasses import dataclass

import numpy as np
import torch

from virnucpro.errors import InputError
from virnucpro.files import atomic_write
from virnucpro.log import logger, plural
from virnucpro.models.features import FeatureSet
from virnucpro.runs import changed_settings
from virnucpro.scoring.metrics import classification_metrics
from virnucpro.training.splits import CLASSES, read_split, record_fingerprint, validation_records


def features_chunk_length(features: FeatureSet, merge_dir: str, given: int | None) -> int:
    """The chunk length the features record, checked against --length."""
    recorded = features.chunk_length()
    if recorded is None and given is None:
        raise InputError(f"{merge_dir}: the merged files do not record their chunk length; "
                               "give --length 300 or --length 500")
    if recorded is not None and given is not None and recorded != given:
        raise InputError(f"--length {given}, but the features in {merge_dir} come from "
                               f"{recorded}-bp chunks")
    return recorded or given


def split_rows(features: FeatureSet, split_file: str, val_fraction: float, seed: int):
    """Train and validation row indices, and the record fingerprints to keep
    with the model; test records are left out, unknown ones refused."""
    split = read_split(split_file)
    test = set(split["test_accessions"])
    accessions = np.array(features.accessions(), dtype=object)
    unknown = sorted(set(accessions) - test - set(split["train_accessions"]))
    if unknown:
        raise InputError(f"{plural(len(unknown), 'record')} of the features not in {split_file} (first: "
                               f"{unknown[0]}): they were added after the split was made; run "
                               "scripts/create_test_set.py again")
    kept = np.flatnonzero([a not in test for a in accessions])
    validation = validation_records(accessions.tolist(), features.labels, test, val_fraction, seed)
    is_validation = np.array([a in validation for a in accessions[kept]], dtype=bool)
    train, val = kept[~is_validation], kept[is_validation]
    for name, rows in (("training", train), ("validation", val)):
        present = set(features.labels[rows].tolist())
        missing = [CLASSES[label] for label in (1, 0) if label not in present]
        if missing:
            fix = (f"a larger --val-fraction than {val_fraction}, or more {missing[0]} genomes" if name == "validation"
                   else f"a smaller --val-fraction than {val_fraction}, or more {missing[0]} genomes")
            raise InputError(f"the {name} set has no {' and no '.join(missing)} rows ({plural(len(rows), 'row')}, "
                             f"whole genomes of the records {split_file} does not hold out); give {fix}")
    records = {"file": os.path.abspath(split_file), "test_records": record_fingerprint(test),
               "train_records": record_fingerprint(accessions[train]),
               "validation_records": record_fingerprint(accessions[val])}
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
    metrics = classification_metrics(features.labels[rows], np.concatenate(probabilities))
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


@dataclass
class Progress:
    """Where a training run stands after each epoch: what a resumed run starts from."""
    epoch: int = 0
    best_loss: float = float("inf")
    best_epoch: int = 0
    since_best: int = 0
    best_state: dict | None = None
    best_metrics: dict | None = None
    last_metrics: dict | None = None


def fit(model, features: FeatureSet, train: np.ndarray, val: np.ndarray, settings: dict, device,
        state_path: str, log_path: str) -> Progress:
    """SGD with momentum and a StepLR schedule, an epoch at a time, until ``settings['epochs']`` or
    ``settings['patience']`` epochs without a better validation loss; every epoch logged to the terminal
    and ``log_path``, and the whole state saved to ``state_path``, from which a run with the same settings
    resumes (and ends with the same model). Dropout and batch order depend on the seed and epoch only."""
    optimizer = torch.optim.SGD(model.parameters(), lr=settings["lr"], momentum=settings["momentum"])
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=settings["step_size"], gamma=settings["gamma"])
    progress = Progress()
    if os.path.exists(state_path):
        state = torch.load(state_path, map_location=device, weights_only=True)
        if state["settings"] != settings:
            raise InputError(f"{state_path} belongs to a training run with other settings "
                             f"({', '.join(changed_settings(state['settings'], settings))}); delete it to start "
                             "over, or run with the same arguments to resume")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        progress = Progress(**state["progress"])
        logger.info(f"resuming after epoch {progress.epoch}")
    else:
        with open(log_path, "w") as log:
            log.write(f"# train_fastesm.py {json.dumps(settings)}\n")
    seed, epochs = settings["seed"], settings["epochs"]
    while progress.epoch < epochs and progress.since_best < settings["patience"]:
        epoch = progress.epoch + 1
        torch.manual_seed(seed + epoch)              # dropout and order depend on the epoch only
        started = time.time()
        lr = optimizer.param_groups[0]["lr"]
        train_loss, train_accuracy = train_epoch(model, optimizer, features, train, settings["batch_size"], device,
                                                 torch.Generator().manual_seed(seed + epoch))
        val_loss, metrics = evaluate(model, features, val, device)
        scheduler.step()
        line = (f"epoch {epoch}/{epochs}  train loss {train_loss:.4f} acc {train_accuracy:.4f} | val loss "
                f"{val_loss:.4f} acc {metrics['accuracy']:.4f} F1 {metrics['f1']:.4f} AUC {metrics['roc_auc']:.4f}"
                f" | lr {lr:.2e} | {time.time() - started:.1f} s")
        print(line, flush=True)
        with open(log_path, "a") as log:
            log.write(line + "\n")
        progress.epoch, progress.last_metrics = epoch, {**metrics, "val_loss": val_loss}
        if val_loss < progress.best_loss:
            progress.best_loss, progress.best_epoch, progress.since_best = val_loss, epoch, 0
            progress.best_metrics = {**metrics, "val_loss": val_loss}
            progress.best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            progress.since_best += 1
        with atomic_write(state_path, "wb") as handle:
            torch.save({"settings": settings, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(), "progress": dataclasses.asdict(progress)}, handle)
    return progress
