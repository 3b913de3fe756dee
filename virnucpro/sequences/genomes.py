"""Training frames from RefSeq genome pairs (make_train_dataset.py): each
``X.genomic.gbff.gz`` with its ``X.<n>.genomic.fna.gz``; the genomes cut into
chunks, and each stop-free frame kept whose protein is part of an annotated
CDS of the same record (the published selection, byte for byte).

Beside each ``.fna.gz`` go the published ``X.<n>.identified_nucleotide.fa`` and
``X.<n>.identified_protein.fa``, and ``X.<n>.identified.json`` (chunk length,
counts, each record's organism and taxonomy), which marks the pair as done.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from virnucpro.errors import InputError
from virnucpro.files import atomic_write
from virnucpro.log import logger
from virnucpro.runs import read_record
from virnucpro.sequences.chunks import chunk_id, iter_chunks
from virnucpro.sequences.fasta import read_fasta
from virnucpro.sequences.frames import IdentifiedWriter, ProteinIndex, batched, select_frames
from virnucpro.sequences.genbank import read_genbank

GBFF_SUFFIX = "genomic.gbff.gz"
MANIFEST_SUFFIX = ".identified.json"
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
        return self.output(MANIFEST_SUFFIX[1:])


def find_genome_pairs(data_dir: str) -> list[GenomePair]:
    """Pair each ``X.genomic.gbff.gz`` with the ``X.*genomic.fna.gz`` files
    beside it (the published rule: the fna path starts with ``X.``)."""
    if not os.path.isdir(data_dir):
        raise InputError(f"{data_dir}: no such folder; download genomes first (scripts/download_data.py)")
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
            logger.warning(f"{gbff}: no matching *{FNA_SUFFIX} beside it; skipped")
        pairs.extend(GenomePair(gbff, fna) for fna in matches)
    return pairs


def read_manifest(path: str) -> dict | None:
    """The record this step keeps beside a pair's identified files (``X.<n>.identified.json``), or None."""
    return read_record(path, "scripts/make_train_dataset.py",
                       "delete it and run scripts/make_train_dataset.py again to rebuild the pair")


def is_done(pair: GenomePair, chunk_size: int) -> bool:
    """True when the pair was already built with this chunk size.

    Outputs built with another chunk size share the published file names, so
    they are never overwritten silently.
    """
    manifest = read_manifest(pair.manifest_file)
    if manifest is None:
        return False
    if manifest.get("chunk_length") != chunk_size:
        raise InputError(
            f"{pair.nucleotide_file} was built with {manifest.get('chunk_length')}-bp chunks; move the "
            f"identified_* files and {os.path.basename(pair.manifest_file)} away to build {chunk_size}-bp chunks")
    return os.path.exists(pair.nucleotide_file) and os.path.exists(pair.protein_file)


def build_pair(pair: GenomePair, chunk_size: int) -> dict:
    """Write the identified files of one genome pair; return its counts. A pair whose FASTA records have
    no GenBank record, or that yields no frame, is refused in one line (nothing is written, nothing marked
    done); records without their GenBank record among others are counted (``without_genbank``)."""
    started = time.time()
    proteins_by_record, lineages = read_genbank(pair.gbff)
    records = chunks = 0
    without_genbank: list[str] = []
    with IdentifiedWriter(pair.nucleotide_file, pair.protein_file) as writer:
        for record in read_fasta(pair.fna, alphabet="dna"):
            records += 1
            if record.id not in proteins_by_record:
                without_genbank.append(record.id)
            reference = ProteinIndex(proteins_by_record.get(record.id, []))
            record_chunks = ((chunk_id(record.id, k), chunk) for k, chunk
                             in enumerate(iter_chunks(record.sequence.upper(), chunk_size), start=1))
            for batch in batched(record_chunks, CHUNKS_PER_BATCH):
                chunks += len(batch)
                writer.write(select_frames(batch, reference))
        if len(without_genbank) == records:
            raise InputError(f"{pair.fna}: none of its {records} records is in {pair.gbff} (first: "
                             f"{without_genbank[0]}{_version_hint(without_genbank[0], proteins_by_record)}); give "
                             "each genome FASTA the GenBank file of the same assembly")
        if writer.frames == 0:
            raise InputError(f"{pair.fna}: no frame of its {chunks} chunks is part of a CDS translation of "
                             f"{pair.gbff}; check that its CDS carry /translation qualifiers")
    summary = {"chunk_length": chunk_size, "gbff": os.path.basename(pair.gbff),
               "fna": os.path.basename(pair.fna), "records": records, "chunks": chunks,
               "frames": writer.frames, "seconds": round(time.time() - started, 1),
               "without_genbank": {"records": len(without_genbank), "first": without_genbank[:3]},
               "lineages": lineages}          # organism and taxonomy per record: the test split groups by them
    with atomic_write(pair.manifest_file) as handle:
        json.dump(summary, handle, indent=1)
    return summary


def _version_hint(record_id: str, genbank: dict) -> str:
    """When the GenBank file has the same accession in another version, say so."""
    accession = record_id.rsplit(".", 1)[0]
    other = next((key for key in genbank if key.rsplit(".", 1)[0] == accession), None)
    return f"; the GenBank file has {other}: another version of it" if other else ""
