"""Model folders: where a model is (a folder, the models folder, the Hugging
Face cache or the hub), what identifies its content, and its files read as
data (config as JSON, weights as tensors through a weights-only reader)."""
from __future__ import annotations

import contextlib
import json
import os
import pickle
from typing import Callable

import torch

from virnucpro.errors import InputError
from virnucpro.files import atomic_write, file_sha256
from virnucpro.models.pins import ModelSpec, models_dir

# Parameters outside the encoder, not used for embeddings, may be absent from a checkpoint.
_HEAD_PREFIXES = ("pooler.", "contact_head.")
# Only data: configs, tokenizer files and weights; never a *.py.
SNAPSHOT_FILES = ["*.json", "*.txt", "*.safetensors"]


def model_folder(spec: ModelSpec, model: str | None = None, models: str | None = None) -> str:
    """The local folder of a model: ``model`` itself when it is a folder; for
    the default model, its folder in the models folder (``models``) when
    scripts/fetch_models.py put it there; otherwise the Hugging Face snapshot
    of the id, from the local cache or downloaded (the default id at its
    pinned revision)."""
    if model is None and weight_files(os.path.join(models_dir(models), spec.key)):
        return os.path.join(models_dir(models), spec.key)
    model = model or spec.hub_id
    if os.path.isdir(model):
        return model
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise InputError(f"{spec.name}: {model} is neither a folder nor a Hugging Face id (owner/name); "
                         f"pass a model folder or id with {spec.option}")
    revision = spec.revision if model == spec.hub_id else None
    from huggingface_hub import constants, snapshot_download
    try:
        folder = snapshot_download(model, revision=revision, allow_patterns=SNAPSHOT_FILES)
        if not weight_files(folder):   # no safetensors: take the PyTorch checkpoint
            folder = snapshot_download(model, revision=revision, allow_patterns=SNAPSHOT_FILES + ["*.bin"])
    except OSError as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
        fix = (f"run `python scripts/fetch_models.py {spec.key}` where there is internet (or unpack a bundle "
               "made there with --from-bundle)") if model == spec.hub_id else \
            f"fetch it where there is internet with `huggingface-cli download {model}` and share the cache (HF_HOME)"
        raise InputError(
            f"{spec.name}: {model} is not in the models folder ({models_dir(models)}) nor in the Hugging Face "
            f"cache ({constants.HF_HUB_CACHE}), and the hub could not be reached ({reason}); {fix}, "
            f"or pass a model folder with {spec.option}") from None
    return folder


# What a loader reads besides the weights: the config and the tokenizer's files.
_READ_BESIDES_WEIGHTS = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                         "vocab.txt", "model.safetensors.index.json", "pytorch_model.bin.index.json")
# This process's memory of content hashes: (path, device, inode, size, modification and change time) -> SHA-256.
_HASHES: dict[tuple, str] = {}


def _stat_key(path: str) -> tuple:
    """What tells a file's content apart without reading it: any write changes its change time (ctime),
    which cp -p, rsync -a and touch -r cannot set back, even where they keep its size and modification time."""
    stat = os.stat(path)
    return os.path.abspath(path), stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns


def model_identity(folder: str) -> dict[str, str]:
    """A model folder's content: ``{file: SHA-256}`` of every file its loader reads (config, weights,
    tokenizer). Each file is read from disk once (the loader then finds it in the page cache) and hashed once
    in a process while it is unchanged."""
    files = [name for name in _READ_BESIDES_WEIGHTS if os.path.isfile(os.path.join(folder, name))]
    files += [os.path.basename(path) for path in weight_files(folder)]
    identity = {}
    for name in sorted(files):
        key = _stat_key(os.path.join(folder, name))
        if key not in _HASHES:
            _HASHES[key] = file_sha256(key[0])
        identity[name] = _HASHES[key]
    return identity


def weight_files(folder: str) -> list[str]:
    """The checkpoint files transformers loads from ``folder``, safetensors first; an index of them that
    cannot be read (half-written) is refused in one line."""
    for index, single in (("model.safetensors.index.json", "model.safetensors"),
                          ("pytorch_model.bin.index.json", "pytorch_model.bin")):
        index_path = os.path.join(folder, index)
        if os.path.exists(index_path):
            try:
                with open(index_path) as handle:
                    shards = sorted(set(json.load(handle)["weight_map"].values()))
            except PermissionError:
                raise InputError(f"{index_path}: permission denied") from None
            except (ValueError, UnicodeDecodeError, KeyError, TypeError, AttributeError):
                raise InputError(f"{index_path}: not a readable index of weight files (damaged, or written only "
                                 "in part); fetch the model again") from None
            return [os.path.join(folder, shard) for shard in shards]
        if os.path.exists(os.path.join(folder, single)):
            return [os.path.join(folder, single)]
    return []


def _weight_file(path: str) -> tuple[dict[str, Callable[[], torch.Tensor]], dict[str, tuple[int, ...]]]:
    """``(key -> loader of its tensor, key -> shape)`` of one weight file, reading tensors lazily; a file
    that is missing, unreadable, truncated or damaged, or that holds Python objects besides tensors (whose
    loading could run code), is refused in one line."""
    try:
        if path.endswith(".safetensors"):
            from safetensors import safe_open
            handle = safe_open(path, framework="pt")
            keys = list(handle.keys())
            return ({key: (lambda k=key: handle.get_tensor(k)) for key in keys},
                    {key: tuple(handle.get_slice(key).get_shape()) for key in keys})
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        return {key: (lambda t=tensor: t) for key, tensor in state.items()}, \
            {key: tuple(tensor.shape) for key, tensor in state.items()}
    except FileNotFoundError:
        raise InputError(f"{path}: missing (its folder's index lists it); fetch the model again") from None
    except PermissionError:
        raise InputError(f"{path}: permission denied") from None
    except pickle.UnpicklingError:
        raise InputError(f"{path}: holds Python objects besides tensors, which are refused because loading "
                         "them could run code; use the model's model.safetensors, or fetch it again") from None
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else error.__class__.__name__
        raise InputError(f"{path}: not readable as weights, truncated or damaged ({reason}); fetch the model "
                         "again") from None


