#!/usr/bin/env python3
"""Extract the training features: DNABERT-S + FastESM2_650, merged and labelled.

    python features_extract.py [--data-dir data]

The published flow, made robust:
  1. find the identified_nucleotide.fa / identified_protein.fa pairs that
     scripts/make_train_dataset.py wrote under the data folder;
  2. split each into files of 10,000 sequences (<name>.identified_nucleotide/
     output_N.fa, and the same for proteins);
  3. take every full viral file, and a host sample balanced over the seven host
     categories (vertebrate, protozoa, plant, invertebrate, fungi, bacteria,
     archaea): ceil(n_viral / 7) files per category, then sampled down to
     n_viral files (seed 42);
  4. extract DNABERT-S and protein features of each file (models loaded once)
     and merge them into <merge-dir>/<name>_merged/output_N_merged.pt with the
     label (viral 1, host 0);
  5. check every merged file of this run (2048-d, finite, unique ids, labels).

A re-run skips finished files (every file is written atomically); failed
sequences are logged to extraction_failures.log and counted. The merge folder's
extraction.json records what the features depend on (pipeline, the models by
snapshot commit or by their files, split size, seed): a re-run with anything
different is refused, naming it, unless --restart redoes this selection.

Several GPUs or nodes: run the same command under torchrun, accelerate launch
or a SLURM array; each process takes files i, i+N, ... of the same selection by
its rank (RANK/WORLD_SIZE, or SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT) and
uses GPU LOCAL_RANK.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import random
from dataclasses import dataclass

import torch

import units

HOST_CATEGORIES = ("vertebrate", "protozoa", "plant", "invertebrate", "fungi", "bacteria", "archaea")
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


def category_of(stem: str) -> str | None:
    name = stem.split(".", 1)[0]
    if name == "viral":
        return "viral"
    if name.startswith("vertebrate"):
        return "vertebrate"          # mammalian and other together, as published
    return name if name in HOST_CATEGORIES else None


def discover(data_dir: str) -> list[tuple[str, str, str]]:
    """``(stem, nucleotide file, protein file)`` of every identified pair, sorted."""
    if not os.path.isdir(data_dir):
        raise units.InputError(f"{data_dir}: no such folder")
    pairs = []
    for root, _, names in os.walk(data_dir):
        for name in sorted(names):
            if not name.endswith(NUCLEOTIDE_SUFFIX):
                continue
            stem = name[:-len(NUCLEOTIDE_SUFFIX)]
            protein = os.path.join(root, stem + PROTEIN_SUFFIX)
            if not os.path.exists(protein):
                units.logger.warning(f"{os.path.join(root, name)}: no {stem + PROTEIN_SUFFIX} beside it; skipped")
            elif category_of(stem) is None:
                units.logger.warning(f"{os.path.join(root, name)}: unknown category '{stem.split('.')[0]}'; skipped")
            else:
                pairs.append((stem, os.path.join(root, name), protein))
    return sorted(pairs)


def split_once(fasta: str, sequences_per_file: int) -> list[tuple[str, int]]:
    """Split ``fasta`` beside itself into ``output_N.fa`` files (once: a
    ``split.json`` records the source and the files); ``[(path, sequences)]``."""
    folder = fasta[:-len(".fa")] + "/"
    stat = os.stat(fasta)
    source = {"source": os.path.basename(fasta), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns,
              "sequences_per_file": sequences_per_file}
    marker = os.path.join(folder, "split.json")
    if os.path.exists(marker):
        with open(marker) as handle:
            recorded = json.load(handle)
        if {key: recorded.get(key) for key in source} == source:
            return [(os.path.join(folder, name), count) for name, count in recorded["files"]]
    paths = units.split_fasta_file(fasta, folder, sequences_per_file)
    last = sum(1 for _ in units.read_fasta(paths[-1], alphabet=None))
    files = [[os.path.basename(p), sequences_per_file] for p in paths[:-1]] + [[os.path.basename(paths[-1]), last]]
    with units.atomic_write(marker) as handle:
        json.dump({**source, "files": files}, handle, indent=1)
    return [(os.path.join(folder, name), count) for name, count in files]


def chunk_length_of(nucleotide: str) -> int | None:
    """The chunk length recorded by make_train_dataset.py beside an identified file."""
    manifest = nucleotide[:-len(NUCLEOTIDE_SUFFIX)] + ".identified.json"
    try:
        with open(manifest) as handle:
            return json.load(handle).get("chunk_length")
    except FileNotFoundError:
        return None
    except (ValueError, AttributeError):
        raise units.InputError(f"{manifest}: not a readable record of scripts/make_train_dataset.py; "
                               "rebuild the identified files with it") from None


def full_split_files(pairs, sequences_per_file: int) -> list[SplitFile]:
    """The split files holding exactly ``sequences_per_file`` frames (published: only full files are used)."""
    files = []
    for stem, nucleotide, protein in pairs:
        nucleotide_parts = split_once(nucleotide, sequences_per_file)
        protein_parts = split_once(protein, sequences_per_file)
        if [count for _, count in nucleotide_parts] != [count for _, count in protein_parts]:
            raise units.InputError(f"{nucleotide} and {protein} hold different numbers of frames; "
                                   "rebuild them with scripts/make_train_dataset.py")
        chunk_length = chunk_length_of(nucleotide)
        files += [SplitFile(stem, category_of(stem), n_path, p_path, count, chunk_length)
                  for (n_path, count), (p_path, _) in zip(nucleotide_parts, protein_parts)
                  if count == sequences_per_file]
    return files


def select_files(files: list[SplitFile], seed: int) -> list[SplitFile]:
    """Every viral file, then a host sample balanced over the host categories."""
    viral = [f for f in files if f.category == "viral"]
    if not viral:
        raise units.InputError("no full viral file found; build viral.*.identified_* files first "
                               "(scripts/download_data.py, scripts/make_train_dataset.py)")
    per_category = math.ceil(len(viral) / len(HOST_CATEGORIES))
    rng = random.Random(seed)
    host = []
    for category in HOST_CATEGORIES:
        pool = [f for f in files if f.category == category]
        if len(pool) < per_category:
            units.logger.warning(f"{category}: {len(pool)} full host files, {per_category} wanted; "
                                 "the host sample is less balanced")
        host += rng.sample(pool, min(per_category, len(pool)))
    if len(host) < len(viral):
        units.logger.warning(f"{len(host)} host files for {len(viral)} viral files: the classes are unbalanced")
    return viral + rng.sample(host, min(len(viral), len(host)))


def process_share() -> tuple[int, int, int]:
    """``(rank, world size, local rank)`` from torchrun / accelerate or a SLURM array."""
    env = os.environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_ARRAY_TASK_COUNT" in env:
        first = int(env.get("SLURM_ARRAY_TASK_MIN", 0))
        return int(env["SLURM_ARRAY_TASK_ID"]) - first, int(env["SLURM_ARRAY_TASK_COUNT"]), 0
    return 0, 1, 0


def feature_files(split: SplitFile, pipeline: units.Pipeline) -> tuple[str, str]:
    """The DNABERT-S and protein feature files of a split file, beside it."""
    return split.nucleotide[:-3] + "_DNABERT_S.pt", split.protein[:-3] + PROTEIN_FEATURE_SUFFIX[pipeline.name]


def extract_file(split: SplitFile, merged: str, models, pipeline: units.Pipeline, args) -> int:
    """Features of one split file, merged; returns the number of failed sequences."""
    dna_model, dna_tokenizer = models[0]
    protein_model, protein_tokenizer = models[1]
    dna_file, protein_file = feature_files(split, pipeline)
    dna = units.extract_DNABERT_S(split.nucleotide, dna_file, model=dna_model,
                                  tokenizer=dna_tokenizer, toks_per_batch=args.dna_batch_tokens)
    proteins = units.extract_protein(pipeline, split.protein, protein_file,
                                     protein_model, protein_tokenizer, toks_per_batch=args.protein_batch_tokens)
    units.merge_data(dna_file, protein_file, merged,
                     data_type=split.label, protein_dim=pipeline.protein.dim, chunk_length=split.chunk_length)
    return split.sequences - len(set(dna["nucleotide"]) & set(proteins["proteins"]))


RECORD_FILE = "extraction.json"


def extraction_settings(args, dna_folder: str, protein_folder: str) -> dict:
    """What the features depend on; resuming with anything else would mix them."""
    return {"pipeline": args.pipeline, "dna_model": units.model_fingerprint(dna_folder),
            "protein_model": units.model_fingerprint(protein_folder),
            "sequences_per_file": args.sequences_per_file, "seed": args.seed}


def check_resume(merge_dir: str, settings: dict, restart: bool, mine: list[SplitFile]) -> None:
    """Refuse to add features made otherwise to a merge folder, unless
    ``restart``, which removes this process's share of earlier results."""
    record = os.path.join(merge_dir, RECORD_FILE)
    try:
        with open(record) as handle:
            previous = json.load(handle)
    except FileNotFoundError:
        previous = None
    except ValueError:
        previous = {}
    if previous is not None and previous != settings:
        changed = sorted(key for key in settings if previous.get(key) != settings[key]) or ["the record itself"]
        if not restart:
            raise units.InputError(f"{merge_dir} holds features made with other settings ({', '.join(changed)}); "
                                   "give another --merge-dir, or --restart to extract them again")
    if restart:
        for split in mine:
            for path in (split.merged(merge_dir), *feature_files(split, units.PIPELINES[settings["pipeline"]])):
                if os.path.exists(path):
                    os.remove(path)
    with units.atomic_write(record) as handle:
        json.dump(settings, handle, indent=1)


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data", help="folder holding the identified_* files (default: data)")
    parser.add_argument("--merge-dir", help="where merged files go (default: <data-dir>/data_merge, or "
                                            "<data-dir>/data_merge_esm2_3b for --pipeline esm2_3b)")
    parser.add_argument("--pipeline", choices=sorted(units.PIPELINES), default="fastesm650",
                        help="protein model: fastesm650 (default) or the esm2_3b baseline")
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default)")
    parser.add_argument("--dna-model", help=f"DNABERT-S id or folder (default {units.DNABERT_S.hub_id})")
    parser.add_argument("--protein-model", help="protein model id or folder (default: the pipeline's)")
    parser.add_argument("--models-dir", help=f"models folder of scripts/fetch_models.py (default: "
                                             f"${units.MODELS_ENV}, else {units.DEFAULT_MODELS_DIR})")
    parser.add_argument("--dna-batch-tokens", type=int, default=units.DNA_TOKS_PER_BATCH,
                        help="DNABERT-S tokens per batch (default %(default)s)")
    parser.add_argument("--protein-batch-tokens", type=int, default=16384,
                        help="protein-model tokens per batch (default %(default)s)")
    parser.add_argument("--sequences-per-file", type=int, default=10000,
                        help="frames per split file; only full files are used (default %(default)s, as published)")
    parser.add_argument("--seed", type=int, default=42, help="host sampling seed (default 42, as published)")
    parser.add_argument("--restart", action="store_true",
                        help="extract this selection again, replacing features made with other settings")
    args = parser.parse_args(argv)
    args.merge_dir = args.merge_dir or os.path.join(args.data_dir, DEFAULT_MERGE_DIR[args.pipeline])
    return args


