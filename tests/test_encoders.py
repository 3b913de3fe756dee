"""The encoders are the real ones: our DNABERT-S and our FastESM2_650 loading,
on tiny models in the published layouts (tests/data/arch_tiny), equal to what
the reference code computes for them; no model folder's Python ever runs."""
import functools
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import units
from benchmarking import random_models
from conftest import ARCH_TINY, ROOT, TINY_DNABERT
from virnucpro.errors import DimensionError, InputError
from virnucpro.models import modelfiles
from virnucpro.models.pins import PROTEIN_DIM
from virnucpro.scoring.engine import DNA_TOKS_PER_BATCH
from virnucpro.sequences.fasta import read_fasta, write_fasta

DNABERT_FIXTURE = ARCH_TINY / "dnabert_s"
FASTESM_FIXTURE = ARCH_TINY / "fastesm650"
TOLERANCE = dict(atol=1e-5, rtol=0)      # fp32 CPU, as the fixtures' README recommends


def expected(folder):
    return torch.load(folder / "expected.pt", weights_only=True)


def fasta_records(path):
    return [(r.id, r.sequence) for r in read_fasta(path, alphabet=None)]


@pytest.fixture(scope="module")
def dnabert():
    return units.load_dnabert_s(str(DNABERT_FIXTURE), device="cpu")


@pytest.fixture(scope="module")
def fastesm():
    return units.load_fast_esm(str(FASTESM_FIXTURE), device="cpu", dtype=torch.float32, expected_dim=None)


# ------------------------------------------------------------ DNABERT-S parity
def test_dnabert_tokens_equal_the_reference(dnabert):
    _, tokenizer = dnabert
    reference = expected(DNABERT_FIXTURE)
    sequences = dict(fasta_records(DNABERT_FIXTURE / "inputs.fasta"))
    assert tokenizer([sequences[i].upper() for i in reference["ids"]])["input_ids"] == reference["input_ids"]
    assert tokenizer.pad_token_id == 3 and tokenizer.convert_ids_to_tokens(3) == "[PAD]"


def test_dnabert_hidden_states_equal_the_reference(dnabert):
    model, _ = dnabert
    reference = expected(DNABERT_FIXTURE)
    for input_ids, hidden in zip(reference["input_ids"], reference["hidden_first3"]):
        with torch.no_grad():
            ours = model(torch.tensor([input_ids]))[0][0]
        torch.testing.assert_close(ours, hidden, **TOLERANCE)


@pytest.mark.parametrize("toks_per_batch", [DNA_TOKS_PER_BATCH, 1])
def test_dnabert_extraction_equals_the_reference(dnabert, tmp_path, toks_per_batch):
    """Batched (the default budget; the 3000-nt inputs go past ALiBi's 512
    starting size) and one at a time both give the published features."""
    model, tokenizer = dnabert
    reference = expected(DNABERT_FIXTURE)
    out = tmp_path / "DNABERT_S.pt"
    result = units.extract_DNABERT_S(str(DNABERT_FIXTURE / "inputs.fasta"), str(out), model=model,
                                     tokenizer=tokenizer, toks_per_batch=toks_per_batch)
    assert result["nucleotide"] == reference["ids"] == [item["label"] for item in result["data"]]
    torch.testing.assert_close(torch.stack([item["mean_representation"] for item in result["data"]]),
                               reference["mean"], **TOLERANCE)
    assert result["precision"] == "float32"
    assert torch.load(out, weights_only=True)["precision"] == "float32"


