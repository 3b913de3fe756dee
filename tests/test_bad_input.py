"""The bad-input catalogue of prediction.py: every case a user can get wrong,
with the one line it must give and the proof that nothing is left behind.

Add the next case as a row of CASES: a name, a function that prepares the
case in a temporary folder and returns prediction.py's arguments, and the
words of the error line. Each case runs through the real command-line runner
(exit status 2, one ``error:`` line, no traceback)."""
import bz2
import gzip
import json
import logging
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import zstandard

import prediction
import units
from conftest import ARCH_TINY, GOLDEN, ROOT, TINY_FASTESM, fastq, predict_args, result_bytes, run_script
from virnucpro.models.pins import MERGED_DIM
from virnucpro.prediction import outputs, shards
from virnucpro.runs import LOCK_FILE
from virnucpro.scoring.checkpoints import HIDDEN_DIM
from virnucpro.sequences.fasta import read_fasta

SAMPLE = ROOT / "data/sample.fasta"
DNA = SAMPLE.read_text()
def pzstd(text: str, frames: int) -> bytes:
    """``text`` compressed as pzstd writes it: independent zstd frames one after the other."""
    size = -(-len(text) // frames)
    return b"".join(zstandard.ZstdCompressor().compress(text[k:k + size].encode()) for k in range(0, len(text), size))


MANY = "".join(f">r{i}\n{''.join(random.Random(i).choices('ACGT', k=300))}\n" for i in range(400))

# ------------------------------------------------------------ building the cases
def input_file(name, content):
    """A case whose input file holds ``content`` (text or bytes)."""
    def prepare(tmp, models):
        path = tmp / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        return predict_args(models, tmp / "out", input_fasta=path)
    return prepare


def with_state(path, tensors: dict) -> dict:
    """The checkpoint at ``path`` with some of its tensors replaced."""
    content = torch.load(path, weights_only=True)
    return {**content, "state_dict": {**content["state_dict"], **tensors}}


def checkpoint(make, *extra):
    """A case whose classifier checkpoint is written by ``make(path)``."""
    def prepare(tmp, models):
        path = tmp / "model.pth"
        make(path)
        return predict_args(models, tmp / "out", *extra, input_fasta=SAMPLE, checkpoint=str(path))
    return prepare


def option(name, value_of):
    """A case that points ``name`` at ``value_of(tmp, models)``."""
    def prepare(tmp, models):
        args = predict_args(models, tmp / "out", input_fasta=SAMPLE)
        if name in args:
            args[args.index(name) + 1] = str(value_of(tmp, models))
        else:
            args += [name, str(value_of(tmp, models))]
        return args
    return prepare


def output_folder(fill, *extra, input_in=None):
    """A case whose output folder ``tmp/out`` is first filled by ``fill(folder, models)``; the input is
    the sample, or the file ``input_in`` of that folder."""
    def prepare(tmp, models):
        folder = tmp / "out"
        folder.mkdir()
        fill(folder, models)
        return predict_args(models, folder, *extra, input_fasta=folder / input_in if input_in else SAMPLE)
    return prepare


def model_folder(which, edit):
    """A case whose DNABERT-S (``dna``) or protein model folder is a copy of the tiny one, edited."""
    def prepare(tmp, models):
        folder = tmp / which
        shutil.copytree(models[which], folder)
        edit(folder)
        args = predict_args(models, tmp / "out", input_fasta=SAMPLE)
        args[args.index("--dna-model" if which == "dna" else "--protein-model") + 1] = str(folder)
        return args
    return prepare


def dnabert_s_with_ids_swapped(tmp, models):
    """The real DNABERT-S tokenizer (the 4096-token fixture) with the ids of A and C swapped."""
    folder = tmp / "dnabert_s"
    shutil.copytree(ARCH_TINY / "dnabert_s", folder)
    tokenizer = json.loads((folder / "tokenizer.json").read_text())
    vocab = tokenizer["model"]["vocab"]
    vocab["A"], vocab["C"] = vocab["C"], vocab["A"]
    (folder / "tokenizer.json").write_text(json.dumps(tokenizer))
    args = predict_args(models, tmp / "out", input_fasta=SAMPLE)
    args[args.index("--dna-model") + 1] = str(folder)
    return args


def edit_config(**changes):
    def edit(folder):
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps({**config, **changes}))
    return edit


