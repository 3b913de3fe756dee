"""Classifier checkpoints: the weights with metadata saying what they were
trained on (pipeline, chunk length, encoder precision), read by a
weights-only reader (the published whole-model pickles too, admitting only
the MLP's layers), every tensor checked; where prediction finds a classifier
by default, and installing one there.

The network itself is the card's ``units.MLPClassifier``: functions here take
the state it expects (``expected_state(input_dim, hidden_dim)``)."""
from __future__ import annotations

import contextlib
import datetime
import os
import shutil
import warnings
from typing import Callable

import numpy as np
import torch

from virnucpro import __version__
from virnucpro.errors import InputError
from virnucpro.files import atomic_write, git_blob_sha1, save_tensors
from virnucpro.log import logger
from virnucpro.models.loaders import PIPELINES
from virnucpro.models.pins import CLASSIFIERS, DNA_DIM, PUBLISHED_BY_BLOB, models_dir
from virnucpro.scoring.calibration import calibration_path, evaluation_path
from virnucpro.scoring.calls import NUM_CLASSES

CHECKPOINT_VERSION = "2.0.0"
HIDDEN_DIM = 512


def _library_versions() -> dict:
    import platform

    import transformers
    return {"virnucpro": __version__, "python": platform.python_version(), "torch": str(torch.__version__),
            "transformers": transformers.__version__, "numpy": np.__version__}


def checkpoint_metadata(hidden_dim: int, num_classes: int, pipeline: str = "fastesm650",
                        chunk_length: int | None = None, encoder_precision: dict | None = None, **training) -> dict:
    """What identifies a classifier: the pipeline, the chunk length of its training frames, the dtypes the
    encoders ran in to make its features, its shape, date and library versions; ``training`` adds details."""
    spec = PIPELINES[pipeline]
    return {
        "checkpoint_version": CHECKPOINT_VERSION,
        "embedding_model": pipeline,
        "protein_model": spec.protein.hub_id,
        "chunk_length": chunk_length,
        "encoder_precision": encoder_precision,
        "dna_dim": DNA_DIM, "protein_dim": spec.protein.dim, "merged_dim": spec.input_dim,
        "hidden_dim": hidden_dim, "num_classes": num_classes,
        "training_date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "library_versions": _library_versions(),
        **training,
    }


def write_checkpoint(state: dict[str, torch.Tensor], metadata: dict, path) -> None:
    """Save weights and metadata (atomically); a calibration or an evaluation record beside ``path`` belonged
    to the classifier this one replaces, and is removed."""
    save_tensors({"state_dict": state, "metadata": metadata}, path)
    for stale in (calibration_path(path), evaluation_path(path)):
        with contextlib.suppress(FileNotFoundError):
            os.remove(stale)


def default_classifier(chunk_length: int, models: str | None = None) -> tuple[str, str, str]:
    """``(checkpoint, pipeline, why)`` when no checkpoint is given: the
    FastESM2_650 classifier installed for ``chunk_length`` if there is one,
    else the published ESM2-3B one fetched by scripts/fetch_models.py."""
    folder = os.path.join(models_dir(models), CLASSIFIERS)
    ours = os.path.join(folder, f"model_fastesm650_{chunk_length}.pth")
    if os.path.exists(ours):
        return ours, "fastesm650", f"the FastESM2_650 classifier installed for {chunk_length}-bp chunks"
    published = {item.chunk_length: item for item in PUBLISHED_BY_BLOB.values()}[chunk_length]
    if os.path.exists(os.path.join(folder, published.file)):
        return (os.path.join(folder, published.file), "esm2_3b",
                f"no FastESM2_650 classifier is installed for {chunk_length}-bp chunks, so the published ESM2-3B "
                "one is used (train_fastesm.py --install installs yours)")
    raise InputError(f"no classifier for {chunk_length}-bp chunks in {folder}; run `python scripts/fetch_models.py` "
                     "to fetch the published ones, install one trained with train_fastesm.py --install, or give "
                     "a checkpoint")


def install_classifier(checkpoint: str, chunk_length: int, models: str | None = None) -> str:
    """Copy a trained FastESM2_650 classifier, and its calibration and evaluation record if it has them, to
    where prediction.py finds them by default."""
    target = os.path.join(models_dir(models), CLASSIFIERS, f"model_fastesm650_{chunk_length}.pth")
    for source_path, target_path in ((checkpoint, target), (calibration_path(checkpoint), calibration_path(target)),
                                     (evaluation_path(checkpoint), evaluation_path(target))):
        if not os.path.exists(source_path):
            with contextlib.suppress(FileNotFoundError):
                os.remove(target_path)              # the replaced classifier's
            continue
        with open(source_path, "rb") as source, atomic_write(target_path, "wb") as out:
            shutil.copyfileobj(source, out)
    return target


