#!/usr/bin/env python3
"""Benchmark protein-embedding extraction: FastESM2_650 against ESM2-3B.

    python scripts/benchmark_speed.py [--device cuda]

The sample is the stop-free frames of data/sample.fasta (real RefSeq viral
fragments, shipped with the project), repeated to --sequences proteins. Each
model is loaded, warmed up, then timed over --runs runs (default 3; CUDA
synchronised): mean, min and median seconds, sequences/s, tokens/s and peak
GPU memory.

The speed-up is reported twice: with both models at the same precision (fp16
on a GPU, fp32 on a CPU), which isolates the model change (the FLOP ratio of
the two models is about 4.4x), and as deployed (FastESM2_650 in fp16, ESM2-3B
in fp32 as published; GPU only). PASSED when FastESM2_650 takes at most 50% of
ESM2-3B's time at the same precision (exit status 0, else 1).

--end-to-end times the whole prediction (chunking to calls) on sample reads
with each pipeline's classifier instead. Writes reports/speed_benchmark.md.

--host-ceiling times the whole prediction path, FASTA to result files, with
both encoders replaced by zero-cost stand-ins of the right output widths and
the real DNABERT-S tokenizer (tests/data/arch_tiny/dnabert_s/tokenizer.json),
on --sequences synthetic 500-bp reads (one open reading frame each, half on
the reverse strand; or one contig of --contig-length bp): how many frames
per second the host can feed the GPU, and the peak memory.
Prints a table of stages and, with --json FILE, writes
{"frames_per_second": ..., "frames_per_core_second": ..., "host_frames_per_second": ...,
"stages": {...}}; host_frames_per_second leaves out the device work, which
this CPU does here and a GPU does in a real run: the scoring step less its
host part (padded batches), i.e. storing the stand-ins' outputs, the finite
check and the classifier.
Models: the default Hugging Face models, local folders (--fastesm-model,
--esm2-3b-model), or random weights of the real shapes (--random-weights, no
download). A CPU run with small sizes is a smoke test, not a measurement.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import statistics
import sys
import tempfile
import time
import types
from unittest import mock

import numpy as np
import torch

import units

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "sample.fasta")
FLOP_RATIO = 4.4
TOKENIZER_FOLDER = os.path.join(ROOT, "tests", "data", "arch_tiny", "dnabert_s")
PROTEIN_FOLDER = os.path.join(ROOT, "tests", "data", "arch_tiny", "fastesm650")
READ_LENGTH = 500
HOST_CEILING_READS = 100_000


def sample_proteins(reads: str, count: int) -> list[tuple[str, str]]:
    """Stop-free frame proteins of the reads, repeated (with fresh ids) to ``count``."""
    proteins = [protein for _, _, protein in units.select_frames(list(units.iter_fasta_chunks(reads, 300)))
                if protein]
    if not proteins:
        raise units.InputError(f"{reads}: no stop-free frame to benchmark")
    return [(f"p{i}", proteins[i % len(proteins)]) for i in range(count)]


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def load(pipeline: units.Pipeline, model: str | None, device, dtype, random_weights: bool, models: str | None):
    if random_weights:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
        from benchmark_extraction import ESM2_3B_SHAPE, FASTESM2_650_SHAPE, random_esm
        shape = FASTESM2_650_SHAPE if pipeline.name == "fastesm650" else ESM2_3B_SHAPE
        return random_esm(shape).to(device=device, dtype=dtype), units.esm_tokenizer()
    return pipeline.load_protein(units.model_folder(pipeline.protein, model, models), device, dtype)


def time_extraction(pipeline, model_source, fasta, device, dtype, runs, toks_per_batch, random_weights,
                    models) -> dict:
    model, tokenizer = load(pipeline, model_source, device, dtype, random_weights, models)
    sequences = [record.sequence for record in units.read_fasta(fasta, alphabet="protein")]

    def extract():
        units.extract_protein(pipeline, fasta, None, model, tokenizer, toks_per_batch=toks_per_batch)

    extract()                                                   # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = []
    for _ in range(runs):
        synchronize(device)
        started = time.perf_counter()
        extract()
        synchronize(device)
        seconds.append(time.perf_counter() - started)
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    mean = statistics.mean(seconds)
    return {"model": pipeline.protein.name, "precision": str(dtype).replace("torch.", ""), "mean_s": mean,
            "min_s": min(seconds), "median_s": statistics.median(seconds), "sequences": len(sequences),
            "sequences_per_s": len(sequences) / mean,
            "tokens_per_s": sum(len(s) + 2 for s in sequences) / mean, "peak_gpu_mb": peak}


def time_end_to_end(args, device) -> list[dict]:
    prediction = _load_prediction()
    rows = []
    for name, checkpoint in (("fastesm650", args.checkpoint), ("esm2_3b", args.baseline_checkpoint)):
        if not checkpoint:
            continue
        with tempfile.TemporaryDirectory() as output:
            argv = [args.reads, "300", checkpoint, "-o", output, "--device", str(device), "--pipeline", name]
            model = args.fastesm_model if name == "fastesm650" else args.esm2_3b_model
            argv += ["--protein-model", model] if model else []
            argv += ["--dna-model", args.dna_model] if args.dna_model else []
            argv += ["--models-dir", args.models_dir] if args.models_dir else []
            synchronize(device)
            started = time.perf_counter()
            prediction.main(argv)
            synchronize(device)
            seconds = time.perf_counter() - started
        reads = sum(1 for _ in units.read_fasta(args.reads))
        rows.append({"pipeline": name, "seconds": seconds, "reads": reads, "reads_per_s": reads / seconds})
    if not rows:
        raise units.InputError("--end-to-end needs --checkpoint and/or --baseline-checkpoint")
    return rows


# ---------------------------------------------------------------- host ceiling
def open_reading_frame(rng, length: int) -> str:
    """``length`` bp of random sense codons: stop-free in its first frame."""
    sense = np.array([codon for codon, amino_acid in units.CODON_TABLE.items() if amino_acid != "*"])
    return "".join(sense[rng.integers(0, len(sense), length // 3)]) + "A" * (length % 3)


def synthetic_input(path: str, reads: int, contig_length: int | None = None, seed: int = 0) -> None:
    """500-bp reads of one open reading frame each, every other one
    reverse-complemented; or, with ``contig_length``, one contig of that length."""
    rng = np.random.default_rng(seed)
    with open(path, "w") as handle:
        if contig_length:
            handle.write(f">contig\n{open_reading_frame(rng, contig_length)}\n")
            return
        for number in range(reads):
            read = open_reading_frame(rng, READ_LENGTH)
            handle.write(f">read_{number}\n{read if number % 2 == 0 else units.reverse_complement(read)}\n")


class StandInModel(torch.nn.Module):
    """Where a language model would be: its output width and a parameter (for its device and dtype)."""

    def __init__(self, width: int):
        super().__init__()
        self.config = types.SimpleNamespace(hidden_size=width)
        self.anchor = torch.nn.Parameter(torch.zeros(1))


class ZeroCostEncoder(torch.nn.Module):
    """Stands in for an encoder with its pooling (device work): zeros of its output width."""

    def __init__(self, model: StandInModel):
        super().__init__()
        self.model, self.width = model, model.config.hidden_size

    def forward(self, input_ids, attention_mask):
        return torch.zeros(1, self.width).expand(len(input_ids), -1)       # no memory to fill


class StageClock:
    """Seconds spent in named functions, wrapped for the run."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    def wrap(self, stage: str, function):
        def timed(*args, **kwargs):
            started = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                self.seconds[stage] = self.seconds.get(stage, 0.0) + time.perf_counter() - started
        return timed


