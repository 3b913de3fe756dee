"""Model loading, embedding extraction and merging, on tiny models the tests build
and load through the same functions users call."""
import copy
import random
import shutil

import numpy as np
import pytest
import torch

import units
from benchmarking import random_models
from conftest import GOLDEN, TINY_FASTESM
from virnucpro.devices import resolve_device
from virnucpro.errors import DimensionError, InputError
from virnucpro.models.esm2 import Esm2Model
from virnucpro.models.features import FAILURE_LOG
from virnucpro.models.pins import DNA_DIM, ESM2_3B_DIM, MERGED_DIM, MODELS_ENV, PROTEIN_DIM
from virnucpro.scoring import engine
from virnucpro.sequences.fasta import write_fasta


@pytest.fixture(scope="module")
def esm_folder(tiny_models):
    return tiny_models["protein"]


@pytest.fixture(scope="module")
def dnabert(tiny_models):
    return units.load_dnabert_s(tiny_models["dna"], device="cpu")


@pytest.fixture(scope="module")
def fastesm(tiny_models):
    return units.load_fast_esm(tiny_models["protein"], device="cpu")


def random_proteins(count, seed=0, lengths=(5, 120)):
    rng = random.Random(seed)
    return [(f"p{i}", "".join(rng.choices("ACDEFGHIKLMNPQRSTVWY", k=rng.randint(*lengths)))) for i in range(count)]


def random_dna(count, seed=0, lengths=(20, 501)):
    rng = random.Random(seed)
    return [(f"d{i}_chunk_1F1", "".join(rng.choices("ACGT", k=rng.randint(*lengths)))) for i in range(count)]


def write(path, records):
    return write_fasta(path, records)


class Recording(torch.nn.Module):
    """Wraps a model: records batch shapes, can simulate OOM or NaN output."""

    def __init__(self, model, oom_rows_above=None, oom_length=None, nan_length=None):
        super().__init__()
        self.model, self.shapes, self.config = model, [], model.config
        self.identity = getattr(model, "identity", None)
        self.oom_rows_above, self.oom_length, self.nan_length = oom_rows_above, oom_length, nan_length

    def forward(self, input_ids, attention_mask):
        self.shapes.append(tuple(input_ids.shape))
        lengths = attention_mask.sum(dim=1).tolist()
        if (self.oom_rows_above and input_ids.shape[0] > self.oom_rows_above) or self.oom_length in lengths:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        output = self.model(input_ids=input_ids, attention_mask=attention_mask)
        if self.nan_length in lengths:
            output.last_hidden_state[lengths.index(self.nan_length)] = float("nan")
        return output


# ------------------------------------------------------------ loading
def test_loaders_return_checkpoint_weights(fastesm, dnabert):
    model, tokenizer = fastesm
    assert isinstance(model, Esm2Model)                                  # our ESM-2, not a transformers class
    assert tokenizer.convert_tokens_to_ids(["<cls>", "<pad>", "<eos>", "L", "<mask>"]) == [0, 1, 2, 4, 32]
    saved = random_models.random_esm_masked_lm(TINY_FASTESM).esm.state_dict()
    last = TINY_FASTESM[1] - 1
    assert torch.equal(model.encoder.layer[last].output.dense.weight, saved[f"encoder.layer.{last}.output.dense.weight"])
    dna_model, dna_tokenizer = dnabert
    assert dna_model.config.hidden_size == DNA_DIM
    assert dna_tokenizer("ACGT")["input_ids"][0] == dna_tokenizer.cls_token_id


