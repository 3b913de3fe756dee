"""The training selection of features_extract.py: the identified frame files
of make_train_dataset.py found and split into files of a fixed number of
frames (only full files are used, as published), every full viral file and a
host sample balanced over the host categories, and the record of what the
features of a merge folder depend on.

A file's category is the first word of its name: ``viral`` or a host category
(``vertebrate_*`` counts as ``vertebrate``), as download_data.py names them.
"""
from __future__ import annotations

import collections
import json
import math
import os
import random
from dataclasses import dataclass

from virnucpro.errors import InputError
from virnucpro.files import atomic_write
from virnucpro.log import logger, plural
from virnucpro.models.loaders import Encoders
from virnucpro.runs import changed_settings, read_record
from virnucpro.sequences.fasta import read_fasta, split_fasta_file
from virnucpro.sequences.genomes import CATEGORY_RULE, HOST_CATEGORIES, MANIFEST_SUFFIX, category_of, read_manifest

NUCLEOTIDE_SUFFIX = ".identified_nucleotide.fa"
PROTEIN_SUFFIX = ".identified_protein.fa"
PROTEIN_FEATURE_SUFFIX = {"fastesm650": "_FastESM2_650.pt", "esm2_3b": "_ESM.pt"}
DEFAULT_MERGE_DIR = {"fastesm650": "data_merge", "esm2_3b": "data_merge_esm2_3b"}


@dataclass(frozen=True)
class SplitFile:
    """One split file pair (same frames in the same order) of a genome pair."""
    stem: str              # e.g. bacteria.123.1
    category: str          # viral or a host category
    nucleotide: str
    protein: str
    sequences: int
    chunk_length: int | None   # from make_train_dataset.py's <stem>.identified.json

    @property
    def label(self) -> str:
        return "viral" if self.category == "viral" else "host"

    def merged(self, merge_dir: str) -> str:
        name = os.path.basename(self.nucleotide)[:-len(".fa")]
        return os.path.join(merge_dir, f"{self.stem}_merged", f"{name}_merged.pt")


def discover(data_dir: str) -> list[tuple[str, str, str]]:
    """``(stem, nucleotide file, protein file)`` of every identified pair, sorted; files that cannot be used
    are skipped with a warning, and refused with the rule they fail when none can."""
    if not os.path.isdir(data_dir):
        raise InputError(f"{data_dir}: no such folder")
    pairs, skipped = [], []
    for root, _, names in os.walk(data_dir):
        for name in sorted(names):
            if not name.endswith(NUCLEOTIDE_SUFFIX):
                continue
            stem = name[:-len(NUCLEOTIDE_SUFFIX)]
            protein = os.path.join(root, stem + PROTEIN_SUFFIX)
            if not os.path.exists(protein):
                skipped.append(f"{os.path.join(root, name)}: no {stem + PROTEIN_SUFFIX} beside it (the frames' "
                               "proteins, which scripts/make_train_dataset.py writes with them)")
            elif category_of(stem) is None:
                skipped.append(f"{os.path.join(root, name)}: unknown category '{stem.split('.')[0]}' ({CATEGORY_RULE}"
                               f"; rename it, e.g. viral.{name})")
            else:
                pairs.append((stem, os.path.join(root, name), protein))
    if not pairs and skipped:
        raise InputError(f"{skipped[0]}" + (f"; and {len(skipped) - 1} more files cannot be used" if skipped[1:]
                                            else ""))
    if not pairs:
        raise InputError(f"{data_dir}: no *{NUCLEOTIDE_SUFFIX} files; run scripts/make_train_dataset.py")
    for reason in skipped:
        logger.warning(f"{reason}; skipped")
    return sorted(pairs)


def split_once(fasta: str, sequences_per_file: int) -> list[tuple[str, int]]:
    """Split ``fasta`` beside itself into ``output_N.fa`` files (once: a
    ``split.json`` records the source and the files); ``[(path, sequences)]``."""
    folder = fasta[:-len(".fa")] + "/"
    stat = os.stat(fasta)
    source = {"source": os.path.basename(fasta), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
              "sequences_per_file": sequences_per_file}
    marker = os.path.join(folder, "split.json")
    recorded = read_record(marker, "features_extract.py", "delete it to split the file again", keys=("files",))
    if recorded is not None and not changed_settings(recorded, source):
        return [(os.path.join(folder, name), count) for name, count in recorded["files"]]
    paths = split_fasta_file(fasta, folder, sequences_per_file)
    last = sum(1 for _ in read_fasta(paths[-1], alphabet=None))
    files = [[os.path.basename(p), sequences_per_file] for p in paths[:-1]] + [[os.path.basename(paths[-1]), last]]
    with atomic_write(marker) as handle:
        json.dump({**source, "files": files}, handle, indent=1)
    return [(os.path.join(folder, name), count) for name, count in files]


def chunk_length_of(nucleotide: str) -> int | None:
    """The chunk length recorded by make_train_dataset.py beside an identified file."""
    manifest = read_manifest(nucleotide[:-len(NUCLEOTIDE_SUFFIX)] + MANIFEST_SUFFIX)
    return manifest.get("chunk_length") if manifest else None


