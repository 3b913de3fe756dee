#!/usr/bin/env python3
"""Check the merged training features: the success criterion of the extraction.

    python scripts/validate_features.py [--merge-dir data/data_merge]

Every *_merged.pt file under the folder must hold 2048-d finite rows (3328-d
with --pipeline esm2_3b), one id per row, ids unique across all files, and a
label of 0 (host) or 1 (viral), the one its folder's name gives
(viral.*_merged/ viral, a host category's host). Prints the viral/host counts; exits with 1 and
names each bad file when a check fails.
"""
from __future__ import annotations

import os
import sys

from virnucpro.commands import options
from virnucpro.commands.cli import run_cli
from virnucpro.errors import InputError
from virnucpro.log import plural
from virnucpro.models.features import find_merged_files, load_merged_file
from virnucpro.models.loaders import PIPELINES
from virnucpro.training.selection import CATEGORY_RULE, category_of


def validate(files: list[str], expected_dim: int) -> tuple[dict, list[str]]:
    """``(counts, problems)`` over all files."""
    counts = {"viral_files": 0, "host_files": 0, "viral_rows": 0, "host_rows": 0}
    problems, first_seen = [], {}
    for path in files:
        try:
            checked = load_merged_file(path, expected_dim)
        except InputError as error:
            problems.append(str(error))
            continue
        kind = "viral" if checked["label"] == 1 else "host"
        named = category_of(os.path.basename(os.path.dirname(path)).removesuffix("_merged"))
        if named is not None and (named == "viral") != (kind == "viral"):
            problems.append(f"{path}: labelled {kind}, but its folder names it {named} ({CATEGORY_RULE})")
            continue
        counts[f"{kind}_files"] += 1
        counts[f"{kind}_rows"] += len(checked["ids"])
        for sequence_id in checked["ids"]:
            if sequence_id in first_seen:
                problems.append(f"{path}: id '{sequence_id}' also in {first_seen[sequence_id]}")
                break
            first_seen[sequence_id] = path
    return counts, problems


def main(argv=None):
    parser = options.parser(__doc__)
    options.merge_dirs(parser)
    options.pipeline(parser)
    args = parser.parse_args(argv)
    options.merge_dir_defaults(args)
    files = find_merged_files(args.merge_dir)
    counts, problems = validate(files, PIPELINES[args.pipeline].input_dim)
    print(f"{plural(len(files), 'merged file')}: {counts['viral_files']} viral ({plural(counts['viral_rows'], 'row')}), "
          f"{counts['host_files']} host ({plural(counts['host_rows'], 'row')})")
    for problem in problems:
        print(f"FAILED: {problem}", file=sys.stderr)
    print("validation " + ("FAILED" if problems else "PASSED"))
    return 1 if problems else 0


if __name__ == "__main__":
    run_cli(main)
