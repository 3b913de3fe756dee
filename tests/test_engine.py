"""The embedding engine: vectorised tokenization equals the tokenizers', batched embeddings equal
one-at-a-time ones, frame scores equal the classifier on those, and host work prefetched in a
background thread keeps its order and its errors."""
import threading

import numpy as np
import pytest
import torch

import units
from conftest import ARCH_TINY, ROOT
from virnucpro.errors import InputError
from virnucpro.models.loaders import esm_tokenizer
from virnucpro.models.pins import MERGED_DIM
from virnucpro.scoring import engine
from virnucpro.scoring.calls import NUM_CLASSES
from virnucpro.scoring.checkpoints import HIDDEN_DIM
from virnucpro.sequences.chunks import iter_fasta_chunks
from virnucpro.sequences.fasta import read_fasta
from virnucpro.sequences.frames import stop_free_frames


@pytest.fixture(scope="module")
def dnabert():
    return units.load_dnabert_s(str(ARCH_TINY / "dnabert_s"), "cpu")


@pytest.fixture(scope="module")
def fastesm(tiny_models):
    return units.load_fast_esm(tiny_models["protein"], "cpu")


def as_lists(rows: engine.TokenRows) -> list[list[int]]:
    return [rows.ids[start:start + length].tolist() for start, length in zip(rows.starts, rows.lengths)]


def random_dna(count, seed, lengths=(5, 600)):
    rng = np.random.default_rng(seed)
    return ["".join(rng.choice(list("ACGT"), rng.integers(*lengths))) for _ in range(count)]


def test_dna_tokens_are_the_tokenizers(dnabert):
    _, tokenizer = dnabert
    sequences = [r.sequence for r in read_fasta(ARCH_TINY / "dnabert_s/inputs.fasta")]
    sequences += random_dna(50, seed=1) + ["ACGTNNNNACGT", "A", "NNNN", "ACGTRYSWKMBDHVN" * 3]
    assert as_lists(engine.dna_tokens(tokenizer, sequences)) == tokenizer(sequences)["input_ids"]


def test_protein_tokens_are_the_tokenizers_without_a_call_per_residue():
    tokenizer = esm_tokenizer()
    proteins = ["MKVLLAGG", "ACDEFGHIKLMNPQRSTVWYBZUOX", "M" * 1500, "", "XX*", "KQ.-"]
    expected = [tokenizer.build_inputs_with_special_tokens(tokenizer.convert_tokens_to_ids(list(p[:1024])))
                for p in proteins]
    assert as_lists(engine.protein_tokens(tokenizer, engine.residue_table(tokenizer), proteins)) == expected
    short = engine.protein_tokens(tokenizer, engine.residue_table(tokenizer), proteins, truncation=3)
    assert short.lengths.tolist() == [5, 5, 5, 2, 5, 5]


def test_padded_batches_hold_each_row_then_padding():
    rows = engine.TokenRows.from_lengths(np.arange(1, 10), np.array([2, 4, 3]))
    ids, mask = rows.padded(np.array([1, 2]), pad_id=0)
    assert ids.tolist() == [[3, 4, 5, 6], [7, 8, 9, 0]]
    assert mask.tolist() == [[1, 1, 1, 1], [1, 1, 1, 0]]


def test_scores_are_the_classifier_on_both_embeddings(dnabert, fastesm):
    chunks = list(iter_fasta_chunks(ROOT / "data/sample.fasta", 300))
    frames = stop_free_frames(chunks)
    torch.manual_seed(0)
    classifier = units.MLPClassifier(MERGED_DIM, HIDDEN_DIM, NUM_CLASSES).eval()
    scorer = engine.Engine(dnabert, fastesm, classifier, 4096, 4096, "FastESM2_650")
    scores = scorer.score(scorer.tokenize(frames.ids, frames.nucleotides, frames.proteins))
    assert len(frames) > 3 and scores.kept.tolist() == list(range(len(frames))) and not scores.failures
    features = torch.cat([scores.dna, scores.protein], dim=1)
    with torch.inference_mode():
        expected = torch.softmax(classifier(features), dim=1).numpy()
    assert np.abs(scores.probabilities - expected).max() < 1e-6


