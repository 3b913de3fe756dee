"""Test split, training, evaluation, speed benchmark and environment checks on synthetic features."""
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import benchmark_gpu
import benchmark_speed as benchmark
import create_test_set
import evaluate_compare as evaluate
import train_fastesm as trainer
import units
import validate_environment as environment
from conftest import ROOT, interrupt_after
from helpers.models import save_classifier
from virnucpro.errors import DimensionError, InputError
from virnucpro.models.features import FeatureSet, find_merged_files
from virnucpro.models.loaders import PIPELINES
from virnucpro.models.pins import MERGED_DIM
from virnucpro.scoring import metrics
from virnucpro.sequences.chunks import record_of
from virnucpro.training import evaluation, fitting, splits

CLASSES = ((1, "viral.1.1"), (0, "bacteria.1.1"))
PRECISION = {"dna": "float32", "protein": "float16"}      # as features_extract.py records it on a GPU


def make_merged(merge_dir, dim=MERGED_DIM, accessions=30, seed=0, rows_per_file=50):
    """Separable synthetic features: viral rows shifted up in the first dims, host rows down. The frames
    (ids) depend on the seed only, so both pipelines' features hold the same frames, as real ones do."""
    frames, values = np.random.default_rng(seed), np.random.default_rng([seed, dim])
    for label, stem in CLASSES:
        ids = [f"{stem}_ACC{a:03d}.1_chunk_{c + 1}F1" for a in range(accessions) for c in range(frames.integers(3, 12))]
        data = values.normal(size=(len(ids), dim)).astype(np.float32)
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
    features = FeatureSet(find_merged_files(workspace / "data_merge"))
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
    assert split["seed"] == 42 and "test_files" not in split                 # files mostly hold training rows
    assert set(split["train_accessions"]) == set(features.accessions()) - test

    again = tmp_path / "again.json"
    create_test_set.main(["--merge-dir", str(workspace / "data_merge"), "--output", str(again)])
    assert json.loads(again.read_text())["test_accessions"] == split["test_accessions"]
    other = tmp_path / "other.json"
    create_test_set.main(["--merge-dir", str(workspace / "data_merge"), "--output", str(other), "--seed", "7"])
    assert json.loads(other.read_text())["test_accessions"] != split["test_accessions"]
    assert "| viral | test |" in capsys.readouterr().out


def lineage_records(data_dir, accessions=30):
    """make_train_dataset.py's records: viral records two by two of one organism (segments), host ones three
    by three (chromosomes); five viral families and seven host families (two would leave no host family
    small enough to hold out: a one-sided split, refused)."""
    lineages = {}
    for label, stem in CLASSES:
        for a in range(accessions):
            organism = f"virus {a // 2}" if label else f"host {a // 3}"
            family = f"Family{a % 5}viridae" if label else f"Family{a % 7}aceae"
            lineages[f"{stem}_ACC{a:03d}.1"] = {"organism": organism, "taxonomy": ["Root", family, f"Genus{a % 7}"]}
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "all.identified.json").write_text(json.dumps({"chunk_length": 300, "lineages": lineages}))
    return lineages


@pytest.mark.parametrize("level", ["organism", "family"])
def test_related_records_are_held_out_together(tmp_path, level):
    merge = make_merged(tmp_path / "data_merge")
    lineages = lineage_records(tmp_path / "data")
    output = tmp_path / "split.json"
    assert create_test_set.main(["--merge-dir", str(merge), "--data-dir", str(tmp_path / "data"), "--output",
                                 str(output), "--group-by", level]) == 0
    split = json.loads(output.read_text())
    assert split["grouping"] == {"level": level, "groups": len({splits.related_group(a, l, level)
                                                                 for a, l in lineages.items()}),
                                 "records_without_lineage": 0}
    test = set(split["test_accessions"])
    sides = {}
    for accession, lineage in lineages.items():
        sides.setdefault(splits.related_group(accession, lineage, level), set()).add(accession in test)
    assert all(len(on) == 1 for on in sides.values())                       # no group on both sides
    assert test and set(split["test_groups"]) == {g for g, on in sides.items() if on == {True}}
    assert split["test_group_of"] == {a: splits.related_group(a, lineages[a], level) for a in sorted(test)}