def weights_with_code(folder):
    (folder / "model.safetensors").unlink()
    torch.save({"encoder.layer.0.weight": Exploit()}, folder / "pytorch_model.bin")


def truncate(name, size):
    return lambda folder: (folder / name).write_bytes((folder / name).read_bytes()[:size])


def archive(kind):
    """The sample as a member of a zip or (gzipped) tar archive."""
    import io
    import tarfile
    import zipfile

    buffer = io.BytesIO()
    if kind == "zip":
        with zipfile.ZipFile(buffer, "w") as bundle:
            bundle.writestr("sample.fasta", DNA)
        return buffer.getvalue()
    with tarfile.open(fileobj=buffer, mode="w:gz" if kind == "tar.gz" else "w") as bundle:
        info = tarfile.TarInfo("sample.fasta")
        info.size = len(DNA.encode())
        bundle.addfile(info, io.BytesIO(DNA.encode()))
    return buffer.getvalue()


def symlink_loop(tmp, models):
    os.symlink(tmp / "loop_b.fa", tmp / "loop_a.fa")
    os.symlink(tmp / "loop_a.fa", tmp / "loop_b.fa")
    return predict_args(models, tmp / "out", input_fasta=tmp / "loop_a.fa")


def complete_run(folder, models):
    """A finished run of the sample, whose viral sequences (made up here) a user gives as the next input."""
    assert prediction.main(predict_args(models, folder, input_fasta=SAMPLE)) == 0
    shutil.copy(SAMPLE, folder / "viral_sequences.fna")


def stdin_without_output(tmp, models):
    args = predict_args(models, tmp / "out", input_fasta="-")
    del args[args.index("-o"):args.index("-o") + 2]
    return args


def classifier(num_classes=2, input_dim=MERGED_DIM):
    torch.manual_seed(0)
    return units.MLPClassifier(input_dim, HIDDEN_DIM, num_classes)


def with_nan(path):
    model = classifier()
    with torch.no_grad():
        model.hidden_layer.weight[3, 5] = float("nan")
    units.save_checkpoint(model, path, chunk_length=300)


def with_huge_weights(path):
    """Finite weights whose scores overflow: caught when the first shard is scored."""
    model = classifier()
    with torch.no_grad():
        model.output_layer.weight.fill_(3e38)
    units.save_checkpoint(model, path, chunk_length=300)


def state_without_output_weights(path):
    state = classifier().state_dict()
    del state["output_layer.weight"]
    torch.save({"state_dict": state, "metadata": {"embedding_model": "fastesm650"}}, path)


class Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def earlier_run(folder, models):
    """A finished run of the sample with 50 chunks per shard (other settings than the case's 100)."""
    args = predict_args(models, folder, input_fasta=SAMPLE)
    assert prediction.main(args[:-1] + ["50"]) == 0


def live_lock(folder, models):
    """Another run, alive on this host, holds the folder."""
    (folder / LOCK_FILE).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(),
                                                      "since": "2026-11-25T10:00:00+00:00"}))


def mate_files(first, second):
    """A case of paired reads in two mate files holding these FASTQ records."""
    def prepare(tmp, models):
        (tmp / "R1.fq").write_text(fastq(first))
        (tmp / "R2.fq").write_text(fastq(second))
        return predict_args(models, tmp / "out", "--mate2", str(tmp / "R2.fq"), input_fasta=tmp / "R1.fq")
    return prepare


def interleaved(records):
    def prepare(tmp, models):
        (tmp / "pairs.fq").write_text(fastq(records))
        return predict_args(models, tmp / "out", "--interleaved", input_fasta=tmp / "pairs.fq")
    return prepare


READ = "ACGT" * 75