def test_dnabert_in_bfloat16_stays_close_to_the_reference(tmp_path):
    """Half precision is a recorded choice, never silent: bf16 features carry
    their precision and stay within the stated tolerance of fp32 (cosine >=
    0.9999, max abs difference <= 0.05 on these inputs)."""
    model, tokenizer = units.load_dnabert_s(str(DNABERT_FIXTURE), device="cpu", dtype=torch.bfloat16)
    result = units.extract_DNABERT_S(str(DNABERT_FIXTURE / "inputs.fasta"), model=model, tokenizer=tokenizer)
    features = torch.stack([item["mean_representation"] for item in result["data"]])
    reference = expected(DNABERT_FIXTURE)["mean"]
    assert result["precision"] == "bfloat16" and features.dtype == torch.float32
    assert torch.nn.functional.cosine_similarity(features, reference, dim=1).min() >= 0.9999
    assert (features - reference).abs().max() <= 0.05
    # in half precision a batch's make-up shows in the last digits (not in fp32: the test above), within the same bound
    first = write_fasta(str(tmp_path / "first.fa"), fasta_records(DNABERT_FIXTURE / "inputs.fasta")[:4])
    alone = units.extract_DNABERT_S(first, model=model, tokenizer=tokenizer, toks_per_batch=1)
    alone = torch.stack([item["mean_representation"] for item in alone["data"]])
    assert torch.nn.functional.cosine_similarity(alone, features[:4], dim=1).min() >= 0.9999
    assert (alone - features[:4]).abs().max() <= 0.05


def test_random_dnabert_folders_take_the_published_layout(tiny_models):
    """The folders the other tests and the benchmark build are real DNABERT-S layouts."""
    published = torch.load(DNABERT_FIXTURE / "pytorch_model.bin", weights_only=True)
    built = torch.load(f"{tiny_models['dna']}/pytorch_model.bin", weights_only=True)
    assert built.keys() == published.keys()
    config = json.loads((DNABERT_FIXTURE / "config.json").read_text())
    built_config = json.loads(open(f"{tiny_models['dna']}/config.json").read())
    shape_keys = {"hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size", "vocab_size"}
    assert {k: v for k, v in built_config.items() if k not in shape_keys} == \
           {k: v for k, v in config.items() if k not in shape_keys}
    assert built_config["hidden_size"] == TINY_DNABERT[0]


# ------------------------------------------------------------ FastESM2_650 parity
def test_fastesm_extraction_equals_the_reference(fastesm, tmp_path):
    model, tokenizer = fastesm
    reference = expected(FASTESM_FIXTURE)
    result = units.extract_fast_esm(str(FASTESM_FIXTURE / "inputs.fasta"), None, model=model, tokenizer=tokenizer,
                                    truncation_seq_length=4096)
    assert result["proteins"] == reference["ids"]
    torch.testing.assert_close(torch.stack(result["data"]), reference["mean_upper"], **TOLERANCE)
    assert result["precision"] == "float32"


def test_fastesm_hidden_states_equal_the_reference(fastesm):
    model, tokenizer = fastesm
    reference = expected(FASTESM_FIXTURE)
    sequences = dict(fasta_records(FASTESM_FIXTURE / "inputs.fasta"))
    compared = 0
    for record_id, hidden in zip(reference["ids"], reference["hidden_first3"]):
        ids = tokenizer.build_inputs_with_special_tokens(tokenizer.convert_tokens_to_ids(list(sequences[record_id])))
        if ids != reference["input_ids"][reference["ids"].index(record_id)]:
            continue                         # lower-case input: the reference fed it as it was
        with torch.no_grad():
            ours = model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        torch.testing.assert_close(ours, hidden, **TOLERANCE)
        compared += 1
    assert compared == 2


def test_fastesm_folder_loads_quietly_with_or_without_heads(tmp_path, capfd):
    """FastESM2_650's config says model_type fast_esm with an auto_map; its
    blob may lack contact_head and lm_head.decoder. Neither stops or warns."""
    from safetensors.torch import load_file, save_file

    variant = tmp_path / "no_heads"
    shutil.copytree(FASTESM_FIXTURE, variant)
    weights = {k: v for k, v in load_file(variant / "model.safetensors").items()
               if not k.startswith(("esm.contact_head.", "lm_head.decoder."))}
    save_file(weights, variant / "model.safetensors", metadata={"format": "pt"})
    capfd.readouterr()
    for folder in (FASTESM_FIXTURE, variant):
        model, tokenizer = units.load_fast_esm(str(folder), device="cpu", dtype=torch.float32, expected_dim=None)
        result = units.extract_fast_esm(str(FASTESM_FIXTURE / "inputs.fasta"), model=model, tokenizer=tokenizer,
                                        truncation_seq_length=4096)
        torch.testing.assert_close(torch.stack(result["data"]), expected(FASTESM_FIXTURE)["mean_upper"], **TOLERANCE)
    printed = capfd.readouterr().err
    assert "fast_esm" not in printed and "not supported" not in printed
    assert "were not used" not in printed and "newly initialized" not in printed


