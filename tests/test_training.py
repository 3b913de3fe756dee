"""Test split, training, evaluation, speed benchmark and environment checks on synthetic features."""
import json
import re

import numpy as np
import pytest
import torch

import units
from conftest import load_script

create_test_set = load_script("scripts/create_test_set.py")
trainer = load_script("train_fastesm.py")
evaluate = load_script("scripts/evaluate_compare.py")
benchmark = load_script("scripts/benchmark_speed.py")
environment = load_script("scripts/validate_environment.py")

CLASSES = ((1, "viral.1.1"), (0, "bacteria.1.1"))
PRECISION = {"dna": "float32", "protein": "float16"}      # as features_extract.py records it on a GPU


def make_merged(merge_dir, dim=units.MERGED_DIM, accessions=30, seed=0, rows_per_file=50):
    """Separable synthetic features: viral rows shifted up in the first dims, host rows down."""
    rng = np.random.default_rng(seed)
    for label, stem in CLASSES:
        ids = [f"{stem}_ACC{a:03d}.1_chunk_{c + 1}F1" for a in range(accessions) for c in range(rng.integers(3, 12))]
        data = rng.normal(size=(len(ids), dim)).astype(np.float32)
        data[:, :16] += 1.5 if label else -1.5
        folder = merge_dir / f"{stem}_merged"
        folder.mkdir(parents=True, exist_ok=True)
        for n, start in enumerate(range(0, len(ids), rows_per_file), start=1):
            torch.save({"ids": ids[start:start + rows_per_file], "data": torch.from_numpy(data[start:start + rows_per_file]),
                        "labels": [label], "precision": PRECISION, "chunk_length": 300},
                       folder / f"output_{n}_merged.pt")
    return merge_dir


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("training")
    make_merged(root / "data_merge")
    split = root / "test_metadata.json"
    assert create_test_set.main(["--merge-dir", str(root / "data_merge"), "--data-dir", str(root),
                                 "--output", str(split)]) == 0
    return root


def train_args(workspace, output, *extra):
    return ["--merge-dir", str(workspace / "data_merge"), "--split", str(workspace / "test_metadata.json"),
            "--output", str(output), "--device", "cpu", "--lr", "0.01", *extra]


@pytest.fixture(scope="module")
def trained(workspace):
    model = workspace / "model_fastesm650.pth"
    assert trainer.main(train_args(workspace, model, "--epochs", "6", "--patience", "10")) == 0
    return model


# ------------------------------------------------------------ split
def test_split_keeps_genomes_whole_and_holds_out_a_tenth_per_class(workspace, tmp_path, capsys):
    split = json.loads((workspace / "test_metadata.json").read_text())
    features = units.FeatureSet(units.find_merged_files(workspace / "data_merge"))
    test = set(split["test_accessions"])
    for label, name in ((1, "viral"), (0, "host")):
        mine = features.labels == label
        per_accession = {}
        for accession, is_mine in zip(features.accessions(), mine):
            if is_mine:
                per_accession[accession] = per_accession.get(accession, 0) + 1
        test_rows = sum(n for a, n in per_accession.items() if a in test)
        assert abs(test_rows - 0.1 * mine.sum()) <= max(per_accession.values()) / 2   # 10% within one genome
        assert split["classes"][name]["test"]["rows"] == test_rows
        assert split["classes"][name]["train"]["rows"] == mine.sum() - test_rows
    assert sum(f["test_rows"] for f in split["files"]) == sum(c["test"]["rows"] for c in split["classes"].values())
    assert split["seed"] == 42 and split["test_files"] and split["train_files"]

    again = tmp_path / "again.json"
    create_test_set.main(["--merge-dir", str(workspace / "data_merge"), "--output", str(again)])
    assert json.loads(again.read_text())["test_accessions"] == split["test_accessions"]
    other = tmp_path / "other.json"
    create_test_set.main(["--merge-dir", str(workspace / "data_merge"), "--output", str(other), "--seed", "7"])
    assert json.loads(other.read_text())["test_accessions"] != split["test_accessions"]
    assert "| viral | test |" in capsys.readouterr().out