def test_test_frames_identical_to_training_frames_are_left_out(workspace, trained, tmp_path):
    merge = tmp_path / "data_merge"
    shutil.copytree(workspace / "data_merge", merge)
    split = json.loads((workspace / "test_metadata.json").read_text())
    test = set(split["test_accessions"])
    features = FeatureSet(find_merged_files(merge))
    train_row = next(k for k, i in enumerate(features.ids) if record_of(i) not in test)
    test_row = next(k for k, i in enumerate(features.ids) if record_of(i) in test)
    path, start, _ = next(span for span in features.spans() if span[1] <= test_row < span[2])
    content = torch.load(path, weights_only=True)
    content["data"][test_row - start] = features.rows([train_row])[0]        # the same frame in two records
    torch.save(content, path)
    output = tmp_path / "split.json"
    assert create_test_set.main(["--merge-dir", str(merge), "--output", str(output), "--group-by", "record"]) == 0
    again = json.loads(output.read_text())
    assert again["test_accessions"] == split["test_accessions"]
    assert again["excluded_test_frames"] == [features.ids[test_row]]
    assert features.ids[test_row] not in {features.ids[r] for r in evaluation.test_rows(features, again)}


def test_length_distribution_comes_from_the_split_fasta(tmp_path):
    merge_dir = make_merged(tmp_path / "data_merge", accessions=8)
    features = FeatureSet(find_merged_files(merge_dir))
    fasta_dir = tmp_path / "data" / "viral.1.1.identified_nucleotide"
    fasta_dir.mkdir(parents=True)
    with open(fasta_dir / "output_1.fa", "w") as handle:
        for i in torch.load(merge_dir / "viral.1.1_merged/output_1_merged.pt", weights_only=True)["ids"]:
            handle.write(f">{i}\n{'A' * 300}\n")
    lengths = splits.frame_lengths(features.files, tmp_path / "data")
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

    monkeypatch.setattr(fitting, "evaluate", scripted_evaluate)
    output = tmp_path / "model.pth"
    assert trainer.main(train_args(workspace, output, "--epochs", "50", "--patience", "3", "--save-best")) == 0
    metadata = units.load_checkpoint(output)[1]
    assert (metadata["epochs_trained"], metadata["best_epoch"], metadata["saved_epoch"]) == (5, 2, 2)
    assert metadata["stopped_early"] and metadata["saved"] == "best"


def test_interrupted_training_resumes_to_the_same_model(workspace, trained, tmp_path, monkeypatch):
    output = tmp_path / "model_fastesm650.pth"
    interrupt_after(monkeypatch, fitting, "train_epoch", 2)
    args = train_args(workspace, output, "--epochs", "6", "--patience", "10")
    with pytest.raises(KeyboardInterrupt):
        trainer.main(args)
    assert not output.exists() and (tmp_path / ("model_fastesm650.pth" + trainer.STATE_SUFFIX)).exists()
    monkeypatch.undo()
    assert trainer.main(args) == 0
    resumed, reference = units.load_checkpoint(output)[0], units.load_checkpoint(trained)[0]
    for key, value in reference.state_dict().items():
        assert torch.equal(resumed.state_dict()[key], value), key


def test_feature_sets_report_the_precision_of_their_encoders(tmp_path):
    make_merged(tmp_path / "merge", accessions=2)
    files = find_merged_files(tmp_path / "merge")
    assert FeatureSet(files).encoder_precision() == PRECISION
    content = torch.load(files[0], weights_only=True)
    torch.save({**content, "precision": {"dna": "bfloat16", "protein": "float16"}}, files[0])
    assert FeatureSet(files).encoder_precision() == {"dna": "mixed (bfloat16, float32)", "protein": "float16"}
    for path in files:
        content = torch.load(path, weights_only=True)
        del content["precision"]
        torch.save(content, path)
    assert FeatureSet(files).encoder_precision() is None          # older files: not recorded