# ------------------------------------------------------------ widths
def test_width_checks_stop_a_real_run_and_yield_to_expected_dim(tmp_path):
    with pytest.raises(InputError, match="gives 64-value embeddings, not 1280; point --protein-model"):
        units.load_fast_esm(str(FASTESM_FIXTURE), device="cpu")
    with pytest.raises(InputError, match="gives 64-value embeddings, not 2560"):
        units.load_esm2_3b(str(FASTESM_FIXTURE), device="cpu")
    narrow = random_models.save_random_dnabert(tmp_path / "narrow", (64, 1, 4, 32), vocab_size=64)
    with pytest.raises(InputError, match="gives 64-value embeddings, not 768; point --dna-model"):
        units.load_dnabert_s(str(narrow), device="cpu")
    model, tokenizer = units.load_dnabert_s(str(narrow), device="cpu", expected_dim=None)
    fasta = write_fasta(str(tmp_path / "dna.fa"), [("a", "ACGTACGTTT"), ("b", "GGGCCCAAAT")])
    features = units.extract_DNABERT_S(fasta, str(tmp_path / "dna.pt"), model=model, tokenizer=tokenizer)
    assert features["data"][0]["mean_representation"].shape == (64,)
    protein = {"proteins": ["a", "b"], "data": [torch.zeros(PROTEIN_DIM)] * 2}
    torch.save(protein, tmp_path / "protein.pt")
    with pytest.raises(DimensionError):             # such features never reach a classifier
        units.merge_data(tmp_path / "dna.pt", tmp_path / "protein.pt", tmp_path / "merged.pt")


# ------------------------------------------------------------ not DNABERT-S
def bert_folder(tmp_path):
    """A standard BERT (separate query/key/value, position embeddings): not DNABERT-S."""
    from transformers import BertConfig, BertModel

    folder = tmp_path / "bert"
    BertModel(BertConfig(vocab_size=64, hidden_size=768, num_hidden_layers=1, num_attention_heads=12,
                         intermediate_size=32)).save_pretrained(folder)
    shutil.copy(DNABERT_FIXTURE / "tokenizer.json", folder)
    return folder


@pytest.mark.parametrize("make_folder, words", [
    (lambda tmp: tmp, "is not a DNABERT-S model folder (no config.json)"),
    (lambda tmp: FASTESM_FIXTURE, "its config.json describes a fast_esm model"),
    (bert_folder, "not a DNABERT-S (MosaicBERT) checkpoint"),
])
def test_a_folder_that_is_not_dnabert_s_is_refused_in_one_line(tmp_path, make_folder, words):
    with pytest.raises(InputError) as error:
        units.load_dnabert_s(str(make_folder(tmp_path)), device="cpu")
    assert words in str(error.value) and "--dna-model" in str(error.value) and "\n" not in str(error.value)


def test_dnabert_checkpoint_that_does_not_fit_its_config_is_refused(tmp_path):
    folder = tmp_path / "dnabert"
    shutil.copytree(DNABERT_FIXTURE, folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "intermediate_size": 256}))
    with pytest.raises(InputError, match="mlp.gated_layers.weight is \\(256, 768\\) in the checkpoint"):
        units.load_dnabert_s(str(folder), device="cpu")
    (folder / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 1}))
    with pytest.raises(InputError, match="no place for .*encoder.layer.1"):
        units.load_dnabert_s(str(folder), device="cpu")
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer.json").unlink()
    with pytest.raises(InputError, match="has no tokenizer.json"):
        units.load_dnabert_s(str(folder), device="cpu")


