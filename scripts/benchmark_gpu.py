#!/usr/bin/env python3
"""One GPU session that measures the whole GPU path, step by step.

    python scripts/benchmark_gpu.py -o gpu_session/          # on a GPU node, about 4 minutes on an H100 (estimated)
    python scripts/benchmark_gpu.py -o smoke/ --smoke        # the same steps at tiny shapes on the CPU, ~30 s

Models have random weights of the real shapes (speed does not depend on the
weights), made on the GPU itself, and DNABERT-S's real tokenizer
(tests/data/arch_tiny/dnabert_s), so nothing is downloaded. The steps, each
written to DIR/benchmark_gpu.json and to the markdown report as soon as it is
done (a session cut short keeps the finished ones):

  versions      torch, CUDA, cuDNN, the NVIDIA driver, the GPU
  ceilings      dense matmul TFLOP/s per precision, and memory bandwidth
  kernels       the attention each encoder's inference really ran: the SDPA
                operator the dispatcher chose and the GPU kernels it launched,
                from the profiler (DNABERT-S; FastESM2_650 with and without
                padding; ESM2-3B)
  dnabert       DNABERT-S frames/s in fp32, TF32, bf16 and fp16 at two token
                budgets, on 4,096 frames, and the agreement of each with fp32
  proteins      FastESM2_650 and ESM2-3B proteins/s in fp16 and bf16 at two
                token budgets, on the same 4,096 frames, and their agreement
                with fp32 (fp32 itself only as the reference, on 256 frames)
  end_to_end    prediction's path on --reads 500-bp reads: frames/s without
                the models' loading, the first shard apart from the others
                (what is built once per batch shape shows there), and the
                GPU's utilisation sampled by nvidia-smi meanwhile
  host_ceiling  the frames/s the node's cores can feed (stand-in encoders)

The report (--report; default reports/benchmark_gpu.md, or
DIR/benchmark_gpu.md with --smoke) says at which precision each row ran: fp32
runs on CUDA cores, TF32 (prediction.py --tf32) on tensor cores. A step that
fails is recorded with its error and the session goes on. Every speed is of
one run after a warm-up.
"""
from __future__ import annotations

import argparse
import copy
import functools
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import NamedTuple
from unittest import mock

import torch

import units
from benchmarking import random_models, synthetic
from benchmarking.timing import Clock, agreement, timed
from virnucpro.commands import options
from virnucpro.commands.cli import at_least, run_cli
from virnucpro.devices import device_name, nvidia_driver, refuse_an_unusable_gpu, resolve_device
from virnucpro.errors import InputError
from virnucpro.files import atomic_write
from virnucpro.models import loaders
from virnucpro.models.loaders import PIPELINES, esm_tokenizer
from virnucpro.models.pins import MERGED_DIM
from virnucpro.prediction import outputs, predict, shards
from virnucpro.runs import read_record
from virnucpro.scoring import engine
from virnucpro.scoring.calls import NUM_CLASSES
from virnucpro.scoring.checkpoints import HIDDEN_DIM
from virnucpro.sequences.fasta import write_fasta

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOKENIZER_FOLDER = os.path.join(ROOT, "tests", "data", "arch_tiny", "dnabert_s")
RESULT_FILE = "benchmark_gpu.json"
AGREEMENT_FRAMES = 256             # frames whose features are compared with fp32
# (hidden, layers, heads, intermediate) of the smoke test: one layer; the pipeline's encoders keep their
# output widths, which the classifier of the end-to-end step needs
SMOKE_SHAPES = {"dnabert": (768, 1, 12, 64), "fastesm650": (1280, 1, 4, 64), "esm2_3b": (64, 1, 4, 32)}
REAL_SHAPES = {"dnabert": random_models.DNABERT_S_SHAPE, "fastesm650": random_models.FASTESM2_650_SHAPE,
               "esm2_3b": random_models.ESM2_3B_SHAPE}


