"""Everything VirNucPro downloads, pinned: one table that scripts/fetch_models.py,
the loaders and docs/models.md draw on (a test checks the docs against it).

A language model is a Hugging Face repository at a pinned commit; a published
classifier is a file of the published GitHub repository, fetched and verified
by its git blob SHA-1. The models folder is where they are fetched to.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from virnucpro.errors import InputError

DNA_DIM = 768            # DNABERT-S embedding
PROTEIN_DIM = 1280       # FastESM2_650 embedding
MERGED_DIM = DNA_DIM + PROTEIN_DIM
ESM2_3B_DIM = 2560       # the published baseline's protein embedding


@dataclass(frozen=True)
class ModelSpec:
    """A language model on the Hugging Face hub, pinned."""
    name: str
    key: str           # its folder in the models folder, and its name for scripts/fetch_models.py
    hub_id: str
    revision: str      # pinned commit of hub_id; other ids use their default branch
    dim: int
    option: str        # the command-line option that points elsewhere


@dataclass(frozen=True)
class PublishedClassifier:
    """A classifier of the published VirNucPro, a file of its GitHub repository."""
    key: str
    file: str
    repo: str
    blob_sha1: str     # git's id of the file's content: what it is fetched by and verified against
    chunk_length: int


#                      name            key           source                          revision / git blob SHA-1
DNABERT_S = ModelSpec("DNABERT-S", "dnabert-s", "zhihan1996/DNABERT-S", "1cdf84d992ace6f3e75c7356774b4da088c8dc7c",
                      DNA_DIM, "--dna-model")
FASTESM2_650 = ModelSpec("FastESM2_650", "fastesm650", "Synthyra/FastESM2_650", "main",     # not pinned yet
                         PROTEIN_DIM, "--protein-model")
ESM2_3B = ModelSpec("ESM2-3B", "esm2-3b", "facebook/esm2_t36_3B_UR50D", "476b639933c8baad5ad09a60ac1a87f987b656fc",
                    ESM2_3B_DIM, "--protein-model")
CLASSIFIER_300 = PublishedClassifier("classifier-300", "300_model.pth", "Li-Jing-1997/VirNucPro",
                                     "a0b5b85e7c1e44f00cde146d091beb82b2c8e855", 300)
CLASSIFIER_500 = PublishedClassifier("classifier-500", "500_model.pth", "Li-Jing-1997/VirNucPro",
                                     "fc35d5ef9f1f4564eea7036f34f4f8ec6000d33d", 500)
# DNABERT-S's tokenizer (DNABERT-2's BPE): its size and the SHA-256 of its token table and merge rules
# (loaders.token_table_sha256). A tokenizer of this size with another table would change every id.
DNABERT_S_TOKENS = (4096, "08dff527d4d5cc0f74feaf75f3e61d59e90c7fd557e8368c6ff21ae9d8cb8c7d")
ARTIFACTS = {item.key: item for item in (DNABERT_S, FASTESM2_650, ESM2_3B, CLASSIFIER_300, CLASSIFIER_500)}
PUBLISHED_BY_BLOB = {item.blob_sha1: item for item in (CLASSIFIER_300, CLASSIFIER_500)}

# The models folder: what scripts/fetch_models.py fetches or unpacks, and where the loaders look first.
MODELS_ENV = "VIRNUCPRO_MODELS"
DEFAULT_MODELS_DIR = os.path.join("~", ".cache", "virnucpro", "models")
CLASSIFIERS = "classifiers"          # the subfolder holding classifiers, published and trained


def models_dir(given: str | None = None) -> str:
    """``--models-dir``, else ``$VIRNUCPRO_MODELS``, else ``~/.cache/virnucpro/models``; one that names a
    file is refused."""
    folder = os.path.expanduser(given or os.environ.get(MODELS_ENV) or DEFAULT_MODELS_DIR)
    if os.path.exists(folder) and not os.path.isdir(folder):
        named_by = "--models-dir" if given else f"${MODELS_ENV}" if os.environ.get(MODELS_ENV) else "the default"
        raise InputError(f"{folder}: the models folder ({named_by}) is a file, not a folder; give a folder")
    return folder
