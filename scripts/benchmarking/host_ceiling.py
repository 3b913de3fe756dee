"""The host ceiling: how many frames per second the host can feed the device.

The whole prediction path, FASTA to result files, runs with both encoders
(and their pooling) replaced by zero-cost stand-ins of the right widths and
the real DNABERT-S tokenizer; the time of each stage is taken, and the rate
of the host alone leaves out the device work (storing the stand-ins' outputs,
the finite check, the classifier: a GPU's work, which a CPU does here).
"""
from __future__ import annotations

import contextlib
import os
import time
import types
from unittest import mock

import torch

from benchmarking.timing import Clock
from virnucpro.models import loaders
from virnucpro.models.loaders import ESM2_ALPHABET, PIPELINES, Pipeline, esm_tokenizer
from virnucpro.models.pins import DNA_DIM, FASTESM2_650
from virnucpro.prediction import assembly, inputs, outputs, predict, shards
from virnucpro.runs import peak_memory_mb, reset_peak_memory
from virnucpro.scoring import engine


class StandInModel(torch.nn.Module):
    """Where a language model would be: its output width, its vocabulary, and a parameter (for its device
    and dtype)."""

    def __init__(self, width: int, vocab_size: int):
        super().__init__()
        self.config = types.SimpleNamespace(hidden_size=width, vocab_size=vocab_size)
        self.anchor = torch.nn.Parameter(torch.zeros(1))


class ZeroCostEncoder(torch.nn.Module):
    """Stands in for an encoder with its pooling (device work): zeros of its output width."""

    def __init__(self, model: StandInModel):
        super().__init__()
        self.model, self.width = model, model.config.hidden_size

    def forward(self, input_ids, attention_mask):
        return torch.zeros(1, self.width).expand(len(input_ids), -1)       # no memory to fill


# (stage, owner, attribute): the functions of the prediction path whose time is reported. On a CPU the host
# work runs in line (on a GPU, a background thread runs it while the device works).
SCORING_STAGE = "  of which encoders and classifier"
BATCHING_STAGE = "    of which padded batches (host)"
STAGES = (("input check and count", inputs, "count_chunks"),
          ("host work: chunks, frames, tokens", shards, "prepare_shard"),
          ("  of which DNA tokenization", engine, "dna_tokens"),
          ("  of which protein tokenization", engine, "protein_tokens"),
          ("device work", shards, "score_shard"),
          (SCORING_STAGE, engine.Engine, "score"),
          (BATCHING_STAGE, engine.TokenRows, "padded"),
          ("    of which the classifier's arithmetic", engine, "predict_probabilities"),
          ("shard files", shards, "write_shard"),
          ("final outputs", assembly, "write_outputs"))
TOP_STAGES = ("input check and count", "host work: chunks, frames, tokens", "device work", "shard files",
              "final outputs")


def measure(request: predict.Request, classifier: torch.nn.Module, metadata: dict, description: str) -> dict:
    """Run ``request`` (its ``dna_model`` a folder with DNABERT-S's tokenizer, its ``protein_model`` any
    FastESM2_650-layout folder: only their files' identity is read) with stand-in encoders; the rate in
    frames per second, per core-second and of the host alone, the peak memory and the time per stage."""
    from transformers import PreTrainedTokenizerFast

    clock = Clock()
    dna_tokenizer = PreTrainedTokenizerFast.from_pretrained(request.dna_model, local_files_only=True)
    stand_in = Pipeline("fastesm650", FASTESM2_650,
                        lambda *_, **__: (StandInModel(FASTESM2_650.dim, len(ESM2_ALPHABET)), esm_tokenizer()))
    with contextlib.ExitStack() as patches:
        patches.enter_context(mock.patch.object(loaders, "load_dnabert_s",
                                                lambda *_, **__: (StandInModel(DNA_DIM, len(dna_tokenizer)),
                                                                  dna_tokenizer)))
        patches.enter_context(mock.patch.dict(PIPELINES, {"fastesm650": stand_in}))
        for encoder in ("DnaEncoder", "ProteinEncoder"):
            patches.enter_context(mock.patch.object(engine, encoder, ZeroCostEncoder))
        for stage, owner, attribute in STAGES:
            patches.enter_context(mock.patch.object(owner, attribute, clock.timing(stage, getattr(owner, attribute))))
        reset_peak_memory()                     # the synthetic input's making is not the run's
        started = time.perf_counter()
        predict.run(request, classifier, metadata, None)
        seconds = time.perf_counter() - started
    with open(os.path.join(request.output_dir, outputs.FRAMES_FILE)) as handle:
        frames = sum(1 for _ in handle) - 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    timed = sum(clock.total(stage) for stage in TOP_STAGES)
    stages = {stage: clock.total(stage) for stage, _, _ in STAGES if stage in clock.seconds}
    stages["other: start-up, reading the input"] = seconds - timed
    device_seconds = stages.get(SCORING_STAGE, 0.0) - stages.get(BATCHING_STAGE, 0.0)
    return {"input": description, "frames": frames, "seconds": seconds, "cores": cores,
            "peak_rss_mb": peak_memory_mb(),
            "frames_per_second": frames / seconds, "frames_per_core_second": frames / seconds / cores,
            "host_frames_per_second": frames / (seconds - device_seconds), "stages": stages}


def print_result(result: dict) -> None:
    """The stage table and the rates, as the benchmark prints them."""
    print(f"{'stage':<40} {'seconds':>8} {'of wall':>8}")
    for stage, seconds in result["stages"].items():
        print(f"{stage:<40} {seconds:>8.2f} {seconds / result['seconds']:>8.1%}")
    print(f"{result['input']}: {result['frames']} frames in {result['seconds']:.2f} s: "
          f"{result['frames_per_second']:,.0f} frames/s, {result['frames_per_core_second']:,.0f} per core-second "
          f"({result['cores']} cores); peak memory {result['peak_rss_mb']:,} MB")
    print(f"without the device work (the scoring less its padded batches: a GPU's work, done by this CPU here): "
          f"{result['host_frames_per_second']:,.0f} frames/s")
