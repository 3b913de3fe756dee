"""Feature files: the published layouts of DNABERT-S, protein and merged
features (plus the precision their encoders ran in), checked when read, and
merged training files read as one memory-mapped set; the log of sequences
that failed to embed."""
from __future__ import annotations

import datetime
import os
from typing import Sequence

import numpy as np
import torch

from virnucpro import __version__
from virnucpro.errors import DimensionError, InputError
from virnucpro.files import file_sha256, save_tensors
from virnucpro.log import logger, plural
from virnucpro.models.pins import MERGED_DIM
from virnucpro.precision import model_precision
from virnucpro.sequences.chunks import record_of

FAILURE_LOG = "extraction_failures.log"
LABELS = {"viral": 1, "host": 0}


def log_failures(failures: list[tuple[str, str, str]], source, folder) -> None:
    """Append ``time, source, id, kind, message`` lines (tab-separated) to
    the failure log in ``folder``, and say so once."""
    if not failures:
        return
    log_path = os.path.join(os.fspath(folder) or ".", FAILURE_LOG)
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    with open(log_path, "a") as log:
        for sequence_id, kind, message in failures:
            log.write(f"{now}\t{source}\t{sequence_id}\t{kind}\t{message}\n")
    logger.warning(f"{source}: {plural(len(failures), 'sequence')} failed ({failures[0][1]}: {failures[0][0]}, ...); "
                   f"see {log_path}")


def made_by(input_file, model: torch.nn.Module, **settings) -> dict:
    """What a feature file is made from: the input file's content, the model's (the files it was loaded
    from, ``None`` for a model not loaded by this project), its precision and the extraction's settings."""
    return {"input_sha256": file_sha256(input_file), "model": getattr(model, "identity", None),
            "precision": model_precision(model), "virnucpro": __version__, **settings}


def reusable(out_file, source: dict, ids_key: str) -> dict | None:
    """The feature file ``out_file`` when it was made from ``source`` (``made_by``), else None: a file made
    from another input, model, precision or setting, or one that does not say, is made again."""
    if out_file is None or not os.path.exists(out_file):
        return None
    content = load_feature_file(out_file, ids_key)
    if source["model"] is not None and content.get("made_by") == source:
        return content
    logger.info(f"{out_file}: made from another input, model or precision than this extraction's; making it again")
    return None


def save_dna_features(ids: list[str], vectors, model: torch.nn.Module, out_file=None, source: dict | None = None
                      ) -> dict:
    """DNABERT-S features in the published layout plus the model's dtype (and what made them, when known),
    saved atomically when ``out_file`` is given: ``{'nucleotide': [ids], 'data': [{'label': id,
    'mean_representation': tensor}], 'precision': dtype, 'made_by': {...}}``."""
    result = {"nucleotide": list(ids),
              "data": [{"label": i, "mean_representation": v.clone()} for i, v in zip(ids, vectors)],
              "precision": model_precision(model), **({"made_by": source} if source else {})}
    save_tensors(result, out_file)
    return result


def save_protein_features(ids: list[str], vectors, model: torch.nn.Module, out_file=None,
                          source: dict | None = None) -> dict:
    """Protein features in the published layout plus the model's dtype (and what made them, when known),
    saved atomically when ``out_file`` is given: ``{'proteins': [ids], 'data': [tensor], 'precision': dtype,
    'made_by': {...}}``."""
    result = {"proteins": list(ids), "data": [v.clone() for v in vectors], "precision": model_precision(model),
              **({"made_by": source} if source else {})}
    save_tensors(result, out_file)
    return result


def save_merged_features(ids: list[str], data: torch.Tensor, out_file, precision: dict | None = None,
                         label: int | None = None, chunk_length: int | None = None) -> dict:
    """Merged features in the published layout, saved atomically: ``{'ids', 'data': tensor(n, width)}``, plus
    ``'labels': [label]`` for a training file (1 viral, 0 host, one per file as published), ``'precision':
    {'dna': ..., 'protein': ...}`` and ``'chunk_length'`` when known."""
    merged = {"ids": ids, "data": data}
    if label is not None:
        merged["labels"] = [label]
    if precision is not None:
        merged["precision"] = precision
    if chunk_length is not None:
        merged["chunk_length"] = chunk_length
    save_tensors(merged, out_file)
    return merged


