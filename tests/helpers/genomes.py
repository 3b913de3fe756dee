"""Synthetic genomes of two sources, with genes, and their features made by the project's own functions.

A source is a GC content: genes are runs of sense codons drawn with that
composition, on either strand, so every chunk has stop-free frames the way
real coding sequence does, and the two sources differ in DNA and protein
composition, which even tiny random encoders carry into their features.
"""
from __future__ import annotations

import gzip
import itertools
import json
import math
import random

import units
from virnucpro.models.loaders import PIPELINES
from virnucpro.sequences.chunks import chunk_id, chunk_starts
from virnucpro.sequences.frames import IdentifiedWriter, select_frames

VIRAL_GC, HOST_GC = 0.54, 0.46
STOPS = {"TAA", "TAG", "TGA"}
SENSE_CODONS = ["".join(c) for c in itertools.product("ACGT", repeat=3) if "".join(c) not in STOPS]


def coding(rng: random.Random, length: int, gc: float) -> str:
    """A gene-like stretch: sense codons of the given GC content, on a random strand."""
    weights = [math.prod(gc / 2 if base in "GC" else (1 - gc) / 2 for base in codon) for codon in SENSE_CODONS]
    gene = "".join(rng.choices(SENSE_CODONS, weights, k=length // 3 + 1))[:length]
    return gene if rng.random() < 0.5 else units.reverse_complement(gene)


def genome(rng: random.Random, length: int, gc: float) -> str:
    """Genes of 600 to 1500 bp back to back."""
    parts, total = [], 0
    while total < length:
        part = coding(rng, rng.randint(600, 1500), gc)
        parts.append(part)
        total += len(part)
    return "".join(parts)[:length]


def make_genomes(data_dir, organisms: int = 10, seed: int = 0, viral_gc: float = VIRAL_GC,
                 host_gc: float = HOST_GC) -> dict[str, dict]:
    """``viral.1.1.genomic.fna.gz`` and ``bacteria.1.1.genomic.fna.gz`` under
    ``data_dir``: per class ``organisms`` organisms of one or two records (segments,
    chromosomes), and the lineages make_train_dataset.py would record.
    Returns ``{record: {"label", "sequence", "stem"}}``."""
    rng = random.Random(seed)
    records, lineages = {}, {}
    for label, stem, gc, family in ((1, "viral.1.1", viral_gc, "Synthoviridae"),
                                    (0, "bacteria.1.1", host_gc, "Synthobacteraceae")):
        with gzip.open(data_dir / f"{stem}.genomic.fna.gz", "wt") as out:
            for o in range(organisms):
                organism = f"{stem.split('.')[0]} organism {o}"
                for part in range(1 + (o % 3 == 0)):
                    record = f"{'NC' if label else 'NZ'}_{o:04d}{part}.1"
                    sequence = genome(rng, rng.randint(1800, 3000), gc)
                    out.write(f">{record} {organism} segment {part + 1}\n{sequence}\n")
                    records[record] = {"label": label, "sequence": sequence, "stem": stem}
                    lineages[record] = {"organism": organism, "taxonomy": [family, f"Genus{o // 2}"]}
        (data_dir / f"{stem}.identified.json").write_text(json.dumps(
            {"chunk_length": 300, "lineages": {r: lineages[r] for r in records if records[r]["stem"] == stem}}))
    return records


def extract_merged(records: dict[str, dict], work_dir, merge_dir, pipeline: str, dna_model: str,
                   protein_model: str, chunk_length: int = 300) -> None:
    """The stop-free frames of every chunk of the records, embedded and merged
    by the functions prediction.py and features_extract.py use, into
    ``merge_dir/<stem>_merged/output_1_merged.pt``."""
    spec = PIPELINES[pipeline]
    dna = units.load_dnabert_s(dna_model, "cpu")
    protein = spec.load_protein(protein_model, "cpu")
    for stem in sorted({r["stem"] for r in records.values()}):
        chunks = [(chunk_id(record, k), r["sequence"][start:start + chunk_length])
                  for record, r in records.items() if r["stem"] == stem
                  for k, start in enumerate(chunk_starts(len(r["sequence"]), chunk_length), start=1)]
        frames = [frame for frame in select_frames(chunks) if frame[2]]
        folder = work_dir / f"{stem}_{pipeline}"
        folder.mkdir(parents=True, exist_ok=True)
        with IdentifiedWriter(folder / "nucleotide.fa", folder / "protein.faa") as writer:
            writer.write(frames)
        units.extract_DNABERT_S(folder / "nucleotide.fa", folder / "dna.pt", model=dna[0], tokenizer=dna[1])
        units.extract_protein(spec, folder / "protein.faa", folder / "protein.pt", protein[0], protein[1])
        target = merge_dir / f"{stem}_merged"
        target.mkdir(parents=True, exist_ok=True)
        units.merge_data(folder / "dna.pt", folder / "protein.pt", target / "output_1_merged.pt",
                         data_type="viral" if stem.startswith("viral") else "host", protein_dim=spec.protein.dim,
                         chunk_length=chunk_length)

