"""The sequence layer: byte parity with the published VirNucPro, and input handling."""
import gzip
import json
import logging
import os
import random
import shutil
import threading

import pytest

import make_train_dataset
import units
from benchmarking import synthetic
from benchmarking.published import published_frames, published_translate
from conftest import DATA, GOLDEN
from virnucpro.errors import InputError
from virnucpro.sequences import fasta, genomes
from virnucpro.sequences.chunks import chunk_starts, iter_chunks, iter_fasta_chunks
from virnucpro.sequences.fasta import read_fasta
from virnucpro.sequences.frames import IdentifiedWriter, ProteinIndex, batched, select_frames


# ------------------------------------------------------------ golden parity
@pytest.mark.parametrize("length", [300, 500])
def test_split_fasta_chunk_matches_golden(tmp_path, length):
    out = tmp_path / "chunked.fasta"
    units.split_fasta_chunk(GOLDEN / "prediction/input.fasta", out, length)
    assert out.read_bytes() == (GOLDEN / f"prediction/chunked{length}.fasta").read_bytes()


@pytest.mark.parametrize("length", [300, 500])
def test_prediction_frames_match_golden(tmp_path, length):
    """From the chunked file (the published flow) and straight from the input."""
    chunked = [(r.id, r.sequence.upper()) for r in read_fasta(GOLDEN / f"prediction/chunked{length}.fasta")]
    direct = iter_fasta_chunks(GOLDEN / "prediction/input.fasta", length)
    for name, chunks in (("chunked", chunked), ("direct", direct)):
        nucleotide, protein = tmp_path / f"{name}.fa", tmp_path / f"{name}.faa"
        with IdentifiedWriter(nucleotide, protein) as writer:    # as prediction.py writes them
            for batch in batched(chunks, 7):
                writer.write(select_frames(batch))
        assert nucleotide.read_bytes() == (GOLDEN / f"prediction/chunked{length}_identified_nucleotide.fa").read_bytes()
        assert protein.read_bytes() == (GOLDEN / f"prediction/chunked{length}_identified_protein.faa").read_bytes()


def test_identify_seq_keeps_published_records():
    result = units.identify_seq("s_chunk_1", "ATGAAACCCGGGTTTAAAC")
    # F1: six codons, and the nucleotide slice is one base longer than them
    assert result[0] == {"seqid": "s_chunk_1F1", "nucleotide": "ATGAAACCCGGGTTTAAAC", "protein": "MKPGFK"}
    assert [r["seqid"] for r in result] == ["s_chunk_1F1", "s_chunk_1R2", "s_chunk_1R3"]   # F2, F3, R1 hold stops
    # a codon holding N is skipped, so the slice follows the shorter protein
    assert units.identify_seq("s", "ATGNNNCCCGGG")[0] == {"seqid": "sF1", "nucleotide": "ATGNNNCCCG", "protein": "MPG"}
    assert units.identify_seq("x", "ATGNNNCCC", [], istraindata=True) is None


def test_genomes_without_genbank_get_their_genes_called(tmp_path):
    """A phage and a bacterial scaffold as FASTA alone: pyrodigal-gv calls the phage's genes, pyrodigal the
    bacterium's; every frame kept is stop-free and part of a called gene; the manifest says who called them."""
    import pyrodigal
    import pyrodigal_gv

    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(DATA / "genomes/phix174.fasta", data / "viral.phiX174.fasta")
    shutil.copy(DATA / "genomes/KK037166.fna.gz", data / "bacteria.KK037166.fna.gz")
    (data / "notes.fasta").write_text(">x\nACGT\n")                      # no category: not a genome
    assert make_train_dataset.main(["--length", "300", "--data-dir", str(data), "--workers", "1"]) == 0
    for stem, finder in (("viral.phiX174", pyrodigal_gv.ViralGeneFinder(meta=True)),
                         ("bacteria.KK037166", pyrodigal.GeneFinder(meta=True))):
        manifest = json.loads((data / f"{stem}.identified.json").read_text())
        assert manifest["cds"].startswith("pyrodigal-gv " if stem.startswith("viral") else "pyrodigal ")
        assert manifest["gbff"] is None
        assert all(entry == {"organism": stem, "taxonomy": []} for entry in manifest["lineages"].values())
        genome = next(read_fasta(next(data.glob(f"{stem}.f*")))).sequence.upper()
        genes = [gene.translate(include_stop=False) for gene in finder.find_genes(genome.encode())]
        frames = list(read_fasta(data / f"{stem}.identified_protein.fa", alphabet="protein"))
        assert len(frames) == manifest["frames"] > 0
        assert all("*" not in frame.sequence and any(frame.sequence in gene for gene in genes) for frame in frames)
    assert not (data / "notes.identified.json").exists()


