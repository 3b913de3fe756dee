"""Calibration: isotonic maps from a classifier's scores to the probability
of being viral, fitted by scripts/evaluate_compare.py on validation genomes
and stored as JSON beside the classifier (data, never code); and the FDR of
a set of viral calls from those probabilities."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from virnucpro.errors import InputError
from virnucpro.files import atomic_write, file_sha256
from virnucpro.log import plural, warn_once
from virnucpro.runs import read_record

CALIBRATION_FORMAT = "virnucpro-calibration/1"


def calibration_path(checkpoint) -> str:
    """Where a classifier's calibration lives: beside it, ``<checkpoint stem>.calibration.json``."""
    return os.path.splitext(os.fspath(checkpoint))[0] + ".calibration.json"


def _knots(value, what: str, path: str) -> tuple[np.ndarray, np.ndarray]:
    """The ``(x, y)`` knots of a monotone map, checked: finite, x rising, y probabilities not falling."""
    try:
        x, y = (np.asarray(value[key], dtype=np.float64) for key in ("x", "y"))
    except (TypeError, KeyError, ValueError):
        x = y = np.empty(0)
    if (x.ndim != 1 or x.shape != y.shape or not len(x) or not np.isfinite(x).all() or not np.isfinite(y).all()
            or (np.diff(x) < 0).any() or (np.diff(y) < 0).any() or y.min() < 0 or y.max() > 1):
        raise InputError(f"{path}: damaged calibration ({what} map); run scripts/evaluate_compare.py again to "
                         "calibrate the classifier, or delete the file to predict uncalibrated")
    return x, y


@dataclass(frozen=True)
class Calibration:
    """Isotonic maps from a classifier's scores to the probability of being
    viral, fitted on labelled validation sequences (scripts/evaluate_compare.py).
    ``chunk`` maps a chunk's best viral score; ``sequence`` maps the mean of a
    sequence's calibrated chunk probabilities. Each map is a list of knots,
    linear between them and flat beyond them (as scikit-learn predicts)."""
    chunk: tuple[np.ndarray, np.ndarray]
    sequence: tuple[np.ndarray, np.ndarray]

    def chunk_probabilities(self, best_viral_scores) -> np.ndarray:
        return np.interp(np.asarray(best_viral_scores, dtype=np.float64), *self.chunk)

    def sequence_probability(self, chunk_probabilities) -> float:
        return float(self.sequence_probabilities(np.mean(chunk_probabilities)))

    def sequence_probabilities(self, mean_chunk_probabilities) -> np.ndarray:
        """Of sequences, from the mean of each one's calibrated chunk probabilities."""
        return np.interp(np.asarray(mean_chunk_probabilities, dtype=np.float64), *self.sequence)

    def to_json(self) -> dict:
        return {name: {"x": knots[0].tolist(), "y": knots[1].tolist()}
                for name, knots in (("chunk", self.chunk), ("sequence", self.sequence))}


FEW_CALIBRATION_SEQUENCES = 200      # fewer validation sequences give a rough calibration, said wherever it is used


def save_calibration(checkpoint, calibration: Calibration, **details) -> str:
    """Write a classifier's calibration beside it (JSON: data, never code),
    tied to the checkpoint's SHA-256; returns its path."""
    path = calibration_path(checkpoint)
    content = {"format": CALIBRATION_FORMAT, "classifier_sha256": file_sha256(checkpoint), "method": "isotonic",
               **calibration.to_json(), **details}
    with atomic_write(path) as handle:
        json.dump(content, handle, indent=1)
    return path


def load_calibration(checkpoint) -> Calibration | None:
    """The calibration installed beside a classifier, or ``None``; one that
    belongs to another classifier (retrained since) or is damaged is refused."""
    path = calibration_path(checkpoint)
    fix = "run scripts/evaluate_compare.py again to calibrate the classifier, or delete the file to predict uncalibrated"
    content = read_record(path, "scripts/evaluate_compare.py", fix, keys=("format",))
    if content is None:
        return None
    if content["format"] != CALIBRATION_FORMAT:
        raise InputError(f"{path}: not a VirNucPro calibration file; {fix}")
    if content.get("classifier_sha256") != file_sha256(checkpoint):
        raise InputError(f"{path}: the calibration of another classifier than {checkpoint} (retrained or replaced "
                         "since); run scripts/evaluate_compare.py to calibrate this one, or delete the file to "
                         "predict uncalibrated")
    fitted_on = content.get("fitted_on")
    fitted = fitted_on.get("sequences") if isinstance(fitted_on, dict) else None
    if isinstance(fitted, int) and fitted < FEW_CALIBRATION_SEQUENCES:
        warn_once(f"{path}: fitted on {plural(fitted, 'sequence')} only, fewer than {FEW_CALIBRATION_SEQUENCES}: its "
                  "Viral_probability and FDR are rough, and 1.0 or 0.0 are no certainties; calibrate the classifier "
                  "on more validation genomes (scripts/evaluate_compare.py)")
    return Calibration(_knots(content.get("chunk"), "chunk", path), _knots(content.get("sequence"), "sequence", path))


def false_discovery_rates(probabilities) -> np.ndarray:
    """The FDR of each viral call, as geNomad defines it: with the calls
    sorted by their probability of being viral, highest first, the mean of
    ``1 - p`` over the calls up to and including this one; calls of equal
    probability share the FDR of the last of them (the order among ties is arbitrary)."""
    p = np.asarray(probabilities, dtype=np.float64)
    order = np.argsort(-p, kind="stable")
    falling = p[order]
    expected_false = np.cumsum(1 - falling) / np.arange(1, len(p) + 1)
    last_tied = np.searchsorted(-falling, -falling, side="right") - 1
    rates = np.empty_like(p)
    rates[order] = expected_false[last_tied]
    return rates


# ---------------------------------------------------------------- the evaluation record: sensitivity, specificity
EVALUATION_FORMAT = "virnucpro-evaluation-1"


def evaluation_path(checkpoint) -> str:
    """Beside a classifier: ``<checkpoint stem>.evaluation.json``, what scripts/evaluate_compare.py measured."""
    return os.path.splitext(os.fspath(checkpoint))[0] + ".evaluation.json"


def save_evaluation_record(checkpoint, chunk_length: int, sensitivity: float, specificity: float,
                           measured_on: str) -> str:
    """The classifier's sequence-level sensitivity and specificity on held-out sequences of its chunk length,
    tied to its SHA-256: what a cohort's viral fraction is corrected with."""
    path = evaluation_path(checkpoint)
    with atomic_write(path) as handle:
        json.dump({"format": EVALUATION_FORMAT, "classifier_sha256": file_sha256(checkpoint),
                   "chunk_length": chunk_length, "sensitivity": sensitivity, "specificity": specificity,
                   "measured_on": measured_on}, handle, indent=1)
    return path


def load_evaluation_record(checkpoint, chunk_length: int) -> dict | None:
    """The classifier's evaluation record for this chunk length, or None (none measured, another chunk length,
    or of another classifier: retrained since)."""
    path = evaluation_path(checkpoint)
    record = read_record(path, "scripts/evaluate_compare.py", "run it again, or delete the file",
                         keys=("format", "sensitivity", "specificity"))
    if record is None or record.get("classifier_sha256") != file_sha256(checkpoint) \
            or record.get("chunk_length") != chunk_length:
        return None
    return record
