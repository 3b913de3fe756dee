"""Held-out test sets: groups of related records (organism, lineage or ANI
clusters) kept whole on one side, group-disjoint folds, the split file
scripts/create_test_set.py writes and every later step reads, and the
fingerprints that tie a classifier to the records it was trained and tested on."""
from __future__ import annotations

import hashlib
import os
import random
from collections import Counter
from typing import Iterable, Iterator, Sequence

import numpy as np

from virnucpro.errors import InputError
from virnucpro.log import logger, plural
from virnucpro.models.features import FeatureSet
from virnucpro.runs import read_record
from virnucpro.sequences.fasta import FastaRecord, read_fasta
from virnucpro.sequences.genomes import MANIFEST_SUFFIX, read_manifest

CLASSES = {1: "viral", 0: "host"}
GENOME_SUFFIX = "genomic.fna.gz"           # the genome files scripts/download_data.py fetches
DEFAULT_SPLIT = "data/test_set/test_metadata.json"     # where scripts/create_test_set.py writes the split

GROUP_LEVELS = ("organism", "genus", "family", "ani", "record")
_FAMILY_ENDINGS = ("viridae", "aceae", "idae")      # virus, bacterial/plant/fungal and animal family names


def related_group(record: str, lineage: dict | None, level: str) -> str | None:
    """The group a record is held out with: its organism (segments, plasmids
    and chromosomes of one organism together), its genus (the last rank of
    its GenBank lineage), its family (the last lineage name with a family
    ending), or the record alone; ``None`` when the lineage does not say.
    ``ani`` starts from organisms, which :func:`ani_clusters` then joins."""
    if level == "record":
        return record
    if not lineage or not lineage.get("organism"):
        return None
    taxonomy = lineage.get("taxonomy") or []
    if level in ("organism", "ani"):
        return lineage["organism"]
    if level == "genus":
        return taxonomy[-1] if taxonomy else None
    return next((name for name in reversed(taxonomy) if name.endswith(_FAMILY_ENDINGS)), None)


def genome_split(accessions: Sequence[str], labels: np.ndarray, fraction: float, seed: int) -> set[str]:
    """Groups held out so that about ``fraction`` of each class's rows are
    held out, whole groups only (``accessions`` holds each row's group: a
    genome record, or a group of related records): frames of one chunk,
    overlapping chunks of one genome and relatives are near-duplicates and
    must not sit on both sides."""
    rng = random.Random(seed)
    held_out = set()
    for label in sorted(set(labels.tolist())):
        rows: dict[str, int] = {}
        for accession, row_label in zip(accessions, labels):
            if row_label == label:
                rows[accession] = rows.get(accession, 0) + 1
        order = sorted(rows)
        rng.shuffle(order)
        target, taken = fraction * sum(rows.values()), 0
        for accession in order:
            if abs(taken + rows[accession] - target) < abs(taken - target):
                held_out.add(accession)
                taken += rows[accession]
    return held_out


def validation_records(accessions: Sequence[str], labels: np.ndarray, test: set[str], fraction: float,
                       seed: int) -> set[str]:
    """The records train_fastesm.py validates on (early stopping) and
    evaluation calibrates on: a share of the non-test groups (``accessions``:
    each row's record)."""
    kept = [k for k, accession in enumerate(accessions) if accession not in test]
    return genome_split([accessions[k] for k in kept], labels[kept], fraction, seed)


ANI_PERCENT = 95.0          # the field's species-level convention
ALIGNED_FRACTION = 0.85     # of the shorter genome (the MIUViG rule for viral species clusters)


def ani_clusters(genomes: dict[str, list[str]], ani: float = ANI_PERCENT,
                 aligned: float = ALIGNED_FRACTION) -> dict[str, str]:
    """Single-linkage clusters of genomes (``{name: [contig, ...]}``): two
    genomes are linked when skani (through pyskani) finds an average
    nucleotide identity of at least ``ani`` percent over at least ``aligned``
    of the shorter one. Returns ``{name: cluster}``, a cluster named by its
    first member in sorted order."""
    try:
        import pyskani
    except ImportError:
        raise InputError("--group-by ani needs pyskani: python -m pip install pyskani") from None
    names = sorted(genomes)
    database = pyskani.Database()
    for name in names:
        database.sketch(name, *genomes[name])
    parent = {name: name for name in names}

    def root(name: str) -> str:
        while parent[name] != name:
            parent[name] = parent[parent[name]]
            name = parent[name]
        return name

    for name in names:
        for hit in database.query(name, *genomes[name]):
            if hit.identity * 100 >= ani and max(hit.query_fraction, hit.reference_fraction) >= aligned:
                first, second = sorted((root(name), root(hit.reference_name)))
                parent[second] = first
    return {name: root(name) for name in names}