def test_loader_refuses_checkpoint_missing_encoder_weights(esm_folder, tmp_path):
    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(esm_folder, broken)
    weights = load_file(broken / "model.safetensors")
    del weights["esm.encoder.layer.0.attention.self.query.weight"]
    save_file(weights, broken / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(InputError, match="not an ESM-2 encoder of its config.json .*esm.encoder.layer.0.attention.self.query.weight is missing"):
        units.load_fast_esm(str(broken), device="cpu")


def test_loader_accepts_legacy_layernorm_names(tmp_path):
    """transformers loads old checkpoints naming LayerNorm weights gamma/beta; so must the weight check."""
    from safetensors.torch import load_file, save_file

    folder = random_models.save_random_esm(tmp_path / "legacy", (PROTEIN_DIM, 1, 4, 32))
    weights = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
               for k, v in load_file(folder / "model.safetensors").items()}
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    model, _ = units.load_fast_esm(str(folder), device="cpu")
    assert torch.equal(model.encoder.layer[0].attention.LayerNorm.weight,
                       weights["esm.encoder.layer.0.attention.LayerNorm.gamma"])


def test_loader_refuses_a_model_of_the_wrong_size(tmp_path):
    folder = random_models.save_random_esm(tmp_path / "small", (64, 1, 4, 32))
    with pytest.raises(InputError, match="gives 64-value embeddings, not 1280"):
        units.load_fast_esm(str(folder), device="cpu")


def test_loader_without_network_or_cache_names_model_and_fix(tmp_path, monkeypatch):
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv(MODELS_ENV, str(tmp_path / "models"))
    with pytest.raises(InputError) as error:
        units.load_fast_esm(device="cpu")
    message = str(error.value)
    assert message.startswith(f"FastESM2_650: Synthyra/FastESM2_650 is not in the models folder ({tmp_path / 'models'})")
    assert str(tmp_path / "empty-cache") in message and "python scripts/fetch_models.py fastesm650" in message
    assert "--protein-model" in message and "\n" not in message
    with pytest.raises(InputError, match="huggingface-cli download someone/fine-tuned"):
        units.load_fast_esm("someone/fine-tuned", device="cpu")
    with pytest.raises(InputError, match="neither a folder nor a Hugging Face id"):
        units.load_dnabert_s("./no/such/folder", device="cpu")