# (stage, module name, attribute): the functions of the prediction path whose time is reported. On a CPU
# the host work runs in line (on a GPU, a background thread runs it while the device works).
SCORING_STAGE = "  of which encoders and classifier"
BATCHING_STAGE = "    of which padded batches (host)"
HOST_STAGES = (("input check and count", "prediction", "count_chunks"),
               ("host work: chunks, frames, tokens", "prediction", "prepare_shard"),
               ("  of which DNA tokenization", "engine", "dna_tokens"),
               ("  of which protein tokenization", "engine", "protein_tokens"),
               ("device work and shard files", "prediction", "score_shard"),
               (SCORING_STAGE, "engine", "Engine.score"),
               (BATCHING_STAGE, "engine", "TokenRows.padded"),
               ("    of which the classifier's arithmetic", "units", "predict_probabilities"),
               ("final outputs", "prediction", "write_outputs"))
TOP_STAGES = ("input check and count", "host work: chunks, frames, tokens", "device work and shard files",
              "final outputs")


def host_ceiling(args) -> dict:
    """The prediction path with stand-in encoders on synthetic reads: frames/s and the time per stage."""
    from transformers import PreTrainedTokenizerFast

    import engine

    prediction = _load_prediction()
    modules = {"units": units, "prediction": prediction, "engine": engine}
    clock = StageClock()
    dna_tokenizer = PreTrainedTokenizerFast.from_pretrained(TOKENIZER_FOLDER, local_files_only=True)
    stand_in_pipeline = units.Pipeline("fastesm650", units.FASTESM2_650,
                                       lambda *_, **__: (StandInModel(units.FASTESM2_650.dim), units.esm_tokenizer()))
    with tempfile.TemporaryDirectory() as folder, contextlib.ExitStack() as patches:
        reads, checkpoint = os.path.join(folder, "reads.fasta"), os.path.join(folder, "classifier.pth")
        synthetic_input(reads, args.sequences or HOST_CEILING_READS, args.contig_length)
        torch.manual_seed(0)
        units.save_checkpoint(units.MLPClassifier(units.MERGED_DIM, units.HIDDEN_DIM, units.NUM_CLASSES), checkpoint,
                              chunk_length=READ_LENGTH)
        patches.enter_context(mock.patch.object(units, "load_dnabert_s",
                                                lambda *_, **__: (StandInModel(units.DNA_DIM), dna_tokenizer)))
        patches.enter_context(mock.patch.dict(units.PIPELINES, {"fastesm650": stand_in_pipeline}))
        for encoder in ("DnaEncoder", "ProteinEncoder"):
            patches.enter_context(mock.patch.object(engine, encoder, ZeroCostEncoder))
        for stage, module, name in HOST_STAGES:
            owner = modules[module]
            *path, attribute = name.split(".")
            for part in path:
                owner = getattr(owner, part, None)
            if owner is not None and hasattr(owner, attribute):
                patches.enter_context(mock.patch.object(owner, attribute, clock.wrap(stage, getattr(owner, attribute))))
        started = time.perf_counter()
        prediction.main([reads, str(READ_LENGTH), checkpoint, "-o", os.path.join(folder, "out"), "--device", "cpu",
                         "--dna-model", TOKENIZER_FOLDER, "--protein-model", PROTEIN_FOLDER])
        seconds = time.perf_counter() - started
        with open(os.path.join(folder, "out", "prediction_results.txt")) as handle:
            frames = sum(1 for _ in handle) - 1
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    timed = sum(clock.seconds.get(stage, 0.0) for stage in TOP_STAGES)
    stages = {stage: clock.seconds[stage] for stage, _, _ in HOST_STAGES if stage in clock.seconds}
    stages["other: start-up, reading the input"] = seconds - timed
    import resource

    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    device_seconds = stages.get(SCORING_STAGE, 0.0) - stages.get(BATCHING_STAGE, 0.0)
    host_seconds = seconds - device_seconds
    return {"input": f"one {args.contig_length}-bp contig" if args.contig_length else
            f"{args.sequences or HOST_CEILING_READS} reads of {READ_LENGTH} bp", "frames": frames, "seconds": seconds,
            "cores": cores, "peak_rss_mb": round(peak_mb),
            "frames_per_second": frames / seconds, "frames_per_core_second": frames / seconds / cores,
            "host_frames_per_second": frames / host_seconds, "stages": stages}