def extract_share(args, mine: list[SplitFile], rank: int, world: int, local_rank: int):
    """Extract and merge the files of this process not merged yet (all of
    them with --restart); ``(files done now, failed sequences)``."""
    from tqdm import tqdm

    todo = [split for split in mine if args.restart or not os.path.exists(split.merged(args.merge_dir))]
    if not todo:
        return todo, 0
    pipeline = units.PIPELINES[args.pipeline]
    dna_folder = units.model_folder(units.DNABERT_S, args.dna_model, args.models_dir)
    protein_folder = units.model_folder(pipeline.protein, args.protein_model, args.models_dir)
    check_resume(args.merge_dir, extraction_settings(args, dna_folder, protein_folder), args.restart, mine)
    device = units.resolve_device(args.device)
    if world > 1 and device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    models = (units.load_dnabert_s(dna_folder, device), pipeline.load_protein(protein_folder, device))
    failed = 0
    for split in tqdm(todo, desc="files", unit="file"):
        failed += extract_file(split, split.merged(args.merge_dir), models, pipeline, args)
    return todo, failed


def main(argv=None):
    args = parse_args(argv)
    rank, world, local_rank = process_share()
    pairs = discover(args.data_dir)
    if not pairs:
        raise units.InputError(f"{args.data_dir}: no *{NUCLEOTIDE_SUFFIX} files; run scripts/make_train_dataset.py")
    selected = select_files(full_split_files(pairs, args.sequences_per_file), args.seed)
    mine = selected[rank::world]
    n_viral = sum(split.label == "viral" for split in selected)
    units.logger.info(f"{n_viral} viral and {len(selected) - n_viral} host files selected; process {rank + 1} of "
                      f"{world} takes {len(mine)}")
    with units.folder_lock(args.merge_dir, "--merge-dir", name=f".virnucpro.rank{rank}.lock"):
        todo, failed = extract_share(args, mine, rank, world, local_rank)

    rows = {"viral": 0, "host": 0}
    for split in mine:
        checked = units.load_merged_file(split.merged(args.merge_dir))
        rows["viral" if checked["label"] == 1 else "host"] += len(checked["ids"])
    units.logger.info(f"done: {len(todo)} files merged now, {len(mine) - len(todo)} before; {rows['viral']} viral "
                      f"and {rows['host']} host rows checked in {args.merge_dir}; {failed} sequences failed"
                      + (" (see extraction_failures.log)" if failed else ""))
    return 0


if __name__ == "__main__":
    units.run_cli(main)