def group_folds(groups: Sequence[str], labels: np.ndarray, folds: int, seed: int) -> list[set[str]]:
    """``folds`` disjoint sets of groups covering all groups (``groups`` holds
    each row's group), each with about an equal share of each class's rows:
    the test sets of a group-disjoint cross-validation."""
    rng = random.Random(seed)
    assigned: list[set[str]] = [set() for _ in range(folds)]
    for label in sorted(set(labels.tolist())):
        rows = Counter(group for group, row_label in zip(groups, labels) if row_label == label)
        if len(rows) < folds:
            raise InputError(f"{folds} folds need at least {folds} groups of each class; class {label} has "
                                   f"{len(rows)}: use fewer --folds or a finer --group-by")
        order = sorted(rows)
        rng.shuffle(order)
        order.sort(key=rows.get, reverse=True)          # largest groups first, ties in shuffled order
        taken = [0] * folds
        for group in order:
            placed = next((k for k, fold in enumerate(assigned) if group in fold), None)
            if placed is None:                           # a group may hold rows of both classes
                placed = min(range(folds), key=lambda k: (taken[k], k))
                assigned[placed].add(group)
            taken[placed] += rows[group]
    return assigned


def read_split(path) -> dict:
    """A split file of scripts/create_test_set.py: the records it holds out
    (``test_accessions``) and all the others it knows (``train_accessions``)."""
    split = read_record(path, "scripts/create_test_set.py", "run it again", keys=("test_accessions",))
    if split is None:
        raise InputError(f"{path}: no such split file; run scripts/create_test_set.py first")
    if "train_accessions" not in split:
        raise InputError(f"{path}: made by an older scripts/create_test_set.py that did not list every record; "
                         "run it again")
    return split


def record_fingerprint(records: Iterable[str]) -> str:
    """SHA-256 of a set of record ids: what a checkpoint records of the records
    it was trained, validated and tested on."""
    return hashlib.sha256("\n".join(sorted(set(records))).encode()).hexdigest()


def genome_records(data_dir: str, wanted: set[str]) -> Iterator[FastaRecord]:
    """The records named in ``wanted``, read from the genome files
    (``*genomic.fna.gz``) under ``data_dir``."""
    for root, folders, names in os.walk(data_dir):
        folders.sort()
        for name in sorted(names):
            if name.endswith(GENOME_SUFFIX):
                yield from (record for record in read_fasta(os.path.join(root, name), alphabet="dna")
                            if record.id in wanted)


def frame_lengths(merged_files: Sequence[str], data_dir) -> dict[str, int]:
    """Nucleotide length of the frames of merged files, read from the split
    FASTA files features_extract.py worked on (``<name>.identified_nucleotide/
    output_N.fa`` under ``data_dir``); frames whose file is gone are left out."""
    split_dirs = {}
    for root, folders, _ in os.walk(data_dir):
        for folder in folders:
            if folder.endswith(".identified_nucleotide"):
                split_dirs[folder[:-len(".identified_nucleotide")]] = os.path.join(root, folder)
    lengths = {}
    for path in merged_files:
        stem = os.path.basename(os.path.dirname(path))[:-len("_merged")]
        fasta = os.path.join(split_dirs.get(stem, ""), os.path.basename(path)[:-len("_merged.pt")] + ".fa")
        if stem in split_dirs and os.path.exists(fasta):
            lengths.update((record.id, len(record.sequence)) for record in read_fasta(fasta, alphabet=None))
    return lengths


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
            if name.endswith(MANIFEST_SUFFIX):
                lineages.update(read_manifest(os.path.join(root, name)).get("lineages", {}))
    return lineages


def _row_digest(row: np.ndarray) -> bytes:
    return hashlib.blake2b(row.tobytes(), digest_size=16).digest()


