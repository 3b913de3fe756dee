#!/usr/bin/env python3
"""Benchmark embedding extraction throughput, side by side in one process.

  1. DNABERT-S (this project's dnabert_s.py, the real architecture): batched
     extraction (extract_DNABERT_S, SDPA attention) against the published
     one-sequence-at-a-time loop and against batched extraction through the
     reference code's explicit (eager) attention, all in float32; then the
     same batched extraction in bfloat16 (and float16 on a GPU), with the
     agreement of those features with float32 (smallest cosine, largest
     absolute difference);
  2. protein models: a FastESM2_650-shaped model against an ESM2-3B-shaped
     model, both through the extraction code, on the same proteins.

Models have random weights of the real shapes (throughput does not depend on
the weights), so no download is needed: DNABERT-S 12 layers, 768 wide, 12
heads, 3072 gated-GELU units, 4096-token BPE vocabulary. Frames come from
synthetic genes cut into 500-bp chunks. Prints markdown tables: sequences/s,
tokens/s, ratios, precision agreement.
"""
from __future__ import annotations

import copy
import functools
import gc
import math
import tempfile
from unittest import mock

import torch

import units
from benchmarking import random_models, synthetic
from benchmarking.timing import agreement, timed
from virnucpro.commands import options
from virnucpro.commands.cli import at_least, run_cli
from virnucpro.devices import device_name, resolve_device
from virnucpro.models import dnabert_s
from virnucpro.models.loaders import PIPELINES, esm_tokenizer
from virnucpro.precision import dtype_name
from virnucpro.scoring.engine import DNA_TOKS_PER_BATCH, PROTEIN_TOKS_PER_BATCH
from virnucpro.sequences.fasta import read_fasta, write_fasta


def one_at_a_time_dnabert(model, tokenizer, sequences, device):
    """The published extraction loop: one sequence per forward, no padding."""
    for sequence in sequences:
        input_ids = tokenizer(sequence, return_tensors="pt")["input_ids"].to(device)
        with torch.inference_mode():
            model(input_ids)[0].mean(dim=1).cpu()


def eager_attention(query, key, value, attn_mask):
    """The reference code's PyTorch attention path: explicit scores, bias, softmax."""
    scores = query @ key.transpose(-1, -2) / math.sqrt(query.shape[-1]) + attn_mask
    return torch.softmax(scores, dim=-1) @ value


def dna_vectors(features: dict) -> torch.Tensor:
    return torch.stack([item["mean_representation"] for item in features["data"]])


def bench_dnabert(folder, nucleotide_file, device, toks_per_batch, half_dtypes):
    """Throughput rows, and the agreement of half-precision features with fp32."""
    tokenizer = random_models.save_dna_tokenizer(folder)
    model = random_models.random_dnabert(random_models.DNABERT_S_SHAPE, len(tokenizer)).to(device)
    sequences = [r.sequence for r in read_fasta(nucleotide_file)]
    tokens = sum(len(ids) for ids in tokenizer(sequences)["input_ids"])

    def batched(network):
        return units.extract_DNABERT_S(nucleotide_file, model=network, tokenizer=tokenizer,
                                       toks_per_batch=toks_per_batch)

    reference = batched(model)                                                             # warm-up
    with mock.patch.object(dnabert_s.F, "scaled_dot_product_attention", eager_attention):
        eager_seconds = timed(lambda: batched(model), device)
    rows = [("DNABERT-S float32, one at a time (published loop)",
             timed(lambda: one_at_a_time_dnabert(model, tokenizer, sequences, device), device)),
            (f"DNABERT-S float32, batched, eager attention ({toks_per_batch} tokens/batch)", eager_seconds),
            (f"DNABERT-S float32, batched, SDPA ({toks_per_batch} tokens/batch)",
             timed(lambda: batched(model), device))]
    agreements = []
    for dtype in half_dtypes:
        half = copy.deepcopy(model).to(dtype)
        features = batched(half)                                                           # warm-up
        rows.append((f"DNABERT-S {dtype_name(dtype)}, batched, SDPA", timed(lambda: batched(half), device)))
        agreements.append((dtype_name(dtype), *agreement(dna_vectors(features), dna_vectors(reference))))
    return [(name, len(sequences), tokens, seconds) for name, seconds in rows], agreements


