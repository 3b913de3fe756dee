#!/usr/bin/env python3
"""Build the training frames from RefSeq genome pairs.

Finds every ``<name>.genomic.gbff.gz`` + ``<name>.<n>.genomic.fna.gz`` pair
under the data folder, cuts the genomes into chunks of --length bases and keeps
each stop-free frame whose protein is part of an annotated CDS of the same
record. Writes, beside each ``.fna.gz``, the published files
``<name>.<n>.identified_nucleotide.fa`` and ``<name>.<n>.identified_protein.fa``
plus ``<name>.<n>.identified.json`` (chunk length, counts, each record's organism and
taxonomy from the GenBank file), which marks the
pair as done: a re-run skips finished pairs. Files are read straight from gzip.

One script replaces the published make_train_dataset_300.py / _500.py and
writes byte-identical output.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass

from tqdm import tqdm

import units

GBFF_SUFFIX = "genomic.gbff.gz"
FNA_SUFFIX = "genomic.fna.gz"
CHUNKS_PER_BATCH = 4096


@dataclass(frozen=True)
class GenomePair:
    gbff: str
    fna: str

    def output(self, kind: str) -> str:
        """Published naming: the .fna.gz suffix replaced by ``identified_<kind>``."""
        return self.fna[:-len(FNA_SUFFIX)] + kind

    @property
    def nucleotide_file(self) -> str:
        return self.output("identified_nucleotide.fa")

    @property
    def protein_file(self) -> str:
        return self.output("identified_protein.fa")

    @property
    def manifest_file(self) -> str:
        return self.output("identified.json")


def find_genome_pairs(data_dir: str) -> list[GenomePair]:
    """Pair each ``X.genomic.gbff.gz`` with the ``X.*genomic.fna.gz`` files
    beside it (the published rule: the fna path starts with ``X.``)."""
    if not os.path.isdir(data_dir):
        raise units.InputError(f"{data_dir}: no such folder; download genomes first (scripts/download_data.py)")
    gbffs, fnas = [], []
    for root, _, names in os.walk(data_dir):
        for name in names:
            path = os.path.join(root, name)
            if name.endswith(GBFF_SUFFIX):
                gbffs.append(path)
            elif name.endswith(FNA_SUFFIX):
                fnas.append(path)
    pairs = []
    for gbff in sorted(gbffs):
        base = gbff[:-len(GBFF_SUFFIX)]
        matches = [fna for fna in sorted(fnas) if fna.startswith(base)]
        if not matches:
            units.logger.warning(f"{gbff}: no matching *{FNA_SUFFIX} beside it; skipped")
        pairs.extend(GenomePair(gbff, fna) for fna in matches)
    return pairs


def is_done(pair: GenomePair, chunk_size: int) -> bool:
    """True when the pair was already built with this chunk size.

    Outputs built with another chunk size share the published file names, so
    they are never overwritten silently.
    """
    try:
        with open(pair.manifest_file) as handle:
            manifest = json.load(handle)
    except (FileNotFoundError, ValueError):
        return False
    if manifest.get("chunk_length") != chunk_size:
        raise units.InputError(
            f"{pair.nucleotide_file} was built with {manifest.get('chunk_length')}-bp chunks; move the "
            f"identified_* files and {os.path.basename(pair.manifest_file)} away to build {chunk_size}-bp chunks")
    return os.path.exists(pair.nucleotide_file) and os.path.exists(pair.protein_file)


def build_pair(pair: GenomePair, chunk_size: int) -> dict:
    """Write the identified files of one genome pair; return its counts."""
    started = time.time()
    proteins_by_record, lineages = units.read_genbank(pair.gbff)
    records = chunks = 0
    with units.IdentifiedWriter(pair.nucleotide_file, pair.protein_file) as writer:
        for record in units.read_fasta(pair.fna, alphabet="dna"):
            records += 1
            reference = units.ProteinIndex(proteins_by_record.get(record.id, []))
            record_chunks = ((f"{record.id}_chunk_{k}", chunk) for k, chunk
                             in enumerate(units.iter_chunks(record.sequence.upper(), chunk_size), start=1))
            for batch in units.batched(record_chunks, CHUNKS_PER_BATCH):
                chunks += len(batch)
                writer.write(units.select_frames(batch, reference))
    summary = {"chunk_length": chunk_size, "gbff": os.path.basename(pair.gbff),
               "fna": os.path.basename(pair.fna), "records": records, "chunks": chunks,
               "frames": writer.frames, "seconds": round(time.time() - started, 1),
               "lineages": lineages}          # organism and taxonomy per record: the test split groups by them
    with units.atomic_write(pair.manifest_file) as handle:
        json.dump(summary, handle, indent=1)
    return summary


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, choices=(300, 500), required=True,
                        help="chunk length in bases (the model's read length)")
    parser.add_argument("--data-dir", default="data", help="folder searched for genome pairs (default: data)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="genome pairs processed in parallel (default: min(4, CPUs))")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    return args


def main(argv=None):
    args = parse_args(argv)
    pairs = find_genome_pairs(args.data_dir)
    if not pairs:
        raise units.InputError(
            f"{args.data_dir}: no *{GBFF_SUFFIX} + *{FNA_SUFFIX} pairs found; run scripts/download_data.py first")
    todo = [pair for pair in pairs if not is_done(pair, args.length)]
    units.logger.info(f"{len(pairs)} genome pairs, {len(pairs) - len(todo)} already done, "
                      f"{len(todo)} to build with {args.length}-bp chunks")
    frames = 0
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(build_pair, pair, args.length): pair for pair in todo}
        try:
            for future in tqdm(as_completed(futures), total=len(futures), desc="genome pairs", unit="pair"):
                summary = future.result()
                frames += summary["frames"]
                tqdm.write(f"{futures[future].nucleotide_file}: {summary['chunks']} chunks, "
                           f"{summary['frames']} frames ({summary['seconds']} s)")
        except BaseException:
            pool.shutdown(cancel_futures=True)   # pairs already finished stay done
            raise
    units.logger.info(f"done: {len(todo)} pairs built, {frames} frames written")
    return 0


if __name__ == "__main__":
    units.run_cli(main)