CASES = [
    # ---- the input file
    ("empty file", input_file("in.fa", ""), "the file is empty"),
    ("CSV instead of FASTA", input_file("in.csv", "id,sequence\na,ACGT\n"), "not a FASTA file (line 1"),
    ("protein FASTA", input_file("in.faa", ">p1\nMKVLEEQRST\n"),
     "contains 'L', which is not an IUPAC nucleotide code"),
    ("stop symbol in DNA", input_file("in.fa", ">a\nACGT*ACGT\n"), "contains '*'"),
    ("duplicate ids", input_file("in.fa", ">a\nACGT\n>a\nACGT\n"), "duplicate record id 'a' at record 1 (line 1)"),
    ("header without id", input_file("in.fa", ">\nACGT\n"), "record 1 (line 1) has a header without an id"),
    ("no sequence at all", input_file("in.fa", ">a\n>b\n"), "no record has a sequence"),
    ("truncated gzip", input_file("in.fa.gz", gzip.compress(MANY.encode())[:3000]),
     "in.fa.gz: truncated: it ends inside its compressed data"),
    ("truncated zstd, cut in its last frame", input_file("in.fa.zst", pzstd(MANY, 3)[:-200]),
     "in.fa.zst: truncated: it ends inside its compressed data (the zstd stream ends inside a frame)"),
    ("truncated zstd of one frame", input_file("in.fa.zst", zstandard.ZstdCompressor().compress(MANY.encode())[:500]),
     "in.fa.zst: truncated: it ends inside its compressed data"),
    ("corrupt gzip data", input_file("in.fa.gz", gzip.compress(DNA.encode())[:40] + b"\xff" * 200),
     "not a readable FASTA/FASTQ file, or a damaged compressed one"),
    ("corrupt bzip2 data", input_file("in.fa.bz2", bz2.compress(DNA.encode())[:30] + b"\x00" * 200),
     "in.fa.bz2: truncated: it ends inside its compressed data"),
    ("non-UTF-8 header", input_file("in.fa", b">a caf\xe9\nACGT\n"), "line 1 is not UTF-8 text (byte 0xe9 at column 7)"),
    ("FASTQ with short qualities", input_file("in.fq", "@r1\nACGTACGT\n+\nIIII\n"),
     "the FASTQ record at line 1 has 8 bases but 4 quality values"),
    ("FASTQ cut short", input_file("in.fq", fastq([("r1", "ACGT")]) + "@r2\nACGT\n"),
     "the FASTQ record at line 5 is cut short"),
    ("FASTQ without '+' line", input_file("in.fq", "@r1\nACGT\nIIII\nIIII\n"),
     "the FASTQ record at line 1 has no '+' line (line 3)"),
    # ---- paired reads
    ("mates out of order", mate_files([("a/1", READ), ("b/1", READ)], [("b/2", READ), ("a/2", READ)]),
     "R2.fq: record 1 ('b/2') is not the mate of record 1 of"),
    ("second mate file shorter", mate_files([("a/1", READ), ("b/1", READ)], [("a/2", READ)]),
     "R2.fq: ends before pair 2, where"),
    ("the first mates as their own mates", mate_files([("a", READ), ("b", READ)], [("a", READ), ("b", READ)]),
     "R2.fq: the same reads as"),
    ("both mate files on standard input",
     lambda tmp, models: predict_args(models, tmp / "out", "--mate2", "-", input_fasta="-"),
     "- --mate2 -: standard input can carry one of the two mate files only"),
    ("interleaved file with a read without its mate", interleaved([("a/1", READ), ("a/2", READ), ("b/1", READ)]),
     "pairs.fq: record 3 ('b/1') has no mate after it"),
    ("interleaved file of single reads", interleaved([("a", READ), ("b", READ)]),
     "pairs.fq: records 1 and 2 ('a', 'b') are not mates"),
    ("duplicate pair ids", interleaved([("a/1", READ), ("a/2", READ), ("a", READ), ("a", READ)]),
     "pairs.fq: duplicate pair id 'a' at pair 1 (line 1) and pair 2 (line 9)"),
    ("missing input", lambda tmp, models: predict_args(models, tmp / "out", input_fasta=tmp / "nope.fa"),
     "nope.fa: no such file"),
    ("input is a folder", lambda tmp, models: predict_args(models, tmp / "out", input_fasta=tmp),
     "is a directory, expected a file"),
    # ---- the classifier checkpoint
    ("missing checkpoint", lambda tmp, models: predict_args(models, tmp / "out", input_fasta=SAMPLE,
                                                            checkpoint=str(tmp / "none.pth")),
     "none.pth: no such checkpoint file; leave it out to use the installed classifier "
     "(`python scripts/fetch_models.py` fetches the published ones)"),
    ("checkpoint is a folder", lambda tmp, models: predict_args(models, tmp / "out", input_fasta=SAMPLE,
                                                                checkpoint=str(tmp)),
     "is a folder, not a checkpoint file"),
    ("0-byte checkpoint", checkpoint(lambda path: path.write_bytes(b"")), "the checkpoint file is empty (0 bytes)"),
    ("text file as checkpoint", checkpoint(lambda path: path.write_text("not weights\n")),
     "not a VirNucPro checkpoint, or a corrupt or truncated one"),
    ("truncated checkpoint", checkpoint(lambda path: (units.save_checkpoint(classifier(), path, chunk_length=300),
                                                      path.write_bytes(path.read_bytes()[:5000]))),
     "not a VirNucPro checkpoint, or a corrupt or truncated one"),
    ("pickle that runs code", checkpoint(lambda path: torch.save(Exploit(), path)),
     "holds Python objects other than weights, which are refused because loading them could run code"),
    ("NaN weight", checkpoint(with_nan), "hidden_layer.weight holds NaN or infinite values"),
    ("3-class classifier", checkpoint(lambda path: units.save_checkpoint(classifier(3), path, chunk_length=300)),
     "has 3 output classes; VirNucPro classifiers have 2"),
    ("metadata is a string", checkpoint(lambda path: torch.save({"state_dict": classifier().state_dict(),
                                                                  "metadata": "fastesm650"}, path)),
     "its metadata is not a table"),
    ("a 0-d tensor for the hidden layer's weights",
     checkpoint(lambda path: (units.save_checkpoint(classifier(), path, chunk_length=300),
                              torch.save(with_state(path, {"hidden_layer.weight": torch.tensor(1.0)}), path))),
     "the classifier's hidden_layer.weight is () where the fastesm650 pipeline needs (512, 2048)"),
    ("embedding_model stored as a list",
     checkpoint(lambda path: torch.save({"state_dict": classifier().state_dict(),
                                         "metadata": {"embedding_model": ["fastesm650"]}}, path)),
     "not a VirNucPro checkpoint (its metadata's embedding_model is ['fastesm650'], not a pipeline name)"),
    ("calibration that is a folder", checkpoint(lambda path: (
        units.save_checkpoint(classifier(), path, chunk_length=300),
        (path.parent / "model.calibration.json").mkdir())),
     "model.calibration.json: a folder, where scripts/evaluate_compare.py keeps a file; move it away"),
    ("output weights missing", checkpoint(state_without_output_weights),
     "the weights do not fit the VirNucPro classifier (missing: output_layer.weight)"),
    ("500-bp classifier on 300-bp chunks", checkpoint(lambda path: units.save_checkpoint(classifier(), path,
                                                                                        chunk_length=500)),
     "trained on 500-bp chunks, not 300-bp; run with 500, or use a 300-bp classifier"),
    ("ESM2-3B classifier on the FastESM2_650 pipeline",
     checkpoint(lambda path: units.save_checkpoint(classifier(input_dim=3328), path, pipeline="esm2_3b"),
                "--pipeline", "fastesm650"),
     "cannot be used by the fastesm650 pipeline: it is an ESM2-3B checkpoint"),
    # ---- the language models
    ("empty DNA model folder", option("--dna-model", lambda tmp, models: tmp),
     "is not a DNABERT-S model folder (no config.json)"),
    ("protein model as DNA model", option("--dna-model", lambda tmp, models: models["protein"]),
     "its config.json describes a fast_esm model"),
    ("DNA model as protein model", option("--protein-model", lambda tmp, models: ARCH_TINY / "dnabert_s"),
     "is not an ESM-2 model"),
    # ---- the output folder
    ("-o names a file", option("-o", lambda tmp, models: shutil.copy(SAMPLE, tmp / "file.txt")),
     "is a file, not a folder"),
    ("-o inside a file", option("-o", lambda tmp, models: shutil.copy(SAMPLE, tmp / "file.txt") / "out"),
     "the results cannot be written there"),
    ("folder of the published tool's results", output_folder(lambda folder, models: shutil.copy(
        GOLDEN / "reference_vanilla/prediction_results.txt", folder)),
     "holds files but no prediction run of this tool (prediction_results.txt)"),
    ("damaged run.json", output_folder(lambda folder, models: (folder / "run.json").write_text("{oops")),
     "run.json: damaged, or written by another version of prediction.py"),
    ("a run of other settings", output_folder(earlier_run), "holds a run with other settings (chunks_per_shard)"),
    ("a run in progress", output_folder(live_lock), "is in use by another run (pid"),
    # ---- inputs of other formats
    ("zip archive", input_file("in.zip", archive("zip")), "a zip archive, not a FASTA or FASTQ file; unzip it"),
    ("tar archive", input_file("in.tar", archive("tar")), "a tar archive, not a FASTA or FASTQ file; extract it"),
    ("gzipped tar archive", input_file("in.tar.gz", archive("tar.gz")), "a tar archive (gzip-compressed)"),
    ("gzip inside gzip", input_file("in.fa.gz.gz", gzip.compress(gzip.compress(DNA.encode()))),
     "compressed twice (gzip inside gzip); decompress it once (gzip -dc"),
    ("binary data", input_file("zeros.fa", bytes(1 << 16)), "binary data (byte 0x00 at offset 0)"),
    ("gzipped binary data", input_file("zeros.fa.gz", gzip.compress(bytes(1 << 16))),
     "binary data (byte 0x00 at offset 0 once gzip-decompressed)"),
    ("symlink loop as input", symlink_loop, "loop_a.fa: cannot be opened (Too many levels of symbolic links)"),
    ("standard input without -o", stdin_without_output, "-: input from a pipe needs an output folder; give -o"),
    # ---- model folders
    ("DNABERT-S tokenizer of its size with other ids", dnabert_s_with_ids_swapped,
     "tokenizer.json holds 4096 tokens, as DNABERT-S's tokenizer does, but other tokens or merge rules than "
     "DNABERT-S's, so every id it gives would differ"),
    ("DNABERT-S tokenizer of another vocabulary",
     model_folder("dna", lambda folder: shutil.copy(ARCH_TINY / "dnabert_s/tokenizer.json", folder)),
     "tokenizer.json holds 4096 tokens, but the model's config.json 64: the tokenizer is not this model's"),
    ("FastESM2_650 config of another width", model_folder("protein", edit_config(hidden_size=640)),
     "config.json does not describe its weights (hidden_size 640, the weights 1280)"),
    ("FastESM2_650 config of another depth", model_folder("protein", edit_config(num_hidden_layers=5)),
     f"config.json does not describe its weights (num_hidden_layers 5, the weights {TINY_FASTESM[1]})"),
    ("an ESM-1b config (absolute positions) for FastESM2_650",
     model_folder("protein", edit_config(position_embedding_type="absolute")),
     "config.json is not an ESM-2 config: position_embedding_type 'absolute' (ESM-2 has 'rotary')"),
    ("truncated model.safetensors", model_folder("protein", truncate("model.safetensors", 4000)),
     "model.safetensors: not readable as weights, truncated or damaged"),
    ("half-written weight index", model_folder("protein", lambda folder: (
        folder / "model.safetensors.index.json").write_text('{"weight_map": {"esm.embeddings')),
     "model.safetensors.index.json: not a readable index of weight files (damaged, or written only in part)"),
    ("FastESM2_650 weights that carry code", model_folder("protein", weights_with_code),
     "pytorch_model.bin: holds Python objects besides tensors, which are refused because loading them could run "
     "code"),
    ("a safetensors file as checkpoint", checkpoint(lambda path: shutil.copy(
        ARCH_TINY / "fastesm650/model.safetensors", path)), "a safetensors file (a language model's weights, say)"),
    # ---- the output folder is the user's: only this tool's files are ever replaced
    ("--overwrite and a shards/ folder of someone else's", output_folder(lambda folder, models: (
        (folder / "shards").mkdir(), (folder / "shards/mine.txt").write_text("keep\n")), "--overwrite"),
     "shards: a folder this tool did not write, which a run would use for its shards"),
    ("--overwrite and a run.json of someone else's", output_folder(lambda folder, models: (
        folder / "run.json").write_text('{"run": "mine"}'), "--overwrite"),
     "run.json: damaged, or written by another version of prediction.py; move it away or give another -o"),
    ("--overwrite --plot and a plot of someone else's", output_folder(lambda folder, models: (
        folder / "prediction.png").write_bytes(b"mine"), "--overwrite", "--plot"),
     "prediction.png: a plot this tool did not draw, which --plot would replace"),
    ("--overwrite and the input among the result files",
     output_folder(complete_run, "--overwrite", input_in="viral_sequences.fna"),
     "viral_sequences.fna: the input is the viral_sequences.fna a run in"),
    ("--slurm-array outside an array job",
     lambda tmp, models: predict_args(models, tmp / "out", "--slurm-array", input_fasta=SAMPLE),
     "--slurm-array: this is not a task of a SLURM array job"),
]

