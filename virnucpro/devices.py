"""Which device a run computes on: never the CPU by surprise when the machine has a GPU."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess

import torch

from virnucpro.errors import InputError
from virnucpro.log import logger

GPU_BUILDS = "docs/compatibility.md#gpu-builds"      # which torch build fits which NVIDIA driver


def resolve_device(device: str | None = None) -> torch.device:
    """``None``/``"auto"``: the GPU when there is one, else the CPU (with a warning). A machine whose
    NVIDIA GPU this PyTorch cannot use is refused, saying why, unless the CPU is asked for by name."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            return torch.device("cuda")
        refuse_an_unusable_gpu("auto")
        logger.warning("no CUDA GPU found; running on the CPU (slow for real workloads)")
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError:
        raise InputError(f"--device {device}: not a device; use cuda, cuda:N, cpu or auto") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        refuse_an_unusable_gpu(device)
        raise InputError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    if resolved.type == "cuda" and (resolved.index or 0) >= torch.cuda.device_count():
        raise InputError(f"--device {device}: this machine has {torch.cuda.device_count()} CUDA GPUs "
                         f"(cuda:0 to cuda:{torch.cuda.device_count() - 1})")
    return resolved


def device_name(device: torch.device) -> str:
    """The device as reports and run records name it: the GPU's model, or the CPU and its threads."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def refuse_an_unusable_gpu(asked: str) -> None:
    """Stop when an NVIDIA GPU is here but torch cannot use it (a CPU-only build, or a CUDA build newer
    than the driver): a run would go on on the CPU, hundreds of times slower, without saying so."""
    gpus = nvidia_gpus()
    if not gpus:
        return
    if torch.version.cuda is None:
        why = f"this PyTorch ({torch.__version__}) is a CPU-only build"
    else:
        driver = nvidia_driver()
        why = (f"this PyTorch ({torch.__version__}) is built for CUDA {torch.version.cuda}, which "
               + (f"NVIDIA driver {driver}" if driver else "this NVIDIA driver") + " does not support")
    raise InputError(f"--device {asked}: {len(gpus)} NVIDIA GPU{'s' * (len(gpus) > 1)} here ({gpus[0]}), but "
                     f"{why}; install the PyTorch build for this driver ({GPU_BUILDS}), or give --device cpu "
                     "to run on the CPU")


def nvidia_gpus() -> list[str]:
    """The NVIDIA GPUs the driver lists (``nvidia-smi -L``, else /proc/driver/nvidia/gpus), or []."""
    listed = _nvidia_smi("-L")
    if listed:
        return [line.strip() for line in listed.splitlines() if line.startswith("GPU ")]
    return [f"GPU at PCI {os.path.basename(path)}" for path in sorted(glob.glob("/proc/driver/nvidia/gpus/*"))]


def nvidia_driver() -> str | None:
    """The NVIDIA driver's version, e.g. ``535.104.05``, or None when it cannot be told."""
    version = _nvidia_smi("--query-gpu=driver_version", "--format=csv,noheader")
    return version.splitlines()[0].strip() if version and version.strip() else None


def _nvidia_smi(*arguments: str) -> str | None:
    executable = shutil.which("nvidia-smi")
    if executable is None:
        return None
    try:
        done = subprocess.run([executable, *arguments], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None
