"""Embedding and scoring frames, the decision rules, calibration, classifier checkpoints, metrics."""