# Cases that fail once the run has started: the run's own state stays (to resume), no result file.
LEAVES_RUN_STATE = {"classifier with overflowing scores": {"run.json", "shards"}}
CASES.append(("classifier with overflowing scores", checkpoint(with_huge_weights),
              "the classifier gives non-finite scores (first: frame"))


def snapshot(folder):
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()} \
        if folder.exists() else None


@pytest.mark.parametrize("name, prepare, words", CASES, ids=[case[0] for case in CASES])
def test_bad_input_gives_one_line_and_leaves_nothing(name, prepare, words, models, tmp_path, cli):
    args = prepare(tmp_path, models)
    output = Path(args[args.index("-o") + 1]) if "-o" in args else tmp_path / "out"
    before = snapshot(output) if output.is_dir() else None
    status, stderr = cli("prediction", args)
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert status == 2 and len(errors) == 1 and "Traceback" not in stderr, stderr
    assert words in errors[0], errors[0]
    assert "weights_only=False" not in stderr
    if name in LEAVES_RUN_STATE:
        assert {p.name for p in output.iterdir()} == LEAVES_RUN_STATE[name]
    elif before is None:
        assert not output.exists() or output.is_file(), list(output.iterdir())
    else:
        assert snapshot(output) == before                        # the folder is left as it was