def checkpoint_shapes(folder: str) -> dict[str, tuple[int, ...]]:
    """The shape of every tensor of a folder's weight files, from their headers."""
    return {key: shape for path in weight_files(folder) for key, shape in _weight_file(path)[1].items()}


def _checkpoint_tensors(folder: str) -> dict[str, Callable[[], torch.Tensor]]:
    """Checkpoint key -> loader of that tensor, reading lazily."""
    return {key: load for path in weight_files(folder) for key, load in _weight_file(path)[0].items()}


def verify_weights(spec: ModelSpec, model: torch.nn.Module, folder: str) -> None:
    """Stop unless every encoder parameter of ``model`` equals its tensor in the
    checkpoint files of ``folder``.

    Checked against the files themselves, not against the loader's report: a
    transformers release that initialises some weights randomly (reported for
    remote-code models on 5.x) must never produce embeddings silently.
    """
    checkpoint = _checkpoint_tensors(folder)
    prefix = getattr(model, "base_model_prefix", "")
    problems = []
    # a model that lays its tensors out otherwise than the checkpoint (ESM-2's joined qkv) says how they map
    mapped = getattr(model, "checkpoint_state", None)
    for name, parameter in mapped().items() if mapped else model.named_parameters():
        if name.startswith(_HEAD_PREFIXES):
            continue
        # transformers also loads old LayerNorm checkpoints that name weight/bias gamma/beta
        legacy = name.removesuffix(".weight") + ".gamma" if name.endswith(".weight") \
            else name.removesuffix(".bias") + ".beta"
        candidates = (name, f"{prefix}.{name}", legacy, f"{prefix}.{legacy}")
        key = next((k for k in candidates if k in checkpoint), None)
        if key is None:
            problems.append(f"{name} is not in the checkpoint")
        elif not torch.equal(parameter.detach().cpu(), checkpoint[key]().to(parameter.dtype)):
            problems.append(f"{name} differs from the checkpoint")
    if problems:
        raise InputError(
            f"{spec.name}: {len(problems)} encoder weights loaded from {folder} do not come from its checkpoint "
            f"(first: {problems[0]}); refusing to embed with random weights. Use the transformers version "
            f"pinned in pyproject.toml, or a model folder in the layout of {spec.hub_id}")


def read_config(spec: ModelSpec, folder: str) -> dict:
    """A model's ``config.json``, read as data (its ``auto_map`` is never followed)."""
    path = os.path.join(folder, "config.json")
    try:
        with open(path) as handle:
            config = json.load(handle)
    except FileNotFoundError:
        raise InputError(f"{spec.name}: {folder} is not a {spec.name} model folder (no config.json); "
                         f"point {spec.option} at a folder in the layout of {spec.hub_id}") from None
    except PermissionError:
        raise InputError(f"{spec.name}: {path}: permission denied") from None
    except (ValueError, UnicodeDecodeError):
        raise InputError(f"{spec.name}: {path} is not a readable JSON config") from None
    if not isinstance(config, dict):
        raise InputError(f"{spec.name}: {path} is not a model config (expected a JSON object)")
    return config


def require_weights(spec: ModelSpec, folder: str) -> None:
    if not weight_files(folder):
        raise InputError(f"{spec.name}: {folder} has no weights (no model.safetensors or pytorch_model.bin); "
                         f"point {spec.option} at a folder in the layout of {spec.hub_id}")


def checkpoint_state(spec: ModelSpec, folder: str) -> dict[str, torch.Tensor]:
    """Every tensor of a folder's checkpoint files (weights only)."""
    require_weights(spec, folder)
    return {key: load() for key, load in _checkpoint_tensors(folder).items()}


# ---------------------------------------------------------------- the rates this device reached
RATES_FILE = "device_rates.json"     # in the models folder: frames/s of the last run per device and pipeline
MEASURED_FRAMES = 1000               # a rate of fewer frames is mostly start-up: not recorded


def record_rate(models: str | None, costs: dict, pipeline: str) -> None:
    """Keep a finished run's frames/s in the models folder, by device and pipeline, for ``--estimate``; a
    models folder that may not be written keeps none."""
    if costs["frames_scored"] < MEASURED_FRAMES:
        return
    path = os.path.join(models_dir(models), RATES_FILE)
    rates = known_rates(models)
    rates.setdefault(costs["device"], {})[pipeline] = costs["frames_per_second"]
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_write(path) as handle:
            json.dump(rates, handle, indent=1)


def known_rates(models: str | None) -> dict:
    """``{device: {pipeline: frames/s}}`` of earlier runs; {} when none was recorded (or it is unreadable)."""
    try:
        with open(os.path.join(models_dir(models), RATES_FILE)) as handle:
            rates = json.load(handle)
    except (OSError, ValueError):
        return {}
    return rates if isinstance(rates, dict) else {}
