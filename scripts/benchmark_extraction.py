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

import argparse
import copy
import gc
import math
import random
import time
from unittest import mock

import torch

import units

# Real shapes: (hidden, layers, heads, intermediate)
DNABERT_S_SHAPE = (768, 12, 12, 3072)
FASTESM2_650_SHAPE = (1280, 33, 20, 5120)
ESM2_3B_SHAPE = (2560, 36, 40, 10240)


# ---------------------------------------------------------------- random models of a given shape
# DNABERT-S's config.json as published (zhihan1996/DNABERT-S), less the shape fields.
DNABERT_S_CONFIG = {
    "_name_or_path": "zhihan1996/DNABERT-2-117M", "alibi_starting_size": 512, "architectures": ["BertModel"],
    "attention_probs_dropout_prob": 0.0,
    "auto_map": {"AutoConfig": "configuration_bert.BertConfig", "AutoModel": "bert_layers.BertModel",
                 "AutoModelForMaskedLM": "bert_layers.BertForMaskedLM",
                 "AutoModelForSequenceClassification": "bert_layers.BertForSequenceClassification"},
    "classifier_dropout": None, "gradient_checkpointing": False, "hidden_act": "gelu", "hidden_dropout_prob": 0.1,
    "initializer_range": 0.02, "layer_norm_eps": 1e-12, "max_position_embeddings": 512, "model_type": "bert",
    "pad_token_id": 0, "position_embedding_type": "absolute", "torch_dtype": "float32",
    "transformers_version": "4.28.0", "type_vocab_size": 2, "use_cache": True,
}


