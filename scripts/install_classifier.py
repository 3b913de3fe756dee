#!/usr/bin/env python3
"""Install trained FastESM2_650 classifiers where prediction.py uses them by default.

    python scripts/install_classifier.py                       # data/model_fastesm650_300.pth and/or _500.pth
    python scripts/install_classifier.py my_model.pth [--models-dir DIR]

Each classifier is checked (a FastESM2_650 classifier that records the chunk
length it was trained on) and copied, with its calibration when
scripts/evaluate_compare.py has written one beside it, to
<models folder>/classifiers/model_fastesm650_<length>.pth; prediction.py then
uses it for that chunk length when no checkpoint is given. An installed
classifier of that length is replaced, and so is its calibration.
"""
from __future__ import annotations

import os

import units
from virnucpro.commands import options
from virnucpro.commands.cli import run_cli
from virnucpro.errors import InputError
from virnucpro.log import logger
from virnucpro.scoring.calibration import calibration_path
from virnucpro.scoring.checkpoints import default_checkpoint_path, install_classifier


def parse_args(argv):
    parser = options.parser(__doc__)
    parser.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT",
                        help="trained FastESM2_650 classifiers (default: data/model_fastesm650_300.pth and "
                             "data/model_fastesm650_500.pth, those that are there)")
    options.models_dir(parser)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    checkpoints = args.checkpoints or [path for path in (default_checkpoint_path(None, length) for length in (300, 500))
                                       if os.path.isfile(path)]
    if not checkpoints:
        raise InputError("no trained classifier in data/ (model_fastesm650_300.pth or model_fastesm650_500.pth); "
                         "train one with train_fastesm.py, or give its path")
    for checkpoint in checkpoints:
        _, metadata = units.load_checkpoint(checkpoint, "fastesm650")
        length = metadata.get("chunk_length")
        if length not in (300, 500):
            raise InputError(f"{checkpoint}: the classifier does not record a chunk length of 300 or 500 bp, so "
                             "prediction.py could not pick it for its reads; retrain it with train_fastesm.py")
        target = install_classifier(checkpoint, length, args.models_dir)
        calibrated = os.path.exists(calibration_path(target))
        logger.info(f"installed {checkpoint} as {target}"
                    + (" with its calibration" if calibrated else
                       " (not calibrated: scripts/evaluate_compare.py calibrates it; install it again then)")
                    + f": prediction.py uses it for {length}-bp chunks when no checkpoint is given")
    return 0


if __name__ == "__main__":
    run_cli(main)