def test_device_choice():
    assert resolve_device("cpu").type == "cpu"
    with pytest.raises(InputError, match="not a device"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            resolve_device("cuda")


# ------------------------------------------------------------ DNABERT-S
def test_dnabert_batched_equals_published_one_at_a_time(dnabert, tmp_path):
    model, tokenizer = dnabert
    records = random_dna(40)
    out = tmp_path / "dna.pt"
    result = units.extract_DNABERT_S(write(tmp_path / "dna.fa", records), str(out),
                                     model=model, tokenizer=tokenizer, toks_per_batch=2000)
    assert result["nucleotide"] == [r[0] for r in records]
    assert torch.load(out, weights_only=True)["nucleotide"] == result["nucleotide"]
    for (record_id, sequence), item in zip(records, result["data"]):
        with torch.no_grad():   # the published code: one sequence, no mask, mean over every token
            expected = model(tokenizer(sequence, return_tensors="pt")["input_ids"])[0].mean(dim=1)[0]
        assert item["label"] == record_id
        assert item["mean_representation"].shape == (DNA_DIM,)
        torch.testing.assert_close(item["mean_representation"], expected, atol=1e-5, rtol=0)


# ------------------------------------------------------------ FastESM2_650
def residue_mean(model, tokenizer, sequence, include_specials=False):
    ids = torch.tensor([tokenizer.build_inputs_with_special_tokens(tokenizer.convert_tokens_to_ids(list(sequence)))])
    with torch.no_grad():
        hidden = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state[0]
    return hidden.mean(dim=0) if include_specials else hidden[1:len(sequence) + 1].mean(dim=0)


def test_fastesm_batched_equals_one_at_a_time_and_pools_residues_only(fastesm, tmp_path):
    model, tokenizer = fastesm
    records = random_proteins(30)
    fasta = write(tmp_path / "p.faa", records)
    batched = units.extract_fast_esm(fasta, model=model, tokenizer=tokenizer, toks_per_batch=2048)
    alone = units.extract_fast_esm(fasta, model=model, tokenizer=tokenizer, toks_per_batch=1)
    assert batched["proteins"] == alone["proteins"] == [r[0] for r in records]
    for (_, sequence), vector, single in zip(records, batched["data"], alone["data"]):
        assert vector.dtype == torch.float32 and vector.shape == (PROTEIN_DIM,)
        torch.testing.assert_close(vector, single, atol=1e-5, rtol=0)
        torch.testing.assert_close(vector, residue_mean(model, tokenizer, sequence), atol=1e-5, rtol=0)
        assert not torch.allclose(vector, residue_mean(model, tokenizer, sequence, include_specials=True), atol=1e-3)


def test_fastesm_truncates_to_the_first_residues(fastesm, tmp_path):
    model, tokenizer = fastesm
    long_protein = random_proteins(1, seed=5, lengths=(60, 60))[0][1]
    fasta = write(tmp_path / "long.faa", [("long", long_protein), ("head", long_protein[:16])])
    result = units.extract_fast_esm(fasta, model=model, tokenizer=tokenizer, truncation_seq_length=16)
    torch.testing.assert_close(result["data"][0], result["data"][1], atol=1e-5, rtol=0)


def test_token_budget_is_respected(fastesm, tmp_path):
    model, tokenizer = fastesm
    records = random_proteins(50, seed=2, lengths=(5, 300))
    recording = Recording(model)
    units.extract_fast_esm(write(tmp_path / "p.faa", records), model=recording, tokenizer=tokenizer,
                           toks_per_batch=600)
    assert sum(rows for rows, _ in recording.shapes) == len(records)
    for rows, width in recording.shapes:
        assert rows * width <= 600 or rows == 1
    lengths = [random.randint(1, 1200) for _ in range(500)]
    batches = engine.token_budget_batches(np.array(lengths), 2048)
    assert sorted(int(i) for batch in batches for i in batch) == list(range(500))
    assert all(max(lengths[i] for i in b) * len(b) <= 2048 or len(b) == 1 for b in batches)


def test_out_of_memory_splits_batches_and_logs_what_still_fails(fastesm, tmp_path):
    model, tokenizer = fastesm
    records = random_proteins(20, seed=3, lengths=(10, 40))
    records.append(("huge", "M" * 77))                         # 79 tokens: always out of memory
    fasta = write(tmp_path / "p.faa", records)
    out = tmp_path / "features" / "p_ESM.pt"
    out.parent.mkdir()
    recording = Recording(model, oom_rows_above=2, oom_length=79)
    result = units.extract_fast_esm(fasta, str(out), model=recording, tokenizer=tokenizer, toks_per_batch=4096)
    reference = units.extract_fast_esm(fasta, model=model, tokenizer=tokenizer, toks_per_batch=1)
    assert result["proteins"] == [r[0] for r in records[:-1]]
    for vector, expected in zip(result["data"], reference["data"]):
        torch.testing.assert_close(vector, expected, atol=1e-5, rtol=0)
    assert max(rows for rows, _ in recording.shapes) > 2            # it tried big batches first
    log = (out.parent / FAILURE_LOG).read_text().strip().split("\t")
    assert log[1:4] == [str(fasta), "huge", "out_of_memory"] and "CUDA out of memory" in log[4]


def test_nan_embedding_is_refused_and_logged(fastesm, tmp_path):
    model, tokenizer = fastesm
    records = [("ok", "MKVLA"), ("bad", "MKVLAGG"), ("ok2", "MKV")]
    out = tmp_path / "p_ESM.pt"
    result = units.extract_fast_esm(write(tmp_path / "p.faa", records), str(out),
                                    model=Recording(model, nan_length=9), tokenizer=tokenizer)
    assert result["proteins"] == ["ok", "ok2"]
    assert all(torch.isfinite(v).all() for v in torch.load(out, weights_only=True)["data"])
    assert "\tbad\tnon_finite\t" in (tmp_path / FAILURE_LOG).read_text()


def test_existing_output_is_reused_only_when_made_alike(fastesm, tmp_path):
    """Reused when made from the same input by the same model files in the same precision; else made again."""
    model, tokenizer = fastesm
    fasta = write(tmp_path / "p.faa", random_proteins(5))
    out = str(tmp_path / "p_ESM.pt")
    first = units.extract_fast_esm(fasta, out, model=model, tokenizer=tokenizer)
    assert first["made_by"]["model"] == model.identity and first["made_by"]["precision"] == "float32"
    recording = Recording(model)
    again = units.extract_fast_esm(fasta, out, model=recording, tokenizer=tokenizer)
    assert recording.shapes == [] and again["proteins"] == first["proteins"]
    assert all(torch.equal(a, b) for a, b in zip(again["data"], first["data"]))

    half = copy.deepcopy(model).to(torch.bfloat16)
    recording = Recording(half)
    assert units.extract_fast_esm(fasta, out, model=recording, tokenizer=tokenizer)["precision"] == "bfloat16"
    assert recording.shapes
    unknown = Recording(model)
    unknown.identity = None                              # a model this project did not load: cannot be told apart
    units.extract_fast_esm(fasta, out, model=unknown, tokenizer=tokenizer)
    assert unknown.shapes
    write(tmp_path / "p.faa", random_proteins(5, seed=9))
    recording = Recording(model)
    assert units.extract_fast_esm(fasta, out, model=recording, tokenizer=tokenizer)["proteins"] == first["proteins"]
    assert recording.shapes                              # same ids, another input file


def test_embedding_that_is_not_the_model_width_is_refused_before_writing(fastesm, tmp_path):
    model, tokenizer = fastesm

    class Truncating(Recording):                # a broken model: outputs narrower than it claims
        def forward(self, input_ids, attention_mask):
            output = super().forward(input_ids, attention_mask)
            return output._replace(last_hidden_state=output.last_hidden_state[..., :32])

    out = tmp_path / "p_ESM.pt"
    with pytest.raises(DimensionError) as error:
        units.extract_fast_esm(write(tmp_path / "p.faa", random_proteins(3)), str(out),
                               model=Truncating(model), tokenizer=tokenizer)
    assert (error.value.expected, error.value.actual, error.value.sequence_id) == (1280, (32,), "p0")
    assert not out.exists()


def test_esm2_3b_baseline_runs_side_by_side(tiny_models, tmp_path):
    model, alphabet = units.load_esm2_3b(tiny_models["esm2_3b"], device="cpu")
    assert next(model.parameters()).dtype == torch.float32
    records = random_proteins(4)
    result = units.extract_esm(write(tmp_path / "p.faa", records), model=model, alphabet=alphabet,
                               out_file=str(tmp_path / "p_ESM.pt"))
    assert [v.shape for v in result["data"]] == [(ESM2_3B_DIM,)] * 4
    torch.testing.assert_close(result["data"][2], residue_mean(model, alphabet, records[2][1]), atol=1e-5, rtol=0)


# ------------------------------------------------------------ merge
def test_merge_reproduces_the_published_file():
    out_dir = GOLDEN / "reference_vanilla"
    merged_file = out_dir.parent.parent / "merged.tmp.pt"
    try:
        left_out = units.merge_data(out_dir / "output_1_DNABERT_S.pt", out_dir / "output_1_ESM.pt",
                                    merged_file, protein_dim=ESM2_3B_DIM)
        merged = torch.load(merged_file, weights_only=True)
    finally:
        merged_file.unlink(missing_ok=True)
    published = torch.load(out_dir / "output_1_merged.pt", weights_only=True)
    assert left_out == []
    assert merged.keys() == published.keys()
    assert merged["ids"] == published["ids"]
    assert merged["data"].dtype == published["data"].dtype and torch.equal(merged["data"], published["data"])


def feature_files(tmp_path, dna_ids, protein_ids, dna_dim=DNA_DIM, protein_dim=PROTEIN_DIM):
    dna = {"nucleotide": dna_ids,
           "data": [{"label": i, "mean_representation": torch.full((dna_dim,), float(n))} for n, i in enumerate(dna_ids)]}
    protein = {"proteins": protein_ids, "data": [torch.full((protein_dim,), -float(n)) for n, i in enumerate(protein_ids)]}
    torch.save(dna, tmp_path / "dna.pt")
    torch.save(protein, tmp_path / "protein.pt")
    return tmp_path / "dna.pt", tmp_path / "protein.pt", tmp_path / "merged.pt"


def test_merge_joins_by_id_and_reports_ids_left_out(tmp_path):
    dna, protein, merged_file = feature_files(tmp_path, ["a", "b", "c"], ["c", "a", "z"])
    assert units.merge_data(dna, protein, merged_file, data_type="viral") == ["b", "z"]
    merged = torch.load(merged_file, weights_only=True)
    assert merged["ids"] == ["a", "c"] and merged["labels"] == [1]
    assert merged["data"].shape == (2, MERGED_DIM)
    assert merged["data"][1, 0] == 2 and merged["data"][1, -1] == 0      # c: dna row 2, protein row 0
    assert merged["data"][0, -1] == -1                                      # a: protein row 1
    units.merge_data(dna, protein, merged_file, data_type="host")
    assert torch.load(merged_file, weights_only=True)["labels"] == [0]


@pytest.mark.parametrize("dna_dim, protein_dim, expected, actual, where", [
    (767, PROTEIN_DIM, DNA_DIM, 767, "dna.pt"),
    (DNA_DIM, ESM2_3B_DIM, PROTEIN_DIM, ESM2_3B_DIM, "protein.pt"),
])
def test_merge_dimension_guards(tmp_path, dna_dim, protein_dim, expected, actual, where):
    dna, protein, merged_file = feature_files(tmp_path, ["a", "b"], ["a", "b"], dna_dim, protein_dim)
    with pytest.raises(DimensionError) as error:
        units.merge_data(dna, protein, merged_file)
    assert (error.value.expected, error.value.actual, error.value.sequence_id) == (expected, actual, "a")
    assert error.value.location.endswith(where)
    assert not merged_file.exists()


def test_merge_refuses_non_finite_and_disjoint_inputs(tmp_path):
    dna, protein, merged_file = feature_files(tmp_path, ["a"], ["b"])
    with pytest.raises(InputError, match="no sequence id in common"):
        units.merge_data(dna, protein, merged_file)
    bad = {"proteins": ["a"], "data": [torch.full((PROTEIN_DIM,), float("nan"))]}
    torch.save(bad, protein)
    with pytest.raises(InputError, match="NaN"):
        units.merge_data(dna, protein, merged_file)
    assert not merged_file.exists()


def test_extracted_features_merge_to_2048(dnabert, fastesm, tmp_path):
    frames = [(f"r{i}_chunk_1F1", dna, protein) for i, (dna, protein) in
              enumerate([("ATGAAACCCGGGTTTAAAC", "MKPGFK"), ("ATGGCTGCTGCT", "MAAA")])]
    dna_file = write(tmp_path / "f.fa", [(i, d) for i, d, _ in frames])
    protein_file = write(tmp_path / "f.faa", [(i, p) for i, _, p in frames])
    units.extract_DNABERT_S(dna_file, str(tmp_path / "f_DNABERT_S.pt"), model=dnabert[0], tokenizer=dnabert[1])
    units.extract_fast_esm(protein_file, str(tmp_path / "f_ESM.pt"), model=fastesm[0], tokenizer=fastesm[1])
    units.merge_data(tmp_path / "f_DNABERT_S.pt", tmp_path / "f_ESM.pt", tmp_path / "f_merged.pt")
    merged = torch.load(tmp_path / "f_merged.pt", weights_only=True)
    assert merged["data"].shape == (2, MERGED_DIM) and "labels" not in merged
