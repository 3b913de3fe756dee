#!/usr/bin/env python3
"""Benchmark embedding extraction throughput, side by side in one process.

  1. DNABERT-S: batched extraction (extract_DNABERT_S) against the published
     one-sequence-at-a-time loop, on the same DNA frames;
  2. protein models: a FastESM2_650-shaped model against an ESM2-3B-shaped
     model, both through the extraction code, on the same proteins.

Models have random weights of the real shapes (throughput does not depend on
the weights), so no download is needed. The DNABERT-S stand-in is a BERT of
DNABERT-S's size (12 layers, 768 wide, 4096-token BPE vocabulary); DNABERT-S's
own code differs in attention details. Frames come from synthetic genes cut
into 500-bp chunks. Prints a markdown table: sequences/s, tokens/s, ratios.
"""
from __future__ import annotations

import argparse
import gc
import random
import time

import torch

import units

# Real shapes: (hidden, layers, heads, intermediate)
DNABERT_S_SHAPE = (768, 12, 12, 3072)
FASTESM2_650_SHAPE = (1280, 33, 20, 5120)
ESM2_3B_SHAPE = (2560, 36, 40, 10240)


# ---------------------------------------------------------------- random models of a given shape
def save_dna_tokenizer(folder, vocab_size=4096, seed=0):
    """A BPE tokenizer trained on random DNA, with [CLS] x [SEP] like DNABERT-S's."""
    from tokenizers import Tokenizer, models, processors, trainers
    from transformers import PreTrainedTokenizerFast

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(models.BPE(unk_token="[UNK]"))
    rng = random.Random(seed)
    corpus = ["".join(rng.choices("ACGT", k=500)) for _ in range(2000)]
    tokenizer.train_from_iterator(corpus, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                              show_progress=False))
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]",
                                   cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    fast.save_pretrained(folder)
    return fast


def random_bert(shape, vocab_size, seed=0):
    from transformers import BertConfig, BertModel

    hidden, layers, heads, intermediate = shape
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=intermediate, max_position_embeddings=1024)
    return BertModel(config).eval()


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


def save_random_dnabert(folder, shape, vocab_size=4096, seed=0):
    """A DNABERT-S-like folder (tokenizer + BERT weights) that load_dnabert_s reads."""
    tokenizer = save_dna_tokenizer(folder, vocab_size, seed)
    random_bert(shape, len(tokenizer), seed).save_pretrained(folder)
    return folder


def save_random_esm(folder, shape, seed=0):
    """An ESM-2 folder in FastESM2_650's checkpoint layout (a masked-LM model, 'esm.' keys)."""
    random_esm(shape, seed, masked_lm=True).save_pretrained(folder)
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


def bench_dnabert(folder, nucleotide_file, device, toks_per_batch):
    tokenizer = save_dna_tokenizer(folder)
    model = random_bert(DNABERT_S_SHAPE, len(tokenizer)).to(device)
    sequences = [r.sequence for r in units.read_fasta(nucleotide_file)]
    tokens = sum(len(ids) for ids in tokenizer(sequences)["input_ids"])
    units.extract_DNABERT_S(nucleotide_file, model=model, tokenizer=tokenizer)          # warm-up
    rows = [("DNABERT-S one at a time (published loop)",
             timed(lambda: one_at_a_time_dnabert(model, tokenizer, sequences, device), device)),
            (f"DNABERT-S batched ({toks_per_batch} tokens/batch)",
             timed(lambda: units.extract_DNABERT_S(nucleotide_file, model=model, tokenizer=tokenizer,
                                                   toks_per_batch=toks_per_batch), device))]
    return [(name, len(sequences), tokens, seconds) for name, seconds in rows]


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
        rows = bench_dnabert(folder, nucleotide_file, device, units.DNA_TOKS_PER_BATCH)
        rows += bench_protein(protein_file, device, dtype, toks_per_batch=2048 if not on_gpu else 16384)

    name = torch.cuda.get_device_name(device) if on_gpu else f"CPU ({torch.get_num_threads()} threads)"
    print(f"Device: {name}\n")
    print("| extraction | sequences | tokens | seconds | sequences/s | tokens/s |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, count, tokens, seconds in rows:
        print(f"| {label} | {count} | {tokens} | {seconds:.2f} | {count / seconds:.1f} | {tokens / seconds:.0f} |")
    print(f"\nDNABERT-S batched vs one at a time: {rows[0][3] / rows[1][3]:.1f}x")
    print(f"FastESM2_650-shaped vs ESM2-3B-shaped: {rows[3][3] / rows[2][3]:.1f}x")
    return 0


if __name__ == "__main__":
    units.run_cli(main)
