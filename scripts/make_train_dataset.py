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
import os
from concurrent.futures import ProcessPoolExecutor, as_completed

from tqdm import tqdm

from virnucpro.commands.cli import at_least, run_cli
from virnucpro.errors import InputError
from virnucpro.log import logger
from virnucpro.sequences import genomes


def parse_args(argv):
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--length", type=int, choices=(300, 500), required=True,
                        help="chunk length in bases (the model's read length)")
    parser.add_argument("--data-dir", default="data", help="folder searched for genome pairs (default: data)")
    parser.add_argument("--workers", type=at_least(1), default=min(4, os.cpu_count() or 1),
                        help="genome pairs processed in parallel (default: min(4, CPUs))")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    pairs = genomes.find_genome_pairs(args.data_dir)
    if not pairs:
        raise InputError(f"{args.data_dir}: no *{genomes.GBFF_SUFFIX} + *{genomes.FNA_SUFFIX} pairs found; run "
                         "scripts/download_data.py first")
    todo = [pair for pair in pairs if not genomes.is_done(pair, args.length)]
    logger.info(f"{len(pairs)} genome pairs, {len(pairs) - len(todo)} already done, "
                f"{len(todo)} to build with {args.length}-bp chunks")
    frames, without_genbank = 0, []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(genomes.build_pair, pair, args.length): pair for pair in todo}
        try:
            for future in tqdm(as_completed(futures), total=len(futures), desc="genome pairs", unit="pair"):
                summary = future.result()
                frames += summary["frames"]
                missing = summary["without_genbank"]
                tqdm.write(f"{futures[future].nucleotide_file}: {summary['chunks']} chunks, "
                           f"{summary['frames']} frames ({summary['seconds']} s)")
                if missing["records"]:
                    without_genbank.append((futures[future].fna, missing))
                    logger.warning(f"{futures[future].fna}: {missing['records']} of {summary['records']} records "
                                   f"have no record in {futures[future].gbff} (first: {missing['first'][0]}); "
                                   "their frames were not kept")
        except BaseException:
            pool.shutdown(cancel_futures=True)   # pairs already finished stay done
            raise
    logger.info(f"done: {len(todo)} pairs built, {frames} frames written"
                + (f"; {sum(m['records'] for _, m in without_genbank)} FASTA records without their GenBank record, "
                   f"in {len(without_genbank)} pairs (first: {without_genbank[0][0]})" if without_genbank else ""))
    return 0


if __name__ == "__main__":
    run_cli(main)