TRAINED_DIR = "data"          # where train_fastesm.py writes its classifiers, and evaluation looks for them


def default_checkpoint_path(given: str | None, chunk_length: int | None, pipeline: str = "fastesm650") -> str:
    """``given`` itself, or ``model_<pipeline>_<length>.pth`` in it when it is a folder (or ends with a
    slash), or in ``data/`` when not given."""
    if given is not None and not (os.path.isdir(given) or given.endswith(os.sep)):
        return given
    if chunk_length is None:
        raise InputError("the features do not record their chunk length, so the classifier's name is unknown; "
                         "give the checkpoint's path")
    return os.path.join(TRAINED_DIR if given is None else given, f"model_{pipeline}_{chunk_length}.pth")


class _PublishedMLP(torch.nn.Module):
    """Receives the state of a published whole-model pickle; never runs."""


_PUBLISHED_PICKLE_GLOBALS = [(_PublishedMLP, "__main__.MLPClassifier"), torch.nn.Linear,
                             torch.nn.BatchNorm1d, torch.nn.Dropout, set]

def read_checkpoint(path) -> tuple[dict, dict | None]:
    """``(state_dict, metadata or None)``. A published whole-model pickle is
    read with torch's weights-only unpickler, admitting only the MLP and
    tensors: no code in the file runs."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(f"{path}: is a folder, not a checkpoint file; give the path of the .pth file")
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such checkpoint file; leave it out to use the installed classifier "
                         "(`python scripts/fetch_models.py` fetches the published ones), or train one with "
                         "train_fastesm.py")
    if os.path.getsize(path) == 0:
        raise InputError(f"{path}: the checkpoint file is empty (0 bytes): it was not written or copied "
                         "completely; copy or train it again")
    if _is_safetensors(path):
        raise InputError(f"{path}: a safetensors file (a language model's weights, say), not a VirNucPro "
                         "classifier; give a classifier checkpoint saved by train_fastesm.py")
    try:
        with torch.serialization.safe_globals(_PUBLISHED_PICKLE_GLOBALS), warnings.catch_warnings():
            # published checkpoints use pickle protocol 4, which the weights-only reader handles
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            content = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except Exception as error:
        # torch's own message suggests weights_only=False, which would let the file run code: never echo it
        if "unsupported global" in str(error).lower():
            raise InputError(f"{path}: not a VirNucPro checkpoint: it holds Python objects other than weights, "
                             "which are refused because loading them could run code") from None
        raise InputError(f"{path}: not a VirNucPro checkpoint, or a corrupt or truncated one (torch cannot "
                         "read it as weights); copy or train it again") from None
    if isinstance(content, torch.nn.Module):
        state, metadata = content.state_dict(), None
    elif isinstance(content, dict) and "state_dict" in content and "metadata" in content:
        state, metadata = content["state_dict"], content["metadata"]
        if not isinstance(metadata, dict):
            raise InputError(f"{path}: not a VirNucPro checkpoint (its metadata is not a table)")
    else:
        state, metadata = content, None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise InputError(f"{path}: not a VirNucPro checkpoint (no classifier weights in it)")
    return state, metadata


def _is_safetensors(path: str) -> bool:
    """A safetensors file begins with the length of its JSON header, then the header."""
    try:
        with open(path, "rb") as handle:
            start = handle.read(9)
    except OSError:
        return False                            # torch.load says what is wrong
    return len(start) == 9 and start[8:9] == b"{" and int.from_bytes(start[:8], "little") < os.path.getsize(path)


def checkpoint_pipeline(state: dict, metadata: dict | None) -> str:
    """Which embedding pipeline a checkpoint was trained for."""
    if metadata is not None:
        return metadata.get("embedding_model", "unknown")
    weight = state.get("hidden_layer.weight")
    if weight is not None and weight.dim() == 2 and weight.shape[1] == PIPELINES["esm2_3b"].input_dim:
        return "esm2_3b"
    return "unknown"


def check_pipeline(path: str, pipeline: str, trained_for: str, metadata: dict | None) -> None:
    if pipeline not in PIPELINES:
        raise InputError(f"unknown pipeline {pipeline!r}; choose one of {', '.join(PIPELINES)}")
    if trained_for == pipeline:
        return
    if trained_for == "esm2_3b":
        hint = ("it is an ESM2-3B checkpoint (3328-d features, like the published 300_model.pth / "
                "500_model.pth); run it with --pipeline esm2_3b, or use a FastESM2_650 checkpoint "
                "trained with train_fastesm.py")
    elif metadata is None:
        hint = "it has no metadata, so what it was trained on is unknown; use a checkpoint saved by train_fastesm.py"
    else:
        hint = f"it was trained for the {trained_for} pipeline; run it with --pipeline {trained_for}"
    raise InputError(f"{path}: cannot be used by the {pipeline} pipeline: {hint}")


def check_classifier_state(path: str, state: dict, input_dim: int, pipeline: str,
                           expected_state: Callable[[int, int], dict]) -> None:
    """The tensors of the classifier ``expected_state(input_dim, hidden_dim)`` describes: 2 classes, the
    pipeline's input width, finite values."""
    weight = state.get("hidden_layer.weight")
    if weight is not None and weight.dim() != 2:
        raise InputError(f"{path}: the classifier's hidden_layer.weight is {tuple(weight.shape)} where the "
                         f"{pipeline} pipeline needs ({HIDDEN_DIM}, {input_dim}); the checkpoint is damaged or "
                         "not a VirNucPro classifier")
    if weight is not None and weight.shape[1] != input_dim:
        raise InputError(f"{path}: the classifier has {weight.shape[1]}-d input; the {pipeline} pipeline "
                         f"needs {input_dim}-d input")
    hidden = weight.shape[0] if weight is not None else HIDDEN_DIM
    output = state.get("output_layer.weight")
    if output is not None and output.dim() == 2 and output.shape[0] != NUM_CLASSES:
        raise InputError(f"{path}: the classifier has {output.shape[0]} output classes; VirNucPro classifiers "
                         f"have {NUM_CLASSES} (others, virus)")
    expected = expected_state(input_dim, hidden)
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    if missing or unexpected:
        raise InputError(f"{path}: the weights do not fit the VirNucPro classifier ("
                         + "; ".join(f"{what}: {', '.join(keys[:4])}" for what, keys in
                                     (("missing", missing), ("unexpected", unexpected)) if keys) + ")")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise InputError(f"{path}: the weights do not fit the VirNucPro classifier ({key} is "
                             f"{tuple(state[key].shape)}, expected {tuple(tensor.shape)})")
        if state[key].is_floating_point() and not torch.isfinite(state[key]).all():
            raise InputError(f"{path}: the classifier's {key} holds NaN or infinite values; the checkpoint is "
                             "damaged or its training diverged; use another checkpoint")