def bench_protein(protein_file, device, dtype, toks_per_batch):
    sequences = [r.sequence for r in read_fasta(protein_file, alphabet="protein")]
    tokens = sum(len(s) + 2 for s in sequences)
    tokenizer = esm_tokenizer()
    rows = []
    for name, shape, pipeline in (("FastESM2_650-shaped", random_models.FASTESM2_650_SHAPE, PIPELINES["fastesm650"]),
                                  ("ESM2-3B-shaped", random_models.ESM2_3B_SHAPE, PIPELINES["esm2_3b"])):
        model = random_models.random_esm(shape).to(device=device, dtype=dtype)
        run = functools.partial(units.extract_protein, pipeline, protein_file, None, model, tokenizer,
                                toks_per_batch=toks_per_batch)
        run()                                                                              # warm-up
        rows.append((f"{name} ({dtype_name(dtype)}, SDPA)", len(sequences), tokens, timed(run, device)))
        del model, run
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def main(argv=None):
    parser = options.parser(__doc__)
    options.device(parser)
    parser.add_argument("--dna-frames", type=at_least(1), default=None,
                        help="DNA frames for benchmark 1 (default 2000 on GPU, 64 on CPU)")
    parser.add_argument("--proteins", type=at_least(1), default=None,
                        help="proteins for benchmark 2 (default 2000 on GPU, 8 on CPU)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    on_gpu = device.type == "cuda"
    dna_count = args.dna_frames or (2000 if on_gpu else 64)
    protein_count = args.proteins or (2000 if on_gpu else 8)
    dtype = torch.float16 if on_gpu else torch.float32

    with tempfile.TemporaryDirectory() as folder:
        frames = synthetic.synthetic_frames(max(dna_count, protein_count), args.seed)
        nucleotide_file = write_fasta(f"{folder}/frames.fa", [(i, dna) for i, dna, _ in frames[:dna_count]])
        protein_file = write_fasta(f"{folder}/frames.faa", [(i, aa) for i, _, aa in frames[:protein_count]])
        half_dtypes = (torch.bfloat16, torch.float16) if on_gpu else (torch.bfloat16,)
        dna_rows, agreements = bench_dnabert(folder, nucleotide_file, device, DNA_TOKS_PER_BATCH, half_dtypes)
        protein_rows = bench_protein(protein_file, device, dtype, toks_per_batch=PROTEIN_TOKS_PER_BATCH)

    print(f"Device: {device_name(device)}\n")
    print("| extraction | sequences | tokens | seconds | sequences/s | tokens/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, count, tokens, seconds in dna_rows + protein_rows:
        print(f"| {label} | {count} | {tokens} | {seconds:.2f} | {count / seconds:.1f} | {tokens / seconds:.0f} |")
    print(f"\nDNABERT-S batched SDPA vs one at a time: {dna_rows[0][3] / dna_rows[2][3]:.1f}x; "
          f"vs batched eager attention: {dna_rows[1][3] / dna_rows[2][3]:.2f}x")
    print(f"FastESM2_650-shaped vs ESM2-3B-shaped: {protein_rows[1][3] / protein_rows[0][3]:.1f}x")
    print("\nDNABERT-S features in half precision against float32 (same weights, same frames):\n")
    print("| precision | smallest cosine | largest abs difference |")
    print("|---|---:|---:|")
    for name, cosine, difference in agreements:
        print(f"| {name} | {cosine:.6f} | {difference:.2e} |")
    return 0


if __name__ == "__main__":
    run_cli(main)
