"""What every benchmark needs to measure fairly: device synchronisation around
a timed call, the seconds of the calls of functions wrapped for a run, and how
close two feature sets are (the device's name is
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


class Clock:
    """The seconds of each call of functions ``timing`` wraps, by label (on a GPU, the calls that end in a
    copy to the host, as loading and scoring a shard do, include the device's work)."""

    def __init__(self):
        self.seconds: dict[str, list[float]] = {}

    def timing(self, label: str, function):
        def timed_call(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds.setdefault(label, []).append(time.perf_counter() - started)
        return timed_call

    def total(self, label: str) -> float:
        return sum(self.seconds.get(label, ()))


def agreement(features: torch.Tensor, reference: torch.Tensor) -> tuple[float, float]:
    """Smallest cosine similarity and largest absolute difference between the rows of two feature sets."""
    return (torch.nn.functional.cosine_similarity(features, reference, dim=1).min().item(),
            (features - reference).abs().max().item())
