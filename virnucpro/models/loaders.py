"""Loading the language models on this project's own modules (DNABERT-S:
``dnabert_s.py``; FastESM2_650 and ESM2-3B: ``esm2.py``), each from a folder
read as data (no remote code) with every encoder weight checked against the
files; and the two embedding pipelines (DNABERT-S plus one protein model)."""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass
from typing import Callable

import torch

from virnucpro.devices import resolve_device
from virnucpro.errors import InputError
from virnucpro.log import logger
from virnucpro.models.dnabert_s import DnabertConfig, DnabertModel
from virnucpro.models.esm2 import Esm2Config, build, encoder_state
from virnucpro.models.modelfiles import (
    checkpoint_shapes,
    checkpoint_state,
    model_identity,
    model_folder,
    read_config,
    require_weights,
    verify_weights,
)
from virnucpro.models.pins import DNA_DIM, DNABERT_S, DNABERT_S_TOKENS, ESM2_3B, ESM2_3B_DIM, FASTESM2_650, PROTEIN_DIM, ModelSpec
from virnucpro.precision import dtype_name, use_tf32

# The ESM-2 alphabet (fair-esm order), shared by ESM2-3B and FastESM2_650.
ESM2_ALPHABET = ["<cls>", "<pad>", "<eos>", "<unk>", *"LAGVSERTIDPKQNFYMHWCXBUZO.-", "<null_1>", "<mask>"]


def default_dtype(spec: ModelSpec, device: torch.device) -> torch.dtype:
    """The precision an encoder runs in by default: on CUDA, DNABERT-S in bf16 (its range is fp32's, so
    nothing overflows where fp16 could) and FastESM2_650 in fp16 (as trained and published), ESM2-3B in fp32
    (the published baseline); on the CPU, fp32."""
    if device.type != "cuda":
        return torch.float32
    return {DNABERT_S.name: torch.bfloat16, FASTESM2_650.name: torch.float16}.get(spec.name, torch.float32)


def _finish_loading(spec: ModelSpec, model, folder: str, device, dtype, expected_dim: int | None) -> torch.nn.Module:
    """Check the weights and the width; the model on its device in its dtype, for inference, carrying the
    content of the files it was loaded from (``identity``: what feature files record of their model)."""
    verify_weights(spec, model, folder)
    dtype = dtype or default_dtype(spec, device)
    if expected_dim is not None and model.config.hidden_size != expected_dim:
        raise InputError(f"{spec.name}: {folder} gives {model.config.hidden_size}-value embeddings, "
                         f"not {expected_dim}; point {spec.option} at a {spec.name} model")
    model = model.to(device=device, dtype=dtype).eval()
    model.requires_grad_(False)
    model.identity = model_identity(folder)
    logger.info(f"{spec.name}: loaded from {folder} ({dtype_name(dtype)}, {device})")
    return model


def load_dnabert_s(model: str | None = None, device: str | torch.device | None = None,
                   expected_dim: int | None = DNA_DIM, dtype: torch.dtype | None = None):
    """DNABERT-S (768-d) and its tokenizer, from a Hugging Face id (default:
    the pinned ``zhihan1996/DNABERT-S``), a local folder or the offline cache.

    The network is this project's own (``dnabert_s.py``): the config is read
    as data, the checkpoint's tensors are mapped key for key onto the model
    (any missing, left-over or misshapen key stops the load) and the
    tokenizer is the fast BPE tokenizer of ``tokenizer.json``. Nothing in the
    folder is executed. ``dtype`` (default: bf16 on CUDA, fp32 on the CPU;
    see ``default_dtype``) is the precision it runs in; ``expected_dim=None``
    skips the width check.
    """
    device = device if isinstance(device, torch.device) else resolve_device(device)
    folder = model_folder(DNABERT_S, model)
    model_identity(folder)                  # read once from disk, hashed; the loading finds it in the page cache
    config = read_config(DNABERT_S, folder)
    hint = f"point --dna-model at a DNABERT-S folder (layout of {DNABERT_S.hub_id})"
    if config.get("model_type", "bert") != "bert":
        raise InputError(f"DNABERT-S: {folder} is not a DNABERT-S folder: its config.json describes a "
                         f"{config['model_type']} model; {hint}")
    missing = DnabertConfig.missing(config)
    if missing:
        raise InputError(f"DNABERT-S: {folder}/config.json lacks {', '.join(missing)}; {hint}")
    network = DnabertModel(DnabertConfig.from_dict(config))
    _load_dnabert_state(network, checkpoint_state(DNABERT_S, folder), folder)
    tokenizer = _dnabert_tokenizer(folder, config["vocab_size"], hint)
    return _finish_loading(DNABERT_S, network, folder, device, dtype, expected_dim), tokenizer


