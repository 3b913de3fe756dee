#!/usr/bin/env python3
"""Build the training frames from genomes: RefSeq pairs, or FASTA genomes alone.

    python scripts/make_train_dataset.py --length 500 [--data-dir data]

Finds under the data folder every ``<name>.genomic.gbff.gz`` +
``<name>.<n>.genomic.fna.gz`` pair (what scripts/download_data.py fetches) and
every FASTA genome alone named after its category (``viral.phiX174.fasta``,
``bacteria.KK037166.fna.gz``: viral, or a host category: vertebrate, protozoa,
plant, invertebrate, fungi, bacteria, archaea). The CDS come from the GenBank
file, or for a genome alone from a gene finder made for it: pyrodigal-gv for a
viral genome, pyrodigal for a cellular one (trained on the genome from 100 kbp
on). The genomes are cut into chunks of --length bases and each stop-free
frame is kept whose protein is part of a CDS of the same record. Writes,
beside each genome, the published files ``<name>.identified_nucleotide.fa``
and ``<name>.identified_protein.fa`` plus ``<name>.identified.json`` (chunk
length, counts, where the CDS came from, each record's organism and taxonomy:
for a genome alone, the file is the organism), which marks the genome as
done: a re-run skips finished ones. Files are read straight from gzip.

One script replaces the published make_train_dataset_300.py / _500.py and
writes byte-identical output on GenBank pairs.
"""
from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor, as_completed

from tqdm import tqdm

from virnucpro.commands import options
from virnucpro.commands.cli import at_least, run_cli
from virnucpro.errors import InputError
from virnucpro.log import logger, plural
from virnucpro.sequences import genomes


def parse_args(argv):
    parser = options.parser(__doc__)
    parser.add_argument("--length", type=int, choices=(300, 500), required=True,
                        help="chunk length in bases (the model's read length)")
    options.data_dir(parser, "folder searched for genomes")
    parser.add_argument("--workers", type=at_least(1), default=min(4, os.cpu_count() or 1),
                        help="genomes processed in parallel (default: min(4, CPUs))")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    pairs = genomes.find_genome_pairs(args.data_dir)
    if not pairs:
        raise InputError(f"{args.data_dir}: no genomes: no *{genomes.GBFF_SUFFIX} + *{genomes.FNA_SUFFIX} pairs "
                         "(scripts/download_data.py fetches them) and no FASTA genome named after its category "
                         f"(viral.phiX174.fasta, say: {genomes.CATEGORY_RULE})")
    todo = [pair for pair in pairs if not genomes.is_done(pair, args.length)]
    logger.info(f"{plural(len(pairs), 'genome')}, {len(pairs) - len(todo)} already done, "
                f"{len(todo)} to build with {args.length}-bp chunks")
    frames, without_genbank = 0, []
    with ProcessPoolExecutor(max_workers=args.workers) as pool:
        futures = {pool.submit(genomes.build_pair, pair, args.length): pair for pair in todo}
        try:
            for future in tqdm(as_completed(futures), total=len(futures), desc="genomes", unit="genome"):
                summary = future.result()
                frames += summary["frames"]
                missing = summary["without_genbank"]
                tqdm.write(f"{futures[future].nucleotide_file}: {plural(summary['chunks'], 'chunk')}, "
                           f"{plural(summary['frames'], 'frame')}, CDS from {summary['cds']} "
                           f"({summary['seconds']} s)")
                if missing["records"]:
                    without_genbank.append((futures[future].fna, missing))
                    logger.warning(f"{futures[future].fna}: {missing['records']} of {plural(summary['records'], 'record')} "
                                   f"have no record in {futures[future].gbff} (first: {missing['first'][0]}); "
                                   "their frames were not kept")
        except BaseException:
            pool.shutdown(cancel_futures=True)   # pairs already finished stay done
            raise
    logger.info(f"done: {plural(len(todo), 'genome')} built, {plural(frames, 'frame')} written"
                + (f"; {plural(sum(m['records'] for _, m in without_genbank), 'FASTA record')} without their GenBank record, "
                   f"in {plural(len(without_genbank), 'pair')} (first: {without_genbank[0][0]})" if without_genbank else ""))
    return 0


if __name__ == "__main__":
    run_cli(main)