def test_length_distribution_comes_from_the_split_fasta(tmp_path):
    merge_dir = make_merged(tmp_path / "data_merge", accessions=8)
    features = units.FeatureSet(units.find_merged_files(merge_dir))
    fasta_dir = tmp_path / "data" / "viral.1.1.identified_nucleotide"
    fasta_dir.mkdir(parents=True)
    with open(fasta_dir / "output_1.fa", "w") as handle:
        for i in torch.load(merge_dir / "viral.1.1_merged/output_1_merged.pt", weights_only=True)["ids"]:
            handle.write(f">{i}\n{'A' * 300}\n")
    lengths = units.frame_lengths(features.files, tmp_path / "data")
    assert set(lengths.values()) == {300} and len(lengths) == min(50, sum(features.labels == 1))


# ------------------------------------------------------------ training
def test_training_loss_falls_and_the_checkpoint_loads(trained, workspace):
    log = (workspace / "training_log_fastesm650.txt").read_text()
    losses = [float(x) for x in re.findall(r"train loss ([\d.]+)", log)]
    assert len(losses) == 6 and losses[-1] < losses[0]
    assert re.search(r"epoch 6/6 .* val loss [\d.]+ acc [\d.]+ F1 [\d.]+ AUC [\d.]+ \| lr [\d.e+-]+ \| [\d.]+ s", log)
    model, metadata = units.load_checkpoint(trained)
    assert metadata["embedding_model"] == "fastesm650" and metadata["epochs_trained"] == 6
    assert metadata["saved"] == "final" and metadata["validation"]["accuracy"] > 0.9
    assert metadata["encoder_precision"] == PRECISION and metadata["chunk_length"] == 300
    assert not (workspace / ("model_fastesm650.pth" + trainer.STATE_SUFFIX)).exists()


def test_early_stopping_and_save_best(workspace, tmp_path, monkeypatch):
    losses = iter([0.5, 0.4, 0.45, 0.47, 0.49, 0.3])            # best at epoch 2, then no progress

    def scripted_evaluate(model, features, rows, device):
        return next(losses), {"accuracy": 0.5, "f1": 0.5, "roc_auc": 0.5}

    monkeypatch.setattr(trainer, "evaluate", scripted_evaluate)
    output = tmp_path / "model.pth"
    assert trainer.main(train_args(workspace, output, "--epochs", "50", "--patience", "3", "--save-best")) == 0
    metadata = units.load_checkpoint(output)[1]
    assert (metadata["epochs_trained"], metadata["best_epoch"], metadata["saved_epoch"]) == (5, 2, 2)
    assert metadata["stopped_early"] and metadata["saved"] == "best"


def test_interrupted_training_resumes_to_the_same_model(workspace, trained, tmp_path, monkeypatch):
    output = tmp_path / "model_fastesm650.pth"
    calls, original = [], trainer.train_epoch

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(trainer, "train_epoch", interrupted)
    args = train_args(workspace, output, "--epochs", "6", "--patience", "10")
    with pytest.raises(KeyboardInterrupt):
        trainer.main(args)
    assert not output.exists() and (tmp_path / ("model_fastesm650.pth" + trainer.STATE_SUFFIX)).exists()
    monkeypatch.setattr(trainer, "train_epoch", original)
    assert trainer.main(args) == 0
    resumed, reference = units.load_checkpoint(output)[0], units.load_checkpoint(trained)[0]
    for key, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_feature_sets_report_the_precision_of_their_encoders(tmp_path):
    make_merged(tmp_path / "merge", accessions=2)
    files = units.find_merged_files(tmp_path / "merge")
    assert units.FeatureSet(files).encoder_precision() == PRECISION
    content = torch.load(files[0], weights_only=True)
    torch.save({**content, "precision": {"dna": "bfloat16", "protein": "float16"}}, files[0])
    assert units.FeatureSet(files).encoder_precision() == {"dna": "mixed (bfloat16, float32)", "protein": "float16"}
    for path in files:
        content = torch.load(path, weights_only=True)
        del content["precision"]
        torch.save(content, path)
    assert units.FeatureSet(files).encoder_precision() is None          # older files: not recorded


