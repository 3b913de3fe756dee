"""Paired reads: two mate files (--mate2) or one interleaved file (--interleaved). Each mate is scored as a
read of its own (``<pair>/1``, ``<pair>/2``) and prediction_pairs.tsv has a row a pair, called from both
mates' chunks by the sequence rule."""
import gzip
import json
import os
import subprocess
import sys
import threading

import pytest

import prediction
from conftest import ROOT, fastq, predict_args, read_tsv, result_bytes
from helpers.models import save_classifier
from virnucpro.prediction import outputs
from virnucpro.scoring.calls import pair_call
from virnucpro.sequences.fasta import read_fasta

SAMPLE = ROOT / "data/sample.fasta"
PAIRS = [f"M00001:7:FC1:1:1101:{k}:1000" for k in range(5)]


@pytest.fixture(scope="module")
def reads(tmp_path_factory):
    """The sample's ten reads as five pairs (reads k and k + 5) in the forms sequencers write: Casava 1.8
    mate files (the same id in both, the mate in the description), an interleaved file of /1 and /2 ids,
    and the single-end FASTA of the same reads as the paired run names them."""
    folder = tmp_path_factory.mktemp("paired")
    sequences = [record.sequence for record in read_fasta(SAMPLE)]
    mates = list(zip(sequences[:5], sequences[5:]))
    (folder / "R1.fq.gz").write_bytes(gzip.compress(fastq(
        (f"{pair} 1:N:0:ACGT", one) for pair, (one, _) in zip(PAIRS, mates)).encode()))
    (folder / "R2.fq.gz").write_bytes(gzip.compress(fastq(
        (f"{pair} 2:N:0:ACGT", two) for pair, (_, two) in zip(PAIRS, mates)).encode()))
    (folder / "interleaved.fq").write_text(fastq(
        (f"{pair}/{mate} {mate}:N:0:ACGT", sequence) for pair, both in zip(PAIRS, mates)
        for mate, sequence in enumerate(both, start=1)))
    (folder / "single.fa").write_text("".join(
        f">{pair}/{mate} {mate}:N:0:ACGT\n{sequence}\n" for pair, both in zip(PAIRS, mates)
        for mate, sequence in enumerate(both, start=1)))
    return folder


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    """A classifier whose calls on these reads are mixed: viral scores raised past one half for some."""
    return save_classifier(tmp_path_factory.mktemp("classifier") / "mixed.pth", viral_bias=0.5)


@pytest.fixture(scope="module")
def paired_run(models, reads, classifier):
    output = reads / "paired_out"
    assert prediction.main(predict_args(models, output, "--mate2", str(reads / "R2.fq.gz"),
                                        input_fasta=reads / "R1.fq.gz", checkpoint=classifier)) == 0
    return output


def test_each_mate_is_scored_as_a_read_of_its_own(models, reads, classifier, paired_run, tmp_path):
    """The paired run equals the single-end run of the same reads named <pair>/1 and <pair>/2."""
    single = tmp_path / "single"
    assert prediction.main(predict_args(models, single, input_fasta=reads / "single.fa", checkpoint=classifier)) == 0
    paired = result_bytes(paired_run)
    assert paired.pop(outputs.PAIRS_FILE) and paired == result_bytes(single)
    assert [row["Sequence_ID"] for row in read_tsv(paired_run / outputs.SUMMARY_FILE)] == \
        [f"{pair}/{mate}" for pair in PAIRS for mate in (1, 2)]


def test_a_pair_is_called_from_both_mates_chunks(paired_run):
    summary = {row["Sequence_ID"]: row for row in read_tsv(paired_run / outputs.SUMMARY_FILE)}
    pairs = read_tsv(paired_run / outputs.PAIRS_FILE)
    assert [row["Pair_ID"] for row in pairs] == PAIRS
    for row in pairs:
        mates = [summary[f"{row['Pair_ID']}/{mate}"] for mate in (1, 2)]
        assert [row["Mate1_call"], row["Mate2_call"]] == [mate["Call"] for mate in mates]
        assert [row["Mate1_best_viral_score"], row["Mate2_best_viral_score"]] == \
            [mate["Best_viral_score"] for mate in mates]
        scored = sum(int(mate["Chunks"]) - int(mate["Chunks_without_frames"]) for mate in mates)
        viral = sum(int(mate["Viral_chunks"]) for mate in mates)
        assert (int(row["Scored_chunks"]), int(row["Viral_chunks"])) == (scored, viral)
        assert row["Call"] == ("virus" if 2 * viral >= scored else "others")
    assert {row["Call"] for row in pairs} == {"virus", "others"}
    assert any(row["Mate1_call"] != row["Mate2_call"] for row in pairs)
    run = json.loads((paired_run / outputs.RUN_FILE).read_text())
    assert run["pairs"] == 5 and run["pair_calls"]["virus"] == sum(row["Call"] == "virus" for row in pairs)


def test_pair_call_rule():
    assert pair_call(2, 1, "virus", "others") == "virus"                # half of the chunks
    assert pair_call(3, 1, "virus", "others") == "others"               # a 1-chunk mate against a 2-chunk one
    assert pair_call(2, 1, "below_threshold", "others") == "below_threshold"
    assert pair_call(0, 0, "too_short", "too_short") == "too_short"
    assert pair_call(0, 0, "too_short", "no_frames") == "too_short+no_frames"


def test_an_interleaved_file_on_standard_input_gives_the_same(models, reads, classifier, paired_run, tmp_path):
    args = predict_args(models, tmp_path / "out", "--interleaved", input_fasta="-", checkpoint=classifier)
    done = subprocess.run([sys.executable, str(ROOT / "prediction.py"), *args], capture_output=True, timeout=300,
                          input=gzip.compress((reads / "interleaved.fq").read_bytes()))
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert result_bytes(tmp_path / "out") == result_bytes(paired_run)
    assert b"-: 5 read pairs, 10 300-bp chunks" in done.stderr


def test_second_mates_through_a_pipe_give_the_same(models, reads, classifier, paired_run, tmp_path):
    """--mate2 <(zcat R2.fq.gz): the second mates are read from a pipe, spooled in the new output folder."""
    fifo = tmp_path / "R2.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(gzip.decompress((reads / "R2.fq.gz").read_bytes())))
    writer.start()
    args = predict_args(models, tmp_path / "out", "--mate2", str(fifo), input_fasta=reads / "R1.fq.gz",
                        checkpoint=classifier)
    assert prediction.main(args) == 0
    writer.join()
    assert result_bytes(tmp_path / "out") == result_bytes(paired_run)
    assert not any((tmp_path / "out" / spool).exists() for spool in outputs.SPOOLS)


def test_a_run_missing_its_pairs_table_is_redone(models, reads, classifier, tmp_path):
    output = tmp_path / "out"
    args = predict_args(models, output, "--interleaved", input_fasta=reads / "interleaved.fq", checkpoint=classifier)
    assert prediction.main(args) == 0
    table = (output / outputs.PAIRS_FILE).read_bytes()
    (output / outputs.PAIRS_FILE).unlink()
    assert prediction.main(args) == 0
    assert (output / outputs.PAIRS_FILE).read_bytes() == table