class Session:
    """The session's sizes, its folder and its results, saved (JSON and report) after every step."""

    def __init__(self, args, device, report_path: str):
        self.device, self.smoke, self.out, self.report_path = device, args.smoke, args.output_dir, report_path
        self.shapes = SMOKE_SHAPES if args.smoke else REAL_SHAPES
        self.synthetic_frames = synthetic.synthetic_frames(8 if args.smoke else 4096, seed=1)
        self.budgets = (512, 2048) if args.smoke else (16384, 65536)
        self.reads = args.reads or (20 if args.smoke else 20_000)
        self.results = {"smoke": args.smoke, "steps": {}}

    def run(self, name: str, step) -> None:
        started = time.perf_counter()
        try:
            result = step(self)
        except Exception as error:              # recorded, and the session goes on to the next step
            result = {"error": f"{error.__class__.__name__}: {str(error).strip().splitlines()[0][:300]}"}
        result["seconds"] = round(time.perf_counter() - started, 2)
        self.results["steps"][name] = result
        with atomic_write(os.path.join(self.out, RESULT_FILE)) as handle:
            json.dump(self.results, handle, indent=1)
        with atomic_write(self.report_path) as handle:
            handle.write(report(self.results) + "\n")
        print(f"{name}: {'error: ' + result['error'] if 'error' in result else 'done'} ({result['seconds']} s)")


# ---------------------------------------------------------------- the steps
def versions(session: Session) -> dict:
    on_gpu = session.device.type == "cuda"
    return {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "cudnn": torch.backends.cudnn.version() if on_gpu else None, "driver": nvidia_driver(),
            "device": device_name(session.device), "cpu_cores": os.cpu_count()}


def ceilings(session: Session) -> dict:
    """Dense matmul throughput per precision and the copy bandwidth: what the encoders' rates are set against."""
    device, size = session.device, 256 if session.smoke else 8192
    matmul = {}
    for label, dtype, tf32 in (("fp32", torch.float32, False), ("tf32", torch.float32, True),
                               ("bf16", torch.bfloat16, False), ("fp16", torch.float16, False)):
        a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
        with tf32_matmul(tf32):
            a @ b                                                                       # warm-up
            seconds = timed(lambda: [a @ b for _ in range(10)], device) / 10
        matmul[label] = round(2 * size ** 3 / seconds / 1e12, 2)
    block = torch.empty((8 if session.smoke else 1024) << 20, dtype=torch.uint8, device=device)
    copy_seconds = timed(lambda: [block.clone() for _ in range(10)], device) / 10
    return {"matmul_tflops": matmul, "matrix_size": size,
            "copy_gb_per_s": round(2 * block.numel() / copy_seconds / 1e9, 1)}


def kernels(session: Session) -> dict:
    """The attention each encoder's inference ran (``engine.embed_rows``, its kernels and batch shapes, in the
    half precision of a GPU run), from the profiler: the SDPA operators the dispatcher chose, and the GPU
    kernels they launched (on a CPU, the operators alone)."""
    from transformers import PreTrainedTokenizerFast

    device = session.device
    half = (lambda dtype: dtype) if device.type == "cuda" else (lambda dtype: torch.float32)
    tokenizer = PreTrainedTokenizerFast.from_pretrained(TOKENIZER_FOLDER, local_files_only=True)
    frames = session.synthetic_frames[:64]
    proteins, equal = [protein for _, _, protein in frames], [frames[0][2]] * len(frames)
    runs = {"DNABERT-S": (lambda: random_models.random_dnabert(session.shapes["dnabert"], len(tokenizer),
                                                               device=device), torch.bfloat16, tokenizer,
                          [dna for _, dna, _ in frames], engine.DnaEncoder, engine.dna_tokenizing(tokenizer)),
            "FastESM2_650, padded": (lambda: random_models.random_esm(session.shapes["fastesm650"], device=device),
                                     torch.float16, esm_tokenizer(), proteins, engine.ProteinEncoder, None),
            "FastESM2_650, one length": (lambda: random_models.random_esm(session.shapes["fastesm650"],
                                                                          device=device),
                                         torch.float16, esm_tokenizer(), equal, engine.ProteinEncoder, None),
            "ESM2-3B": (lambda: random_models.random_esm(session.shapes["esm2_3b"], device=device), torch.float16,
                        esm_tokenizer(), proteins, engine.ProteinEncoder, None)}
    found = {}
    for name, (make, dtype, encoder_tokenizer, sequences, encoder, tokenize) in runs.items():
        model = make().to(half(dtype))
        rows = (tokenize or engine.protein_tokenizing(encoder_tokenizer))(sequences)
        embed = functools.partial(engine.embed_rows, encoder(model), rows, [str(k) for k in range(len(rows))],
                                  encoder_tokenizer.pad_token_id, session.budgets[0], name)
        embed()                                                                          # warm-up
        found[name] = attention_kernels(embed, device)
        del model
        release_memory(device)
    return found


