import csv
import importlib
import logging
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpers.models import TINY_DNABERT, TINY_ESM2_3B, TINY_FASTESM, save_classifier, tiny_model_folders  # noqa: F401
from virnucpro.commands.cli import run_cli
from virnucpro.prediction import outputs

# The tests never touch the network: models are tiny ones the tests build.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
# and never see a models folder of the user's: each test run starts from an empty one
os.environ["VIRNUCPRO_MODELS"] = tempfile.mkdtemp(prefix="virnucpro-test-models-")

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
GOLDEN = DATA / "golden"
ARCH_TINY = DATA / "arch_tiny"        # tiny models in the published layouts, with the reference code's outputs


def pytest_report_header(config):
    import torch
    import transformers
    return f"torch {torch.__version__}, transformers {transformers.__version__}"


def run_script(script, *args, cwd=None, timeout=300):
    """Run one of the project's scripts as a user would; return the completed process."""
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    return subprocess.run([sys.executable, str(ROOT / script), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture
def write_file(tmp_path):
    def write(name, text, mode="w"):
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, mode) as handle:
            handle.write(text)
        return path
    return write


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Folders of tiny random models of the real widths, in the published layouts
    (DNABERT-S's config, key names and tokenizer form; FastESM2_650's and ESM2-3B's)."""
    return tiny_model_folders(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def models(tiny_models, tmp_path_factory):
    """The tiny models plus a FastESM2_650 classifier for 300-bp chunks, as train_fastesm.py saves one."""
    checkpoint = save_classifier(tmp_path_factory.mktemp("models") / "model_fastesm650_300.pth")
    return {**tiny_models, "checkpoint": checkpoint}


def predict_args(models, output_dir, *extra, input_fasta=GOLDEN / "prediction/input.fasta", checkpoint=None):
    """prediction.py's arguments for a CPU run on the tiny models."""
    return [str(input_fasta), "300", checkpoint or models["checkpoint"], "-o", str(output_dir), "--device", "cpu",
            "--dna-model", models["dna"], "--protein-model", models["protein"], "--chunks-per-shard", "100", *extra]


@pytest.fixture
def cuda_machine(monkeypatch):
    """``cuda_machine(n)`` makes torch see n CUDA GPUs on this CPU build and returns the list of the GPU
    indices made current. Only the lowest calls stand in (the CUDA runtime's device count and set-device,
    NVML's count), each refusing what the real one refuses, so torch's own Python code runs as on a GPU."""
    def machine(count: int) -> list[int]:
        import torch
        made_current = []

        def set_device(index):
            if not isinstance(index, int) or isinstance(index, bool):
                raise TypeError(f"invalid argument to setDevice: {index!r}")
            if not 0 <= index < count:
                raise RuntimeError("CUDA error: invalid device ordinal")
            made_current.append(index)

        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        monkeypatch.setattr(torch._C, "_cuda_getDeviceCount", lambda: count, raising=False)
        monkeypatch.setattr(torch._C, "_cuda_setDevice", set_device, raising=False)
        monkeypatch.setattr(torch.cuda, "_raw_device_count_nvml", lambda: count)
        return made_current
    return machine


def interrupt_after(monkeypatch, module, name, calls):
    """Make ``<module>.<name>`` stop the run (as Ctrl-C would) at its ``calls + 1``-th call, once; return the
    arguments of every call made through it, so that a test can count what the resumed run redoes."""
    original, made, stopped = getattr(module, name), [], []

    def interrupted(*args, **kwargs):
        made.append(args)
        if len(made) == calls + 1 and not stopped:
            stopped.append(True)
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)
    return made


def read_tsv(path):
    """A result table's rows, as dicts by column name."""
    with open(path) as handle:
        return list(csv.DictReader(handle, delimiter="\t"))


def result_bytes(folder):
    """A run's result files (and its pairs table, when it has one), by name."""
    pairs = folder / outputs.PAIRS_FILE
    return {name: (folder / name).read_bytes() for name in outputs.RESULT_FILES} | \
        ({outputs.PAIRS_FILE: pairs.read_bytes()} if pairs.exists() else {})


def fastq(records, quality="I"):
    """FASTQ text of (title, sequence) records, every base of one quality."""
    return "".join(f"@{title}\n{sequence}\n+\n{quality * len(sequence)}\n" for title, sequence in records)


@pytest.fixture
def cli(capsys, monkeypatch):
    """Run a script's main (``cli("prediction", args)``) through the real command-line runner, from the
    repository's folder; return its exit status and standard error."""
    logger = logging.getLogger("virnucpro")
    saved = logger.handlers[:], logger.propagate, logger.level
    monkeypatch.chdir(ROOT)

    def run(script, args):
        module = importlib.import_module(script)
        with pytest.raises(SystemExit) as exit_status:
            run_cli(lambda _: module.main(args))
        return exit_status.value.code, capsys.readouterr().err

    yield run
    logger.handlers[:], logger.propagate, logger.level = saved