def test_a_closed_standard_input_is_one_line(models, tmp_path):
    """prediction.py - 300 ... <&- : started without a standard input at all."""
    done = subprocess.run([sys.executable, str(ROOT / "prediction.py"), *predict_args(models, tmp_path / "out",
                                                                                     input_fasta="-")],
                          capture_output=True, text=True, timeout=300, preexec_fn=lambda: os.close(0))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines()[-1].startswith("error: -: standard input is closed; pipe the reads in")
    assert not (tmp_path / "out").exists()


def test_unwritable_output_folder_is_refused_before_any_work(models, tmp_path, cli):
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o555)
    if os.geteuid() == 0:           # root writes anywhere: take a folder the kernel keeps read-only
        shared = Path("/sys")
    status, stderr = cli("prediction", predict_args(models, shared / "virnucpro_out", input_fasta=SAMPLE))
    assert status == 2 and "the results cannot be written there" in stderr, stderr
    assert not (shared / "virnucpro_out").exists()


def test_a_user_mistake_is_one_line_on_the_terminal(tmp_path):
    """The same runner as a subprocess: exit status 2, exactly one line, nothing created."""
    result = run_script("prediction.py", SAMPLE, "300", tmp_path / "missing.pth", "-o", tmp_path / "out")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {tmp_path / 'missing.pth'}: no such checkpoint file; leave it out to use the installed classifier "
        "(`python scripts/fetch_models.py` fetches the published ones), or train one with train_fastesm.py"]
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------ inputs that are converted, not refused
def run_prediction(models, tmp_path, name, input_path, *extra):
    output = tmp_path / name
    assert prediction.main(predict_args(models, output, *extra, input_fasta=input_path)) == 0
    return output