def full_split_files(pairs, sequences_per_file: int) -> list[SplitFile]:
    """The split files holding exactly ``sequences_per_file`` frames (published: only full files are used);
    refused, naming the files and their frames, when a class has none."""
    files = []
    for stem, nucleotide, protein in pairs:
        nucleotide_parts = split_once(nucleotide, sequences_per_file)
        protein_parts = split_once(protein, sequences_per_file)
        if [count for _, count in nucleotide_parts] != [count for _, count in protein_parts]:
            raise InputError(f"{nucleotide} and {protein} hold different numbers of frames; "
                             "rebuild them with scripts/make_train_dataset.py")
        chunk_length = chunk_length_of(nucleotide)
        files += [SplitFile(stem, category_of(stem), n_path, p_path, count, chunk_length)
                  for (n_path, count), (p_path, _) in zip(nucleotide_parts, protein_parts)]
    for label in ("viral", "host"):
        if not any(f.label == label for f in files):
            folder = os.path.commonpath([os.path.dirname(nucleotide) or "." for _, nucleotide, _ in pairs])
            names = "viral.*" if label == "viral" else "<host category>.*"
            raise InputError(f"{folder}: no {label} file ({names}{NUCLEOTIDE_SUFFIX}; {CATEGORY_RULE}); build "
                             "them with scripts/make_train_dataset.py")
    for label in ("viral", "host"):
        _refuse_without_a_full_file(pairs, [f for f in files if f.label == label], label, sequences_per_file)
    _say_what_is_left_out(files, sequences_per_file)
    return [f for f in files if f.sequences == sequences_per_file]


def _say_what_is_left_out(files: list[SplitFile], sequences_per_file: int) -> None:
    """Name the genomes whose frames the rule leaves out (all of them, under one full file), and how many
    frames the partial last files of the others hold."""
    frames: dict[str, list[int]] = {}
    for split in files:
        frames.setdefault(split.stem, []).append(split.sequences)
    whole = {stem: counts[0] for stem, counts in frames.items() if counts[0] < sequences_per_file}
    partial = {stem: counts[-1] for stem, counts in frames.items()
               if stem not in whole and counts[-1] < sequences_per_file}
    if whole:
        shown = ", ".join(f"{stem} ({plural(count, 'frame')})" for stem, count in list(whole.items())[:5])
        logger.warning(f"{plural(len(whole), 'genome')} left out whole, with fewer frames than --sequences-per-file "
                       f"({sequences_per_file}): {shown}{', ...' if len(whole) > 5 else ''}; --sequences-per-file "
                       f"{min(whole.values())} or less would use every genome")
    if partial:
        logger.info(f"the last, partial split file of {plural(len(partial), 'genome')} is left out, as published: "
                    f"{plural(sum(partial.values()), 'frame')} in all")


def _refuse_without_a_full_file(pairs, files: list[SplitFile], label: str, sequences_per_file: int) -> None:
    if any(f.sequences == sequences_per_file for f in files):
        return
    frames = collections.Counter()
    for split in files:
        frames[next(n for stem, n, _ in pairs if stem == split.stem)] += split.sequences
    largest, count = frames.most_common(1)[0]
    among = f", the most of the {len(frames)} {label} files" if len(frames) > 1 else ""
    raise InputError(f"{largest}: {count} frames{among}; only split files of exactly --sequences-per-file "
                     f"({sequences_per_file}) frames are used, as published, so there is no full {label} file: "
                     f"give --sequences-per-file {count} or less, or more data")


def select_files(files: list[SplitFile], seed: int) -> list[SplitFile]:
    """Every viral file, then a host sample balanced over the host categories."""
    viral = [f for f in files if f.category == "viral"]
    per_category = math.ceil(len(viral) / len(HOST_CATEGORIES))
    rng = random.Random(seed)
    host, short = [], []
    for category in HOST_CATEGORIES:
        pool = [f for f in files if f.category == category]
        if len(pool) < per_category:
            short.append(f"{category} {len(pool)}")
        host += rng.sample(pool, min(per_category, len(pool)))
    if short:
        logger.warning(f"the host sample draws {per_category} full {'file' if per_category == 1 else 'files'} "
                       f"from each host category, as published, and some have fewer: {', '.join(short)}")
    if len(host) < len(viral):
        logger.warning(f"{plural(len(host), 'host file')} for {plural(len(viral), 'viral file')}: the classes are "
                       "unbalanced")
    return viral + rng.sample(host, min(len(viral), len(host)))


def feature_files(split: SplitFile, pipeline: str) -> tuple[str, str]:
    """The DNABERT-S and protein feature files of a split file, beside it."""
    return split.nucleotide[:-3] + "_DNABERT_S.pt", split.protein[:-3] + PROTEIN_FEATURE_SUFFIX[pipeline]


RECORD_FILE = "extraction.json"


def extraction_settings(encoders: Encoders, sequences_per_file: int, seed: int) -> dict:
    """What the features depend on (the encoders' precision included); resuming with anything else would
    mix them."""
    return {"pipeline": encoders.pipeline.name, **encoders.identity(), "sequences_per_file": sequences_per_file,
            "seed": seed, "precision": encoders.precision}


def check_resume(merge_dir: str, settings: dict, restart: bool, mine: list[SplitFile]) -> None:
    """Refuse to add features made otherwise to a merge folder, unless
    ``restart``, which removes this process's share of earlier results."""
    record = os.path.join(merge_dir, RECORD_FILE)
    fix = "give another --merge-dir, or --restart to extract them again"
    previous = None if restart else read_record(record, "features_extract.py", fix)
    if previous is not None and previous != settings:
        raise InputError(f"{merge_dir} holds features made with other settings "
                         f"({', '.join(changed_settings(previous, settings))}); {fix}")
    if restart:
        for split in mine:
            for path in (split.merged(merge_dir), *feature_files(split, settings["pipeline"])):
                if os.path.exists(path):
                    os.remove(path)
    with atomic_write(record) as handle:
        json.dump(settings, handle, indent=1)