def attention_kernels(run, device) -> dict:
    """The SDPA operators and the GPU attention kernels ``run()`` ran, as the profiler names them."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device.type == "cuda")
    with profile(activities=activities) as profiler:
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = profiler.events()
    operators = sorted({event.name for event in events if event.name.startswith("aten::_scaled_dot_product")})
    gpu = sorted({event.name for event in events if str(event.device_type).endswith("CUDA")
                  and any(word in event.name.lower() for word in ("fmha", "flash", "attention", "cudnn", "sdpa"))})
    return {"operators": operators, "gpu_kernels": gpu}


def dnabert(session: Session) -> dict:
    """DNABERT-S (random weights, the real tokenizer) over synthetic 500-bp frames."""
    from transformers import PreTrainedTokenizerFast

    tokenizer = PreTrainedTokenizerFast.from_pretrained(TOKENIZER_FOLDER, local_files_only=True)
    model = random_models.random_dnabert(session.shapes["dnabert"], len(tokenizer), device=session.device)
    frames = frame_files(session, "frames.fna", [(i, dna) for i, dna, _ in session.synthetic_frames])
    settings = [("fp32", torch.float32, False), ("tf32", torch.float32, True), ("bf16", torch.bfloat16, False),
                ("fp16", torch.float16, False)]
    return rates(session, settings, model, frames, lambda network, budget, fasta: torch.stack(
        [item["mean_representation"] for item in units.extract_DNABERT_S(
            fasta, model=network, tokenizer=tokenizer, toks_per_batch=budget)["data"]]))


def proteins(session: Session) -> dict:
    """FastESM2_650 and ESM2-3B (random weights of their shapes) over the frames' proteins, in the half
    precisions a GPU runs them in (fp32 only as the reference: ESM2-3B in fp32 would take most of the session)."""
    frames = frame_files(session, "frames.faa", [(i, aa) for i, _, aa in session.synthetic_frames])
    settings = [("fp16", torch.float16, False), ("bf16", torch.bfloat16, False)]
    found = {}
    for name in ("fastesm650", "esm2_3b"):
        model = random_models.random_esm(session.shapes[name], device=session.device)
        found[PIPELINES[name].protein.name] = rates(session, settings, model, frames, lambda network, budget, fasta:
                                                    torch.stack(units.extract_protein(
                                                        PIPELINES[name], fasta, None, network, esm_tokenizer(),
                                                        toks_per_batch=budget)["data"]))
        del model
        release_memory(session.device)
    return found


class Frames(NamedTuple):
    timed: str          # the FASTA of the timed frames
    first: str          # that of their first AGREEMENT_FRAMES: the warm-ups and the agreement with fp32 run on those
    count: int


def frame_files(session: Session, name: str, records: list) -> Frames:
    return Frames(write_fasta(os.path.join(session.out, name), records),
                  write_fasta(os.path.join(session.out, "first_" + name), records[:AGREEMENT_FRAMES]), len(records))


def rates(session: Session, settings, model, frames: Frames, embed) -> dict:
    """Sequences/s of ``embed(model in each precision, budget, fasta)`` over the frames at each token budget,
    and the agreement of the first frames' features with fp32 (smallest cosine, largest absolute difference)."""
    reference = embed(model, session.budgets[0], frames.first)
    rows = []
    for label, dtype, tf32 in settings:
        network = model if dtype == torch.float32 else copy.deepcopy(model).to(dtype)
        with tf32_matmul(tf32):
            embed(network, session.budgets[0], frames.first)                          # warm-up
            for budget in session.budgets:
                seconds = timed(lambda: embed(network, budget, frames.timed), session.device)
                cosine, difference = agreement(embed(network, budget, frames.first), reference)
                rows.append({"precision": label, "tokens_per_batch": budget, "sequences": frames.count,
                             "sequences_per_s": round(frames.count / seconds, 1), "min_cosine_to_fp32": cosine,
                             "max_abs_difference_to_fp32": difference})
        if network is not model:
            del network
            release_memory(session.device)
    return {"rows": rows}