@pytest.fixture(scope="module")
def sample_run(models, tmp_path_factory):
    return run_prediction(models, tmp_path_factory.mktemp("sample"), "dna", SAMPLE)


def test_rna_is_read_as_dna(models, sample_run, tmp_path, caplog):
    rna = tmp_path / "rna.fa"
    rna.write_text("".join(line if line.startswith(">") else line.replace("T", "U").replace("t", "u")
                           for line in DNA.splitlines(True)))
    assert result_bytes(run_prediction(models, tmp_path, "rna", rna)) == result_bytes(sample_run)
    assert caplog.text.count("U is read as T") == 1


def test_fastq_compressed_bom_tabs_and_crlf_read_as_the_fasta(models, sample_run, tmp_path):
    records = [(r.id, r.sequence) for r in read_fasta(SAMPLE)]
    expected = [(r.id, r.sequence) for r in read_fasta(SAMPLE)]
    text = fastq(records)
    variants = {"reads.fq.gz": gzip.compress(text.encode()), "reads.fq.bz2": bz2.compress(text.encode()),
                "reads.fastq.xz": __import__("lzma").compress(text.encode()),
                "reads.fq.zst": zstandard.ZstdCompressor().compress(text.encode()),
                "pzstd.fq.zst": pzstd(text, 4),
                "bom_crlf.fa": b"\xef\xbb\xbf" + DNA.replace("\n", "\r\n").encode(),
                "old_mac.fa": DNA.replace("\n", "\r").encode(),
                "tabs.fa": "".join(line if line.startswith(">") else line[:30] + "\t" + line[30:]
                                   for line in DNA.splitlines(True)).encode()}
    for name, content in variants.items():
        (tmp_path / name).write_bytes(content)
        assert [(r.id, r.sequence) for r in read_fasta(tmp_path / name)] == expected, name
    for name in ("reads.fq.bz2", "reads.fq.zst", "old_mac.fa"):
        assert result_bytes(run_prediction(models, tmp_path, name + "_out", tmp_path / name)) == \
            result_bytes(sample_run), name