def _dnabert_tokenizer(folder: str, vocab_size: int, hint: str):
    """The folder's tokenizer.json, which must be the model's: as many tokens as its config's vocabulary,
    and the special tokens the pooling and the padding need (every id it gives then has an embedding)."""
    from transformers import PreTrainedTokenizerFast

    path = os.path.join(folder, "tokenizer.json")
    if not os.path.exists(path):
        raise InputError(f"DNABERT-S: {folder} has no tokenizer.json; {hint}")
    try:
        tokenizer = PreTrainedTokenizerFast.from_pretrained(folder, local_files_only=True)
    except PermissionError:
        raise InputError(f"DNABERT-S: {path}: permission denied") from None
    except Exception as error:
        raise InputError(f"DNABERT-S: {path} is not a readable tokenizer ({error.__class__.__name__}); "
                         f"{hint}") from None
    if len(tokenizer) != vocab_size:
        raise InputError(f"DNABERT-S: {path} holds {len(tokenizer)} tokens, but the model's config.json "
                         f"{vocab_size}: the tokenizer is not this model's; {hint}")
    if len(tokenizer) == DNABERT_S_TOKENS[0] and token_table_sha256(tokenizer) != DNABERT_S_TOKENS[1]:
        raise InputError(f"DNABERT-S: {path} holds {len(tokenizer)} tokens, as DNABERT-S's tokenizer does, but "
                         "other tokens or merge rules than DNABERT-S's, so every id it gives would differ; fetch "
                         f"the model again (scripts/fetch_models.py {DNABERT_S.key}), or {hint}")
    absent = [name for name in ("cls_token", "sep_token", "pad_token") if getattr(tokenizer, name) is None]
    if absent:
        raise InputError(f"DNABERT-S: {path} has no {absent[0].replace('_token', '').upper()} token: it is not "
                         f"DNABERT-S's tokenizer; {hint}")
    return tokenizer


def token_table_sha256(tokenizer) -> str:
    """SHA-256 of a BPE tokenizer's tokens (in id order) and merge rules: what decides the ids it gives."""
    model = json.loads(tokenizer.backend_tokenizer.to_str())["model"]
    merges = [merge if isinstance(merge, str) else " ".join(merge) for merge in model.get("merges", [])]
    tokens = [token for token, _ in sorted(tokenizer.get_vocab().items(), key=lambda item: item[1])]
    return hashlib.sha256(json.dumps({"tokens": tokens, "merges": merges}).encode()).hexdigest()


