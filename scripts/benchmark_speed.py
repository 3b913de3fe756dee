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
ESM2-3B's time at the same precision (exit status 0, else 1). A run on a CPU,
of fewer than 500 proteins or of fewer than 3 runs is a smoke test: its
report says why and gives no verdict (exit status 0).

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
Models: the default Hugging Face models, local folders (--protein-model for
FastESM2_650, --baseline-protein-model for ESM2-3B), or random weights of the real shapes (--random-weights, no
download). A CPU run with small sizes is a smoke test, not a measurement.
"""
from __future__ import annotations

import functools
import gc
import json
import os
import statistics
import tempfile

import torch

import units
from benchmarking import random_models, synthetic
from benchmarking.host_ceiling import measure, print_result
from benchmarking.synthetic import ORF_READ_LENGTH
from benchmarking.timing import timed
from virnucpro.commands import options
from virnucpro.commands.cli import at_least, run_cli
from virnucpro.devices import device_name, resolve_device
from virnucpro.errors import InputError
from virnucpro.files import atomic_write
from virnucpro.models.loaders import PIPELINES, Pipeline, esm_tokenizer
from virnucpro.models.modelfiles import model_folder
from virnucpro.models.pins import MERGED_DIM
from virnucpro.prediction import predict
from virnucpro.scoring.calls import NUM_CLASSES
from virnucpro.scoring.checkpoints import HIDDEN_DIM
from virnucpro.scoring.engine import DNA_TOKS_PER_BATCH, PROTEIN_TOKS_PER_BATCH
from virnucpro.sequences.fasta import read_fasta, write_fasta

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAMPLE = os.path.join(ROOT, "data", "sample.fasta")
FLOP_RATIO = 4.4
MEASURED_PROTEINS, MEASURED_RUNS = 500, 3     # fewer make a smoke test, whose ratio is no verdict
TOKENIZER_FOLDER = os.path.join(ROOT, "tests", "data", "arch_tiny", "dnabert_s")
PROTEIN_FOLDER = os.path.join(ROOT, "tests", "data", "arch_tiny", "fastesm650")
HOST_CEILING_READS = 100_000


def load(pipeline: Pipeline, model: str | None, device, dtype, random_weights: bool, models: str | None):
    """The pipeline's protein model: the real one, or random weights of its shape."""
    if random_weights:
        shape = random_models.FASTESM2_650_SHAPE if pipeline.name == "fastesm650" else random_models.ESM2_3B_SHAPE
        return random_models.random_esm(shape).to(device=device, dtype=dtype), esm_tokenizer()
    return pipeline.load_protein(model_folder(pipeline.protein, model, models), device, dtype)


def time_extraction(pipeline, model_source, fasta, device, dtype, runs, toks_per_batch, random_weights,
                    models) -> dict:
    """Protein-embedding time of a pipeline's model over ``runs`` runs after a warm-up."""
    model, tokenizer = load(pipeline, model_source, device, dtype, random_weights, models)
    sequences = [record.sequence for record in read_fasta(fasta, alphabet="protein")]

    extract = functools.partial(units.extract_protein, pipeline, fasta, None, model, tokenizer,
                                toks_per_batch=toks_per_batch)
    extract()                                                   # warm-up
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    seconds = [timed(extract, device) for _ in range(runs)]
    peak = torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None
    del model, extract
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    mean = statistics.mean(seconds)
    return {"model": pipeline.protein.name, "precision": str(dtype).replace("torch.", ""), "mean_s": mean,
            "min_s": min(seconds), "median_s": statistics.median(seconds), "sequences": len(sequences),
            "sequences_per_s": len(sequences) / mean,
            "tokens_per_s": sum(len(s) + 2 for s in sequences) / mean, "peak_gpu_mb": peak}


