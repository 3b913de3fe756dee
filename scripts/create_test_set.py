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
No group contributes to both sides; a record whose lineage is not recorded is
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

import argparse
import hashlib
import json
import os

import numpy as np

import evaluation
import units

CLASSES = {1: "viral", 0: "host"}


def length_summary(lengths: list[int]) -> dict:
    if not lengths:
        return {"frames_with_known_length": 0}
    q = np.percentile(lengths, [0, 25, 50, 75, 100])
    return {"frames_with_known_length": len(lengths), "min": int(q[0]), "p25": float(q[1]), "median": float(q[2]),
            "p75": float(q[3]), "max": int(q[4]), "mean": round(float(np.mean(lengths)), 1)}


def read_lineages(data_dir: str) -> dict[str, dict]:
    """Organism and taxonomy of every record, from make_train_dataset.py's records."""
    lineages = {}
    for root, _, names in os.walk(data_dir):
        for name in names:
            if name.endswith(".identified.json"):
                with open(os.path.join(root, name)) as handle:
                    lineages.update(json.load(handle).get("lineages", {}))
    return lineages


def _row_digest(row: np.ndarray) -> bytes:
    return hashlib.blake2b(row.tobytes(), digest_size=16).digest()


def identical_test_frames(features: units.FeatureSet, in_test: np.ndarray) -> list[str]:
    """Ids of test frames whose features equal a training frame's (one file in memory at a time)."""
    in_training, test = set(), []
    for _, start, end in features.spans():
        for index, row in enumerate(features.rows(np.arange(start, end)).numpy(), start=start):
            if in_test[index]:
                test.append((index, _row_digest(row)))
            else:
                in_training.add(_row_digest(row))
    return [features.ids[index] for index, key in test if key in in_training]


def ani_groups(groups: dict[str, str], data_dir: str, ani: float) -> dict[str, str]:
    """Groups joined into ANI clusters: ``{record: cluster}``; each group's
    genome is the sequences of its records."""
    genomes: dict[str, list[str]] = {}
    found = set()
    for record in evaluation.genome_records(data_dir, set(groups)):
        genomes.setdefault(groups[record.id], []).append(record.sequence)
        found.add(record.id)
    missing = sorted(set(groups) - found)
    if missing:
        raise units.InputError(f"--group-by ani: {len(missing)} records are not in the *{evaluation.GENOME_SUFFIX} "
                               f"files under {data_dir} (first: {missing[0]}); give the --data-dir the genomes "
                               "were downloaded to")
    units.logger.info(f"clustering {len(genomes)} genomes by ANI >= {ani:g}% (skani)")
    clusters = evaluation.ani_clusters(genomes, ani)
    return {record: f"ANI cluster of {clusters[group]}" for record, group in groups.items()}


def record_groups(accessions: list[str], lineages: dict, level: str, data_dir: str, ani: float):
    """``({record: group}, records without lineage)``."""
    groups = {a: evaluation.related_group(a, lineages.get(a), level) for a in set(accessions)}
    ungrouped = sorted(a for a, group in groups.items() if group is None)
    groups.update({a: f"record {a}" for a in ungrouped})
    if level == "ani":
        groups = ani_groups(groups, data_dir, ani)
    return groups, ungrouped