def _load_dnabert_state(network: torch.nn.Module, state: dict[str, torch.Tensor], folder: str) -> None:
    """Copy the checkpoint into ``network``, whose parameter names are the
    published checkpoint keys: every key must be there, with its shape, and
    no other key may be left over."""
    expected = network.state_dict()
    where = f"DNABERT-S: {folder}"
    hint = f"point --dna-model at a DNABERT-S folder (layout of {DNABERT_S.hub_id})"
    absent = [key for key in expected if key not in state]
    if absent:
        known = ("encoder.layer.0.attention.self.Wqkv.weight", "encoder.layer.0.mlp.gated_layers.weight")
        what = "a DNABERT-S (MosaicBERT) checkpoint" if any(k in absent for k in known) else "complete"
        raise InputError(f"{where}: the weights are not {what}: {len(absent)} tensors missing "
                         f"(first: {absent[0]}); {hint}")
    extra = [key for key in state if key not in expected]
    if extra:
        raise InputError(f"{where}: the weights hold {len(extra)} tensors this DNABERT-S config has no place "
                         f"for (first: {extra[0]}); {hint}")
    for key, tensor in expected.items():
        if state[key].shape != tensor.shape:
            raise InputError(f"{where}: {key} is {tuple(state[key].shape)} in the checkpoint but "
                             f"{tuple(tensor.shape)} in its config.json; {hint}")
    network.load_state_dict(state)


def esm_tokenizer():
    """The ESM-2 tokenizer, built from the fixed ESM-2 alphabet (no download)."""
    from transformers import EsmTokenizer

    with tempfile.TemporaryDirectory() as folder:
        vocab = os.path.join(folder, "vocab.txt")
        with open(vocab, "w") as handle:
            handle.write("\n".join(ESM2_ALPHABET) + "\n")
        return EsmTokenizer(vocab)


def _load_esm(spec: ModelSpec, model, device, dtype, expected_dim):
    device = device if isinstance(device, torch.device) else resolve_device(device)
    folder = model_folder(spec, model)
    model_identity(folder)                  # read once from disk, hashed; the loading finds it in the page cache
    config = read_config(spec, folder)
    hint = f"point {spec.option} at a {spec.name} model"
    if "hidden_size" not in config or config.get("vocab_size") != len(ESM2_ALPHABET):
        raise InputError(f"{spec.name}: {folder} is not an ESM-2 model (its config has no "
                         f"{len(ESM2_ALPHABET)}-token ESM-2 vocabulary); {hint}")
    missing = Esm2Config.missing(config)
    if missing:
        raise InputError(f"{spec.name}: {folder}/config.json lacks {', '.join(missing)}; {hint}")
    esm_config = Esm2Config.from_dict(config)
    if esm_config.unsupported():
        raise InputError(f"{spec.name}: {folder}/config.json is not an ESM-2 config: "
                         f"{esm_config.unsupported()}; {hint}")
    require_weights(spec, folder)
    _check_esm_shapes(spec, folder, config)
    tensors, problems = encoder_state(checkpoint_state(spec, folder), esm_config)
    if problems:
        raise InputError(f"{spec.name}: {folder}: the weights are not an ESM-2 encoder of its config.json "
                         f"({len(problems)} problems; first: {problems[0]}); {hint}")
    network = build(esm_config, tensors)
    return _finish_loading(spec, network, folder, device, dtype, expected_dim), esm_tokenizer()


def _check_esm_shapes(spec: ModelSpec, folder: str, config: dict) -> None:
    """Refuse a config whose width, depth or feed-forward size is not its weights' (transformers' own
    report of it is silenced, and would say only "look at the above report")."""
    shapes = checkpoint_shapes(folder)
    prefix = "esm." if any(key.startswith("esm.") for key in shapes) else ""
    numbers = {key[len(f"{prefix}encoder.layer."):].split(".")[0] for key in shapes
               if key.startswith(f"{prefix}encoder.layer.")}
    layers = {number for number in numbers if number.isdigit()}   # transformers 5 saves a shared "*" buffer
    found = {"hidden_size": shapes.get(f"{prefix}embeddings.word_embeddings.weight", (None, None))[1],
             "num_hidden_layers": len(layers),
             "intermediate_size": shapes.get(f"{prefix}encoder.layer.0.intermediate.dense.weight", (None,))[0]}
    differ = [f"{key} {config.get(key)}, the weights {value}" for key, value in found.items()
              if config.get(key) != value]
    if differ:
        raise InputError(f"{spec.name}: {folder}/config.json does not describe its weights ({'; '.join(differ)}): "
                         f"they are of different models; fetch the model again, or point {spec.option} at a "
                         f"complete {spec.name} folder")


