"""features_extract.py and scripts/validate_features.py on a synthetic data tree."""
import json
import os
import random
import shutil
import subprocess
import sys
import threading

import pytest
import torch

import features_extract as features
import units
import validate_features as validate
from conftest import ROOT, interrupt_after
from virnucpro.errors import InputError
from virnucpro.models import loaders
from virnucpro.models.modelfiles import model_identity
from virnucpro.models.pins import MERGED_DIM
from virnucpro.training import selection

PER_FILE = 5
# stem -> frames: viral gives 3 full files and a partial one (never used)
TREE = {"viral.1.1": 17, "bacteria.1.1": 12, "archaea.1.1": 10, "fungi.1.1": 5, "protozoa.1.1": 10,
        "plant.1.1": 5, "plant.2.1": 10, "invertebrate.1.1": 5, "vertebrate_mammalian.1.1": 5,
        "vertebrate_other.1.1": 4}


def make_data_tree(root):
    rng = random.Random(0)
    for stem, count in TREE.items():
        with open(root / f"{stem}.identified_nucleotide.fa", "w") as dna, \
                open(root / f"{stem}.identified_protein.fa", "w") as protein:
            for k in range(1, count + 1):
                frame_id = f"{stem}_NC_{k:04d}.1_chunk_1F{k % 3 + 1}"
                dna.write(f">{frame_id}\n{''.join(rng.choices('ACGT', k=rng.randint(30, 90)))}\n")
                protein.write(f">{frame_id}\n{''.join(rng.choices('ACDEFGHIKLMNPQRSTVWY', k=rng.randint(8, 30)))}\n")
        # what scripts/make_train_dataset.py records beside its outputs
        (root / f"{stem}.identified.json").write_text(json.dumps({"chunk_length": 300, "frames": count}))
    return root


def extract_args(models, data_dir, *extra):
    return ["--data-dir", str(data_dir), "--device", "cpu", "--dna-model", models["dna"],
            "--protein-model", models["protein"], "--sequences-per-file", str(PER_FILE), *extra]


def merged_contents(merge_dir):
    found = {}
    for root, _, names in os.walk(merge_dir):
        for name in (n for n in names if n.endswith("_merged.pt")):
            content = torch.load(os.path.join(root, name), weights_only=True)
            found[os.path.relpath(os.path.join(root, name), merge_dir)] = content
    return found


@pytest.fixture(scope="module")
def reference(tiny_models, tmp_path_factory):
    data = make_data_tree(tmp_path_factory.mktemp("reference"))
    assert features.main(extract_args(tiny_models, data)) == 0
    return data


def test_selection_is_balanced_and_deterministic(tmp_path, caplog):
    data = make_data_tree(tmp_path)
    (tmp_path / "mystery.1.1.identified_nucleotide.fa").write_text(">x\nACGT\n")
    (tmp_path / "mystery.1.1.identified_protein.fa").write_text(">x\nMK\n")
    (tmp_path / "lonely.1.1.identified_nucleotide.fa").write_text(">y\nACGT\n")
    pairs = selection.discover(str(data))
    assert [stem for stem, _, _ in pairs] == sorted(TREE)
    assert "unknown category 'mystery'" in caplog.text and "lonely.1.1.identified_protein.fa beside it" in caplog.text

    files = selection.full_split_files(pairs, PER_FILE)
    assert all(f.sequences == PER_FILE for f in files)
    assert len([f for f in files if f.category == "viral"]) == 3                  # the partial file is left out
    assert not [f for f in files if f.stem == "vertebrate_other.1.1"]             # 4 frames: no full file
    selected = selection.select_files(files, seed=42)
    assert selected == selection.select_files(files, seed=42)
    viral, host = selected[:3], selected[3:]
    assert [f.label for f in viral] == ["viral"] * 3 and len(host) == 3
    assert all(f.label == "host" for f in host) and len({f.category for f in host}) == 3   # 1 per category drawn
    draws = {tuple(f.nucleotide for f in selection.select_files(files, seed)[3:]) for seed in range(20)}
    assert len(draws) > 1                                                          # the seed matters