def identical_test_frames(features: FeatureSet, in_test: np.ndarray) -> list[str]:
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
    for record in genome_records(data_dir, set(groups)):
        genomes.setdefault(groups[record.id], []).append(record.sequence)
        found.add(record.id)
    missing = sorted(set(groups) - found)
    if missing:
        raise InputError(f"--group-by ani: {len(missing)} records are not in the *{GENOME_SUFFIX} "
                               f"files under {data_dir} (first: {missing[0]}); give the --data-dir the genomes "
                               "were downloaded to")
    logger.info(f"clustering {len(genomes)} genomes by ANI >= {ani:g}% (skani)")
    clusters = ani_clusters(genomes, ani)
    return {record: f"ANI cluster of {clusters[group]}" for record, group in groups.items()}


def record_groups(accessions: list[str], lineages: dict, level: str, data_dir: str, ani: float):
    """``({record: group}, records without lineage)``."""
    groups = {a: related_group(a, lineages.get(a), level) for a in set(accessions)}
    ungrouped = sorted(a for a, group in groups.items() if group is None)
    groups.update({a: f"record {a}" for a in ungrouped})
    if level == "ani":
        groups = ani_groups(groups, data_dir, ani)
    return groups, ungrouped


def build_split(features: FeatureSet, fraction: float, seed: int, lengths: dict, lineages: dict,
                level: str, data_dir: str = "data", ani: float = ANI_PERCENT,
                fold: tuple[int, int] | None = None) -> dict:
    """The split; ``fold`` = ``(k, folds)`` holds out the k-th (1-based) of
    ``folds`` group-disjoint folds instead of ``fraction``."""
    accessions = features.accessions()
    groups, ungrouped = record_groups(accessions, lineages, level, data_dir, ani)
    row_groups = [groups[a] for a in accessions]
    if fold:
        held_out = group_folds(row_groups, features.labels, fold[1], seed)[fold[0] - 1]
    else:
        held_out = genome_split(row_groups, features.labels, fraction, seed)
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
                         **({"ani_percent": ani, "aligned_fraction": ALIGNED_FRACTION}
                            if level == "ani" else {}),
                         "records_without_lineage": len(ungrouped) if level != "record" else 0},
            "rule": "a row is a test row when its accession (frame id before '_chunk_') is in test_accessions "
                    "and its id is not in excluded_test_frames",
            "test_groups": sorted(held_out), "test_accessions": sorted(test_accessions),
            "test_group_of": {a: groups[a] for a in sorted(test_accessions)},
            "train_accessions": sorted(set(accessions) - test_accessions),
            "excluded_test_frames": excluded, "classes": classes, "files": files}


def refuse_one_sided(split: dict, merge_dir: str) -> None:
    """A split with a class on one side only (too few groups for the fraction or the folds) says nothing
    about that class: refused, before it is written."""
    level = split["grouping"]["level"]
    for name, sides in split["classes"].items():
        groups = sides["train"]["groups"] + sides["test"]["groups"]
        for side in ("test", "train"):
            if sides[side]["rows"]:
                continue
            rows = sides["train"]["rows"] + sides["test"]["rows"]
            raise InputError(f"{merge_dir}: the split has no {name} {side} rows ({plural(rows, f'{name} row')} in "
                             f"{plural(groups, 'group')} by {level}), so nothing could be measured on it; give "
                             f"{one_sided_fix(split, side, groups)}")


def one_sided_fix(split: dict, side: str, groups: int) -> str:
    """What gives both sides of a split rows of a class that has ``groups`` groups: only advice that can."""
    finer = [] if split["grouping"]["level"] == "record" else ["a finer --group-by (record)"]
    if groups < 2:                   # one group cannot be on both sides, whatever the fraction or the folds
        return " or ".join([*finer, "more genomes of that class"])
    if split["fold"]:
        return ", ".join([f"fewer --folds than {split['fold']['folds']}", *finer, "or more data"])
    fraction = "a larger --test-fraction" if side == "test" else "a smaller --test-fraction"
    return ", ".join([fraction, *finer, "or more data"])


def split_table(split: dict) -> str:
    """The split's rows, records and groups per class and side, as a markdown table."""
    lines = ["| class | side | rows | share | records | groups | median length (bp) |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for name, sides in split["classes"].items():
        total = sides["train"]["rows"] + sides["test"]["rows"]
        for side in ("train", "test"):
            part = sides[side]
            lines.append(f"| {name} | {side} | {part['rows']} | {part['rows'] / max(total, 1):.1%} | "
                         f"{part['genomes']} | {part['groups']} | {part['length'].get('median', 'n/a')} |")
    return "\n".join(lines)