def test_standard_input_is_read_as_the_file(models, sample_run, tmp_path):
    """``-`` is standard input, as for seqkit, samtools and bedtools."""
    args = predict_args(models, tmp_path / "out", input_fasta="-")
    done = subprocess.run([sys.executable, str(ROOT / "prediction.py"), *args], input=SAMPLE.read_bytes(),
                          capture_output=True, timeout=300)
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert result_bytes(tmp_path / "out") == result_bytes(sample_run)
    assert b"-: 10 sequences" in done.stderr


def test_ids_with_dollar_signs_are_plotted_as_they_are(models, tmp_path):
    reads = tmp_path / "dollars.fa"
    reads.write_text("".join(f">read_${k}$_x^2\n{record.sequence}\n"
                             for k, record in enumerate(read_fasta(SAMPLE))))
    output = run_prediction(models, tmp_path, "out", reads, "--plot")
    assert (output / "prediction.png").read_bytes()[:4] == b"\x89PNG"
    assert json.loads((output / "run.json").read_text())["status"] == "complete"


def test_a_shards_folder_linked_to_scratch_space_stays_linked(models, sample_run, tmp_path):
    output, scratch = tmp_path / "out", tmp_path / "scratch"
    output.mkdir()
    scratch.mkdir()
    (output / "shards").symlink_to(scratch)
    assert prediction.main(predict_args(models, output, input_fasta=SAMPLE)) == 0
    assert result_bytes(output) == result_bytes(sample_run)
    assert (output / "shards").is_symlink() and list(scratch.iterdir()) == []