def test_merged_files_are_labelled_2048_features(reference, tiny_models, monkeypatch, capsys):
    merged = merged_contents(reference / "data_merge")
    assert len(merged) == 6
    for name, content in merged.items():
        assert content["data"].shape == (PER_FILE, MERGED_DIM)
        assert content["labels"] == ([1] if name.startswith("viral") else [0])
        assert content["chunk_length"] == 300 and content["precision"] == {"dna": "float32", "protein": "float32"}
    assert "viral.1.1_merged/output_1_merged.pt" in merged
    assert validate.main(["--merge-dir", str(reference / "data_merge")]) == 0
    assert "3 viral (15 rows), 3 host (15 rows)" in capsys.readouterr().out

    monkeypatch.setattr(loaders, "load_dnabert_s", lambda *a, **k: pytest.fail("a finished run must not load models"))
    assert features.main(extract_args(tiny_models, reference)) == 0


def test_interrupted_run_resumes_to_the_same_files(reference, tiny_models, tmp_path, monkeypatch):
    data = make_data_tree(tmp_path)
    calls = interrupt_after(monkeypatch, units, "merge_data", 2)
    with pytest.raises(KeyboardInterrupt):
        features.main(extract_args(tiny_models, data))
    assert len(merged_contents(data / "data_merge")) == 2
    calls.clear()
    assert features.main(extract_args(tiny_models, data)) == 0
    assert len(calls) == 4
    expected, resumed = merged_contents(reference / "data_merge"), merged_contents(data / "data_merge")
    assert resumed.keys() == expected.keys()
    for name in expected:
        assert resumed[name]["ids"] == expected[name]["ids"]
        assert torch.equal(resumed[name]["data"], expected[name]["data"]), name


def test_resuming_with_another_model_is_refused_until_restart(tiny_models, tmp_path, monkeypatch):
    (tmp_path / "data").mkdir()
    data = make_data_tree(tmp_path / "data")
    dna = tmp_path / "dnabert"
    shutil.copytree(tiny_models["dna"], dna)
    models = {**tiny_models, "dna": str(dna)}
    interrupt_after(monkeypatch, units, "merge_data", 2)
    with pytest.raises(KeyboardInterrupt):
        features.main(extract_args(models, data))
    monkeypatch.undo()
    state = torch.load(dna / "pytorch_model.bin", weights_only=True)
    state["encoder.layer.0.mlp.wo.bias"] += 0.5
    torch.save(state, dna / "pytorch_model.bin")                    # the DNA model changed in between
    with pytest.raises(InputError, match=r"holds features made with other settings \(dna_model\); .*--restart"):
        features.main(extract_args(models, data))
    before = merged_contents(data / "data_merge")
    assert features.main(extract_args(models, data, "--restart")) == 0
    after = merged_contents(data / "data_merge")
    assert len(after) == 6 and not any(torch.equal(before[name]["data"], after[name]["data"]) for name in before)
    assert json.loads((data / "data_merge/extraction.json").read_text())["dna_model"] == model_identity(str(dna))


def perturbed_dna_model(source, folder):
    """A copy of a DNABERT-S folder with other weights: another model of the same layout."""
    shutil.copytree(source, folder)
    state = torch.load(folder / "pytorch_model.bin", weights_only=True)
    state["encoder.layer.0.mlp.wo.bias"] += 0.5
    torch.save(state, folder / "pytorch_model.bin")
    return str(folder)


def same_features(merge_dir, clean_dir):
    found, clean = merged_contents(merge_dir), merged_contents(clean_dir)
    assert found.keys() == clean.keys()
    for name in clean:
        assert found[name]["ids"] == clean[name]["ids"], name
        assert torch.equal(found[name]["data"], clean[name]["data"]), name