@pytest.mark.parametrize("length", [300, 500])
def test_make_train_dataset_matches_golden_and_resumes(tmp_path, length):
    data = tmp_path / "data"
    data.mkdir()
    for name in ("genomes.genomic.gbff.gz", "genomes.genomic.fna.gz"):
        shutil.copy(GOLDEN / f"train{length}" / name, data / name)
    assert make_train_dataset.main(["--length", str(length), "--data-dir", str(data), "--workers", "2"]) == 0
    for kind in ("nucleotide", "protein"):
        produced = data / f"genomes.identified_{kind}.fa"
        assert produced.read_bytes() == (GOLDEN / f"train{length}/genomes.identified_{kind}.chunk{length}.fa").read_bytes()
    assert sorted(p.name for p in data.iterdir()) == [
        "genomes.genomic.fna.gz", "genomes.genomic.gbff.gz", "genomes.identified.json",
        "genomes.identified_nucleotide.fa", "genomes.identified_protein.fa"]   # no decompressed copies
    from Bio import SeqIO  # each record's organism and lineage, for the test split's groups
    with gzip.open(data / "genomes.genomic.gbff.gz", "rt") as handle:
        expected = {r.id: {"organism": r.annotations["organism"], "taxonomy": r.annotations["taxonomy"]}
                    for r in SeqIO.parse(handle, "genbank")}
    lineages = json.loads((data / "genomes.identified.json").read_text())["lineages"]
    assert lineages == expected and all(entry["organism"] for entry in lineages.values())

    # a second run skips the finished pair
    pair = genomes.GenomePair(str(data / "genomes.genomic.gbff.gz"), str(data / "genomes.genomic.fna.gz"))
    assert genomes.is_done(pair, length)
    # outputs of the other length are never overwritten silently
    with pytest.raises(InputError, match="was built with"):
        genomes.is_done(pair, 800 - length)


# ------------------------------------------------------------ equivalence with the published method
def _random_dna(rng, length, alphabet):
    return "".join(rng.choices(alphabet, k=length))


def test_select_frames_equals_published_method_on_random_chunks():
    rng = random.Random(7)
    chunks = [(f"c{i}", _random_dna(rng, rng.choice([1, 2, 3, 4, 5, 8, 30, 31, 32, 300]),
                                    "ACGT" * 12 + "NRYKMSWBDHVU")) for i in range(4000)]
    expected = [frame for cid, seq in chunks for frame in published_frames(cid, seq)]
    assert list(select_frames(chunks)) == expected
    for _, seq in chunks[:500]:
        assert units.translate_dna(seq) == published_translate(seq)


def test_training_selection_equals_published_method():
    rng = random.Random(11)
    genome, proteins = synthetic.synthetic_genome(60, rng)
    genome = genome[:5000] + "N" + genome[5001:]          # one ambiguous chunk
    chunks = [(f"g_chunk_{k}", c) for k, c in enumerate(iter_chunks(genome, 300), start=1)]
    reference = ProteinIndex(proteins)
    expected = [f for cid, seq in chunks for f in published_frames(cid, seq, proteins)]
    assert expected, "the synthetic genome should yield training frames"
    assert list(select_frames(chunks, reference)) == expected


def test_protein_index_equals_substring_scan():
    rng = random.Random(3)
    proteins = ["".join(rng.choices("ACDEFGHIKLMNPQRSTVWY", k=rng.randint(0, 200))) for _ in range(50)]
    proteins.append("Q" * 80)                                  # low-complexity repeats
    index = ProteinIndex(proteins)
    anchor = ProteinIndex.ANCHOR
    for _ in range(3000):
        source = rng.choice(proteins)
        length = rng.choice([0, 1, 5, anchor, 2 * anchor - 2, 2 * anchor - 1, 2 * anchor, 60, 150])
        start = rng.randint(0, max(0, len(source) - length))
        fragment = source[start:start + length]
        if rng.random() < 0.5 and fragment:                   # mutate: usually absent
            i = rng.randrange(len(fragment))
            fragment = fragment[:i] + rng.choice("ACDEFGHIKLMNPQRSTVWY") + fragment[i + 1:]
        assert (fragment in index) == any(fragment in p for p in proteins), fragment
    assert "" not in ProteinIndex([])


