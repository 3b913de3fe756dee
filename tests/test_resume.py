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
from virnucpro.models.modelfiles import model_fingerprint
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


def test_a_model_folder_whose_weights_changed_is_refused(models, tmp_path, monkeypatch):
    from safetensors.torch import load_file, save_file

    protein = tmp_path / "fastesm"
    shutil.copytree(models["protein"], protein)
    args = sample_args(models, tmp_path / "out")
    args[args.index("--protein-model") + 1] = str(protein)
    interrupt_after(monkeypatch, shards, "score_shard", 1)
    with pytest.raises(KeyboardInterrupt):
        prediction.main(args)
    monkeypatch.undo()
    weights = load_file(protein / "model.safetensors")
    weights["esm.encoder.layer.0.output.dense.bias"] += 0.5
    save_file(weights, protein / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match="holds a run with other settings \\(protein_model\\)"):
        prediction.main(args)


def test_models_are_identified_by_snapshot_commit_or_by_their_files(tmp_path):
    snapshot = tmp_path / "models--x--y" / "snapshots" / ("0123456789abcdef" * 3)[:40]
    snapshot.mkdir(parents=True)
    assert model_fingerprint(str(snapshot)) == {"snapshot": ("0123456789abcdef" * 3)[:40]}
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "notes.md").write_text("not part of the model")
    fingerprint = model_fingerprint(str(folder))
    assert list(fingerprint["files"]) == ["config.json"]
    os.utime(folder / "config.json", ns=(1, 1))
    assert model_fingerprint(str(folder)) != fingerprint


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
    with open(fifo, "wb") as pipe:
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