def end_to_end(session: Session) -> dict:
    """prediction's whole path (predict.run) on synthetic reads with random-weight model folders."""
    with tempfile.TemporaryDirectory(dir=session.out) as folder:
        dna_folder = os.path.join(folder, "dnabert")
        os.makedirs(dna_folder)
        for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"):
            with open(os.path.join(TOKENIZER_FOLDER, name), "rb") as source, \
                    open(os.path.join(dna_folder, name), "wb") as target:
                target.write(source.read())
        random_models.save_random_dnabert_weights(dna_folder, session.shapes["dnabert"], vocab_size=4096)
        protein_folder = random_models.save_random_esm(os.path.join(folder, "fastesm"), session.shapes["fastesm650"],
                                                       fast_esm=True)
        reads, checkpoint = os.path.join(folder, "reads.fasta"), os.path.join(folder, "classifier.pth")
        synthetic.orf_reads(reads, session.reads)
        units.save_checkpoint(units.MLPClassifier(MERGED_DIM, HIDDEN_DIM, NUM_CLASSES), checkpoint,
                              chunk_length=synthetic.ORF_READ_LENGTH)
        classifier, metadata = units.load_checkpoint(checkpoint, chunk_length=synthetic.ORF_READ_LENGTH)
        request = predict.Request(
            input_path=reads, chunk_length=synthetic.ORF_READ_LENGTH, classifier_path=checkpoint,
            pipeline="fastesm650", output_dir=os.path.join(folder, "out"),
            min_length=predict.default_min_length(synthetic.ORF_READ_LENGTH), min_region=predict.MIN_REGION,
            min_score=None, max_fdr=None, device=str(session.device), dna_model=dna_folder,
            protein_model=protein_folder, models_dir=None, dna_batch_tokens=session.budgets[0],
            protein_batch_tokens=session.budgets[0], chunks_per_shard=predict.CHUNKS_PER_SHARD,
            keep_intermediate=False, plot=False, overwrite=False, slurm_array=False)
        clock = Clock()
        with GpuUtilisation(session.device) as utilisation, \
                mock.patch.object(loaders.Encoders, "load", clock.timing("loading", loaders.Encoders.load)), \
                mock.patch.object(shards, "score_shard", clock.timing("shards", shards.score_shard)):
            seconds = timed(lambda: predict.run(request, classifier, metadata, None), session.device)
        with open(os.path.join(request.output_dir, outputs.FRAMES_FILE)) as handle:
            frames = sum(1 for _ in handle) - 1
    scoring = seconds - clock.total("loading")
    return {"reads": session.reads, "frames": frames, "seconds_run": round(seconds, 2),
            "seconds_loading_models": round(clock.total("loading"), 2),
            "frames_per_s_without_loading": round(frames / scoring, 1),
            "first_shard_seconds": round(clock.seconds["shards"][0], 2),
            "other_shards_seconds": [round(value, 2) for value in clock.seconds["shards"][1:]],
            "gpu_utilisation_percent": utilisation.mean}


