"""Which device a run computes on."""
from __future__ import annotations

import torch

from .errors import InputError
from .log import logger


def resolve_device(device: str | None = None) -> torch.device:
    """``None``/``"auto"``: the GPU when there is one, else the CPU (with a warning)."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        logger.warning("no CUDA GPU found; running on the CPU (slow for real workloads)")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device}: not a device; use cuda, cuda:N, cpu or auto") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    return resolved
