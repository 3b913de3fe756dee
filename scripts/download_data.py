#!/usr/bin/env python3
"""Download the RefSeq genomes the training set is built from.

Reads the RefSeq release listings like the published download_data.py: the
viral release files (viral.1.1.genomic.fna.gz, viral.1.genomic.gbff.gz) and,
sampled with seed 42, genome pairs (<name>.genomic.gbff.gz with its
<name>.1.genomic.fna.gz) from the host categories: one each for bacteria,
archaea, fungi and protozoa, ten each for plant, invertebrate,
vertebrate_mammalian and vertebrate_other. With the default categories and
counts the sample is the published one.

Downloads resume: a file whose size matches the server's is skipped, a partial
download continues where it stopped (it lives under <name>.part until
complete), and failed requests are retried with backoff. --dry-run prints the
plan with sizes and downloads nothing.
"""
from __future__ import annotations

import os

import requests
from tqdm import tqdm

from virnucpro.commands import options
from virnucpro.commands.cli import run_cli
from virnucpro.files import check_writable
from virnucpro.log import logger
from virnucpro.models import fetching


def main(argv=None):
    parser = options.parser(__doc__)
    parser.add_argument("--data-dir", default="data", help="where files are saved (default: data)")
    categories = list(fetching.HOST_COUNTS)
    parser.add_argument("--categories", nargs="+", choices=categories, default=categories, metavar="CATEGORY",
                        help="host categories to sample (default: all eight)")
    parser.add_argument("--count", action="append", default=[], metavar="CATEGORY=N",
                        help="genome pairs sampled for a category (repeatable; defaults as published)")
    parser.add_argument("--seed", type=int, default=42, help="sampling seed (default: 42, as published)")
    parser.add_argument("--release-url", default=fetching.RELEASE_URL,
                        help=f"RefSeq release root (default: {fetching.RELEASE_URL})")
    parser.add_argument("--dry-run", action="store_true", help="print the plan with sizes; download nothing")
    args = parser.parse_args(argv)
    counts = {category: count for category, count in fetching.parse_counts(args.count).items()
              if category in args.categories}
    base_url = args.release_url if args.release_url.endswith("/") else args.release_url + "/"

    with requests.Session() as session:
        urls = fetching.plan_downloads(session, base_url, counts, args.seed)
        sizes = {url: fetching.remote_size(session, url) for url in urls}
        if args.dry_run:
            print("| file | size (MB) | already here |\n|---|---:|---|")
            for url in urls:
                path = os.path.join(args.data_dir, url.rsplit("/", 1)[1])
                present = os.path.exists(path) and os.path.getsize(path) == sizes[url]
                print(f"| {url} | {sizes[url] / 1e6:,.1f} | {'yes' if present else 'no'} |")
            print(f"\n{len(urls)} files, {sum(sizes.values()) / 1e9:,.2f} GB in all")
            return 0
        check_writable(args.data_dir, "--data-dir", "the genomes")
        os.makedirs(args.data_dir, exist_ok=True)
        outcome = {"present": 0, "downloaded": 0}
        for url in tqdm(urls, desc="files", unit="file"):
            path = os.path.join(args.data_dir, url.rsplit("/", 1)[1])
            outcome[fetching.download(session, url, path, sizes[url])] += 1
    logger.info(f"{outcome['downloaded']} files downloaded, {outcome['present']} already present, "
                f"in {args.data_dir}/")
    return 0


if __name__ == "__main__":
    run_cli(main)