def test_every_record_has_a_summary_row_with_its_reason(models, tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="virnucpro")
    sequences = [(r.id, r.sequence) for r in read_fasta(SAMPLE)][:3]
    path = tmp_path / "mixed.fa"
    path.write_text(f">{sequences[0][0]}\n{sequences[0][1]}\n>empty\n\n>tiny\nACGTACGTAC\n"
                    f">edge\n{sequences[1][1][:150]}\n>no_frame\n{'TAAT' * 75}\n>{sequences[2][0]}\n{sequences[2][1]}\n")
    output = run_prediction(models, tmp_path, "out", path)
    with open(output / "prediction_summary.tsv") as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle][1:]
    assert [row[0] for row in rows] == [sequences[0][0], "empty", "tiny", "edge", "no_frame", sequences[2][0]]
    calls = {row[0]: row[6] for row in rows}
    assert calls["empty"] == "no_sequence" and calls["tiny"] == "too_short" and calls["no_frame"] == "no_frames"
    assert calls["edge"] in ("virus", "others")                         # 150 bp: the default minimum for 300
    assert rows[2] == ["tiny", "10", "0", "0", "0", "NA", "too_short", "NA", "NA", "NA"]
    assert "not scored: 1 without a stop-free frame, 1 shorter than 150 bp, 1 without sequence" in caplog.text
    frames = (output / "prediction_results.txt").read_text()
    assert "tiny_chunk" not in frames and "edge_chunk_1" in frames
    run = json.loads((output / "run.json").read_text())
    assert run["status"] == "complete" and run["calls"]["too_short"] == 1 and run["thresholds"]["min_length"] == 150
    longer = run_prediction(models, tmp_path, "strict", path, "--min-length", "200")
    assert "edge\t150\t0\t0\t0\tNA\ttoo_short" in (longer / "prediction_summary.tsv").read_text()


# ------------------------------------------------------------ the output folder
def test_a_finished_run_is_not_redone_unless_asked(models, sample_run, tmp_path, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="virnucpro")
    output = tmp_path / "out"
    shutil.copytree(sample_run, output)
    calls = []
    monkeypatch.setattr(shards, "score_shard", lambda *a, **k: calls.append(a))
    assert prediction.main(predict_args(models, output, input_fasta=SAMPLE)) == 0
    assert calls == [] and "this run is already complete" in caplog.text
    monkeypatch.undo()
    (output / "prediction_summary.tsv").write_text("stale\n")
    assert prediction.main(predict_args(models, output, "--overwrite", input_fasta=SAMPLE)) == 0
    assert result_bytes(output) == result_bytes(sample_run)


def test_overwrite_replaces_the_results_of_something_else(models, sample_run, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    shutil.copy(GOLDEN / "reference_vanilla/prediction_results.txt", output)
    (output / "notes.txt").write_text("mine\n")
    (output / "prediction.png").write_bytes(b"my plot")
    assert prediction.main(predict_args(models, output, "--overwrite", input_fasta=SAMPLE)) == 0
    assert result_bytes(output) == result_bytes(sample_run)
    assert (output / "notes.txt").read_text() == "mine\n"                  # only result files are replaced
    assert (output / "prediction.png").read_bytes() == b"my plot"         # not this tool's: kept
    assert json.loads((output / "run.json").read_text())["files"] == list(outputs.RESULT_FILES)


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o002, 0o664)])
def test_outputs_follow_the_users_umask(models, tmp_path, umask, mode):
    previous = os.umask(umask)
    try:
        output = run_prediction(models, tmp_path, "out", SAMPLE)
        units.save_checkpoint(classifier(), tmp_path / "model.pth")
    finally:
        os.umask(previous)
    for path in [*(output / name for name in outputs.RESULT_FILES), output / "run.json", tmp_path / "model.pth"]:
        assert path.stat().st_mode & 0o777 == mode, path
