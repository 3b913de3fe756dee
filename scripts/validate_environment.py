#!/usr/bin/env python3
"""Check that this environment can run the FastESM2_650 pipeline (ENV-01 to ENV-05).

    python scripts/validate_environment.py [--device cuda]

  ENV-01  PyTorch with a CUDA GPU
  ENV-02  fair-esm absent (the migration replaced it; an installed copy invites
          running the old code path)
  ENV-03  transformers 4.57 or newer (the suite runs on 4.57 and 5.x)
  ENV-04  FastESM2_650 loads, with every encoder weight from its checkpoint
  ENV-05  PyTorch scaled-dot-product attention (SDPA) works, agrees with plain
          attention, and is timed against it

Prints one line per check and exits with 1 when any check fails.
"""
from __future__ import annotations

import importlib.util
import math
import time

import torch

from virnucpro.commands import options
from virnucpro.commands.cli import run_cli
from virnucpro.devices import resolve_device
from virnucpro.errors import InputError
from virnucpro.models.loaders import load_fast_esm
from virnucpro.models.modelfiles import model_folder
from virnucpro.models.pins import FASTESM2_650

OLDEST_TRANSFORMERS = (4, 57)


def check_torch(device) -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, f"torch {torch.__version__} without a usable CUDA GPU (a CPU build, or no driver)"
    return True, f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(device)}"


def check_fair_esm() -> tuple[bool, str]:
    spec = importlib.util.find_spec("esm")
    if spec is None:
        return True, "fair-esm is not installed"
    return False, f"fair-esm is installed ({spec.origin}); uninstall it: pip uninstall fair-esm"


def check_transformers() -> tuple[bool, str]:
    import transformers

    version = tuple(int(part) for part in transformers.__version__.split(".")[:2])
    ok = version >= OLDEST_TRANSFORMERS
    return ok, (f"transformers {transformers.__version__}"
                + ("" if ok else " is older than 4.57: pip install -U 'transformers>=4.57'"))


def check_fastesm(model, models, device) -> tuple[bool, str]:
    try:
        network, _ = load_fast_esm(model_folder(FASTESM2_650, model, models), device)
    except InputError as error:
        return False, str(error)
    parameters = sum(p.numel() for p in network.parameters()) / 1e6
    return True, (f"{parameters:,.0f}M parameters on {device}, {next(network.parameters()).dtype}, "
                  "attention: torch scaled_dot_product_attention")


def plain_attention(q, k, v):
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1)
    return weights @ v


def timed(function, device, repeats=10) -> float:
    function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        function()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - started) / repeats


def check_sdpa(device) -> tuple[bool, str]:
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    generator = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(8, 20, 1026, 64, generator=generator).to(device, dtype) for _ in range(3))
    with torch.inference_mode():
        fast = torch.nn.functional.scaled_dot_product_attention(q, k, v)
        plain = plain_attention(q, k, v)
        difference = (fast.float() - plain.float()).abs().max().item()
        sdpa_s = timed(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v), device)
        plain_s = timed(lambda: plain_attention(q, k, v), device)
    tolerance = 1e-2 if dtype == torch.float16 else 1e-4
    return difference < tolerance, (f"max difference {difference:.1e} ({str(dtype).replace('torch.', '')}); "
                                    f"SDPA {sdpa_s * 1e3:.1f} ms vs plain attention {plain_s * 1e3:.1f} ms "
                                    f"({plain_s / sdpa_s:.1f}x) on 8x20 heads x 1026 tokens")


def main(argv=None):
    parser = options.parser(__doc__)
    options.device(parser)
    options.language_models(parser, dna=False)
    options.models_dir(parser)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    checks = [("ENV-01", "PyTorch with CUDA", lambda: check_torch(device)),
              ("ENV-02", "fair-esm absent", check_fair_esm),
              ("ENV-03", "transformers version", check_transformers),
              ("ENV-04", "FastESM2_650 loads", lambda: check_fastesm(args.protein_model, args.models_dir, device)),
              ("ENV-05", "SDPA attention", lambda: check_sdpa(device))]
    failures = 0
    for code, title, check in checks:
        ok, detail = check()
        failures += not ok
        print(f"{code}  {'PASS' if ok else 'FAIL'}  {title}: {detail}", flush=True)
    print(f"{len(checks) - failures} of {len(checks)} checks passed")
    return 1 if failures else 0


if __name__ == "__main__":
    run_cli(main)