def load_fast_esm(model: str | None = None, device=None, dtype: torch.dtype | None = None,
                  expected_dim: int | None = PROTEIN_DIM):
    """FastESM2_650 (1280-d) and its tokenizer: an ESM-2 checkpoint run by
    this project's ESM-2 (``esm2.py``, SDPA attention), in half precision on
    CUDA. FastESM2_650's folder (``model_type: fast_esm`` with an ``auto_map``
    to remote code) is read as data; no remote code runs. ``expected_dim=None``
    skips the width check."""
    return _load_esm(FASTESM2_650, model, device, dtype, expected_dim)


def load_esm2_3b(model: str | None = None, device=None, dtype: torch.dtype | None = None,
                 expected_dim: int | None = ESM2_3B_DIM):
    """The published baseline ESM2-3B (2560-d), in full precision as published."""
    return _load_esm(ESM2_3B, model, device, dtype, expected_dim)


@dataclass(frozen=True)
class Pipeline:
    """An embedding pipeline: DNABERT-S plus one protein model."""
    name: str
    protein: ModelSpec
    load_protein: Callable

    @property
    def input_dim(self) -> int:
        return DNA_DIM + self.protein.dim


PIPELINES = {"fastesm650": Pipeline("fastesm650", FASTESM2_650, load_fast_esm),
             "esm2_3b": Pipeline("esm2_3b", ESM2_3B, load_esm2_3b)}


@dataclass(frozen=True)
class Encoders:
    """A pipeline's two encoders as a run asks for them: their folders and the precision each runs in on
    the device. What the features depend on (``identity``) is known before the models are loaded (``load``),
    so that a run can check its folder first."""
    pipeline: Pipeline
    device: torch.device
    dna_folder: str
    protein_folder: str
    dna_dtype: torch.dtype
    protein_dtype: torch.dtype
    tf32: bool = False

    @classmethod
    def choose(cls, pipeline: str, device: torch.device, dna_model: str | None = None,
               protein_model: str | None = None, models_dir: str | None = None, dna_fp32: bool = False,
               tf32: bool = False) -> Encoders:
        """The encoders of ``pipeline`` on ``device``: DNABERT-S in bf16 on CUDA unless ``dna_fp32``, the
        protein model in its default precision (``default_dtype``); fp32 on the CPU. With ``tf32``, the
        float32 ones (ESM2-3B as published, DNABERT-S with ``dna_fp32``) multiply on TF32 tensor cores."""
        spec = PIPELINES[pipeline]
        return cls(spec, device, model_folder(DNABERT_S, dna_model, models_dir),
                   model_folder(spec.protein, protein_model, models_dir),
                   torch.float32 if dna_fp32 else default_dtype(DNABERT_S, device),
                   default_dtype(spec.protein, device), tf32 and device.type == "cuda")

    @property
    def precision(self) -> dict[str, str]:
        """The precisions, as feature files, checkpoints and run records record them (``precision_name``)."""
        names = {dtype: "tf32" if self.tf32 and dtype == torch.float32 else dtype_name(dtype)
                 for dtype in (self.dna_dtype, self.protein_dtype)}
        return {"dna": names[self.dna_dtype], "protein": names[self.protein_dtype]}

    def identity(self) -> dict:
        """The two models' content (``model_identity``), as run records keep it."""
        return {"dna_model": model_identity(self.dna_folder), "protein_model": model_identity(self.protein_folder)}

    def load(self) -> tuple[tuple, tuple]:
        """``((DNABERT-S, its tokenizer), (protein model, its tokenizer))`` on the device (and TF32 on or off
        for the process, as asked)."""
        if self.device.type == "cuda":
            use_tf32(self.tf32)
        return (load_dnabert_s(self.dna_folder, self.device, dtype=self.dna_dtype),
                self.pipeline.load_protein(self.protein_folder, self.device, self.protein_dtype))
