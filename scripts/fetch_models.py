#!/usr/bin/env python3
"""Fetch the models VirNucPro needs into one models folder, verified.

    python scripts/fetch_models.py                  # what prediction.py uses by default
    python scripts/fetch_models.py fastesm650 dnabert-s
    python scripts/fetch_models.py --all --bundle models.tar     # where there is internet
    python scripts/fetch_models.py --from-bundle models.tar      # on a cluster without it

Items (pinned in virnucpro/pins.py):
  dnabert-s       zhihan1996/DNABERT-S (about 0.5 GB)
  fastesm650      Synthyra/FastESM2_650 (about 2.6 GB)
  esm2-3b         facebook/esm2_t36_3B_UR50D, the published baseline (about 11 GB)
  classifier-300  the published 300_model.pth (ESM2-3B pipeline, 300-bp chunks)
  classifier-500  the published 500_model.pth (ESM2-3B pipeline, 500-bp chunks)

Without items: what prediction.py uses by default. Until a FastESM2_650
classifier is installed (train_fastesm.py --install) that is DNABERT-S, ESM2-3B
and the published classifiers (about 12 GB); then DNABERT-S and FastESM2_650.

The models folder is --models-dir, else $VIRNUCPRO_MODELS, else
~/.cache/virnucpro/models. Hugging Face models come at their pinned revision,
only the files the loaders read (configs, tokenizer, weights; never *.py), each
checked against the SHA-256 the hub lists; a model already in the Hugging Face
cache is used from there. The published classifiers are fetched by their git
blob SHA-1 and kept only if their content has it. Downloads resume and retry;
a second run with everything present does nothing.
"""
from __future__ import annotations

import os
import sys

from virnucpro.commands import options
from virnucpro.commands.cli import run_cli
from virnucpro.files import check_writable, check_writable_file
from virnucpro.log import logger
from virnucpro.models import fetching
from virnucpro.models.pins import ARTIFACTS, models_dir


def parse_args(argv):
    parser = options.parser(__doc__)
    parser.add_argument("items", nargs="*", metavar="ITEM",
                        help=f"what to fetch: {', '.join(ARTIFACTS)} (default: what prediction.py uses)")
    parser.add_argument("--all", action="store_true", help="fetch every item")
    options.models_dir(parser)
    parser.add_argument("--revision", help="fetch FastESM2_650 at this commit instead of its pin (main)")
    parser.add_argument("--bundle", metavar="FILE.tar", help="then pack the items into one file for machines "
                                                             "without internet")
    parser.add_argument("--from-bundle", metavar="FILE.tar", help="unpack and verify a bundle; fetch nothing")
    args = parser.parse_args(argv)
    unknown = [item for item in args.items if item not in ARTIFACTS]
    if unknown:
        parser.error(f"unknown item {unknown[0]!r}; choose from {', '.join(ARTIFACTS)}")
    if args.from_bundle and (args.items or args.all or args.bundle):
        parser.error("--from-bundle unpacks a bundle; give it alone")
    return args


def main(argv=None):
    args = parse_args(argv)
    models = models_dir(args.models_dir)
    check_writable(models, "--models-dir", "the models")
    if args.bundle:
        check_writable_file(args.bundle, "--bundle", "the bundle")
    if args.from_bundle:
        items = fetching.unpack_bundle(args.from_bundle, models)
        logger.info(f"{args.from_bundle}: {', '.join(items)} unpacked and verified into {models}/")
        return 0
    keys = list(ARTIFACTS) if args.all else list(dict.fromkeys(args.items)) or fetching.default_items(models)
    logger.info(f"fetching {', '.join(keys)} into {models}/")
    outcome, failures = fetching.fetch(keys, models, args.revision)
    for line in failures:
        print(f"error: {line}", file=sys.stderr)
    if failures:
        return 2
    if all(what == "present" for what in outcome.values()):
        logger.info(f"everything asked for is already in {models}/; nothing to fetch")
    else:
        logger.info("; ".join(f"{key}: {what}" for key, what in outcome.items()))
    if args.bundle:
        size = fetching.make_bundle(args.bundle, keys, models)
        logger.info(f"{args.bundle}: {', '.join(keys)}, {fetching.human_size(size)}; on the other machine: "
                          f"python scripts/fetch_models.py --from-bundle {os.path.basename(args.bundle)}")
    return 0


if __name__ == "__main__":
    run_cli(main)
