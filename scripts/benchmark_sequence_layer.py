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

import argparse
import random
import time

import units


# ---------------------------------------------------------------- baseline
def baseline_translate(sequence):
    def frame_protein(seq, start):
        return "".join(units.CODON_TABLE.get(seq[i:i + 3], "") for i in range(start, len(seq) - 2, 3))
    reverse = units.reverse_complement(sequence)
    return [frame_protein(sequence, f) for f in range(3)] + [frame_protein(reverse, f) for f in range(3)]


def baseline_frames(seqid, sequence, proteins=None):
    """Published identify_seq semantics; ``proteins`` given means training mode."""
    if proteins is not None and any(base in sequence for base in units.AMBIGUOUS_BASES):
        return []
    frames = []
    for number, protein in enumerate(baseline_translate(sequence), start=1):
        if "*" in protein:
            continue
        if proteins is not None and not any(protein in reference for reference in proteins):
            continue
        span = 3 * len(protein) + 1
        if number <= 3:
            frames.append((f"{seqid}F{number}", sequence[number - 1:number - 1 + span], protein))
        else:
            reverse = units.reverse_complement(sequence)
            frames.append((f"{seqid}R{number - 3}", reverse[number - 4:number - 4 + span], protein))
    return frames


# ---------------------------------------------------------------- inputs
def random_chunks(count, length, rng):
    return [(f"read{i}_chunk_1", "".join(rng.choices("ACGT", k=length))) for i in range(count)]


def synthetic_genome(n_genes, rng):
    """A genome of random genes on both strands; returns (sequence, CDS proteins)."""
    codons = {}
    for codon, amino_acid in units.CODON_TABLE.items():
        codons.setdefault(amino_acid, []).append(codon)
    amino_acids = [a for a in codons if a != "*"]
    pieces, proteins = [], []
    for _ in range(n_genes):
        protein = "M" + "".join(rng.choices(amino_acids, k=rng.randint(80, 600)))
        gene = "".join(rng.choice(codons[a]) for a in protein) + rng.choice(codons["*"])
        if rng.random() < 0.5:
            gene = units.reverse_complement(gene)
        pieces.append("".join(rng.choices("ACGT", k=rng.randint(50, 300))))
        pieces.append(gene)
        proteins.append(protein)
    return "".join(pieces), proteins


def timed(function):
    started = time.perf_counter()
    result = function()
    return result, time.perf_counter() - started


# ---------------------------------------------------------------- benchmarks
def bench_prediction(n_chunks, length, rng):
    chunks = random_chunks(n_chunks, length, rng)
    baseline, baseline_s = timed(lambda: [f for cid, seq in chunks for f in baseline_frames(cid, seq)])
    ours, ours_s = timed(lambda: [f for batch in units.batched(chunks, 4096) for f in units.select_frames(batch)])
    assert ours == baseline, "frame selection differs from the baseline"
    return {"what": f"translation + stop-free selection, {n_chunks:,} random {length}-bp chunks",
            "frames": len(ours), "baseline_s": baseline_s, "ours_s": ours_s}


def bench_training(n_genes, length, rng):
    genome, proteins = synthetic_genome(n_genes, rng)
    chunks = [(f"genome_chunk_{k}", c) for k, c in enumerate(units.iter_chunks(genome, length), start=1)]
    baseline, baseline_s = timed(lambda: [f for cid, seq in chunks for f in baseline_frames(cid, seq, proteins)])

    def ours_run():
        reference = units.ProteinIndex(proteins)   # built once per record, counted in the time
        return [f for batch in units.batched(chunks, 4096) for f in units.select_frames(batch, reference)]

    ours, ours_s = timed(ours_run)
    assert ours == baseline, "training frame selection differs from the baseline"
    return {"what": f"training selection, one {len(genome) / 1e6:.1f}-Mb genome with {n_genes:,} CDS "
                    f"({len(chunks):,} {length}-bp chunks)",
            "frames": len(ours), "baseline_s": baseline_s, "ours_s": ours_s}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--chunks", type=int, default=100_000, help="random chunks for benchmark 1 (default 100000)")
    parser.add_argument("--genes", type=int, default=4_000, help="annotated CDS for benchmark 2 (default 4000)")
    parser.add_argument("--length", type=int, default=500, help="chunk length in bases (default 500)")
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
    units.run_cli(main)
