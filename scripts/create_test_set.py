#!/usr/bin/env python3
"""Hold out a test set from the merged features, whole groups of related records at a time.

    python scripts/create_test_set.py [--merge-dir data/data_merge] [--group-by organism]
    python scripts/create_test_set.py --group-by ani [--ani 95]
    python scripts/create_test_set.py --folds 5 --fold 1      # fold 1 of a 5-fold cross-validation

About 10% of each class's rows (stratified) go to the test set, chosen with a
fixed seed by group: by default all records of one organism together (segments
of a virus, chromosomes and plasmids of a host), or --group-by genus or family
(from the GenBank lineage that scripts/make_train_dataset.py records in its
<name>.identified.json files under --data-dir), ani (organisms joined into
clusters by average nucleotide identity: skani, through pyskani, links two
when their ANI is at least --ani percent, 95 by default, the field's species
convention, over at least 85% of the shorter; the genomes are read from the
*genomic.fna.gz files under --data-dir), or record (the genome record alone).
No group contributes to both sides, and each class must have rows on both (a
split that would leave a class out of the test set is refused); a record whose lineage is not recorded is
its own group (counted). Test frames identical to a training frame (same
features, so same DNA and protein) are left out of the test set and counted.
The published random per-frame split put frames of one chunk, overlapping
chunks of one genome, and relatives on both sides.

With --folds K, the groups are dealt into K group-disjoint folds of about
equal size per class (same seed: the same folds) and fold --fold is the test
set; scripts/cross_validate.py runs all K.

Writes data/test_set/test_metadata.json: the seed, the grouping and its
counts per class and side, the test accessions (a row is a test row when its
accession is listed and its id is not in excluded_test_frames), every other record it saw
(train_accessions: training refuses records the split does not know), rows per
file and side, per-class counts and the frame-length distribution; prints a
report. --merge-dir may be the FastESM2_650 or the ESM2-3B features: both hold
the same frames.
"""
from __future__ import annotations

import json
import os

from virnucpro.commands import options
from virnucpro.commands.cli import fraction, run_cli
from virnucpro.files import atomic_write, check_writable_file
from virnucpro.log import logger
from virnucpro.models.features import FeatureSet, find_merged_files
from virnucpro.training import splits


def main(argv=None):
    parser = options.parser(__doc__)
    options.data_dir(parser, "where the split FASTA files are, for frame lengths")
    options.merge_dirs(parser)
    parser.add_argument("--test-fraction", type=fraction, default=0.1,
                        help="share of each class held out (default 0.1)")
    parser.add_argument("--group-by", choices=splits.GROUP_LEVELS, default="organism",
                        help="what is held out together (default: organism)")
    parser.add_argument("--ani", type=float, default=splits.ANI_PERCENT,
                        help="--group-by ani: smallest ANI in percent that joins two genomes (default %(default)s)")
    parser.add_argument("--folds", type=int, help="deal the groups into this many group-disjoint folds ...")
    parser.add_argument("--fold", type=int, help="... and hold out this one (1 to --folds)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default=splits.DEFAULT_SPLIT, help="split file to write (default: %(default)s)")
    args = parser.parse_args(argv)
    options.merge_dir_defaults(args)
    if not 0 < args.test_fraction < 1:
        parser.error("--test-fraction must be between 0 and 1")
    if not 80 <= args.ani <= 100:
        parser.error("--ani is a percent identity between 80 and 100")
    if (args.folds is None) != (args.fold is None):
        parser.error("--folds and --fold go together")
    if args.folds is not None and not (args.folds >= 2 and 1 <= args.fold <= args.folds):
        parser.error("--folds must be at least 2, and --fold between 1 and --folds")
    check_writable_file(args.output, "--output", "the split")
    features = FeatureSet(find_merged_files(args.merge_dir))
    lengths = splits.frame_lengths(features.files, args.data_dir)
    split = splits.build_split(features, args.test_fraction, args.seed, lengths, splits.read_lineages(args.data_dir),
                               args.group_by, args.data_dir, args.ani, (args.fold, args.folds) if args.folds else None)
    splits.refuse_one_sided(split, args.merge_dir)
    split["merge_dir"] = os.path.abspath(args.merge_dir)
    with atomic_write(args.output) as handle:
        json.dump(split, handle, indent=1)
    print(splits.split_table(split))
    grouping = split["grouping"]
    if grouping["records_without_lineage"]:
        logger.warning(f"{grouping['records_without_lineage']} records have no recorded {args.group_by} "
                       f"(no lineage in the *.identified.json files under {args.data_dir}); each is its own group")
    print(f"\n{len(split['test_groups'])} test groups ({args.group_by}), {len(split['test_accessions'])} test "
          f"records; {len(split['excluded_test_frames'])} test frames identical to training frames left out; "
          f"split written to {args.output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
