#!/usr/bin/env python3
"""Benchmark the sequence layer against the published method, side by side.

Two measurements, each in this one process on the same input, each checking
that both sides produce identical frames:

  1. six-frame translation + stop-free frame selection on random chunks
     (prediction mode);
  2. training-frame selection on one synthetic genome with thousands of
     annotated CDS (every stop-free frame looked up in the CDS translations).

The baseline is a straightforward per-codon re-implementation of the published
``translate_dna`` / ``identify_seq`` (a dictionary lookup per codon, and
``any(frame in protein for protein in proteins)`` per frame).
"""
from __future__ import annotations

import random
import time

from benchmarking import synthetic
from benchmarking.published import published_frames
from virnucpro.commands import options
from virnucpro.commands.cli import at_least, run_cli
from virnucpro.sequences.chunks import chunk_id, iter_chunks
from virnucpro.sequences.frames import ProteinIndex, batched, select_frames


def timed(function):
    """``(result, seconds)`` of ``function()``."""
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


def bench_prediction(n_chunks, length, rng):
    chunks = synthetic.random_chunks(n_chunks, length, rng)
    baseline, baseline_s = timed(lambda: [f for cid, seq in chunks for f in published_frames(cid, seq)])
    ours, ours_s = timed(lambda: [f for batch in batched(chunks, 4096) for f in select_frames(batch)])
    assert ours == baseline, "frame selection differs from the baseline"
    return {"what": f"translation + stop-free selection, {n_chunks:,} random {length}-bp chunks",
            "frames": len(ours), "baseline_s": baseline_s, "ours_s": ours_s}


def bench_training(n_genes, length, rng):
    genome, proteins = synthetic.synthetic_genome(n_genes, rng)
    chunks = [(chunk_id("genome", k), c) for k, c in enumerate(iter_chunks(genome, length), start=1)]
    baseline, baseline_s = timed(lambda: [f for cid, seq in chunks for f in published_frames(cid, seq, proteins)])

    def ours_run():
        reference = ProteinIndex(proteins)   # built once per record, counted in the time
        return [f for batch in batched(chunks, 4096) for f in select_frames(batch, reference)]

    ours, ours_s = timed(ours_run)
    assert ours == baseline, "training frame selection differs from the baseline"
    return {"what": f"training selection, one {len(genome) / 1e6:.1f}-Mb genome with {n_genes:,} CDS "
                    f"({len(chunks):,} {length}-bp chunks)",
            "frames": len(ours), "baseline_s": baseline_s, "ours_s": ours_s}


def main(argv=None):
    parser = options.parser(__doc__)
    parser.add_argument("--chunks", type=at_least(1), default=100_000,
                        help="random chunks for benchmark 1 (default 100000)")
    parser.add_argument("--genes", type=at_least(1), default=4_000, help="annotated CDS for benchmark 2 (default 4000)")
    parser.add_argument("--length", type=at_least(3), default=500, help="chunk length in bases (default 500)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    print("| benchmark | frames | published method (s) | ours (s) | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for result in (bench_prediction(args.chunks, args.length, rng), bench_training(args.genes, args.length, rng)):
        print(f"| {result['what']} | {result['frames']:,} | {result['baseline_s']:.2f} | "
              f"{result['ours_s']:.2f} | {result['baseline_s'] / result['ours_s']:.1f}x |", flush=True)
    return 0


if __name__ == "__main__":
    run_cli(main)
