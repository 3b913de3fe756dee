"""Precision is a recorded fact: the dtype each encoder runs in, named as feature files and checkpoints record it."""
from __future__ import annotations

import torch


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``: how precision is recorded in files."""
    return str(dtype).removeprefix("torch.")


def model_precision(model: torch.nn.Module) -> str:
    """The dtype an encoder runs in, as recorded in feature files (``"float32"``)."""
    return dtype_name(next(model.parameters()).dtype)
