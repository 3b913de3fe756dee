"""A resumed prediction never mixes models: a run is bound to the content of
its classifier and models; one process writes into an output folder; input
may come through a pipe."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import prediction
import units
from conftest import ROOT, interrupt_after, predict_args
from virnucpro.errors import InputError
from virnucpro.models.modelfiles import model_identity
from virnucpro.models.pins import MERGED_DIM
from virnucpro.prediction import assembly, outputs, shards
from virnucpro.runs import LOCK_FILE
from virnucpro.scoring.checkpoints import HIDDEN_DIM

SAMPLE = ROOT / "data/sample.fasta"          # 10 reads, 10 chunks: 4 shards of 3 chunks


def sample_args(models, output, *extra, checkpoint=None, input_fasta=SAMPLE):
    args = predict_args(models, output, *extra, input_fasta=input_fasta, checkpoint=checkpoint)
    args[args.index("--chunks-per-shard") + 1] = "3"
    return args


def results(output):
    return {name: (output / name).read_bytes() for name in outputs.RESULT_FILES}


def classifier_file(path, seed):
    torch.manual_seed(seed)
    units.save_checkpoint(units.MLPClassifier(MERGED_DIM, HIDDEN_DIM, 2), path, chunk_length=300)
    return str(path)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    folder = tmp_path_factory.mktemp("checkpoints")
    first, second = classifier_file(folder / "first.pth", 1), classifier_file(folder / "second.pth", 2)
    assert os.path.getsize(first) == os.path.getsize(second)          # the case that fooled path + size
    return first, second


def test_a_checkpoint_swapped_for_one_of_equal_size_is_refused(models, checkpoints, tmp_path, monkeypatch):
    first, second = checkpoints
    checkpoint = tmp_path / "model_fastesm650_300.pth"
    shutil.copy(first, checkpoint)
    output = tmp_path / "out"
    interrupt_after(monkeypatch, shards, "score_shard", 2)      # after two shards
    with pytest.raises(KeyboardInterrupt):
        prediction.main(sample_args(models, output, checkpoint=str(checkpoint)))
    monkeypatch.undo()
    shutil.copy(second, checkpoint)                                   # retrained to the same path
    with pytest.raises(InputError, match="holds a run with other settings \\(classifier\\)"):
        prediction.main(sample_args(models, output, checkpoint=str(checkpoint)))
    assert prediction.main(sample_args(models, output, "--overwrite", checkpoint=str(checkpoint))) == 0
    clean = tmp_path / "clean"
    assert prediction.main(sample_args(models, clean, checkpoint=second)) == 0
    assert results(output) == results(clean)


def change_in_place_keeping_size_and_time(path, offset):
    """What ``cp -p``, ``rsync -a`` or an edit followed by ``touch -r`` leave: other bytes, same size and time."""
    stat = os.stat(path)
    time.sleep(0.02)                                    # past the file system's clock tick: a new change time
    with open(path, "r+b") as handle:
        handle.seek(offset)
        byte = handle.read(1)
        handle.seek(offset)
        handle.write(bytes([byte[0] ^ 0x40]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (stat.st_size, stat.st_mtime_ns)


def test_a_resume_with_weights_changed_in_place_is_refused(models, tmp_path, monkeypatch):
    protein = tmp_path / "fastesm"
    shutil.copytree(models["protein"], protein)
    args = sample_args(models, tmp_path / "out")
    args[args.index("--protein-model") + 1] = str(protein)
    interrupt_after(monkeypatch, shards, "score_shard", 1)
    with pytest.raises(KeyboardInterrupt):
        prediction.main(args)
    monkeypatch.undo()
    change_in_place_keeping_size_and_time(protein / "model.safetensors", os.path.getsize(protein / "model.safetensors")
                                          - 10)        # a weight's byte, not the header
    with pytest.raises(InputError, match="holds a run with other settings \\(protein_model\\)"):
        prediction.main(args)


def test_models_are_identified_by_the_content_of_the_files_their_loader_reads(tiny_models, tmp_path):
    folder, copy = tmp_path / "dnabert", tmp_path / "elsewhere"
    shutil.copytree(tiny_models["dna"], folder)
    (folder / "notes.md").write_text("not part of the model")
    identity = model_identity(str(folder))
    assert {"config.json", "pytorch_model.bin", "tokenizer.json"} <= set(identity) and "notes.md" not in identity
    shutil.copytree(folder, copy)
    assert model_identity(str(copy)) == identity                     # content, not place or time
    change_in_place_keeping_size_and_time(folder / "tokenizer.json", 100)
    changed = model_identity(str(folder))
    assert changed["tokenizer.json"] != identity["tokenizer.json"] and changed["pytorch_model.bin"] == \
        identity["pytorch_model.bin"]


# ------------------------------------------------------------ one writer, pipes, killed runs
def start_run_on_a_pipe(models, output, fifo):
    """prediction.py in a subprocess, reading a FIFO nobody writes yet: it
    takes the output folder and waits for its input."""
    os.mkfifo(fifo)
    process = subprocess.Popen([sys.executable, str(ROOT / "prediction.py"), *sample_args(models, output,
                                input_fasta=fifo)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for _ in range(600):
        if (output / LOCK_FILE).exists() or process.poll() is not None:
            break
        time.sleep(0.05)
    assert (output / LOCK_FILE).exists(), process.communicate()
    return process


def feed(fifo, content):
    """Write ``content`` into a FIFO, as far as its reader reads."""
    with contextlib.suppress(BrokenPipeError), open(fifo, "wb") as pipe:
        pipe.write(content)


@pytest.fixture(scope="module")
def clean_sample_run(models, tmp_path_factory):
    output = tmp_path_factory.mktemp("clean") / "out"
    assert prediction.main(sample_args(models, output)) == 0
    return output


def test_a_second_run_is_refused_while_the_first_reads_a_pipe_and_finishes(models, clean_sample_run, tmp_path):
    output, fifo = tmp_path / "out", tmp_path / "reads.fifo"
    first = start_run_on_a_pipe(models, output, fifo)
    with pytest.raises(InputError, match=f"is in use by another run \\(pid {first.pid} on "):
        prediction.main(sample_args(models, output))
    feed(fifo, SAMPLE.read_bytes())
    _, stderr = first.communicate(timeout=300)
    assert first.returncode == 0, stderr
    assert results(output) == results(clean_sample_run)
    assert sorted(p.name for p in output.iterdir()) == sorted([*outputs.RESULT_FILES, "run.json"])


def test_a_killed_run_leaves_a_lock_that_the_next_run_takes_over(models, clean_sample_run, tmp_path, caplog):
    output, fifo = tmp_path / "out", tmp_path / "reads.fifo"
    killed = start_run_on_a_pipe(models, output, fifo)
    writer = threading.Thread(target=feed, args=(fifo, SAMPLE.read_bytes()[:300]), daemon=True)
    writer.start()                                      # part of the input, then the run dies
    time.sleep(0.5)
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert (output / LOCK_FILE).exists()
    assert prediction.main(sample_args(models, output)) == 0
    assert "taking over the lock of a run that ended without releasing it" in caplog.text
    assert results(output) == results(clean_sample_run)
    assert not (output / LOCK_FILE).exists() and not any((output / spool).exists() for spool in outputs.SPOOLS)


def test_an_interrupted_run_resumes_to_identical_outputs(models, clean_sample_run, tmp_path, monkeypatch):
    output = tmp_path / "out"
    calls = interrupt_after(monkeypatch, shards, "score_shard", 2)
    with pytest.raises(KeyboardInterrupt):
        prediction.main(sample_args(models, output))
    assert not any((output / name).exists() for name in outputs.RESULT_FILES)       # no partial results
    assert len(list((output / "shards").glob("*/chunks.tsv"))) == 2                    # two shards finished
    calls.clear()
    assert prediction.main(sample_args(models, output)) == 0
    assert len(calls) == 2                                   # shards 3 and 4 only (4 shards in all)
    assert results(output) == results(clean_sample_run)


def test_shard_files_written_in_the_background_give_the_same_results(models, clean_sample_run, tmp_path,
                                                                     monkeypatch):
    """On a GPU the shards' files are written by a background thread while the device scores the next shard:
    forced here on the CPU, the results are byte for byte those of writing them in line."""
    threads, write, writer = [], shards.write_shard, shards.ShardWriter

    def recorded(*args):
        threads.append(threading.current_thread().name)
        write(*args)

    monkeypatch.setattr(shards, "write_shard", recorded)
    monkeypatch.setattr(shards, "ShardWriter", lambda background: writer(background=True))
    assert prediction.main(sample_args(models, tmp_path / "out")) == 0
    assert len(threads) == 4 and all(name.startswith("shard-files") for name in threads)
    assert results(tmp_path / "out") == results(clean_sample_run)


def test_an_error_of_a_background_write_stops_the_run_at_the_next_shard(tmp_path, monkeypatch):
    written = []

    def write_shard(number):
        if number == 2:
            raise OSError(28, "No space left on device", str(tmp_path))
        written.append(number)

    monkeypatch.setattr(shards, "write_shard", write_shard)
    with pytest.raises(OSError, match="No space left"):
        with shards.ShardWriter(background=True) as writer:
            for number in range(1, 6):
                writer.write(number)
    assert written == [1]


def test_input_through_a_pipe_gives_the_file_results(models, clean_sample_run, tmp_path):
    fifo = tmp_path / "reads.fifo"
    os.mkfifo(fifo)
    writer = threading.Thread(target=feed, args=(fifo, SAMPLE.read_bytes()), daemon=True)
    writer.start()
    assert prediction.main(sample_args(models, tmp_path / "out", input_fasta=fifo)) == 0
    assert results(tmp_path / "out") == results(clean_sample_run)
    with pytest.raises(InputError, match="input from a pipe needs an output folder; give -o"):
        args = sample_args(models, tmp_path / "unused", input_fasta=fifo)
        del args[args.index("-o"):args.index("-o") + 2]
        prediction.main(args)


# ------------------------------------------------------------ an input changed while the run goes
def other_first_id(text):
    return text.replace(">NC_029549.1_chunk_2R2", ">NC_000001.1_chunk_2R2", 1)


def other_first_sequence(text):
    lines = text.splitlines()
    lines[1] = lines[1][::-1]                                # same id, same length, another sequence
    return "\n".join(lines) + "\n"


def one_more_record(text):
    return text + ">late_record\n" + "ACGT" * 100 + "\n"


@pytest.mark.parametrize("change, words", [
    (other_first_id, "record 1 is now 'NC_000001.1_chunk_2R2' (298 bp), where the run scored "
                     "'NC_029549.1_chunk_2R2' (298 bp)"),
    (other_first_sequence, "record 1, 'NC_029549.1_chunk_2R2', now holds another sequence than the one the run "
                           "scored"),
    (one_more_record, "record 11, 'late_record', is new"),
])
def test_an_input_replaced_during_the_run_stops_with_one_line(models, tmp_path, monkeypatch, change, words):
    """Replaced by rename between the scoring and the assembly, as sed -i, rsync or a re-download do:
    the assembly stops with one line and writes no result file, never files that name other records."""
    reads = tmp_path / "reads.fasta"
    shutil.copy(SAMPLE, reads)
    assemble = assembly.write_outputs

    def replaced_first(*args, **kwargs):
        (tmp_path / "fresh.fasta").write_text(change(SAMPLE.read_text()))
        os.replace(tmp_path / "fresh.fasta", reads)
        return assemble(*args, **kwargs)

    monkeypatch.setattr(assembly, "write_outputs", replaced_first)
    output = tmp_path / "out"
    with pytest.raises(InputError) as error:
        prediction.main(sample_args(models, output, input_fasta=reads))
    message = str(error.value)
    assert message.startswith(f"{reads}: the input changed during the run: {words}") and "\n" not in message
    assert "--overwrite" in message
    assert not [name for name in os.listdir(output) if name not in ("run.json", "shards")]
    assert json.loads((output / "run.json").read_text())["status"] == "running"


@pytest.mark.parametrize("action, words", [
    (lambda reads, output: reads.unlink(), "reads.fasta: deleted during the run; put it back"),
    (lambda reads, output: reads.write_text(one_more_record(reads.read_text())),
     "reads.fasta: the input changed during the run ("),
    (lambda reads, output: shutil.rmtree(output), "out: the output folder (or its shards/) was deleted or moved "
                                                  "during the run; run the same command again to start over"),
])
def test_what_happens_to_the_files_during_the_scoring_stops_it_at_once(models, tmp_path, monkeypatch, action, words):
    """An input deleted or appended to, or the output folder deleted, stops the run before the next shard."""
    reads, output = tmp_path / "reads.fasta", tmp_path / "out"
    shutil.copy(SAMPLE, reads)
    scored, score = [], shards.score_shard

    def scoring(shard, *args):
        scored.append(shard.folder)
        scores = score(shard, *args)
        if len(scored) == 1:
            action(reads, output)
        return scores

    monkeypatch.setattr(shards, "score_shard", scoring)
    with pytest.raises(InputError) as error:
        prediction.main(sample_args(models, output, input_fasta=reads))
    assert words in str(error.value) and len(scored) == 1


def test_the_temporary_files_of_a_killed_assembly_are_gone_after_the_rerun(models, clean_sample_run, tmp_path,
                                                                            monkeypatch):
    output = tmp_path / "out"
    interrupt_after(monkeypatch, assembly, "write_outputs", 0)
    with pytest.raises(KeyboardInterrupt):
        prediction.main(sample_args(models, output))
    monkeypatch.undo()
    left = [output / f".{name}.x7k2p9.tmp" for name in (*outputs.RESULT_FILES, outputs.RUN_FILE)]
    for path in left:                                   # what SIGKILL would have left mid-assembly
        path.write_text("half")
    (output / "notes.tmp").write_text("the user's")
    assert prediction.main(sample_args(models, output)) == 0
    assert not any(path.exists() for path in left) and (output / "notes.tmp").exists()
    assert results(output) == results(clean_sample_run)


# ------------------------------------------------------------ SIGTERM and a full disk: one line, and a rerun resumes
GOLDEN_INPUT = ROOT / "tests/data/golden/prediction/input.fasta"     # 377 chunks: 8 shards of 50


def golden_args(models, output):
    args = predict_args(models, output, input_fasta=GOLDEN_INPUT)
    args[args.index("--chunks-per-shard") + 1] = "50"
    return args


def start_run(models, output):
    return subprocess.Popen([sys.executable, str(ROOT / "prediction.py"), *golden_args(models, output)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_shards(output, count, process, seconds=300):
    for _ in range(int(seconds / 0.05)):
        if len(list(output.glob("shards/*/chunks.tsv"))) >= count or process.poll() is not None:
            return
        time.sleep(0.05)


@pytest.fixture(scope="module")
def clean_golden_run(models, tmp_path_factory):
    output = tmp_path_factory.mktemp("clean_golden") / "out"
    assert prediction.main(golden_args(models, output)) == 0
    return output


@pytest.mark.slow
def test_sigterm_releases_the_folder_and_the_run_resumes(models, clean_golden_run, tmp_path):
    """What SLURM sends at a time limit and on scancel: handled as Ctrl-C is."""
    output = tmp_path / "out"
    run = start_run(models, output)
    wait_for_shards(output, 2, run)
    run.send_signal(signal.SIGTERM)
    _, stderr = run.communicate(timeout=120)
    assert run.returncode == 143, stderr[-2000:]
    assert stderr.strip().splitlines()[-1].startswith("terminated (SIGTERM); run the same command again")
    assert not (output / LOCK_FILE).exists() and not (output / "prediction_summary.tsv").exists()
    assert 2 <= len(list(output.glob("shards/*/chunks.tsv"))) < 8
    assert prediction.main(golden_args(models, output)) == 0
    assert results(output) == results(clean_golden_run)


@pytest.fixture
def small_disk(tmp_path):
    """A 4-MB file system of its own (root, and the right to mount, are needed; else the test is skipped)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    folder = tmp_path / "disk"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)],
                      capture_output=True).returncode != 0:
        pytest.skip("this machine does not let tests mount a tmpfs")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_disk_too_small_for_the_spool_of_a_pipe_names_the_output_folder(models, small_disk, tmp_path, cli):
    fifo, output = tmp_path / "reads.fifo", small_disk / "out"
    os.mkfifo(fifo)
    reads = "".join(f">r{k}\n{'ACGT' * 60}\n" for k in range(20_000)).encode()      # 5 MB, the disk 4 MB
    writer = threading.Thread(target=feed, args=(fifo, reads), daemon=True)
    writer.start()
    status, stderr = cli("prediction", sample_args(models, output, input_fasta=fifo))
    assert status == 2 and "Traceback" not in stderr
    assert stderr.strip().splitlines()[-1].startswith(f"error: {output}: no space left on its disk")
    assert not any((output / spool).exists() for spool in outputs.SPOOLS)


@pytest.mark.slow
def test_a_disk_that_fills_during_the_run_is_one_line_and_the_run_resumes(models, clean_golden_run, small_disk):
    output, filler = small_disk / "out", small_disk / "filler"
    run = start_run(models, output)
    wait_for_shards(output, 1, run)
    with open(filler, "wb") as handle:                   # someone else fills the disk
        with contextlib.suppress(OSError):
            while True:
                handle.write(bytes(1 << 16))
                handle.flush()
    _, stderr = run.communicate(timeout=300)
    lines = stderr.strip().splitlines()
    assert run.returncode == 2 and "Traceback" not in stderr, stderr[-3000:]
    assert lines[-1].startswith("error: ") and "no space left on its disk" in lines[-1], lines[-1]
    assert "run the same command again" in lines[-1]
    assert not (output / LOCK_FILE).exists() and not (output / "prediction_summary.tsv").exists()
    filler.unlink()
    assert prediction.main(golden_args(models, output)) == 0
    assert results(output) == results(clean_golden_run)