def test_training_knows_the_chunk_length_of_its_features(workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = train_args(workspace, "unused", "--epochs", "1")
    del args[args.index("--output"):args.index("--output") + 2]
    assert trainer.main(args) == 0
    assert units.load_checkpoint(tmp_path / "model_fastesm650_300.pth")[1]["chunk_length"] == 300
    with pytest.raises(units.InputError, match="--length 500, but the features in .* come from 300-bp chunks"):
        trainer.main(args + ["--length", "500"])
    merge = make_merged(tmp_path / "merge", accessions=2)
    files = units.find_merged_files(merge)
    for path in files:
        content = torch.load(path, weights_only=True)
        del content["chunk_length"]
        torch.save(content, path)
    with pytest.raises(units.InputError, match="do not record their chunk length; give --length 300 or --length 500"):
        trainer.main(["--merge-dir", str(merge), "--split", str(workspace / "test_metadata.json")])
    torch.save({**torch.load(files[0], weights_only=True), "chunk_length": 500}, files[0])
    torch.save({**torch.load(files[1], weights_only=True), "chunk_length": 300}, files[1])
    with pytest.raises(units.InputError, match="mix frames of 300-bp chunks .* and 500-bp chunks"):
        units.FeatureSet(files).chunk_length()


def test_training_refuses_features_of_the_wrong_width(tmp_path):
    make_merged(tmp_path / "data_merge", dim=units.PIPELINES["esm2_3b"].input_dim, accessions=5)
    with pytest.raises(units.DimensionError, match="expected a 2048-value"):
        trainer.main(["--merge-dir", str(tmp_path / "data_merge"), "--split", str(tmp_path / "none.json")])


# ------------------------------------------------------------ metrics and evaluation
def test_metrics_equal_scikit_learn():
    from sklearn import metrics

    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    virus = np.array([0.9, 0.6, 0.4, 0.2, 0.7, 0.5, 0.8, 0.1])       # 0.5: a tie, called 'others'
    probabilities = np.stack([1 - virus, virus], axis=1)
    predicted = np.array([1, 1, 0, 0, 1, 0, 1, 0])
    result = units.classification_metrics(labels, probabilities)
    assert result["accuracy"] == metrics.accuracy_score(labels, predicted) == 0.75
    assert result["precision"] == metrics.precision_score(labels, predicted)
    assert result["recall"] == metrics.recall_score(labels, predicted)
    assert result["f1"] == metrics.f1_score(labels, predicted)
    assert result["roc_auc"] == metrics.roc_auc_score(labels, virus)
    assert result["confusion_matrix"] == [[3, 1], [1, 3]]


def test_evaluation_report_against_the_baseline(workspace, trained, tmp_path, capsys):
    make_merged(tmp_path / "baseline_merge", dim=units.PIPELINES["esm2_3b"].input_dim)   # same ids, 3328-d
    torch.manual_seed(0)
    units.save_checkpoint(units.MLPClassifier(3328, 512, 2), tmp_path / "esm2_3b.pth", pipeline="esm2_3b")
    reports = tmp_path / "reports"
    assert evaluate.main(["--model", str(trained), "--merge-dir", str(workspace / "data_merge"),
                          "--split", str(workspace / "test_metadata.json"), "--baseline-model",
                          str(tmp_path / "esm2_3b.pth"), "--baseline-merge-dir", str(tmp_path / "baseline_merge"),
                          "--report-dir", str(reports), "--device", "cpu"]) == 0
    report = (reports / "validation_report.md").read_text()
    for section in ("**Result: PASSED**", "## Metrics", "| ROC-AUC |", "## Confusion matrices", "## ROC curves",
                    "## By frame length", "Accuracy drop"):
        assert section in report
    assert (reports / "roc_curves.png").read_bytes()[:4] == b"\x89PNG"
    saved = json.loads((reports / "metrics_fastesm650.json").read_text())
    assert saved["accuracy"] > 0.9 and "confusion_matrix" in saved
    assert json.loads((reports / "metrics_esm2_3b.json").read_text())["n"] == saved["n"]
    assert "PASSED" in capsys.readouterr().out


def test_evaluation_fails_below_the_threshold_and_says_when_there_is_no_baseline(workspace, tmp_path):
    torch.manual_seed(3)
    untrained = tmp_path / "untrained.pth"
    model = units.MLPClassifier(units.MERGED_DIM, 512, 2)
    with torch.no_grad():
        model.output_layer.bias[:] = torch.tensor([5.0, 0.0])           # always 'others'
    units.save_checkpoint(model, untrained)
    (tmp_path / "baseline.json").write_text(json.dumps({"accuracy": 0.99, "precision": 0.99, "recall": 0.99,
                                                        "f1": 0.99, "roc_auc": 0.999, "n": 100}))
    common = ["--model", str(untrained), "--merge-dir", str(workspace / "data_merge"), "--split",
              str(workspace / "test_metadata.json"), "--device", "cpu"]
    assert evaluate.main(common + ["--baseline-metrics", str(tmp_path / "baseline.json"),
                                   "--report-dir", str(tmp_path / "failed")]) == 1
    report = (tmp_path / "failed/validation_report.md").read_text()
    assert "**Result: FAILED**" in report and "## Next steps" in report
    assert evaluate.main(common + ["--report-dir", str(tmp_path / "alone")]) == 0
    assert "No baseline given" in (tmp_path / "alone/validation_report.md").read_text()


# ------------------------------------------------------------ speed benchmark and environment
def test_speed_benchmark_cpu_smoke(tiny_models, tmp_path, capsys):
    report = tmp_path / "speed.md"
    status = benchmark.main(["--device", "cpu", "--sequences", "4", "--runs", "1", "--report", str(report),
                             "--fastesm-model", tiny_models["protein"], "--esm2-3b-model", tiny_models["esm2_3b"]])
    assert status in (0, 1)
    text = report.read_text()
    for section in ("## Protein-embedding extraction", "| FastESM2_650 | float32 |", "| ESM2-3B | float32 |",
                    "## Speed-up", "| same precision |", "4.4x"):
        assert section in text
    assert ("PASSED" if status == 0 else "FAILED") in capsys.readouterr().out


def test_end_to_end_benchmark_smoke(tiny_models, tmp_path):
    checkpoint = tmp_path / "model_fastesm650.pth"
    units.save_checkpoint(units.MLPClassifier(units.MERGED_DIM, 512, 2), checkpoint)
    report = tmp_path / "e2e.md"
    assert benchmark.main(["--end-to-end", "--device", "cpu", "--checkpoint", str(checkpoint), "--report",
                           str(report), "--dna-model", tiny_models["dna"],
                           "--fastesm-model", tiny_models["protein"]]) == 0
    assert re.search(r"\| fastesm650 \| 10 \| [\d.]+ \| [\d.]+ \|", report.read_text())


def test_environment_checks(tiny_models, capsys):
    status = environment.main(["--device", "cpu", "--protein-model", tiny_models["protein"]])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:5]] == ["ENV-01", "ENV-02", "ENV-03", "ENV-04", "ENV-05"]
    assert all(" PASS " in line for line in lines[1:5]), lines
    assert status == (0 if torch.cuda.is_available() else 1)