def test_training_knows_the_chunk_length_of_its_features(workspace, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = train_args(workspace, "unused", "--epochs", "1")
    del args[args.index("--output"):args.index("--output") + 2]
    assert trainer.main(args) == 0
    assert units.load_checkpoint(tmp_path / "data/model_fastesm650_300.pth")[1]["chunk_length"] == 300   # by default in data/
    with pytest.raises(InputError, match="--length 500, but the features in .* come from 300-bp chunks"):
        trainer.main(args + ["--length", "500"])
    merge = make_merged(tmp_path / "merge", accessions=2)
    files = find_merged_files(merge)
    for path in files:
        content = torch.load(path, weights_only=True)
        del content["chunk_length"]
        torch.save(content, path)
    with pytest.raises(InputError, match="do not record their chunk length; give --length 300 or --length 500"):
        trainer.main(["--merge-dir", str(merge), "--split", str(workspace / "test_metadata.json")])
    torch.save({**torch.load(files[0], weights_only=True), "chunk_length": 500}, files[0])
    torch.save({**torch.load(files[1], weights_only=True), "chunk_length": 300}, files[1])
    with pytest.raises(InputError, match="mix frames of 300-bp chunks .* and 500-bp chunks"):
        FeatureSet(files).chunk_length()


def test_training_refuses_features_of_the_wrong_width(tmp_path):
    make_merged(tmp_path / "data_merge", dim=PIPELINES["esm2_3b"].input_dim, accessions=5)
    with pytest.raises(DimensionError, match="expected a 2048-value"):
        trainer.main(["--merge-dir", str(tmp_path / "data_merge"), "--split", str(tmp_path / "none.json")])


# ------------------------------------------------------------ metrics and evaluation
def test_metrics_equal_scikit_learn():
    from sklearn import metrics as sklearn

    labels = np.array([1, 1, 1, 0, 0, 0, 1, 0])
    virus = np.array([0.9, 0.6, 0.4, 0.2, 0.7, 0.5, 0.8, 0.1])       # 0.5: a tie, called 'others'
    probabilities = np.stack([1 - virus, virus], axis=1)
    predicted = np.array([1, 1, 0, 0, 1, 0, 1, 0])
    result = metrics.classification_metrics(labels, probabilities)
    assert result["accuracy"] == sklearn.accuracy_score(labels, predicted) == 0.75
    assert result["precision"] == sklearn.precision_score(labels, predicted)
    assert result["recall"] == sklearn.recall_score(labels, predicted)
    assert result["f1"] == sklearn.f1_score(labels, predicted)
    assert result["roc_auc"] == sklearn.roc_auc_score(labels, virus)
    assert result["confusion_matrix"] == [[3, 1], [1, 3]]


@pytest.fixture(scope="module")
def baseline(workspace):
    """The ESM2-3B baseline trained like for like: the same records (3328-d features), split and recipe."""
    make_merged(workspace / "data_merge_esm2_3b", dim=PIPELINES["esm2_3b"].input_dim)
    model = workspace / "model_esm2_3b_300.pth"
    assert trainer.main(["--pipeline", "esm2_3b", "--merge-dir", str(workspace / "data_merge_esm2_3b"), "--split",
                         str(workspace / "test_metadata.json"), "--output", str(model), "--device", "cpu",
                         "--lr", "0.01", "--epochs", "4"]) == 0
    return model


def evaluate_args(workspace, model, reports, *extra):
    return ["--checkpoint", str(model), "--merge-dir", str(workspace / "data_merge"), "--split",
            str(workspace / "test_metadata.json"), "--baseline-merge-dir", str(workspace / "data_merge_esm2_3b"),
            "--output-dir", str(reports), "--device", "cpu", "--replicates", "500", "--frames-only", *extra]


def test_evaluation_against_a_baseline_trained_like_for_like(workspace, trained, baseline, tmp_path, capsys):
    metadata = units.load_checkpoint(baseline, "esm2_3b")[1]
    assert metadata["embedding_model"] == "esm2_3b" and metadata["merged_dim"] == 3328
    assert metadata["split"] == units.load_checkpoint(trained)[1]["split"]          # one split for both
    reports = tmp_path / "reports"
    assert evaluate.main(evaluate_args(workspace, trained, reports, "--baseline-checkpoint", str(baseline))) == 0
    report = (reports / "validation_report.md").read_text()
    for section in ("**Result: PASSED**", "## Metrics", "| ROC-AUC |", "ESM2-3B minus FastESM2_650",
                    "## Precision at other viral prevalences", "| FastESM2_650 | 1% |", "## Confusion matrices",
                    "## ROC curves", "## By frame length", "## Verdict by level", "held out by organism",
                    "trained on this split with the same recipe"):
        assert section in report, section
    accuracy_row = next(line for line in report.splitlines() if line.startswith("| Accuracy |"))
    assert accuracy_row.count("[") == 3                           # both classifiers and their difference
    saved = json.loads((reports / "metrics_fastesm650.json").read_text())["frames_cds"]
    assert saved["accuracy"] > 0.9 and len(saved["intervals_95"]["accuracy"]) == 2
    assert json.loads((reports / "metrics_esm2_3b.json").read_text())["frames_cds"]["n"] == saved["n"]
    assert "-> PASSED" in capsys.readouterr().out and "were not run" in report


def test_a_published_baseline_is_reported_apart_and_never_decides(workspace, trained, baseline, tmp_path):
    published = tmp_path / "500_model.pth"
    subprocess.run([sys.executable, str(ROOT / "tests/helpers/make_published_checkpoint.py"), str(published)],
                   check=True)
    reports = tmp_path / "reports"
    assert evaluate.main(evaluate_args(workspace, trained, reports, "--baseline-checkpoint", str(published))) == 0
    report = (reports / "validation_report.md").read_text()
    assert "**Result: NO LIKE-FOR-LIKE BASELINE**" in report
    assert "## The published ESM2-3B classifier: an optimistic bound, not in the verdict" in report
    assert evaluate.main(evaluate_args(workspace, trained, tmp_path / "alone")) == 0
    assert "No baseline given" in (tmp_path / "alone/validation_report.md").read_text()


def test_models_of_another_split_and_records_the_split_does_not_know_are_refused(workspace, trained, tmp_path):
    other = tmp_path / "other_split.json"
    assert create_test_set.main(["--merge-dir", str(workspace / "data_merge"), "--output", str(other),
                                 "--seed", "7"]) == 0
    with pytest.raises(InputError, match="trained with another split than .*other_split.json"):
        evaluate.main(evaluate_args(workspace, trained, tmp_path / "r")[:4] + ["--split", str(other), "--device",
                                                                              "cpu"])
    leaky = tmp_path / "leaky_esm2_3b.pth"                  # a baseline trained on the other split saw test records
    assert trainer.main(["--pipeline", "esm2_3b", "--merge-dir", str(workspace / "data_merge_esm2_3b"), "--split",
                         str(other), "--output", str(leaky), "--device", "cpu", "--epochs", "1"]) == 0
    with pytest.raises(InputError, match="leaky_esm2_3b.pth: trained with another split"):
        evaluate.main(evaluate_args(workspace, trained, tmp_path / "r", "--baseline-checkpoint", str(leaky)))
    unrecorded = tmp_path / "unrecorded.pth"
    units.save_checkpoint(units.MLPClassifier(MERGED_DIM, 512, 2), unrecorded, chunk_length=300)
    with pytest.raises(InputError, match="does not record the split it was trained on"):
        evaluate.main(evaluate_args(workspace, unrecorded, tmp_path / "r"))

    merge = tmp_path / "grown"
    shutil.copytree(workspace / "data_merge", merge)
    content = torch.load(merge / "viral.1.1_merged/output_1_merged.pt", weights_only=True)
    content["ids"] = [i.replace("ACC", "NEW") for i in content["ids"]]          # records added after the split
    torch.save(content, merge / "viral.1.1_merged/output_99_merged.pt")
    with pytest.raises(InputError, match="records? of the features not in .*test_metadata.json"):
        trainer.main(["--merge-dir", str(merge), "--split", str(workspace / "test_metadata.json"), "--output",
                      str(tmp_path / "m.pth"), "--device", "cpu"])


def test_evaluation_fails_when_the_drop_is_surely_over_the_threshold(workspace, trained, baseline, tmp_path):
    torch.manual_seed(3)
    untrained = save_classifier(tmp_path / "always_others.pth", viral_bias=-5.0,
                                split=units.load_checkpoint(trained)[1]["split"])
    reports = tmp_path / "failed"
    assert evaluate.main(evaluate_args(workspace, untrained, reports, "--baseline-checkpoint", str(baseline))) == 1
    report = (reports / "validation_report.md").read_text()
    assert "**Result: FAILED**" in report and "## Next steps" in report


def test_three_way_verdict_from_the_interval():
    assert evaluation.verdict_of((-0.01, 0.03), 0.05) == "PASSED"
    assert evaluation.verdict_of((0.02, 0.09), 0.05) == "INCONCLUSIVE"
    assert evaluation.verdict_of((0.05, 0.12), 0.05) == "FAILED"


def test_group_bootstrap_covers_a_known_difference_at_about_the_nominal_rate():
    """Records of 20 frames whose accuracies vary by record (so frames are not
    independent); classifier B is 5 points worse than A in expectation."""
    rng = np.random.default_rng(0)
    covered, trials = 0, 200
    for _ in range(trials):
        groups = np.repeat(np.arange(40), 20)
        labels = (groups % 2).astype(np.int64)
        accuracy = np.repeat(rng.beta(8, 2, size=40), 20)
        right_a = rng.random(len(groups)) < accuracy
        right_b = rng.random(len(groups)) < accuracy - 0.05
        calls = {name: np.where(right, labels, 1 - labels) for name, right in (("A", right_a), ("B", right_b))}
        low, high = metrics.group_bootstrap(groups.astype(str), labels, calls, replicates=400,
                                          seed=int(rng.integers(1 << 30)))["difference"]["accuracy"]
        covered += low <= 0.05 <= high
    assert 0.88 <= covered / trials <= 0.99


def test_precision_at_a_prevalence():
    assert metrics.precision_at_prevalence(0.9, 0.95, 0.01) == pytest.approx(0.009 / (0.009 + 0.0495))
    assert metrics.precision_at_prevalence(0.9, 0.95, 0.5) == pytest.approx(0.45 / (0.45 + 0.025))


# ------------------------------------------------------------ speed benchmark and environment
def test_speed_benchmark_cpu_smoke(tiny_models, tmp_path, capsys):
    report = tmp_path / "speed.md"
    status = benchmark.main(["--device", "cpu", "--sequences", "4", "--runs", "1", "--report", str(report),
                             "--protein-model", tiny_models["protein"], "--baseline-protein-model", tiny_models["esm2_3b"]])
    assert status == 0
    text = report.read_text()
    for section in ("## Protein-embedding extraction", "| FastESM2_650 | float32 |", "| ESM2-3B | float32 |",
                    "## Speed-up", "| same precision |", "4.4x"):
        assert section in text
    verdict = ("NO VERDICT: a smoke test (a CPU run; 4 proteins, fewer than 500; 1 timed runs, fewer than 3), "
               "not a measurement")
    assert f"**Result: {verdict}**" in text and f"{verdict}; report:" in capsys.readouterr().out


def test_end_to_end_benchmark_smoke(tiny_models, tmp_path):
    checkpoint = tmp_path / "model_fastesm650.pth"
    units.save_checkpoint(units.MLPClassifier(MERGED_DIM, 512, 2), checkpoint)
    report = tmp_path / "e2e.md"
    assert benchmark.main(["--end-to-end", "--device", "cpu", "--checkpoint", str(checkpoint), "--report",
                           str(report), "--dna-model", tiny_models["dna"],
                           "--protein-model", tiny_models["protein"]]) == 0
    assert re.search(r"\| fastesm650 \| 10 \| [\d.]+ \| [\d.]+ \|", report.read_text())


def test_host_ceiling_benchmark_runs_the_prediction_path(tmp_path):
    result_file = tmp_path / "ceiling.json"
    assert benchmark.main(["--host-ceiling", "--sequences", "300", "--json", str(result_file)]) == 0
    result = json.loads(result_file.read_text())
    assert result["frames"] >= 300                         # one open reading frame a read, at least
    assert result["frames_per_second"] == pytest.approx(result["frames"] / result["seconds"])
    assert result["host_frames_per_second"] > result["frames_per_second"]
    assert result["stages"]["  of which DNA tokenization"] > 0 and result["peak_rss_mb"] > 0
    stages = result["stages"]
    assert 0 < stages["    of which padded batches (host)"] < stages["  of which encoders and classifier"]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the session would run")
def test_gpu_session_without_a_gpu_says_so(tmp_path, capsys):
    with pytest.raises(InputError, match="no CUDA GPU is available here, and the session measures one; --smoke"):
        benchmark_gpu.main(["-o", str(tmp_path)])
    assert not list(tmp_path.iterdir())


@pytest.mark.slow
def test_gpu_session_smoke_runs_every_step(tmp_path):
    assert benchmark_gpu.main(["-o", str(tmp_path), "--smoke"]) == 0
    steps = json.loads((tmp_path / "benchmark_gpu.json").read_text())["steps"]
    assert list(steps) == [name for name, _ in benchmark_gpu.STEPS]
    assert not [name for name, result in steps.items() if "error" in result]
    for row in steps["dnabert"]["rows"] + steps["proteins"]["FastESM2_650"]["rows"]:
        assert row["sequences"] == 8 and row["min_cosine_to_fp32"] > 0.99, row
    # the attention each encoder ran, as the profiler names it (on the CPU, its flash kernel or the math one)
    kernels = {name: found for name, found in steps["kernels"].items() if name != "seconds"}
    assert set(kernels) == {"DNABERT-S", "FastESM2_650, padded", "FastESM2_650, one length", "ESM2-3B"}
    assert all(found["operators"] and all(name.startswith("aten::_scaled_dot_product") for name in found["operators"])
               for found in kernels.values())
    end_to_end = steps["end_to_end"]
    assert end_to_end["frames"] > 0 and end_to_end["first_shard_seconds"] > 0 and end_to_end["seconds_loading_models"] > 0
    assert end_to_end["frames_per_s_without_loading"] > end_to_end["frames"] / end_to_end["seconds_run"]
    report = (tmp_path / "benchmark_gpu.md").read_text()
    assert "**Smoke test**" in report and "| bf16 | 2048 | 8 |" in report and "Failed" not in report


def test_gpu_session_writes_its_report_after_every_step(tmp_path, monkeypatch):
    """A session cut short (a time limit, a lost node) keeps the report of the steps it finished."""
    def interrupted(session):
        raise KeyboardInterrupt

    monkeypatch.setattr(benchmark_gpu, "STEPS", (("versions", benchmark_gpu.versions), ("next", interrupted)))
    with pytest.raises(KeyboardInterrupt):
        benchmark_gpu.main(["-o", str(tmp_path), "--smoke"])
    report = (tmp_path / "benchmark_gpu.md").read_text()
    assert "| torch | " in report and "## next" not in report


@pytest.mark.slow
def test_environment_checks(tiny_models, capsys):
    status = environment.main(["--device", "cpu", "--protein-model", tiny_models["protein"]])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[:5]] == ["ENV-01", "ENV-02", "ENV-03", "ENV-04", "ENV-05"]
    assert all(" PASS " in line for line in lines[1:5]), lines
    assert status == (0 if torch.cuda.is_available() else 1)


