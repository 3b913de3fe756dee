"""Metrics at the tool's decision levels: accuracy, precision, recall, F1,
ROC-AUC; 95% intervals from a bootstrap over held-out groups; precision at
other prevalences; and the calibration's fit and its error."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from virnucpro.scoring.calibration import Calibration
from virnucpro.scoring.calls import frame_is_viral


def call_metrics(labels, calls, scores) -> dict:
    """Accuracy, precision, recall, F1 (viral = positive) and the confusion
    matrix ``[[TN, FP], [FN, TP]]`` of 0/1 calls, and ROC-AUC of scores that
    rank viral rows higher."""
    from sklearn import metrics

    labels, calls = np.asarray(labels), np.asarray(calls).astype(int)
    both_classes = len(set(labels.tolist())) == 2
    return {
        "n": int(len(labels)),
        "accuracy": float(metrics.accuracy_score(labels, calls)),
        "precision": float(metrics.precision_score(labels, calls, zero_division=0)),
        "recall": float(metrics.recall_score(labels, calls, zero_division=0)),
        "f1": float(metrics.f1_score(labels, calls, zero_division=0)),
        "roc_auc": float(metrics.roc_auc_score(labels, scores)) if both_classes else float("nan"),
        "confusion_matrix": metrics.confusion_matrix(labels, calls, labels=[0, 1]).tolist(),
    }


def frame_calls(probabilities) -> np.ndarray:
    """A frame's class as 0/1: the published frame rule (``calls.frame_is_viral``)."""
    return frame_is_viral(probabilities).astype(np.int64)


def classification_metrics(labels, probabilities) -> dict:
    """:func:`call_metrics` of frames from their ``[others, virus]`` probabilities."""
    return call_metrics(labels, frame_calls(probabilities), np.asarray(probabilities)[:, 1])


BOOTSTRAP_METRICS = ("accuracy", "precision", "recall", "f1")


def _confusion_metrics(tp, fp, fn, tn) -> dict[str, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        return {"accuracy": (tp + tn) / (tp + fp + fn + tn), "precision": tp / (tp + fp),
                "recall": tp / (tp + fn), "f1": 2 * tp / (2 * tp + fp + fn)}


def _interval(values: np.ndarray) -> tuple[float, float]:
    """The 2.5th and 97.5th percentiles; NaN where no replicate defines the metric (precision without calls)."""
    defined = values[~np.isnan(values)]
    return tuple(float(v) for v in np.percentile(defined, [2.5, 97.5])) if len(defined) else (math.nan, math.nan)


def group_bootstrap(groups: Sequence[str], labels: np.ndarray, predicted: dict[str, np.ndarray],
                    replicates: int = 2000, seed: int = 0) -> dict:
    """95% percentile intervals of accuracy, precision, recall and F1 by
    resampling held-out groups (records, or groups of related records), not
    rows, with replacement within each class: rows of one group are not
    independent evidence.

    ``predicted`` maps a classifier's name to its 0/1 calls per row. Returns
    ``{name: {metric: (low, high)}}`` and, with two classifiers ``a``, ``b``
    (in that order), ``'difference'``: the interval of each metric of ``a``
    minus ``b`` on the same resamples."""
    rng = np.random.default_rng(seed)
    group_ids, group_of = np.unique(np.asarray(groups, dtype=object).astype(str), return_inverse=True)
    group_label = np.zeros(len(group_ids), dtype=np.int64)
    np.maximum.at(group_label, group_of, labels)      # a group holding viral rows is resampled with the viral ones
    weights = np.zeros((replicates, len(group_ids)))
    for label in (0, 1):
        members = np.flatnonzero(group_label == label)
        if len(members):
            weights[:, members] = rng.multinomial(len(members), np.full(len(members), 1 / len(members)),
                                                  size=replicates)
    replicated = {}
    for name, calls in predicted.items():
        outcome = np.zeros((len(group_ids), 4))           # tp, fp, fn, tn per group
        for column, (label, call) in enumerate(((1, 1), (0, 1), (1, 0), (0, 0))):
            np.add.at(outcome[:, column], group_of, (labels == label) & (calls == call))
        replicated[name] = _confusion_metrics(*(weights @ outcome).T)
    result = {name: {metric: _interval(values[metric]) for metric in BOOTSTRAP_METRICS}
              for name, values in replicated.items()}
    if len(predicted) == 2:
        first, second = (replicated[name] for name in predicted)
        result["difference"] = {metric: _interval(first[metric] - second[metric]) for metric in BOOTSTRAP_METRICS}
    return result


def precision_at_prevalence(recall: float, specificity: float, prevalence: float) -> float:
    """Precision (positive predictive value) when a fraction ``prevalence`` of
    the sequences is viral: sensitivity and specificity do not depend on the
    class balance of the test set, precision does."""
    true_calls, false_calls = recall * prevalence, (1 - specificity) * (1 - prevalence)
    return true_calls / (true_calls + false_calls) if true_calls + false_calls else float("nan")


CALIBRATION_BINS = 10


def _isotonic_knots(scores, labels) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.isotonic import IsotonicRegression

    fitted = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(scores, labels)
    return fitted.X_thresholds_.astype(np.float64), fitted.y_thresholds_.astype(np.float64)


def fit_calibration(chunk_scores, chunk_labels, sequence_chunk_scores: Sequence[Sequence[float]],
                    sequence_labels) -> Calibration:
    """Isotonic regression of the label on the chunks' best viral scores, then
    on the mean of each sequence's calibrated chunk probabilities."""
    chunk = _isotonic_knots(np.asarray(chunk_scores, dtype=np.float64), np.asarray(chunk_labels))
    means = [float(np.mean(np.interp(scores, *chunk))) for scores in sequence_chunk_scores]
    return Calibration(chunk, _isotonic_knots(np.asarray(means), np.asarray(sequence_labels)))


def reliability(probabilities, labels, bins: int = CALIBRATION_BINS) -> list[tuple[float, float, int]]:
    """``(mean probability, share viral, rows)`` of each non-empty bin of equal width."""
    probabilities, labels = np.asarray(probabilities, dtype=np.float64), np.asarray(labels)
    index = np.minimum((probabilities * bins).astype(int), bins - 1)
    return [(float(probabilities[index == k].mean()), float(labels[index == k].mean()), int((index == k).sum()))
            for k in range(bins) if (index == k).any()]


def expected_calibration_error(probabilities, labels, bins: int = CALIBRATION_BINS) -> float:
    """The rows' weighted mean of |share viral - mean probability| over bins of equal width."""
    return sum(count * abs(share - mean) for mean, share, count in reliability(probabilities, labels, bins)) \
        / max(len(probabilities), 1)