def time_end_to_end(args, device) -> list[dict]:
    """The whole prediction (chunking to calls) of the sample reads, with each pipeline's classifier."""
    rows = []
    reads = sum(1 for _ in read_fasta(args.reads))
    for name, checkpoint in (("fastesm650", args.checkpoint), ("esm2_3b", args.baseline_checkpoint)):
        if not checkpoint:
            continue
        classifier, metadata = units.load_checkpoint(checkpoint, name, chunk_length=300)
        with tempfile.TemporaryDirectory() as output:
            request = predict.Request(
                input_path=args.reads, chunk_length=300, classifier_path=checkpoint, pipeline=name, output_dir=output,
                min_length=predict.default_min_length(300), min_region=predict.MIN_REGION, min_score=None,
                max_fdr=None, device=str(device),
                dna_model=args.dna_model, protein_model=args.protein_model if name == "fastesm650" else
                args.baseline_protein_model, models_dir=args.models_dir, dna_batch_tokens=args.dna_batch_tokens,
                protein_batch_tokens=args.protein_batch_tokens, chunks_per_shard=predict.CHUNKS_PER_SHARD,
                keep_intermediate=False, plot=False, overwrite=False, slurm_array=False, dna_fp32=args.dna_fp32,
                tf32=args.tf32)
            seconds = timed(lambda: predict.run(request, classifier, metadata, None), device)
        rows.append({"pipeline": name, "seconds": seconds, "reads": reads, "reads_per_s": reads / seconds})
    if not rows:
        raise InputError("--end-to-end needs --checkpoint and/or --baseline-checkpoint")
    return rows


def host_ceiling(args) -> dict:
    """The prediction path with stand-in encoders on synthetic reads (host_ceiling.measure)."""
    reads = args.sequences or HOST_CEILING_READS
    with tempfile.TemporaryDirectory() as folder:
        input_path, checkpoint = os.path.join(folder, "reads.fasta"), os.path.join(folder, "classifier.pth")
        synthetic.orf_reads(input_path, reads, args.contig_length)
        torch.manual_seed(0)
        units.save_checkpoint(units.MLPClassifier(MERGED_DIM, HIDDEN_DIM, NUM_CLASSES), checkpoint,
                              chunk_length=ORF_READ_LENGTH)
        classifier, metadata = units.load_checkpoint(checkpoint, chunk_length=ORF_READ_LENGTH)
        request = predict.Request(
            input_path=input_path, chunk_length=ORF_READ_LENGTH, classifier_path=checkpoint, pipeline="fastesm650",
            output_dir=os.path.join(folder, "out"), min_length=predict.default_min_length(ORF_READ_LENGTH),
            min_region=predict.MIN_REGION, min_score=None,
            max_fdr=None, device="cpu", dna_model=TOKENIZER_FOLDER, protein_model=PROTEIN_FOLDER, models_dir=None,
            dna_batch_tokens=DNA_TOKS_PER_BATCH, protein_batch_tokens=PROTEIN_TOKS_PER_BATCH,
            chunks_per_shard=predict.CHUNKS_PER_SHARD, keep_intermediate=False, plot=False, overwrite=False,
            slurm_array=False)
        description = (f"one {args.contig_length}-bp contig" if args.contig_length else
                       f"{reads} reads of {ORF_READ_LENGTH} bp")
        return measure(request, classifier, metadata, description)


def smoke_test_reasons(device, proteins: int, runs: int) -> str:
    """Why a run is a smoke test rather than a measurement ("" when it is one)."""
    reasons = ["a CPU run"] * (device.type != "cuda")
    reasons += [f"{proteins} proteins, fewer than {MEASURED_PROTEINS}"] * (proteins < MEASURED_PROTEINS)
    reasons += [f"{runs} timed runs, fewer than {MEASURED_RUNS}"] * (runs < MEASURED_RUNS)
    return "; ".join(reasons)


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
    lines += ["", f"PASSED needs at most 50% of ESM2-3B's time at the same precision, on a GPU, over at least "
                  f"{MEASURED_PROTEINS} proteins and {MEASURED_RUNS} timed runs. At equal precision the "
                  f"FLOP ratio of the two models is about {FLOP_RATIO}x; a fp16-vs-fp32 comparison mixes the model "
                  "change with the precision change.", ""]
    with atomic_write(path) as handle:
        handle.write("\n".join(lines))


