"""Tiny models the tests build themselves: the real architectures and
published folder layouts at tiny depth (the real output widths), written by
the package's random-weight builders and loaded through the functions users call."""
from __future__ import annotations

import torch

import units
from benchmarking import random_models
from virnucpro.models.pins import MERGED_DIM
from virnucpro.scoring.calls import NUM_CLASSES
from virnucpro.scoring.checkpoints import HIDDEN_DIM

# The real output widths at tiny depth: (hidden, layers, heads, ffn). DNABERT-S keeps the two layers of the
# published fixture (its weight names are compared); the protein models run one layer, as their products at
# these widths are most of the end-to-end tests' time (the layer stack is proven on the arch_tiny fixtures).
TINY_DNABERT = (768, 2, 12, 64)      # DNABERT-S's output width
TINY_FASTESM = (1280, 1, 4, 64)      # FastESM2_650's width
TINY_ESM2_3B = (2560, 1, 4, 32)      # ESM2-3B's width


def tiny_model_folders(root) -> dict[str, str]:
    """DNABERT-S, FastESM2_650 and ESM2-3B folders under ``root``, in their published layouts."""
    return {"dna": str(random_models.save_random_dnabert(root / "dnabert", TINY_DNABERT, vocab_size=64)),
            "protein": str(random_models.save_random_esm(root / "fastesm", TINY_FASTESM, fast_esm=True)),
            "esm2_3b": str(random_models.save_random_esm(root / "esm2_3b", TINY_ESM2_3B))}


def save_classifier(path, seed: int = 1, chunk_length: int = 300, viral_bias: float = 0.3, **metadata) -> str:
    """A FastESM2_650 classifier as train_fastesm.py saves one, random but for the virus class's output bias:
    0.3 spreads its scores over both classes, 50 calls every frame viral, -5 none."""
    torch.manual_seed(seed)
    classifier = units.MLPClassifier(MERGED_DIM, HIDDEN_DIM, NUM_CLASSES)
    with torch.no_grad():
        classifier.output_layer.bias[:] = torch.tensor([0.0, viral_bias])
    units.save_checkpoint(classifier, path, chunk_length=chunk_length, **({"epochs": 1} | metadata))
    return str(path)