@pytest.mark.parametrize("level, fold, side, groups, fix", [
    ("record", None, "test", 1, "more genomes of that class"),
    ("organism", None, "test", 1, "a finer --group-by (record) or more genomes of that class"),
    ("organism", None, "test", 5, "a larger --test-fraction, a finer --group-by (record), or more data"),
    ("record", None, "train", 5, "a smaller --test-fraction, or more data"),
    ("genus", {"folds": 5}, "test", 3, "fewer --folds than 5, a finer --group-by (record), or more data"),
])
def test_a_one_sided_split_advises_only_what_can_help(level, fold, side, groups, fix):
    split = {"grouping": {"level": level}, "fold": fold}
    assert splits.one_sided_fix(split, side, groups) == fix


def test_a_cross_validation_that_finished_no_fold_makes_way_for_other_settings(tmp_path, caplog):
    import cross_validate

    caplog.set_level("INFO", logger="virnucpro")
    work = tmp_path / "cv"
    first = cross_validate.parse_args(["--work-dir", str(work), "--group-by", "organism"])
    cross_validate.check_settings(first)
    (work / "fold_1").mkdir()
    (work / "fold_1/test_metadata.json").write_text("{}")             # a split made, then the run failed
    retry = cross_validate.parse_args(["--work-dir", str(work), "--group-by", "record", "--val-fraction", "0.3"])
    cross_validate.check_settings(retry)
    assert "starting over" in caplog.text and not (work / "fold_1").exists()
    (work / "fold_1/report").mkdir(parents=True)
    (work / "fold_1/report/validation_summary.json").write_text("{}")  # a finished fold
    with pytest.raises(InputError, match=r"other settings \(group_by, val_fraction\) and folds it finished"):
        cross_validate.check_settings(first)