def write_end_to_end_report(path, device, rows) -> None:
    lines = ["# Speed benchmark: end to end (chunking to calls)", "", f"- Device: {device_name(device)}", "",
             "| pipeline | reads | seconds | reads/s |", "|---|---:|---:|---:|"]
    lines += [f"| {r['pipeline']} | {r['reads']} | {r['seconds']:.2f} | {r['reads_per_s']:.2f} |" for r in rows]
    with atomic_write(path) as handle:
        handle.write("\n".join(lines) + "\n")


def main(argv=None):
    parser = options.parser(__doc__)
    options.device(parser)
    parser.add_argument("--sequences", type=at_least(1), help="proteins per run (default 2000 on a GPU, 16 on a CPU)")
    parser.add_argument("--runs", type=at_least(1), default=3, help="timed runs after the warm-up (default 3)")
    options.encoder_settings(parser)
    parser.add_argument("--reads", default=SAMPLE, help="sample reads (default: data/sample.fasta)")
    options.language_models(parser, baseline=True)
    options.models_dir(parser)
    parser.add_argument("--random-weights", action="store_true", help="random models of the real shapes")
    parser.add_argument("--end-to-end", action="store_true", help="time the whole prediction per pipeline")
    parser.add_argument("--checkpoint", help="FastESM2_650 classifier, for --end-to-end")
    parser.add_argument("--baseline-checkpoint", help="ESM2-3B classifier (e.g. 300_model.pth), for --end-to-end")
    parser.add_argument("--host-ceiling", action="store_true",
                        help="time the prediction path with zero-cost stand-in encoders (--sequences reads, "
                             f"default {HOST_CEILING_READS:,}: enough to outweigh the start-up)")
    parser.add_argument("--json", help="with --host-ceiling: write the result to this JSON file")
    parser.add_argument("--contig-length", type=at_least(1), metavar="BP",
                        help="with --host-ceiling: one synthetic contig of this length instead of reads")
    parser.add_argument("--report", default="reports/speed_benchmark.md", help="report path (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.host_ceiling:
        result = host_ceiling(args)
        print_result(result)
        if args.json:
            with atomic_write(args.json) as handle:
                json.dump(result, handle, indent=1)
        return 0
    device = resolve_device(args.device)
    if args.end_to_end:
        rows = time_end_to_end(args, device)
        write_end_to_end_report(args.report, device, rows)
        for row in rows:
            print(f"{row['pipeline']}: {row['seconds']:.2f} s for {row['reads']} reads")
        print(f"report: {args.report}")
        return 0

    count = args.sequences or (2000 if device.type == "cuda" else 16)
    half = torch.float16 if device.type == "cuda" else torch.float32
    fastesm, esm2_3b = PIPELINES["fastesm650"], PIPELINES["esm2_3b"]
    proteins = synthetic.sample_proteins(args.reads, count)
    with tempfile.TemporaryDirectory() as folder:
        fasta = write_fasta(os.path.join(folder, "proteins.faa"), proteins)
        settings = [(fastesm, args.protein_model, half), (esm2_3b, args.baseline_protein_model, half)]
        if device.type == "cuda":
            settings.append((esm2_3b, args.baseline_protein_model, torch.float32))        # as published
        rows = [time_extraction(p, m, fasta, device, dtype, args.runs, args.protein_batch_tokens, args.random_weights,
                                args.models_dir)
                for p, m, dtype in settings]
    comparisons = [("same precision", rows[0]["mean_s"] / rows[1]["mean_s"])]
    if device.type == "cuda":
        comparisons.append(("as deployed (FastESM2_650 fp16, ESM2-3B fp32)", rows[0]["mean_s"] / rows[2]["mean_s"]))
    smoke = smoke_test_reasons(device, count, args.runs)
    verdict = f"NO VERDICT: a smoke test ({smoke}), not a measurement" if smoke else \
        "PASSED" if comparisons[0][1] <= 0.5 else "FAILED"
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
    return 1 if verdict == "FAILED" else 0


if __name__ == "__main__":
    run_cli(main)