def print_host_ceiling(result: dict) -> None:
    print(f"{'stage':<40} {'seconds':>8} {'of wall':>8}")
    for stage, seconds in result["stages"].items():
        print(f"{stage:<40} {seconds:>8.2f} {seconds / result['seconds']:>8.1%}")
    print(f"{result['input']}: {result['frames']} frames in {result['seconds']:.2f} s: "
          f"{result['frames_per_second']:,.0f} frames/s, {result['frames_per_core_second']:,.0f} per core-second "
          f"({result['cores']} cores); peak memory {result['peak_rss_mb']:,} MB")
    print(f"without the device work (the scoring less its padded batches: a GPU's work, done by this CPU here): "
          f"{result['host_frames_per_second']:,.0f} frames/s")


def _load_prediction():
    sys.path.insert(0, ROOT)
    import prediction
    return prediction


def device_name(device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


def write_report(path, device, rows, comparisons, verdict, sample_note) -> None:
    lines = ["# Speed benchmark: FastESM2_650 against ESM2-3B", "", f"**Result: {verdict}**", "",
             f"- Device: {device_name(device)}; torch {torch.__version__}", f"- Sample: {sample_note}", "",
             "## Protein-embedding extraction", "",
             "| model | precision | mean (s) | min (s) | median (s) | sequences/s | tokens/s | peak GPU memory (MB) |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        peak = "n/a" if r["peak_gpu_mb"] is None else f"{r['peak_gpu_mb']:,.0f}"
        lines.append(f"| {r['model']} | {r['precision']} | {r['mean_s']:.3f} | {r['min_s']:.3f} | {r['median_s']:.3f}"
                     f" | {r['sequences_per_s']:.1f} | {r['tokens_per_s']:,.0f} | {peak} |")
    lines += ["", "## Speed-up", "", "| comparison | FastESM2_650 time / ESM2-3B time | speed-up |", "|---|---:|---:|"]
    for name, ratio in comparisons:
        lines.append(f"| {name} | {ratio:.1%} | {1 / ratio:.2f}x |")
    lines += ["", f"PASSED needs at most 50% of ESM2-3B's time at the same precision. At equal precision the "
                  f"FLOP ratio of the two models is about {FLOP_RATIO}x; a fp16-vs-fp32 comparison mixes the model "
                  "change with the precision change.", ""]
    with units.atomic_write(path) as handle:
        handle.write("\n".join(lines))


def write_end_to_end_report(path, device, rows) -> None:
    lines = ["# Speed benchmark: end to end (chunking to calls)", "", f"- Device: {device_name(device)}", "",
             "| pipeline | reads | seconds | reads/s |", "|---|---:|---:|---:|"]
    lines += [f"| {r['pipeline']} | {r['reads']} | {r['seconds']:.2f} | {r['reads_per_s']:.2f} |" for r in rows]
    with units.atomic_write(path) as handle:
        handle.write("\n".join(lines) + "\n")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cuda, cuda:N, cpu or auto (default)")
    parser.add_argument("--sequences", type=int, help="proteins per run (default 2000 on a GPU, 16 on a CPU)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs after the warm-up (default 3)")
    parser.add_argument("--toks-per-batch", type=int, default=16384, help="tokens per batch (default %(default)s)")
    parser.add_argument("--reads", default=SAMPLE, help="sample reads (default: data/sample.fasta)")
    parser.add_argument("--fastesm-model", help=f"FastESM2_650 id or folder (default {units.FASTESM2_650.hub_id})")
    parser.add_argument("--esm2-3b-model", help=f"ESM2-3B id or folder (default {units.ESM2_3B.hub_id})")
    parser.add_argument("--dna-model", help="DNABERT-S id or folder, for --end-to-end")
    parser.add_argument("--models-dir", help=f"models folder of scripts/fetch_models.py (default: "
                                             f"${units.MODELS_ENV}, else {units.DEFAULT_MODELS_DIR})")
    parser.add_argument("--random-weights", action="store_true", help="random models of the real shapes")
    parser.add_argument("--end-to-end", action="store_true", help="time the whole prediction per pipeline")
    parser.add_argument("--checkpoint", help="FastESM2_650 classifier, for --end-to-end")
    parser.add_argument("--baseline-checkpoint", help="ESM2-3B classifier (e.g. 300_model.pth), for --end-to-end")
    parser.add_argument("--host-ceiling", action="store_true",
                        help="time the prediction path with zero-cost stand-in encoders (--sequences reads, "
                             f"default {HOST_CEILING_READS:,}: enough to outweigh the start-up)")
    parser.add_argument("--json", help="with --host-ceiling: write the result to this JSON file")
    parser.add_argument("--contig-length", type=int, metavar="BP",
                        help="with --host-ceiling: one synthetic contig of this length instead of reads")
    parser.add_argument("--report", default="reports/speed_benchmark.md", help="report path (default: %(default)s)")
    args = parser.parse_args(argv)
    for option, value in (("--runs", args.runs), ("--sequences", args.sequences),
                          ("--contig-length", args.contig_length)):
        if value is not None and value < 1:
            parser.error(f"{option} must be at least 1")
    if args.host_ceiling:
        result = host_ceiling(args)
        print_host_ceiling(result)
        if args.json:
            with units.atomic_write(args.json) as handle:
                json.dump(result, handle, indent=1)
        return 0
    device = units.resolve_device(args.device)
    if args.end_to_end:
        rows = time_end_to_end(args, device)
        write_end_to_end_report(args.report, device, rows)
        for row in rows:
            print(f"{row['pipeline']}: {row['seconds']:.2f} s for {row['reads']} reads")
        print(f"report: {args.report}")
        return 0

    count = args.sequences or (2000 if device.type == "cuda" else 16)
    half = torch.float16 if device.type == "cuda" else torch.float32
    fastesm, esm2_3b = units.PIPELINES["fastesm650"], units.PIPELINES["esm2_3b"]
    proteins = sample_proteins(args.reads, count)
    with tempfile.TemporaryDirectory() as folder:
        fasta = os.path.join(folder, "proteins.faa")
        with open(fasta, "w") as handle:
            for record_id, protein in proteins:
                units.write_fasta_record(handle, record_id, protein)
        settings = [(fastesm, args.fastesm_model, half), (esm2_3b, args.esm2_3b_model, half)]
        if device.type == "cuda":
            settings.append((esm2_3b, args.esm2_3b_model, torch.float32))        # as published
        rows = [time_extraction(p, m, fasta, device, dtype, args.runs, args.toks_per_batch, args.random_weights,
                                args.models_dir)
                for p, m, dtype in settings]
    comparisons = [("same precision", rows[0]["mean_s"] / rows[1]["mean_s"])]
    if device.type == "cuda":
        comparisons.append(("as deployed (FastESM2_650 fp16, ESM2-3B fp32)", rows[0]["mean_s"] / rows[2]["mean_s"]))
    verdict = "PASSED" if comparisons[0][1] <= 0.5 else "FAILED"
    lengths = [len(p) for _, p in proteins]
    note = (f"{count} proteins ({min(lengths)}-{max(lengths)} aa) from the stop-free frames of "
            f"{os.path.relpath(args.reads, ROOT) if args.reads.startswith(ROOT) else args.reads}"
            + ("; random weights of the real shapes" if args.random_weights else ""))
    write_report(args.report, device, rows, comparisons, verdict, note)
    for row in rows:
        print(f"{row['model']:>13} {row['precision']}: {row['mean_s']:.3f} s, {row['sequences_per_s']:.1f} seq/s")
    for name, ratio in comparisons:
        print(f"{name}: FastESM2_650 takes {ratio:.1%} of ESM2-3B's time ({1 / ratio:.2f}x)")
    print(f"{verdict}; report: {args.report}")
    return 0 if verdict == "PASSED" else 1


if __name__ == "__main__":
    units.run_cli(main)
