"""Training frames from genomes (make_train_dataset.py): RefSeq pairs of
``X.genomic.gbff.gz`` and ``X.<n>.genomic.fna.gz``, or FASTA genomes alone,
whose genes are called by a gene finder made for them (pyrodigal-gv for
viruses, pyrodigal for cellular genomes). The genomes are cut into chunks, and
each stop-free frame kept whose protein is part of a CDS of the same record
(the published selection, byte for byte on GenBank pairs).

Beside each genome go the published ``X.identified_nucleotide.fa`` and
``X.identified_protein.fa``, and ``X.identified.json`` (chunk length, counts,
where the CDS came from, each record's organism and taxonomy), which marks the
genome as done.

A file's category is the first word of its name: ``viral`` or a host category
(``vertebrate_*`` counts as ``vertebrate``), as download_data.py names them.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass

from virnucpro.errors import InputError
from virnucpro.files import atomic_write
from virnucpro.log import logger, plural
from virnucpro.runs import read_record
from virnucpro.sequences.chunks import chunk_id, iter_chunks
from virnucpro.sequences.fasta import read_fasta
from virnucpro.sequences.frames import IdentifiedWriter, ProteinIndex, batched, select_frames
from virnucpro.sequences.genbank import read_genbank

GBFF_SUFFIX = "genomic.gbff.gz"
MANIFEST_SUFFIX = ".identified.json"
FNA_SUFFIX = "genomic.fna.gz"
FASTA_GENOME_SUFFIXES = (".fna", ".fasta", ".fa", ".fna.gz", ".fasta.gz", ".fa.gz")
CHUNKS_PER_BATCH = 4096
TRAINED_FINDER_BASES = 100_000     # below this, prodigal's own advice: metagenomic mode, not training

HOST_CATEGORIES = ("vertebrate", "protozoa", "plant", "invertebrate", "fungi", "bacteria", "archaea")
CATEGORY_RULE = (f"a file's category is the first word of its name: viral, or a host category "
                 f"({', '.join(HOST_CATEGORIES)}; vertebrate_* counts as vertebrate)")


def category_of(stem: str) -> str | None:
    name = stem.split(".", 1)[0]
    if name == "viral":
        return "viral"
    if name.startswith("vertebrate"):
        return "vertebrate"          # mammalian and other together, as published
    return name if name in HOST_CATEGORIES else None


@dataclass(frozen=True)
class GenomePair:
    """A genome and its annotation: a GenBank file, or none (``gbff`` None: its genes are called)."""
    gbff: str | None
    fna: str

    def output(self, kind: str) -> str:
        """Published naming: the .fna.gz suffix (a FASTA genome's suffix) replaced by ``identified_<kind>``."""
        if self.fna.endswith(FNA_SUFFIX):
            return self.fna[:-len(FNA_SUFFIX)] + kind
        return next(self.fna[:-len(suffix)] for suffix in FASTA_GENOME_SUFFIXES[::-1]
                    if self.fna.endswith(suffix)) + "." + kind

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
    """Pair each ``X.genomic.gbff.gz`` with the ``X.*genomic.fna.gz`` files beside it (the published rule:
    the fna path starts with ``X.``); every other FASTA genome named after a category
    (``viral.phiX174.fasta``, ``bacteria.KK037166.fna.gz``) is a genome alone, its genes to be called."""
    if not os.path.isdir(data_dir):
        raise InputError(f"{data_dir}: no such folder; download genomes first (scripts/download_data.py)")
    gbffs, fastas = [], []
    for root, folders, names in os.walk(data_dir):
        folders[:] = [folder for folder in folders if ".identified_" not in folder]    # split files
        for name in names:
            path = os.path.join(root, name)
            if name.endswith(GBFF_SUFFIX):
                gbffs.append(path)
            elif name.endswith(FASTA_GENOME_SUFFIXES) and ".identified_" not in name:
                fastas.append(path)
    pairs, paired = [], set()
    for gbff in sorted(gbffs):
        base = gbff[:-len(GBFF_SUFFIX)]
        matches = [fna for fna in sorted(fastas) if fna.endswith(FNA_SUFFIX) and fna.startswith(base)]
        if not matches:
            logger.warning(f"{gbff}: no matching *{FNA_SUFFIX} beside it; skipped")
        pairs.extend(GenomePair(gbff, fna) for fna in matches)
        paired.update(matches)
    alone = [fna for fna in sorted(fastas) if fna not in paired and category_of(os.path.basename(fna))]
    return pairs + [GenomePair(None, fna) for fna in alone]


def read_manifest(path: str) -> dict | None:
    """The record this step keeps beside a genome's identified files (``X.identified.json``), or None."""
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


def called_genes(fna: str) -> tuple[dict[str, list[str]], dict[str, dict], str]:
    """The CDS of a FASTA genome alone, called by the gene finder made for its kind: pyrodigal-gv (viral
    models, metagenomic mode) for a viral genome, pyrodigal for a cellular one (trained on the genome from
    100 kbp on, metagenomic mode below); ``(proteins by record, lineages, annotator)``. The records of one
    file are one organism, named after the file."""
    category = category_of(os.path.basename(fna))
    if category is None:
        raise InputError(f"{fna}: a genome without a GenBank file is annotated by its category, and its name has "
                         f"none ({CATEGORY_RULE}); rename it, e.g. viral.{os.path.basename(fna)}")
    records = [(record.id, record.sequence.upper().encode()) for record in read_fasta(fna, alphabet="dna")]
    if category == "viral":
        import pyrodigal_gv
        finder, annotator = pyrodigal_gv.ViralGeneFinder(meta=True), f"pyrodigal-gv {pyrodigal_gv.__version__}, " \
                                                                     "viral models (metagenomic mode)"
    else:
        import pyrodigal
        bases = sum(len(sequence) for _, sequence in records)
        finder = pyrodigal.GeneFinder(meta=bases < TRAINED_FINDER_BASES)
        if bases >= TRAINED_FINDER_BASES:
            finder.train(*(sequence for _, sequence in records))
        annotator = f"pyrodigal {pyrodigal.__version__}, " + (
            "metagenomic mode (under 100 kbp)" if bases < TRAINED_FINDER_BASES else "trained on this genome")
    organism = os.path.basename(GenomePair(None, fna).output(""))[:-1]
    proteins = {record_id: [gene.translate(include_stop=False) for gene in finder.find_genes(sequence)]
                for record_id, sequence in records}
    return proteins, {record_id: {"organism": organism, "taxonomy": []} for record_id in proteins}, annotator


def build_pair(pair: GenomePair, chunk_size: int) -> dict:
    """Write the identified files of one genome; return its counts. A GenBank pair whose FASTA records
    have no GenBank record, or a genome that yields no frame, is refused in one line (nothing is written,
    nothing marked done); records without their GenBank record among others are counted (``without_genbank``)."""
    started = time.time()
    if pair.gbff is None:
        proteins_by_record, lineages, annotator = called_genes(pair.fna)
    else:
        (proteins_by_record, lineages), annotator = read_genbank(pair.gbff), f"GenBank ({os.path.basename(pair.gbff)})"
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
            raise InputError(f"{pair.fna}: none of its {plural(records, 'record')} is in {pair.gbff} (first: "
                             f"{without_genbank[0]}{_version_hint(without_genbank[0], proteins_by_record)}); give "
                             "each genome FASTA the GenBank file of the same assembly")
        if writer.frames == 0:
            where = f"a CDS translation of {pair.gbff}; check that its CDS carry /translation qualifiers" \
                if pair.gbff else f"a gene {annotator} calls"
            raise InputError(f"{pair.fna}: no frame of its {plural(chunks, 'chunk')} is part of {where}")
    summary = {"chunk_length": chunk_size, "gbff": pair.gbff and os.path.basename(pair.gbff),
               "fna": os.path.basename(pair.fna), "cds": annotator, "records": records, "chunks": chunks,
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