@pytest.mark.parametrize("chunk_size", [300, 500])
def test_chunks_cover_every_base(chunk_size):
    for length in list(range(1, 1300)) + [12345, 99999]:
        starts = chunk_starts(length, chunk_size)
        assert len(starts) == -(-length // chunk_size)
        assert starts[0] == 0 and starts == sorted(starts)
        covered_to = 0
        for start in starts:
            assert start <= covered_to                          # no gap
            covered_to = max(covered_to, min(start + chunk_size, length))
        assert covered_to == length


# ------------------------------------------------------------ input handling
def test_gzipped_and_lowercase_input_give_the_same_chunks(tmp_path):
    text = (GOLDEN / "prediction/input.fasta").read_text()
    gz = tmp_path / "input.fa.gz"
    with gzip.open(gz, "wt") as handle:
        handle.write(text)
    units.split_fasta_chunk(gz, tmp_path / "from_gz.fa", 300)
    assert (tmp_path / "from_gz.fa").read_bytes() == (GOLDEN / "prediction/chunked300.fasta").read_bytes()
    lower = tmp_path / "lower.fa"
    lower.write_text("".join(line if line.startswith(">") else line.lower() for line in text.splitlines(True)))
    assert [r.sequence.upper() for r in read_fasta(lower)] == [r.sequence.upper() for r in read_fasta(gz)]


@pytest.mark.parametrize("content, message", [
    ("", "the file is empty"),
    ("\n\n", "the file is empty"),
    ("ACGT\n>x\nACGT\n", "not a FASTA file (line 1"),
    (">a\nACGT\n>b desc\nAC GT\n>a\nTT\n", "duplicate record id 'a' at record 1 (line 1) and record 3 (line 5)"),
    (">a\nACGT\n>b\nACJT\n", "record 'b' (record 2, line 3) contains 'J', which is not an IUPAC nucleotide code"),
    (">a\nAC-GT\n", "contains '-'"),
    (">\nACGT\n", "record 1 (line 1) has a header without an id"),
    (">a\n>b\n", "no record has a sequence"),
])
def test_bad_fasta_stops_with_one_clear_line(write_file, content, message):
    path = write_file("bad.fa", content)
    with pytest.raises(InputError) as error:
        list(read_fasta(path))
    assert message in str(error.value)
    assert str(path) in str(error.value)
    assert "\n" not in str(error.value)


def test_duplicate_ids_found_in_a_pipe_and_in_fastq(tmp_path):
    # a regular file keeps hashes of the ids and reads itself again on a repeat; a pipe keeps the ids
    fifo = tmp_path / "reads.fifo"
    os.mkfifo(fifo)
    feeder = threading.Thread(target=lambda: fifo.write_text(">a\nACGT\n>b\nAC\n>a\nTT\n"))
    feeder.start()
    with pytest.raises(InputError, match=r"duplicate record id 'a' at record 1 \(line 1\) and record 3 "
                                               r"\(line 5\)"):
        list(read_fasta(fifo))
    feeder.join()
    fastq = tmp_path / "reads.fq"
    fastq.write_text("@r1\nACGT\n+\nIIII\n@r2\nACGT\n+\nIIII\n@r2 again\nAC\n+\nII\n")
    with pytest.raises(InputError, match=r"'r2' at record 2 \(line 5\) and record 3 \(line 9\)"):
        list(read_fasta(fastq))


def test_ids_sharing_a_hash_are_not_duplicates(tmp_path, monkeypatch):
    path = tmp_path / "reads.fa"
    path.write_text(">a\nACGT\n>b\nACGT\n>c\nAC\n")
    monkeypatch.setattr(fasta, "hash", lambda record_id: 0, raising=False)     # every id collides
    assert [record.id for record in read_fasta(path)] == ["a", "b", "c"]
    path.write_text(">a\nACGT\n>b\nACGT\n>a\nAC\n")
    with pytest.raises(InputError, match="duplicate record id 'a' at record 1"):      # confirmed by reading again
        list(read_fasta(path))


def test_binary_missing_and_truncated_files(tmp_path):
    binary = tmp_path / "image.png"
    binary.write_bytes(bytes(range(256)) * 4)
    truncated = tmp_path / "cut.fa.gz"
    dna = "".join(random.Random(1).choices("ACGT", k=40000)).encode()
    truncated.write_bytes(gzip.compress(b">a\n" + dna)[:2000])
    for path, message in ((binary, "not a (readable )?FASTA"), (truncated, "cut.fa.gz: truncated"),
                          (tmp_path / "missing.fa", "no such file"), (tmp_path, "is a directory")):
        with pytest.raises(InputError, match=message):
            list(read_fasta(path))


def test_record_without_sequence_is_skipped_with_a_warning(write_file, tmp_path, caplog):
    path = write_file("in.fa", ">empty\n>full\nACGTACGTAC\n")
    with caplog.at_level(logging.WARNING, logger="virnucpro"):
        units.split_fasta_chunk(path, tmp_path / "out.fa", 300)
    assert (tmp_path / "out.fa").read_text() == ">full_chunk_1\nACGTACGTAC\n"
    assert "record 'empty' (record 1, line 1) has no sequence; skipped" in caplog.text


def test_failed_run_leaves_no_output(write_file, tmp_path):
    path = write_file("in.fa", ">a\nACGT\n>b\nACXT\n")
    with pytest.raises(InputError):
        units.split_fasta_chunk(path, tmp_path / "out.fa", 300)
    assert list(tmp_path.iterdir()) == [path]


def test_protein_alphabet_and_split_fasta_file_round_trip(write_file, tmp_path):
    records = "".join(f">p{i} some description\nMKV{'L' * i}\n" for i in range(25))
    path = write_file("proteins.faa", records)
    written = units.split_fasta_file(path, tmp_path / "parts", 10)
    assert [p.rsplit("/", 1)[1] for p in written] == ["output_1.fa", "output_2.fa", "output_3.fa"]
    assert "".join(open(p).read() for p in written) == records
    assert len(list(read_fasta(written[2], alphabet="protein"))) == 5
    with pytest.raises(InputError, match="not an amino-acid letter"):
        list(read_fasta(write_file("bad.faa", ">p\nMK*\n"), alphabet="protein"))