def host_ceiling(session: Session) -> dict:
    """benchmark_speed.py --host-ceiling on this node's cores."""
    result_file = os.path.join(session.out, "host_ceiling.json")
    done = subprocess.run([sys.executable, os.path.join(ROOT, "scripts", "benchmark_speed.py"), "--host-ceiling",
                           "--sequences", str(300 if session.smoke else 100_000), "--json", result_file],
                          capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(done.stderr.strip().splitlines()[-1] if done.stderr.strip() else "failed")
    result = read_record(result_file, "scripts/benchmark_speed.py", "run the session again")
    return {key: result[key] for key in ("frames", "cores", "frames_per_second", "host_frames_per_second")}


STEPS = (("versions", versions), ("ceilings", ceilings), ("kernels", kernels), ("dnabert", dnabert),
         ("proteins", proteins), ("end_to_end", end_to_end), ("host_ceiling", host_ceiling))


# ---------------------------------------------------------------- helpers
class tf32_matmul:
    """TF32 tensor-core matmuls on (or off) inside the block."""

    def __init__(self, on: bool):
        self.on = on

    def __enter__(self):
        self.saved = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = self.on

    def __exit__(self, *exc_info):
        torch.backends.cuda.matmul.allow_tf32 = self.saved


class GpuUtilisation:
    """The GPU's utilisation, sampled by ``nvidia-smi`` every 200 ms while the block runs (None without it)."""

    def __init__(self, device):
        self.device, self.samples, self.mean = device, [], None

    def __enter__(self):
        self.process = None
        if self.device.type == "cuda" and nvidia_driver():
            index = self.device.index if self.device.index is not None else torch.cuda.current_device()
            self.process = subprocess.Popen(
                ["nvidia-smi", f"--id={index}", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                 "-lms", "200"], stdout=subprocess.PIPE, text=True)
            self.reader = threading.Thread(target=lambda: self.samples.extend(
                float(line) for line in self.process.stdout if line.strip().isdigit()), daemon=True)
            self.reader.start()
        return self

    def __exit__(self, *exc_info):
        if self.process is not None:
            self.process.terminate()
            self.process.wait()
            self.reader.join(timeout=5)
            self.mean = round(statistics.fmean(self.samples), 1) if self.samples else None


def release_memory(device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- the report
def report(results: dict) -> str:
    steps = results["steps"]
    lines = ["# GPU session: the GPU path measured", ""]
    if results["smoke"]:
        lines += ["**Smoke test**: tiny shapes on the CPU; it checks that every step runs, and measures nothing.", ""]
    lines += ["Precisions: fp32 rows run on CUDA cores (torch's default, and ESM2-3B's as published); tf32 rows "
              "run the same float32 weights on tensor cores (prediction.py --tf32); bf16 and fp16 are what a GPU "
              "run uses by default (DNABERT-S bf16, FastESM2_650 fp16).", ""]
    if "versions" in steps:
        lines += ["| | |", "|---|---|"] + [f"| {key} | {value} |" for key, value in steps["versions"].items()
                                             if key != "seconds"] + [""]
    for name, result in steps.items():
        if name == "versions":
            continue
        lines += [f"## {name}", ""]
        if "error" in result:
            lines += [f"Failed: {result['error']}", ""]
        elif "rows" in result:
            lines += table(result["rows"])
        elif name == "kernels":
            lines += table([{"encoder's batch": encoder, "SDPA operator": ", ".join(found["operators"]),
                             "GPU kernels": ", ".join(found["gpu_kernels"]) or "-"}
                            for encoder, found in result.items() if encoder != "seconds"])
        elif name == "proteins":
            for model, found in result.items():
                if isinstance(found, dict):
                    lines += [f"**{model}**", ""] + table(found["rows"])
        else:
            lines += ["```", json.dumps({k: v for k, v in result.items() if k != "seconds"}, indent=1), "```", ""]
    return "\n".join(lines)


def table(rows: list[dict]) -> list[str]:
    columns = list(rows[0])
    return ([f"| {' | '.join(columns)} |", "|" + "---|" * len(columns)]
            + [f"| {' | '.join(format_cell(row[c]) for c in columns)} |" for row in rows] + [""])


def format_cell(value) -> str:
    return f"{value:.7g}" if isinstance(value, float) else str(value)


def main(argv=None):
    parser = options.parser(__doc__)
    options.output_dir(parser, "the session's JSON and work files (required)")
    parser.add_argument("--out", dest="output_dir", help=argparse.SUPPRESS)          # its first spelling
    parser.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: every step runs, in seconds")
    parser.add_argument("--reads", type=at_least(1), help="reads of the end-to-end step (default 20,000)")
    parser.add_argument("--report", help="markdown report (default reports/benchmark_gpu.md, or DIR/benchmark_gpu.md "
                                         "with --smoke)")
    args = parser.parse_args(argv)
    if args.output_dir is None:
        parser.error("the following arguments are required: -o/--output-dir")
    if not args.smoke and not torch.cuda.is_available():
        refuse_an_unusable_gpu("cuda")                      # a GPU this torch cannot use: says which build
        raise InputError("no CUDA GPU is available here, and the session measures one; --smoke runs its steps "
                         "on the CPU")
    device = resolve_device("cpu" if args.smoke else "cuda")
    os.makedirs(args.output_dir, exist_ok=True)
    path = args.report or (os.path.join(args.output_dir, "benchmark_gpu.md") if args.smoke else
                           os.path.join(ROOT, "reports", "benchmark_gpu.md"))
    session = Session(args, device, path)
    for name, step in STEPS:
        session.run(name, step)
    print(f"results: {os.path.join(args.output_dir, RESULT_FILE)}; report: {path}")
    return 0


if __name__ == "__main__":
    run_cli(main)