def test_frames_whose_embedding_fails_are_left_out_and_reported(dnabert, fastesm):
    class NotFinite(torch.nn.Module):
        def __init__(self, model):
            super().__init__()
            self.model, self.width = model, model.config.hidden_size

        def forward(self, input_ids, attention_mask):
            pooled = torch.zeros(len(input_ids), self.width)
            pooled[attention_mask.sum(dim=1) == attention_mask.shape[1]] = float("nan")   # the longest rows
            return pooled

    ids = [f"c{k}_chunk_1F1" for k in range(4)]
    classifier = units.MLPClassifier(MERGED_DIM, HIDDEN_DIM, NUM_CLASSES).eval()
    scorer = engine.Engine(dnabert, fastesm, classifier, 4096, 4096, "FastESM2_650")
    scorer.protein_encoder = NotFinite(fastesm[0])
    nucleotides, proteins = ["ACGT" * (10 + k) for k in range(4)], ["M" * (5 + k) for k in range(4)]
    scores = scorer.score(scorer.tokenize(ids, nucleotides, proteins))
    assert scores.kept.tolist() == [0, 1, 2] and len(scores.probabilities) == 3
    assert scores.failures == [("c3_chunk_1F1", "FastESM2_650", "non_finite",
                                "the embedding holds NaN or infinite values")]


def test_prefetched_keeps_order_runs_in_a_background_thread_and_raises_at_the_item():
    def prepare(item):
        if item == 3:
            raise InputError("bad record in item 3")
        return item * 10, threading.current_thread() is threading.main_thread()

    results = engine.prefetched(range(3), prepare, ahead=1)
    assert [value for value, _ in results] == [0, 10, 20]
    assert not any(in_main for _, in_main in engine.prefetched(range(3), prepare, ahead=2))
    assert all(in_main for _, in_main in engine.prefetched(range(3), prepare, ahead=0))
    seen = []
    with pytest.raises(InputError, match="item 3"):
        for value, _ in engine.prefetched(range(5), prepare):
            seen.append(value)
    assert seen == [0, 10, 20]


# What makes the host wait for a GPU: reading a device tensor's values, or copying from pageable memory.
READS_VALUES = ("item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__", "__index__")


@pytest.fixture
def host_waits(monkeypatch):
    """Counts, on a CPU-only machine, the calls that would make the host wait for a GPU: a tensor's values
    read on the host, and copies to a device that are not ``non_blocking``."""
    waits = []
    for name in READS_VALUES:
        def counted(self, *args, _name=name, _original=getattr(torch.Tensor, name), **kwargs):
            waits.append(_name)
            return _original(self, *args, **kwargs)
        monkeypatch.setattr(torch.Tensor, name, counted)
    original_to = torch.Tensor.to

    def to(self, *args, **kwargs):
        if any(isinstance(a, (torch.device, str)) for a in args) and not kwargs.get("non_blocking"):
            waits.append("to")
        return original_to(self, *args, **kwargs)
    monkeypatch.setattr(torch.Tensor, "to", to)
    return waits


@pytest.mark.parametrize("encoder", ["DNABERT-S", "FastESM2_650"])
def test_the_batch_loop_never_waits_for_the_device(encoder, dnabert, fastesm, host_waits):
    """The host work of one batch must overlap the device work of the one before: the waits of a shard
    are the same with 1 batch as with 30 (those at its end, which check the embeddings)."""
    if encoder == "DNABERT-S":
        (model, tokenizer), wrap = dnabert, engine.DnaEncoder
        rows = engine.dna_tokens(tokenizer, random_dna(30, seed=5))
    else:
        (model, tokenizer), wrap = fastesm, engine.ProteinEncoder
        proteins = ["".join(np.random.default_rng(k).choice(list("ACDEFGHIKLMNPQRSTVWY"), 20 + 7 * k))
                    for k in range(30)]
        rows = engine.protein_tokens(tokenizer, engine.residue_table(tokenizer), proteins)
    waits = {}
    for budget in (10**6, 10**6, 1):              # the first run makes what is made once per device
        host_waits.clear()
        engine.embed_rows(wrap(model), rows, [f"s{k}" for k in range(len(rows))], tokenizer.pad_token_id,
                          budget, encoder)
        waits[budget] = list(host_waits)
    assert len(engine.token_budget_batches(rows.lengths, 1)) == 30
    assert waits[1] == waits[10**6], waits


