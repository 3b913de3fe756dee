#!/usr/bin/env python3
"""virnucpro: the steps of VirNucPro as one installed command (pip install . puts it on the PATH).

    virnucpro predict reads.fastq.gz 300 -o results       # runs python prediction.py reads.fastq.gz 300 -o results
    virnucpro predict --samples samples.csv 300 -o results
    virnucpro STEP --help                                  # a step's options, as its script's --help
    virnucpro --version

A step runs its script, with the same arguments, messages and exit status; the scripts keep working as
the published python prediction.py ... calls run them.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from virnucpro.commands import options
from virnucpro.commands.cli import run_cli

# step: the script it runs (this folder's module); in the order of the workflow
STEPS = {
    "fetch-models": "fetch_models",
    "validate-environment": "validate_environment",
    "download-data": "download_data",
    "make-train-dataset": "make_train_dataset",
    "extract-features": "features_extract",
    "validate-features": "validate_features",
    "create-test-set": "create_test_set",
    "train": "train_fastesm",
    "install-classifier": "install_classifier",
    "evaluate": "evaluate_compare",
    "cross-validate": "cross_validate",
    "predict": "prediction",
    "summarize-samples": "summarize_samples",
    "plot-predictions": "plot_predictions",
}


def step_module(step: str):
    """The script of a step, as installed (virnucpro.scripts) or beside this file in a clone."""
    return importlib.import_module(f"{__package__}.{STEPS[step]}" if __package__ else STEPS[step])


def parse_args(argv):
    parser = options.parser(__doc__)
    parser.usage = "%(prog)s [-h] [--version] STEP ..."   # a step is needed; left out, the command shows this help
    parser.add_argument("step", nargs="?", choices=STEPS, metavar="STEP", help=f"one of: {', '.join(STEPS)}")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="the step's arguments (virnucpro STEP --help)")
    args = parser.parse_args(argv)
    if args.step is None:                              # the command alone: what it can run
        parser.print_help(sys.stderr)
        parser.exit(2)
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    script = step_module(args.step)
    sys.argv[0] = f"virnucpro {args.step}"            # the step's usage line names the command
    run_cli(lambda _: script.main(args.arguments))


if __name__ == "__main__":
    main()
