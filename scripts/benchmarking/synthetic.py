"""Synthetic inputs for the benchmarks: random chunks, a genome of random
genes with its CDS proteins, stop-free frames of it, reads of one open reading
frame each (every chunk has a stop-free frame, as coding sequence does), and
proteins of the stop-free frames of real reads."""
from __future__ import annotations

import random

import numpy as np

from virnucpro.errors import InputError
from virnucpro.sequences.chunks import chunk_id, iter_chunks, iter_fasta_chunks
from virnucpro.sequences.frames import CODON_TABLE, reverse_complement, select_frames

ORF_READ_LENGTH = 500


def random_chunks(count: int, length: int, rng: random.Random) -> list[tuple[str, str]]:
    """``count`` random reads of ``length`` bp, each one chunk."""
    return [(chunk_id(f"read{i}", 1), "".join(rng.choices("ACGT", k=length))) for i in range(count)]


def synthetic_genome(n_genes, rng):
    """A genome of random genes on both strands; returns (sequence, CDS proteins)."""
    codons = {}
    for codon, amino_acid in CODON_TABLE.items():
        codons.setdefault(amino_acid, []).append(codon)
    amino_acids = [a for a in codons if a != "*"]
    pieces, proteins = [], []
    for _ in range(n_genes):
        protein = "M" + "".join(rng.choices(amino_acids, k=rng.randint(80, 600)))
        gene = "".join(rng.choice(codons[a]) for a in protein) + rng.choice(codons["*"])
        if rng.random() < 0.5:
            gene = reverse_complement(gene)
        pieces.append("".join(rng.choices("ACGT", k=rng.randint(50, 300))))
        pieces.append(gene)
        proteins.append(protein)
    return "".join(pieces), proteins


def synthetic_frames(count, seed):
    """``count`` stop-free frames (DNA, protein) of 500-bp chunks of random genes."""
    genome, _ = synthetic_genome(max(50, count), random.Random(seed))          # about 1.5 frames a gene
    chunks = [(chunk_id("g", k), c) for k, c in enumerate(iter_chunks(genome, 500), start=1)]
    frames = [frame for frame in select_frames(chunks) if frame[2]]
    random.Random(seed).shuffle(frames)
    return frames[:count]


def open_reading_frame(rng, length: int) -> str:
    """``length`` bp of random sense codons: stop-free in its first frame."""
    sense = np.array([codon for codon, amino_acid in CODON_TABLE.items() if amino_acid != "*"])
    return "".join(sense[rng.integers(0, len(sense), length // 3)]) + "A" * (length % 3)


def orf_reads(path: str, reads: int, contig_length: int | None = None, seed: int = 0) -> None:
    """500-bp reads of one open reading frame each, every other one
    reverse-complemented; or, with ``contig_length``, one contig of that length."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as handle:
        if contig_length:
            handle.write(f">contig\n{open_reading_frame(rng, contig_length)}\n")
            return
        for number in range(reads):
            read = open_reading_frame(rng, ORF_READ_LENGTH)
            handle.write(f">read_{number}\n{read if number % 2 == 0 else reverse_complement(read)}\n")


def sample_proteins(reads: str, count: int) -> list[tuple[str, str]]:
    """Stop-free frame proteins of the reads, repeated (with fresh ids) to ``count``."""
    proteins = [protein for _, _, protein in select_frames(list(iter_fasta_chunks(reads, 300)))
                if protein]
    if not proteins:
        raise InputError(f"{reads}: no stop-free frame to benchmark")
    return [(f"p{i}", proteins[i % len(proteins)]) for i in range(count)]