@pytest.fixture
def attention_calls(monkeypatch):
    """Every attention call of the encoders, let through to torch's own: whether it had a mask, its shape,
    and the kernels allowed at that moment."""
    from torch.nn import functional

    calls, sdpa = [], functional.scaled_dot_product_attention

    def recorded(query, key, value, attn_mask=None, **kwargs):
        calls.append({"masked": attn_mask is not None, "width": query.shape[-2],
                      "cudnn": torch.backends.cuda.cudnn_sdp_enabled(),
                      "others": (torch.backends.cuda.flash_sdp_enabled(),
                                 torch.backends.cuda.mem_efficient_sdp_enabled(), torch.backends.cuda.math_sdp_enabled())})
        return sdpa(query, key, value, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(functional, "scaled_dot_product_attention", recorded)
    return calls


def test_inference_chooses_its_attention_kernels_and_leaves_unpadded_protein_batches_unmasked(
        dnabert, fastesm, attention_calls):
    """On a GPU (its batch shapes, here on the CPU): never cuDNN's attention; a protein batch whose rows all
    have one length runs without a mask, a padded one with a mask and a width of a multiple of 8; the
    embeddings equal the CPU's exact batches."""
    model, tokenizer = fastesm
    proteins = ["MKVLAAGIST" * 3] * 6 + ["MKVL" * 5, "MKV" * 9]             # 6 of one length, 2 shorter
    rows = engine.protein_tokens(tokenizer, engine.residue_table(tokenizer), proteins)
    ids = [f"p{k}" for k in range(len(proteins))]
    gpu = engine.BatchShapes.of(torch.device("cuda"), unpadded_without_mask=True)
    on_gpu, _ = engine.embed_rows(engine.ProteinEncoder(model), rows, ids, tokenizer.pad_token_id, 6 * 32,
                                  "FastESM2_650", shapes=gpu)
    layers = model.config.num_hidden_layers
    assert [(call["masked"], call["width"]) for call in attention_calls[::layers]] == [(False, 32), (True, 32)]
    assert not any(call["cudnn"] for call in attention_calls)
    assert all(call["others"] == (True, True, True) for call in attention_calls)
    exact, _ = engine.embed_rows(engine.ProteinEncoder(model), rows, ids, tokenizer.pad_token_id, 6 * 32,
                                 "FastESM2_650")
    torch.testing.assert_close(on_gpu, exact, atol=1e-5, rtol=0)

    attention_calls.clear()
    dna_model, dna_tokenizer = dnabert
    dna = engine.dna_tokens(dna_tokenizer, ["ACGTTGCA" * 20] * 4)
    engine.embed_rows(engine.DnaEncoder(dna_model), dna, ["d"] * 4, dna_tokenizer.pad_token_id, 10_000, "DNABERT-S",
                      shapes=engine.BatchShapes.of(torch.device("cuda")))
    assert all(call["masked"] and call["width"] % 8 == 0 for call in attention_calls)   # ALiBi: always a bias


@pytest.mark.parametrize("read_length, dna_shapes, protein_shapes", [(500, 4, 2), (150, 4, 4)])
def test_a_gpu_run_sees_few_batch_shapes(dnabert, read_length, dna_shapes, protein_shapes):
    """A shard of 10,000 reads of one ORF each: the distinct (rows, width) of its batches on a GPU (on the
    CPU's exact widths: 14 and 2 at 500 bp, 8 and 3 at 150 bp)."""
    from benchmarking.synthetic import open_reading_frame
    from virnucpro.sequences.chunks import chunk_id

    rng = np.random.default_rng(0)
    frames = stop_free_frames([(chunk_id(f"r{k}", 1), open_reading_frame(rng, read_length)) for k in range(10_000)])
    protein_tokenizer, dna_tokenizer = esm_tokenizer(), dnabert[1]
    counts = []
    for rows, budget, pad, unmasked in (
            (engine.dna_tokens(dna_tokenizer, frames.nucleotides), engine.DNA_TOKS_PER_BATCH,
             dna_tokenizer.pad_token_id, False),
            (engine.protein_tokens(protein_tokenizer, engine.residue_table(protein_tokenizer), frames.proteins),
             engine.PROTEIN_TOKS_PER_BATCH, protein_tokenizer.pad_token_id, True)):
        shapes = engine.BatchShapes.of(torch.device("cuda"), unmasked)
        counts.append(len({tuple(rows.padded(batch, pad, shapes)[0].shape)
                           for batch in engine.token_budget_batches(rows.lengths, budget, shapes)}))
    assert counts == [dna_shapes, protein_shapes]
