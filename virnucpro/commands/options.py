"""The options the scripts share, declared once: one name for one idea, with the same help and default in
every script that takes it (tests/test_project.py compares them across the scripts and the docs)."""
from __future__ import annotations

import argparse
import os

from virnucpro import __version__
from virnucpro.commands.cli import at_least
from virnucpro.models.loaders import PIPELINES
from virnucpro.models.pins import DEFAULT_MODELS_DIR, DNABERT_S, ESM2_3B, FASTESM2_650, MODELS_ENV
from virnucpro.scoring.engine import DNA_TOKS_PER_BATCH, PROTEIN_TOKS_PER_BATCH
from virnucpro.training.selection import DEFAULT_MERGE_DIR
from virnucpro.training.splits import DEFAULT_SPLIT


def parser(description: str) -> argparse.ArgumentParser:
    """A script's parser: its docstring as the help, and ``--version`` answered with the bare version number
    (as workflow managers read it)."""
    made = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    made.add_argument("--version", action="version", version=__version__, help="print the version and exit")
    return made


def device(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default="auto",
                        help="cuda, cuda:N, cpu or auto (default: auto, the GPU when there is one)")


def models_dir(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--models-dir", help=f"models folder of scripts/fetch_models.py (default: ${MODELS_ENV}, "
                                             f"else {DEFAULT_MODELS_DIR})")


def pipeline(parser: argparse.ArgumentParser, default: str | None = "fastesm650") -> None:
    parser.add_argument("--pipeline", choices=sorted(PIPELINES), default=default,
                        help="protein model of the embeddings: fastesm650 (FastESM2_650) or esm2_3b (the published "
                             "ESM2-3B baseline); default: "
                             + (default if default else "the one the classifier was trained for"))


def language_models(parser: argparse.ArgumentParser, dna: bool = True, baseline: bool = False) -> None:
    """Where the language models are: Hugging Face ids or local folders (default: the models folder, else the
    pinned hub models): DNABERT-S (unless not ``dna``), the protein model and, with ``baseline``, the ESM2-3B
    one a comparison runs beside FastESM2_650."""
    if dna:
        parser.add_argument("--dna-model", help=f"DNABERT-S: Hugging Face id or local folder (default "
                                                f"{DNABERT_S.hub_id})")
    parser.add_argument("--protein-model", help=f"protein model: Hugging Face id or local folder (default "
                                                f"{FASTESM2_650.hub_id}, or {ESM2_3B.hub_id} for esm2_3b)")
    if baseline:
        parser.add_argument("--baseline-protein-model",
                            help=f"the baseline's ESM2-3B: Hugging Face id or local folder (default {ESM2_3B.hub_id})")


def encoder_settings(parser: argparse.ArgumentParser) -> None:
    """How the encoders run: precision and batch sizes."""
    parser.add_argument("--dna-fp32", action="store_true",
                        help="run DNABERT-S in float32 on a GPU too (default there: bfloat16; the CPU always runs "
                             "float32); the features then record it, and prediction with their classifier needs it "
                             "as well")
    parser.add_argument("--tf32", action="store_true",
                        help="on a GPU, run the float32 encoders' matrix products (ESM2-3B's, as published, and "
                             "DNABERT-S's with --dna-fp32) on TF32 tensor cores: several times faster, about 1e-3 "
                             "relative error in each product; recorded as tf32 (default: full float32, on CUDA "
                             "cores)")
    parser.add_argument("--dna-batch-tokens", type=at_least(1), default=DNA_TOKS_PER_BATCH,
                        help="DNABERT-S tokens per batch (default %(default)s; a batch that runs out of GPU memory "
                             "is split)")
    parser.add_argument("--protein-batch-tokens", type=at_least(1), default=PROTEIN_TOKS_PER_BATCH,
                        help="protein-model tokens per batch (default %(default)s; a batch that runs out of GPU "
                             "memory is split)")


def data_dir(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--data-dir", default="data", help=f"{what} (default: %(default)s)")


def merge_dirs(parser: argparse.ArgumentParser, baseline: bool = False) -> None:
    """--merge-dir (and --baseline-merge-dir): the merged features, by default where features_extract.py puts
    them for the data folder; ``merge_dir_defaults`` fills them in after parsing."""
    parser.add_argument("--merge-dir", help=f"merged features (default: <data-dir>/{DEFAULT_MERGE_DIR['fastesm650']}, "
                                            f"or <data-dir>/{DEFAULT_MERGE_DIR['esm2_3b']} for --pipeline esm2_3b)")
    if baseline:
        parser.add_argument("--baseline-merge-dir",
                            help=f"the ESM2-3B baseline's merged features (default: "
                                 f"<data-dir>/{DEFAULT_MERGE_DIR['esm2_3b']})")


def merge_dir_defaults(args: argparse.Namespace) -> None:
    """Fill in --merge-dir (for the script's pipeline, FastESM2_650 without one) and --baseline-merge-dir."""
    data = getattr(args, "data_dir", "data")
    if args.merge_dir is None:
        args.merge_dir = os.path.join(data, DEFAULT_MERGE_DIR[getattr(args, "pipeline", None) or "fastesm650"])
    if getattr(args, "baseline_merge_dir", "") is None:
        args.baseline_merge_dir = os.path.join(data, DEFAULT_MERGE_DIR["esm2_3b"])


def split(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--split", default=DEFAULT_SPLIT,
                        help="test split from scripts/create_test_set.py (default: %(default)s)")


def output_dir(parser: argparse.ArgumentParser, what: str, default: str | None = None,
               default_help: str | None = None) -> None:
    """-o/--output-dir: the folder a script writes ``what`` into (``default_help`` says what a default
    computed after parsing is)."""
    shown = default or default_help
    parser.add_argument("-o", "--output-dir", default=default,
                        help=f"folder for {what}" + (f" (default: {shown})" if shown else ""))
