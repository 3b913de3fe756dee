"""What every benchmark needs to measure fairly: device synchronisation around
a timed call, and how close two feature sets are (the device's name is
``virnucpro.devices.device_name``)."""
from __future__ import annotations

import time

import torch


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device: torch.device) -> float:
    """Seconds ``function()`` takes, the device's queued work included."""
    synchronize(device)
    started = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - started


def agreement(features: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """Smallest cosine similarity and largest absolute difference between the rows of two feature sets."""
    return (torch.nn.functional.cosine_similarity(features, reference, dim=1).min().item(),
            (features - reference).abs().max().item())