def test_reextraction_into_a_new_merge_folder_gives_what_a_clean_run_gives(reference, tiny_models, tmp_path):
    """The split and feature files beside the data are reused only when made from the same split file, by the
    same model, in the same precision: another model or another split size makes them again."""
    (tmp_path / "data").mkdir()
    data = make_data_tree(tmp_path / "data")
    assert features.main(extract_args(tiny_models, data)) == 0
    other = {**tiny_models, "dna": perturbed_dna_model(tiny_models["dna"], tmp_path / "other_dna")}
    assert features.main(extract_args(other, data, "--merge-dir", str(tmp_path / "other_model"))) == 0
    (tmp_path / "clean_other").mkdir()
    clean = make_data_tree(tmp_path / "clean_other")
    assert features.main(extract_args(other, clean)) == 0
    same_features(tmp_path / "other_model", clean / "data_merge")

    args = extract_args(tiny_models, data, "--merge-dir", str(tmp_path / "four"))
    args[args.index("--sequences-per-file") + 1] = "4"
    assert features.main(args) == 0
    (tmp_path / "clean_four").mkdir()
    clean = make_data_tree(tmp_path / "clean_four")
    args = extract_args(tiny_models, clean)
    args[args.index("--sequences-per-file") + 1] = "4"
    assert features.main(args) == 0
    same_features(tmp_path / "four", clean / "data_merge")
    same_features(data / "data_merge", reference / "data_merge")          # the first folder stays as it was


def test_the_next_file_prepared_in_the_background_gives_the_same_features(reference, tiny_models, tmp_path,
                                                                          monkeypatch):
    """On a GPU the next split file is read and tokenized by a background thread while the device embeds this
    one: forced here on the CPU, the merged features are those of preparing each in line."""
    from virnucpro.scoring import engine

    threads, file_tokens = [], engine.file_tokens

    def recorded(*args):
        threads.append(threading.current_thread().name)
        return file_tokens(*args)

    monkeypatch.setattr(engine, "file_tokens", recorded)
    monkeypatch.setattr(features, "prefetched", lambda items, prepare, ahead: engine.prefetched(items, prepare, 1))
    (tmp_path / "data").mkdir()
    data = make_data_tree(tmp_path / "data")
    assert features.main(extract_args(tiny_models, data)) == 0
    assert len(threads) == 12 and all(name.startswith("host-work") for name in threads)
    same_features(data / "data_merge", reference / "data_merge")


@pytest.mark.slow
def test_two_processes_together_produce_what_one_produces(reference, tiny_models, tmp_path):
    data = make_data_tree(tmp_path)
    processes = []
    for rank in range(2):
        env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK="0", PYTHONWARNINGS="ignore")
        processes.append(subprocess.Popen([sys.executable, str(ROOT / "features_extract.py"),
                                           *extract_args(tiny_models, data)], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    outputs = [process.communicate(timeout=300) for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    assert "process 1 of 2 takes 3" in outputs[0][1] and "process 2 of 2 takes 3" in outputs[1][1]
    expected, together = merged_contents(reference / "data_merge"), merged_contents(data / "data_merge")
    assert together.keys() == expected.keys()
    for name in expected:
        assert torch.equal(together[name]["data"], expected[name]["data"]), name


def test_validation_catches_corrupted_files(reference, tmp_path, capsys):
    merge_dir = tmp_path / "data_merge"
    shutil.copytree(reference / "data_merge", merge_dir)
    viral = merge_dir / "viral.1.1_merged"
    bad = torch.load(viral / "output_1_merged.pt", weights_only=True)
    torch.save({**bad, "data": bad["data"][:, :2047]}, viral / "output_1_merged.pt")
    nan = torch.load(viral / "output_2_merged.pt", weights_only=True)
    nan["data"][0, 5] = float("nan")
    torch.save(nan, viral / "output_2_merged.pt")
    relabelled = torch.load(merge_dir / "bacteria.1.1_merged/output_1_merged.pt", weights_only=True)
    torch.save({**relabelled, "labels": [1]}, merge_dir / "bacteria.1.1_merged/output_1_merged.pt")
    twin = torch.load(viral / "output_3_merged.pt", weights_only=True)
    torch.save(twin, merge_dir / "copy_merged.pt")                               # same ids twice
    assert validate.main(["--merge-dir", str(merge_dir)]) == 1
    errors = capsys.readouterr().err
    assert "output_1_merged.pt: expected a 2048-value feature vector" in errors
    assert "output_2_merged.pt: the features hold NaN" in errors
    assert "also in" in errors and "copy_merged.pt" in errors
    assert "bacteria.1.1_merged/output_1_merged.pt: labelled viral, but its folder names it bacteria" in errors