# ------------------------------------------------------------ no remote code
def test_no_model_folder_python_is_ever_imported(tmp_path):
    """Folders carrying the .py files their auto_map names load without importing them."""
    marker = tmp_path / "imported"
    planted = f"open({str(marker)!r}, 'a').write(__name__)\nraise RuntimeError('remote code ran')\n"
    folders = {"dnabert": DNABERT_FIXTURE, "fastesm": FASTESM_FIXTURE}
    for name, source in folders.items():
        shutil.copytree(source, tmp_path / name)
        for module in ("bert_layers", "configuration_bert", "bert_padding", "modeling_fastesm"):
            (tmp_path / name / f"{module}.py").write_text(planted)
    units.load_dnabert_s(str(tmp_path / "dnabert"), device="cpu")
    units.load_fast_esm(str(tmp_path / "fastesm"), device="cpu", expected_dim=None)
    assert not marker.exists()
    assert not {"bert_layers", "configuration_bert", "modeling_fastesm"} & set(sys.modules)


def test_the_project_never_asks_for_remote_code():
    option = "trust_remote" + "_code"
    sources = [path for folder in ("", "virnucpro/", "scripts/", "tests/**/") for path in ROOT.glob(f"{folder}*.py")]
    assert sources and not [p for p in sources if option in p.read_text()]
    assert "*.py" not in modelfiles.SNAPSHOT_FILES


# ------------------------------------------------------------ our ESM-2 and transformers' EsmModel
def transformers_esm(folder):
    """transformers' own ESM-2 on a folder (its config read as ESM's), the reference of our module."""
    from transformers import EsmConfig, EsmModel

    config = json.loads((folder / "config.json").read_text())
    config = {key: value for key, value in config.items() if key not in ("model_type", "auto_map", "architectures")}
    return EsmModel.from_pretrained(folder, config=EsmConfig.from_dict(config), add_pooling_layer=False,
                                    dtype=torch.float32).eval()


@pytest.mark.parametrize("layout", ["FastESM2_650 fixture", "ESM2-3B layout"])
def test_our_esm2_equals_transformers_esm_batched_and_padded(layout, tiny_models):
    """Within 1e-5 in fp32 on every token of a padded batch, on the transformers version installed
    (CI runs 4.57 and the newest 5.x)."""
    from virnucpro.models.esm2 import Esm2Model
    from virnucpro.models.loaders import load_esm2_3b
    from virnucpro.scoring.engine import protein_tokens, residue_table

    folder = FASTESM_FIXTURE if layout.startswith("FastESM") else Path(tiny_models["esm2_3b"])
    load = functools.partial(units.load_fast_esm, expected_dim=None) if layout.startswith("FastESM") else load_esm2_3b
    ours, tokenizer = load(str(folder), device="cpu", dtype=torch.float32)
    assert type(ours) is Esm2Model
    proteins = [sequence.upper()[:300] for _, sequence in fasta_records(FASTESM_FIXTURE / "inputs.fasta")]
    rows = protein_tokens(tokenizer, residue_table(tokenizer), proteins)
    input_ids, mask = rows.padded(np.arange(len(rows)), tokenizer.pad_token_id)
    with torch.no_grad():
        mine = ours(input_ids, mask).last_hidden_state
        theirs = transformers_esm(folder)(input_ids=input_ids, attention_mask=mask).last_hidden_state
    tokens = mask.bool()
    assert int(tokens.sum()) > len(proteins) * 2 and not tokens.all()           # padding in the batch
    torch.testing.assert_close(mine[tokens], theirs[tokens], **TOLERANCE)


def test_the_key_table_is_the_published_layout():
    """Every encoder key of FastESM2_650's file, with its shape; the rest are heads and rotary frequencies."""
    from safetensors.torch import load_file

    from virnucpro.models.esm2 import Esm2Config, key_table

    config = Esm2Config.from_dict(json.loads((FASTESM_FIXTURE / "config.json").read_text()))
    weights = load_file(FASTESM_FIXTURE / "model.safetensors")
    encoder = {key.removeprefix("esm."): tuple(tensor.shape) for key, tensor in weights.items()
               if key.startswith("esm.") and not key.startswith("esm.contact_head.")
               and not key.endswith("rotary_embeddings.inv_freq")}
    assert encoder == key_table(config)
    others = set(weights) - {f"esm.{key}" for key in encoder}
    assert others == {key for key in weights if key.startswith(("lm_head.", "esm.contact_head."))
                      or key.endswith("rotary_embeddings.inv_freq")}
