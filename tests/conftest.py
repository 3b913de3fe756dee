import os
import subprocess
import tempfile
import sys
from pathlib import Path

import pytest

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


def load_script(script):
    """Import one of the project's scripts as a module (for its functions)."""
    import importlib.util
    path = ROOT / script
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module          # dataclasses and pickling look modules up by name
    spec.loader.exec_module(module)
    return module


TINY_DNABERT = (768, 2, 12, 64)      # DNABERT-S's output width, tiny depth: (hidden, layers, heads, ffn)
TINY_FASTESM = (1280, 2, 4, 64)      # FastESM2_650's width
TINY_ESM2_3B = (2560, 1, 4, 32)      # ESM2-3B's width


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Folders of tiny random models of the real widths, in the published layouts
    (DNABERT-S's config, key names and tokenizer form; FastESM2_650's and ESM2-3B's)."""
    bench = load_script("scripts/benchmark_extraction.py")
    root = tmp_path_factory.mktemp("tiny_models")
    return {"dna": str(bench.save_random_dnabert(root / "dnabert", TINY_DNABERT, vocab_size=64)),
            "protein": str(bench.save_random_esm(root / "fastesm", TINY_FASTESM, fast_esm=True)),
            "esm2_3b": str(bench.save_random_esm(root / "esm2_3b", TINY_ESM2_3B))}


@pytest.fixture(scope="session")
def models(tiny_models, tmp_path_factory):
    """The tiny models plus a FastESM2_650 classifier for 300-bp chunks, as train_fastesm.py saves one."""
    import torch

    import units

    folder = tmp_path_factory.mktemp("models")
    torch.manual_seed(1)
    classifier = units.MLPClassifier(units.MERGED_DIM, units.HIDDEN_DIM, units.NUM_CLASSES)
    with torch.no_grad():                                   # spread the scores over both classes
        classifier.output_layer.bias[:] = torch.tensor([0.0, 0.3])
    units.save_checkpoint(classifier, folder / "model_fastesm650_300.pth", chunk_length=300, epochs=1)
    return {**tiny_models, "checkpoint": str(folder / "model_fastesm650_300.pth")}


def predict_args(models, output_dir, *extra, input_fasta=GOLDEN / "prediction/input.fasta", checkpoint=None):
    """prediction.py's arguments for a CPU run on the tiny models."""
    return [str(input_fasta), "300", checkpoint or models["checkpoint"], "-o", str(output_dir), "--device", "cpu",
            "--dna-model", models["dna"], "--protein-model", models["protein"], "--chunks-per-shard", "100", *extra]


def interrupt_after(monkeypatch, name, calls, module=None):
    """Make ``<module>.<name>`` (default: units) stop the run (as Ctrl-C would) when called for the
    ``calls + 1``-th time."""
    import units

    module = module or units
    original, made = getattr(module, name), []

    def interrupted(*args, **kwargs):
        made.append(1)
        if len(made) > calls:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(module, name, interrupted)