def load_feature_file(path, ids_key: str) -> dict:
    """A DNABERT-S (``ids_key='nucleotide'``) or protein (``'proteins'``) feature file, its layout checked."""
    try:
        content = torch.load(path, weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: no such feature file") from None
    except Exception as error:
        raise InputError(f"{path}: not a readable feature file ({error.__class__.__name__})") from None
    if not isinstance(content, dict) or ids_key not in content or "data" not in content \
            or len(content[ids_key]) != len(content["data"]):
        raise InputError(f"{path}: not a feature file (expected matching '{ids_key}' and 'data' lists)")
    return content


def feature_vectors(path, ids, vectors, dim: int) -> dict[str, torch.Tensor]:
    """``{id: float32 vector}``, each checked: ``dim`` values, all finite."""
    checked = {}
    for sequence_id, vector in zip(ids, vectors):
        vector = torch.as_tensor(vector, dtype=torch.float32)
        if tuple(vector.shape) != (dim,):
            actual = vector.shape[-1] if vector.dim() == 1 else tuple(vector.shape)
            raise DimensionError(dim, actual, sequence_id, str(path))
        if not torch.isfinite(vector).all():
            raise InputError(f"{path}: the features of '{sequence_id}' hold NaN or infinite values")
        checked[sequence_id] = vector
    return checked


def load_merged_file(path, expected_dim: int = MERGED_DIM) -> dict:
    """Load and check one merged training file (memory-mapped): ``expected_dim``-wide
    finite rows, one unique id per row, a label of 0 (host) or 1 (viral).
    Returns ``{'ids', 'data', 'label', 'precision', 'chunk_length'}`` (the last
    two ``None`` where the file does not record them); raises ``InputError``
    naming the file."""
    path = os.fspath(path)
    try:
        content = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as error:
        raise InputError(f"{path}: not a readable merged feature file ({error.__class__.__name__})") from None
    if not isinstance(content, dict) or not {"ids", "data", "labels"} <= content.keys():
        raise InputError(f"{path}: a merged training file needs 'ids', 'data' and 'labels'")
    data, ids, labels = content["data"], content["ids"], content["labels"]
    if data.dim() != 2 or data.shape[1] != expected_dim:
        raise DimensionError(expected_dim, tuple(data.shape), ids[0] if ids else "-", path)
    if len(ids) != data.shape[0]:
        raise InputError(f"{path}: {len(ids)} ids for {data.shape[0]} rows")
    if len(set(ids)) != len(ids):
        raise InputError(f"{path}: repeated sequence ids")
    if not torch.isfinite(data).all():
        raise InputError(f"{path}: the features hold NaN or infinite values")
    if list(labels) not in ([0], [1]):
        raise InputError(f"{path}: labels must be [0] (host) or [1] (viral), got {list(labels)[:3]}")
    return {"ids": list(ids), "data": data, "label": int(labels[0]), "precision": content.get("precision"),
            "chunk_length": content.get("chunk_length")}


def find_merged_files(merge_dir) -> list[str]:
    merge_dir = os.fspath(merge_dir)
    if not os.path.isdir(merge_dir):
        raise InputError(f"{merge_dir}: no such folder; run features_extract.py first")
    files = sorted(os.path.join(root, name) for root, _, names in os.walk(merge_dir)
                   for name in names if name.endswith("_merged.pt"))
    if not files:
        raise InputError(f"{merge_dir}: no *_merged.pt files; run features_extract.py first")
    return files


class FeatureSet:
    """The rows of many merged files as one indexable set, memory-mapped so
    that millions of 2048-d rows need no more RAM than their ids.

    ``rows(indices)`` gathers any rows in one vectorised pass per file
    (the published Dataset walked every file for every single item).
    """

    def __init__(self, files: Sequence[str], expected_dim: int = MERGED_DIM):
        self.files = list(files)
        self._data, self.ids, labels, self._precisions, self._chunk_lengths = [], [], [], [], []
        for path in self.files:
            content = load_merged_file(path, expected_dim)
            self._data.append(content["data"])
            self._precisions.append(content["precision"])
            self._chunk_lengths.append(content["chunk_length"])
            self.ids += content["ids"]
            labels.append(np.full(len(content["ids"]), content["label"], dtype=np.int64))
        self.labels = np.concatenate(labels) if labels else np.zeros(0, dtype=np.int64)
        self._starts = np.cumsum([0] + [len(d) for d in self._data])
        self.dim = expected_dim

    def __len__(self) -> int:
        return len(self.ids)

    def rows(self, indices) -> torch.Tensor:
        indices = np.asarray(indices, dtype=np.int64)
        files = np.searchsorted(self._starts, indices, side="right") - 1
        out = torch.empty((len(indices), self.dim), dtype=torch.float32)
        for file in np.unique(files):
            where = np.flatnonzero(files == file)
            local = torch.from_numpy(indices[where] - self._starts[file])
            out[torch.from_numpy(where)] = self._data[file].index_select(0, local).float()
        return out

    def encoder_precision(self) -> dict | None:
        """The dtype each encoder ran in to make these features, e.g.
        ``{'dna': 'float32', 'protein': 'float16'}`` (``'mixed (...)'`` when
        files differ); ``None`` when no file records it."""
        if not any(self._precisions):
            return None
        precision = {}
        for encoder in ("dna", "protein"):
            values = sorted({p.get(encoder, "unrecorded") if p else "unrecorded" for p in self._precisions})
            precision[encoder] = values[0] if len(values) == 1 else f"mixed ({', '.join(values)})"
        return precision

    def chunk_length(self) -> int | None:
        """The chunk length of the frames these features come from (``None``
        when the files do not record it); files of two lengths are refused."""
        lengths = {length for length in self._chunk_lengths if length is not None}
        if len(lengths) > 1:
            first = {length: path for path, length in zip(self.files, self._chunk_lengths)}
            raise InputError("the features mix frames of " + " and ".join(
                f"{length}-bp chunks ({first[length]})" for length in sorted(lengths))
                + "; keep one chunk length per merge folder")
        return lengths.pop() if lengths else None

    def accessions(self) -> list[str]:
        return [record_of(i) for i in self.ids]

    def spans(self) -> list[tuple[str, int, int]]:
        """``(file, first row, end row)`` of each file."""
        return [(path, int(start), int(end)) for path, start, end
                in zip(self.files, self._starts[:-1], self._starts[1:])]
