"""Training a classifier: the training selection, held-out splits, the training loop, the evaluation and its report."""