def build_split(features: units.FeatureSet, fraction: float, seed: int, lengths: dict, lineages: dict,
                level: str, data_dir: str = "data", ani: float = evaluation.ANI_PERCENT,
                fold: tuple[int, int] | None = None) -> dict:
    """The split; ``fold`` = ``(k, folds)`` holds out the k-th (1-based) of
    ``folds`` group-disjoint folds instead of ``fraction``."""
    accessions = features.accessions()
    groups, ungrouped = record_groups(accessions, lineages, level, data_dir, ani)
    row_groups = [groups[a] for a in accessions]
    if fold:
        held_out = evaluation.group_folds(row_groups, features.labels, fold[1], seed)[fold[0] - 1]
    else:
        held_out = evaluation.genome_split(row_groups, features.labels, fraction, seed)
    test_accessions = {a for a, group in groups.items() if group in held_out}
    in_test = np.array([a in test_accessions for a in accessions], dtype=bool)
    excluded = identical_test_frames(features, in_test)
    classes, files = {}, []
    for label, name in CLASSES.items():
        mine = features.labels == label
        classes[name] = {side: {"rows": int((mine & chosen).sum()),
                                "genomes": len({a for a, m, c in zip(accessions, mine, chosen) if m and c}),
                                "groups": len({groups[a] for a, m, c in zip(accessions, mine, chosen) if m and c}),
                                "length": length_summary([lengths[i] for i, m, c in zip(features.ids, mine, chosen)
                                                          if m and c and i in lengths])}
                         for side, chosen in (("train", ~in_test), ("test", in_test))}
    for path, start, end in features.spans():
        files.append({"path": path, "label": int(features.labels[start]) if end > start else None,
                      "rows": int(end - start), "test_rows": int(in_test[start:end].sum())})
    return {"seed": seed, "test_fraction": fraction if not fold else 1 / fold[1],
            "fold": {"fold": fold[0], "folds": fold[1]} if fold else None,
            "grouping": {"level": level, "groups": len(set(groups.values())),
                         **({"ani_percent": ani, "aligned_fraction": evaluation.ALIGNED_FRACTION}
                            if level == "ani" else {}),
                         "records_without_lineage": len(ungrouped) if level != "record" else 0},
            "rule": "a row is a test row when its accession (frame id before '_chunk_') is in test_accessions "
                    "and its id is not in excluded_test_frames",
            "test_groups": sorted(held_out), "test_accessions": sorted(test_accessions),
            "test_group_of": {a: groups[a] for a in sorted(test_accessions)},
            "train_accessions": sorted(set(accessions) - test_accessions),
            "excluded_test_frames": excluded, "classes": classes, "files": files}


def report(split: dict) -> str:
    lines = ["| class | side | rows | share | records | groups | median length (bp) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, sides in split["classes"].items():
        total = sides["train"]["rows"] + sides["test"]["rows"]
        for side in ("train", "test"):
            part = sides[side]
            lines.append(f"| {name} | {side} | {part['rows']} | {part['rows'] / max(total, 1):.1%} | "
                         f"{part['genomes']} | {part['groups']} | {part['length'].get('median', 'n/a')} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--merge-dir", default="data/data_merge", help="merged features (default: data/data_merge)")
    parser.add_argument("--data-dir", default="data", help="where the split FASTA files are, for frame lengths")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="share of each class held out (default 0.1)")
    parser.add_argument("--group-by", choices=evaluation.GROUP_LEVELS, default="organism",
                        help="what is held out together (default: organism)")
    parser.add_argument("--ani", type=float, default=evaluation.ANI_PERCENT,
                        help="--group-by ani: smallest ANI in percent that joins two genomes (default %(default)s)")
    parser.add_argument("--folds", type=int, help="deal the groups into this many group-disjoint folds ...")
    parser.add_argument("--fold", type=int, help="... and hold out this one (1 to --folds)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default="data/test_set/test_metadata.json",
                        help="split file to write (default: data/test_set/test_metadata.json)")
    args = parser.parse_args(argv)
    if not 0 < args.test_fraction < 1:
        parser.error("--test-fraction must be between 0 and 1")
    if not 80 <= args.ani <= 100:
        parser.error("--ani is a percent identity between 80 and 100")
    if (args.folds is None) != (args.fold is None):
        parser.error("--folds and --fold go together")
    if args.folds is not None and not (args.folds >= 2 and 1 <= args.fold <= args.folds):
        parser.error("--folds must be at least 2, and --fold between 1 and --folds")
    features = units.FeatureSet(units.find_merged_files(args.merge_dir))
    lengths = evaluation.frame_lengths(features.files, args.data_dir)
    split = build_split(features, args.test_fraction, args.seed, lengths, read_lineages(args.data_dir),
                        args.group_by, args.data_dir, args.ani, (args.fold, args.folds) if args.folds else None)
    split["merge_dir"] = os.path.abspath(args.merge_dir)
    with units.atomic_write(args.output) as handle:
        json.dump(split, handle, indent=1)
    print(report(split))
    grouping = split["grouping"]
    if grouping["records_without_lineage"]:
        units.logger.warning(f"{grouping['records_without_lineage']} records have no recorded {args.group_by} "
                             f"(no lineage in the *.identified.json files under {args.data_dir}); each is its "
                             "own group")
    print(f"\n{len(split['test_groups'])} test groups ({args.group_by}), {len(split['test_accessions'])} test "
          f"records; {len(split['excluded_test_frames'])} test frames identical to training frames left out; "
          f"split written to {args.output}")
    return 0


if __name__ == "__main__":
    units.run_cli(main)
