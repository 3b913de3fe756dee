"""Precision is a recorded fact: the dtype each encoder runs in, named as feature files and checkpoints record it,
and TF32: float32 weights whose matrix products run on a GPU's tensor cores (``tf32``)."""
from __future__ import annotations

import torch


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.float16`` -> ``"float16"``: how precision is recorded in files."""
    return str(dtype).removeprefix("torch.")


def precision_name(dtype: torch.dtype, device: torch.device) -> str:
    """How an encoder's precision is recorded: its dtype, or ``tf32`` for float32 on a GPU whose matrix
    products run on TF32 tensor cores (``use_tf32``)."""
    if dtype == torch.float32 and device.type == "cuda" and torch.backends.cuda.matmul.allow_tf32:
        return "tf32"
    return dtype_name(dtype)


def use_tf32(enabled: bool) -> None:
    """Run float32 matrix products (and convolutions) on TF32 tensor cores, or not (torch's default): about
    1e-3 relative error in each product for several times the speed, on Ampere GPUs and newer."""
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled


def model_precision(model: torch.nn.Module) -> str:
    """The precision an encoder runs in, as recorded in feature files (``"float32"``, ``"tf32"``, ...)."""
    parameter = next(model.parameters())
    return precision_name(parameter.dtype, parameter.device)