def save_dna_tokenizer(folder, vocab_size=4096, seed=0):
    """A BPE tokenizer trained on random DNA, in DNABERT-S's form: [UNK]=0,
    [CLS]=1, [SEP]=2, [PAD]=3, [MASK]=4, whitespace pre-tokenizer, [CLS] x [SEP]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[UNK]", "[CLS]", "[SEP]", "[PAD]", "[MASK]"]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    rng = random.Random(seed)
    corpus = ["".join(rng.choices("ACGT", k=500)) for _ in range(2000)]
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                              show_progress=False))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(folder)
    return fast


def random_dnabert(shape, vocab_size, seed=0):
    """Our DNABERT-S architecture with random weights (BERT's N(0, 0.02) init)."""
    import dnabert_s

    hidden, layers, heads, intermediate = shape
    torch.manual_seed(seed)
    model = dnabert_s.DnabertModel(dnabert_s.DnabertConfig(
        vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=intermediate))
    for name, parameter in model.named_parameters():
        if "LayerNorm" in name or "layernorm" in name:
            torch.nn.init.constant_(parameter, 1.0 if name.endswith("weight") else 0.0)
        else:
            torch.nn.init.normal_(parameter, std=0.02)
    return model.eval()


def save_random_dnabert(folder, shape, vocab_size=4096, seed=0):
    """A folder in DNABERT-S's published layout (config.json with its auto_map,
    pytorch_model.bin with the published key names, tokenizer.json) that
    load_dnabert_s reads."""
    import json
    import os

    tokenizer = save_dna_tokenizer(folder, vocab_size, seed)
    model = random_dnabert(shape, len(tokenizer), seed)
    hidden, layers, heads, intermediate = shape
    config = {**DNABERT_S_CONFIG, "hidden_size": hidden, "num_hidden_layers": layers, "num_attention_heads": heads,
              "intermediate_size": intermediate, "vocab_size": len(tokenizer)}
    with open(os.path.join(folder, "config.json"), "w") as handle:
        json.dump(config, handle, indent=2)
    torch.save(model.state_dict(), os.path.join(folder, "pytorch_model.bin"))
    return folder


def random_esm(shape, seed=0, masked_lm=False):
    """An ESM-2 model of ``shape`` (rotary positions, token dropout, 33 tokens)."""
    from transformers import EsmConfig, EsmForMaskedLM, EsmModel

    hidden, layers, heads, intermediate = shape
    torch.manual_seed(seed)
    config = EsmConfig(vocab_size=len(units.ESM2_ALPHABET), hidden_size=hidden, num_hidden_layers=layers,
                       num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=1026,
                       position_embedding_type="rotary", token_dropout=True, mask_token_id=32, pad_token_id=1,
                       emb_layer_norm_before=False, layer_norm_eps=1e-5)
    return (EsmForMaskedLM(config) if masked_lm else EsmModel(config, add_pooling_layer=False)).eval()


# What FastPLMs writes into FastESM2_650's config.json: its own model type and remote code.
FASTESM_CONFIG_KEYS = {
    "model_type": "fast_esm", "architectures": ["FastEsmForMaskedLM"],
    "auto_map": {"AutoConfig": "modeling_fastesm.FastEsmConfig", "AutoModel": "modeling_fastesm.FastEsmModel",
                 "AutoModelForMaskedLM": "modeling_fastesm.FastEsmForMaskedLM"},
}


def save_random_esm(folder, shape, seed=0, fast_esm=False):
    """An ESM-2 masked-LM folder ('esm.' keys), in ESM2-3B's layout or, with
    ``fast_esm``, FastESM2_650's (config with model_type fast_esm and an auto_map)."""
    import json
    import os

    random_esm(shape, seed, masked_lm=True).save_pretrained(folder)
    if fast_esm:
        path = os.path.join(folder, "config.json")
        with open(path) as handle:
            config = json.load(handle)
        with open(path, "w") as handle:
            json.dump({**config, **FASTESM_CONFIG_KEYS}, handle, indent=2)
    return folder


# ---------------------------------------------------------------- inputs
def synthetic_frames(count, seed):
    """``count`` stop-free frames (DNA, protein) of 500-bp chunks of random genes."""
    from benchmark_sequence_layer import synthetic_genome

    genome, _ = synthetic_genome(max(50, count // 2), random.Random(seed))
    chunks = [(f"g_chunk_{k}", c) for k, c in enumerate(units.iter_chunks(genome, 500), start=1)]
    frames = [frame for frame in units.select_frames(chunks) if frame[2]]
    random.Random(seed).shuffle(frames)
    return frames[:count]


def write_fasta(path, records):
    with open(path, "w") as handle:
        for record_id, sequence in records:
            units.write_fasta_record(handle, record_id, sequence)
    return path


# ---------------------------------------------------------------- measurements
def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(function, device):
    synchronize(device)
    started = time.perf_counter()
    function()
    synchronize(device)
    return time.perf_counter() - started


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


def agreement(features, reference):
    """Smallest cosine similarity and largest absolute difference between two feature sets."""
    a = torch.stack([item["mean_representation"] for item in features["data"]])
    b = torch.stack([item["mean_representation"] for item in reference["data"]])
    return torch.nn.functional.cosine_similarity(a, b, dim=1).min().item(), (a - b).abs().max().item()


def bench_dnabert(folder, nucleotide_file, device, toks_per_batch, half_dtypes):
    """Throughput rows, and the agreement of half-precision features with fp32."""
    import dnabert_s

    tokenizer = save_dna_tokenizer(folder)
    model = random_dnabert(DNABERT_S_SHAPE, len(tokenizer)).to(device)
    sequences = [r.sequence for r in units.read_fasta(nucleotide_file)]
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
        rows.append((f"DNABERT-S {units.dtype_name(dtype)}, batched, SDPA", timed(lambda: batched(half), device)))
        agreements.append((units.dtype_name(dtype), *agreement(features, reference)))
    return [(name, len(sequences), tokens, seconds) for name, seconds in rows], agreements


def bench_protein(protein_file, device, dtype, toks_per_batch):
    sequences = [r.sequence for r in units.read_fasta(protein_file, alphabet="protein")]
    tokens = sum(len(s) + 2 for s in sequences)
    tokenizer = units.esm_tokenizer()
    rows = []
    for name, shape, pipeline in (("FastESM2_650-shaped", FASTESM2_650_SHAPE, units.PIPELINES["fastesm650"]),
                                  ("ESM2-3B-shaped", ESM2_3B_SHAPE, units.PIPELINES["esm2_3b"])):
        model = random_esm(shape).to(device=device, dtype=dtype)

        def run():
            units.extract_protein(pipeline, protein_file, None, model, tokenizer, toks_per_batch=toks_per_batch)

        run()                                                                              # warm-up
        rows.append((f"{name} ({str(dtype).replace('torch.', '')}, SDPA)", len(sequences), tokens,
                     timed(run, device)))
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def main(argv=None):
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto", help="cuda, cpu or auto (default)")
    parser.add_argument("--dna-frames", type=int, default=None,
                        help="DNA frames for benchmark 1 (default 2000 on GPU, 64 on CPU)")
    parser.add_argument("--proteins", type=int, default=None,
                        help="proteins for benchmark 2 (default 2000 on GPU, 8 on CPU)")
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    device = units.resolve_device(args.device)
    on_gpu = device.type == "cuda"
    dna_count = args.dna_frames or (2000 if on_gpu else 64)
    protein_count = args.proteins or (2000 if on_gpu else 8)
    dtype = torch.float16 if on_gpu else torch.float32

    with tempfile.TemporaryDirectory() as folder:
        frames = synthetic_frames(max(dna_count, protein_count), args.seed)
        nucleotide_file = write_fasta(f"{folder}/frames.fa", [(i, dna) for i, dna, _ in frames[:dna_count]])
        protein_file = write_fasta(f"{folder}/frames.faa", [(i, aa) for i, _, aa in frames[:protein_count]])
        half_dtypes = (torch.bfloat16, torch.float16) if on_gpu else (torch.bfloat16,)
        dna_rows, agreements = bench_dnabert(folder, nucleotide_file, device, units.DNA_TOKS_PER_BATCH, half_dtypes)
        protein_rows = bench_protein(protein_file, device, dtype, toks_per_batch=2048 if not on_gpu else 16384)

    name = torch.cuda.get_device_name(device) if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"Device: {name}\n")
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
    units.run_cli(main)
