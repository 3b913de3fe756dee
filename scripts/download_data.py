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

import argparse
import os
import random
from html.parser import HTMLParser
from urllib.parse import urljoin

import requests
from tqdm import tqdm

import units
from fetcher import download, with_retries

RELEASE_URL = "https://ftp.ncbi.nlm.nih.gov/refseq/release/"
VIRAL_FILES = ("viral/viral.1.1.genomic.fna.gz", "viral/viral.1.genomic.gbff.gz")
# Published order: the random draws follow it.
HOST_COUNTS = {"bacteria": 1, "archaea": 1, "fungi": 1, "protozoa": 1,
               "plant": 10, "invertebrate": 10, "vertebrate_mammalian": 10, "vertebrate_other": 10}


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        href = dict(attrs).get("href") if tag == "a" else None
        if href:
            self.links.append(href)


def list_genome_pairs(session, base_url: str, category: str) -> list[str]:
    """URLs of the ``*genomic.gbff.gz`` files listed under a category, in listing order."""
    url = urljoin(base_url, f"{category}/")
    parser = _Links()
    parser.feed(with_retries(lambda: session.get(url, timeout=60), f"listing {url}").text)
    links = [urljoin(url, link) for link in parser.links if "genomic" in link]
    return [link for link in links if link.endswith("genomic.gbff.gz")]


def plan_downloads(session, base_url: str, counts: dict[str, int], seed: int) -> list[str]:
    """The URLs to fetch: the viral release files, then the sampled host pairs."""
    rng = random.Random(seed)
    urls = [urljoin(base_url, path) for path in VIRAL_FILES]
    for category, count in counts.items():
        gbffs = list_genome_pairs(session, base_url, category)
        if not gbffs:
            units.logger.warning(f"{urljoin(base_url, category)}/: no *genomic.gbff.gz listed; nothing to sample")
            continue
        for gbff in rng.sample(gbffs, min(count, len(gbffs))):
            urls += [gbff, gbff.replace("genomic.gbff.gz", "1.genomic.fna.gz")]
    return urls


def remote_size(session, url: str) -> int:
    response = with_retries(lambda: session.head(url, timeout=60, allow_redirects=True), f"size of {url}")
    return int(response.headers.get("content-length", 0))


def parse_counts(values: list[str]) -> dict[str, int]:
    counts = dict(HOST_COUNTS)
    for value in values:
        category, _, number = value.partition("=")
        if category not in HOST_COUNTS or not number.isdigit():
            raise units.InputError(f"--count {value}: expected CATEGORY=N with CATEGORY one of "
                                   f"{', '.join(HOST_COUNTS)}")
        counts[category] = int(number)
    return counts


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="data", help="where files are saved (default: data)")
    parser.add_argument("--categories", nargs="+", choices=list(HOST_COUNTS), default=list(HOST_COUNTS),
                        metavar="CATEGORY", help="host categories to sample (default: all eight)")
    parser.add_argument("--count", action="append", default=[], metavar="CATEGORY=N",
                        help="genome pairs sampled for a category (repeatable; defaults as published)")
    parser.add_argument("--seed", type=int, default=42, help="sampling seed (default: 42, as published)")
    parser.add_argument("--release-url", default=RELEASE_URL, help=f"RefSeq release root (default: {RELEASE_URL})")
    parser.add_argument("--dry-run", action="store_true", help="print the plan with sizes; download nothing")
    args = parser.parse_args(argv)
    counts = {category: count for category, count in parse_counts(args.count).items()
              if category in args.categories}
    base_url = args.release_url if args.release_url.endswith("/") else args.release_url + "/"

    with requests.Session() as session:
        urls = plan_downloads(session, base_url, counts, args.seed)
        sizes = {url: remote_size(session, url) for url in urls}
        if args.dry_run:
            print("| file | size (MB) | already here |\n|---|---:|---|")
            for url in urls:
                path = os.path.join(args.data_dir, url.rsplit("/", 1)[1])
                present = os.path.exists(path) and os.path.getsize(path) == sizes[url]
                print(f"| {url} | {sizes[url] / 1e6:,.1f} | {'yes' if present else 'no'} |")
            print(f"\n{len(urls)} files, {sum(sizes.values()) / 1e9:,.2f} GB in all")
            return 0
        os.makedirs(args.data_dir, exist_ok=True)
        outcome = {"present": 0, "downloaded": 0}
        for url in tqdm(urls, desc="files", unit="file"):
            outcome[download(session, url, os.path.join(args.data_dir, url.rsplit("/", 1)[1]), sizes[url])] += 1
    units.logger.info(f"{outcome['downloaded']} files downloaded, {outcome['present']} already present, "
                      f"in {args.data_dir}/")
    return 0


if __name__ == "__main__":
    units.run_cli(main)
