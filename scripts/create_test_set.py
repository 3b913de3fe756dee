#!/usr/bin/env python3
"""Hold out a test set from the merged features, whole genomes at a time.

    python scripts/create_test_set.py [--merge-dir data/data_merge]

About 10% of each class's rows (stratified) go to the test set, chosen by
genome record (accession, the frame id before _chunk_) with a fixed seed: no
genome contributes to both sides. The published random per-frame split put
frames of one chunk, and overlapping chunks of one genome, on both sides.

Writes data/test_set/test_metadata.json: the seed, the test accessions (a row
is a test row when its accession is listed), every other record it saw
(train_accessions: training refuses records the split does not know), rows per
file and side, per-class counts and the frame-length distribution; prints a
report. --merge-dir may be the FastESM2_650 or the ESM2-3B features: both hold
the same frames.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

import units

CLASSES = {1: "viral", 0: "host"}


def length_summary(lengths: list[int]) -> dict:
    if not lengths:
        return {"frames_with_known_length": 0}
    q = np.percentile(lengths, [0, 25, 50, 75, 100])
    return {"frames_with_known_length": len(lengths), "min": int(q[0]), "p25": float(q[1]), "median": float(q[2]),
            "p75": float(q[3]), "max": int(q[4]), "mean": round(float(np.mean(lengths)), 1)}


def build_split(features: units.FeatureSet, fraction: float, seed: int, lengths: dict) -> dict:
    accessions = features.accessions()
    test_accessions = units.genome_split(accessions, features.labels, fraction, seed)
    in_test = np.array([a in test_accessions for a in accessions], dtype=bool)
    classes, files = {}, []
    for label, name in CLASSES.items():
        mine = features.labels == label
        classes[name] = {side: {"rows": int((mine & chosen).sum()),
                                "genomes": len({a for a, m, c in zip(accessions, mine, chosen) if m and c}),
                                "length": length_summary([lengths[i] for i, m, c in zip(features.ids, mine, chosen)
                                                          if m and c and i in lengths])}
                         for side, chosen in (("train", ~in_test), ("test", in_test))}
    for path, start, end in features.spans():
        files.append({"path": path, "label": int(features.labels[start]) if end > start else None,
                      "rows": int(end - start), "test_rows": int(in_test[start:end].sum())})
    return {"seed": seed, "test_fraction": fraction, "rule": "a row is a test row when its accession "
            "(frame id before '_chunk_') is in test_accessions", "test_accessions": sorted(test_accessions),
            "train_accessions": sorted(set(accessions) - test_accessions), "classes": classes, "files": files}


def report(split: dict) -> str:
    lines = ["| class | side | rows | share | genomes | median length (bp) |", "|---|---|---:|---:|---:|---:|"]
    for name, sides in split["classes"].items():
        total = sides["train"]["rows"] + sides["test"]["rows"]
        for side in ("train", "test"):
            part = sides[side]
            lines.append(f"| {name} | {side} | {part['rows']} | {part['rows'] / max(total, 1):.1%} | "
                         f"{part['genomes']} | {part['length'].get('median', 'n/a')} |")
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--merge-dir", default="data/data_merge", help="merged features (default: data/data_merge)")
    parser.add_argument("--data-dir", default="data", help="where the split FASTA files are, for frame lengths")
    parser.add_argument("--test-fraction", type=float, default=0.1, help="share of each class held out (default 0.1)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--output", default="data/test_set/test_metadata.json",
                        help="split file to write (default: data/test_set/test_metadata.json)")
    args = parser.parse_args(argv)
    if not 0 < args.test_fraction < 1:
        parser.error("--test-fraction must be between 0 and 1")
    features = units.FeatureSet(units.find_merged_files(args.merge_dir))
    lengths = units.frame_lengths(features.files, args.data_dir)
    split = build_split(features, args.test_fraction, args.seed, lengths)
    split["merge_dir"] = os.path.abspath(args.merge_dir)
    with units.atomic_write(args.output) as handle:
        json.dump(split, handle, indent=1)
    print(report(split))
    print(f"\n{len(split['test_accessions'])} test genomes; split written to {args.output}")
    return 0


if __name__ == "__main__":
    units.run_cli(main)