def check_chunk_length(path: str, metadata: dict | None, chunk_length: int) -> None:
    """Refuse a classifier trained on chunks of another length; warn when unknown."""
    published = PUBLISHED_BY_BLOB.get(git_blob_sha1(path)) if metadata is None else None
    trained = metadata.get("chunk_length") if metadata is not None else published and published.chunk_length
    if trained is None:
        logger.warning(f"{path}: the checkpoint does not record the chunk length it was trained on; make sure "
                       f"it is a {chunk_length}-bp classifier")
    elif trained != chunk_length:
        raise InputError(f"{path}: the classifier was trained on {trained}-bp chunks, not {chunk_length}-bp; "
                         f"run with {trained}, or use a {chunk_length}-bp classifier")


def read_classifier(path, pipeline: str | None, chunk_length: int | None,
                    expected_state: Callable[[int, int], dict]) -> tuple[dict, dict, str]:
    """``(state, metadata, pipeline)`` of a classifier checkpoint, checked for ``pipeline`` (default: the one
    its metadata names) and, when given, ``chunk_length``.

    The FastESM2_650 pipeline accepts only checkpoints whose metadata says
    ``fastesm650``: it refuses the published ``300_model.pth`` /
    ``500_model.pth`` (whole pickled models for ESM2-3B features, 3328-d),
    files without metadata and anything 3328-d. The ``esm2_3b`` pipeline runs
    those published checkpoints. Any file that is not a two-class classifier
    of the pipeline's width with finite weights is refused in one line; with
    ``chunk_length``, so is a classifier trained on chunks of another length.
    """
    path = os.fspath(path)
    state, metadata = read_checkpoint(path)
    if metadata is not None and not isinstance(metadata.get("embedding_model", ""), str):
        raise InputError(f"{path}: not a VirNucPro checkpoint (its metadata's embedding_model is "
                         f"{metadata['embedding_model']!r}, not a pipeline name)")
    trained_for = checkpoint_pipeline(state, metadata)
    pipeline = pipeline or (trained_for if metadata is not None else "fastesm650")
    check_pipeline(path, pipeline, trained_for, metadata)
    check_classifier_state(path, state, PIPELINES[pipeline].input_dim, pipeline, expected_state)
    if chunk_length is not None:
        check_chunk_length(path, metadata, chunk_length)
    # the published classifiers were trained on features of fp32 encoders
    metadata = metadata or {"embedding_model": pipeline, "checkpoint_version": "published",
                            "encoder_precision": {"dna": "float32", "protein": "float32"}}
    return state, metadata, pipeline
