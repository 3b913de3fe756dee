"""Calibrated scores and the FDR: isotonic calibration, its file beside the classifier,
and prediction's Viral_probability, FDR and --min-score / --max-fdr filters."""
import json
import shutil

import numpy as np
import pytest

import prediction as predictor
import units
from conftest import GOLDEN, predict_args, read_tsv
from virnucpro.errors import InputError
from virnucpro.files import file_sha256
from virnucpro.models.pins import MERGED_DIM
from virnucpro.scoring import metrics
from virnucpro.scoring.calibration import (
    Calibration,
    evaluation_path,
    false_discovery_rates,
    load_calibration,
    load_evaluation_record,
    save_calibration,
    save_evaluation_record,
)
from virnucpro.scoring.checkpoints import install_classifier
from virnucpro.sequences.fasta import read_fasta, write_fasta_record

# a hand-made calibration: chunk scores squeezed into [0.05, 0.95], sequences as the mean of their chunks
SQUEEZE = Calibration((np.array([0.0, 1.0]), np.array([0.05, 0.95])), (np.array([0.0, 1.0]),
                                                                              np.array([0.0, 1.0])))


def miscalibrated(rng, n):
    """Scores whose true viral rate is score squared: overconfident in the middle."""
    scores = rng.uniform(0, 1, n)
    return scores, (rng.uniform(0, 1, n) < scores ** 2).astype(int)


def test_isotonic_calibration_makes_a_miscalibrated_score_calibrated():
    rng = np.random.default_rng(0)
    scores, labels = miscalibrated(rng, 20000)
    calibration = metrics.fit_calibration(scores, labels, [[s] for s in scores], labels)
    test_scores, test_labels = miscalibrated(rng, 20000)
    before = metrics.expected_calibration_error(test_scores, test_labels)
    after = metrics.expected_calibration_error(calibration.chunk_probabilities(test_scores), test_labels)
    assert before > 0.12 and after < 0.02
    assert calibration.chunk_probabilities([0.5])[0] == pytest.approx(0.25, abs=0.03)   # the true rate at 0.5
    sequences = [calibration.sequence_probability(calibration.chunk_probabilities([s])) for s in test_scores[:2000]]
    assert metrics.expected_calibration_error(sequences, test_labels[:2000]) < 0.05


def test_expected_calibration_error_by_hand():
    probabilities, labels = [0.05, 0.15, 0.95, 0.95], [0, 1, 1, 0]
    # bins: [0, 0.1): 0.05 vs 0; [0.1, 0.2): 0.15 vs 1; [0.9, 1]: 0.95 vs 0.5
    assert metrics.expected_calibration_error(probabilities, labels) == pytest.approx(
        (0.05 + 0.85 + 2 * 0.45) / 4)


def test_fdr_is_the_mean_of_one_minus_p_over_the_calls_scored_at_least_as_high():
    p = [0.5, 0.9, 0.8, 0.8, 0.99]
    expected = [np.mean([0.5, 0.1, 0.2, 0.2, 0.01]), 0.055, 0.1275, 0.1275, 0.01]   # ties share the last one's
    assert false_discovery_rates(p) == pytest.approx(expected)
    assert len(false_discovery_rates([])) == 0


def test_calibration_file_round_trips_and_belongs_to_its_classifier(models, tmp_path):
    checkpoint = tmp_path / "model_fastesm650_300.pth"
    shutil.copy(models["checkpoint"], checkpoint)
    assert load_calibration(checkpoint) is None
    path = save_calibration(checkpoint, SQUEEZE, fitted_on={"records": 2})
    assert path == str(tmp_path / "model_fastesm650_300.calibration.json")
    loaded = load_calibration(checkpoint)
    assert loaded.chunk_probabilities([0.5, 2.0]) == pytest.approx([0.5, 0.95])     # flat beyond the knots
    assert json.loads(open(path).read())["fitted_on"] == {"records": 2}

    installed = install_classifier(str(checkpoint), 300, str(tmp_path / "models"))
    assert load_calibration(installed).to_json() == SQUEEZE.to_json()          # travels with the classifier

    units.save_checkpoint(units.MLPClassifier(MERGED_DIM, 512, 2), checkpoint, chunk_length=300)
    assert load_calibration(checkpoint) is None                # retrained: the old calibration is gone
    shutil.copy(installed.replace(".pth", ".calibration.json"), path)
    with pytest.raises(InputError, match="calibration of another classifier"):
        load_calibration(checkpoint)
    content = json.loads(open(path).read())
    content["classifier_sha256"] = file_sha256(checkpoint)
    content["chunk"]["y"] = [0.9, 0.1]                                # falling: not a calibration map
    open(path, "w").write(json.dumps(content))
    with pytest.raises(InputError, match="damaged calibration"):
        load_calibration(checkpoint)


def test_a_calibration_fitted_on_few_sequences_is_said_at_prediction_time(models, tmp_path, caplog):
    checkpoint = tmp_path / "model_fastesm650_300.pth"
    shutil.copy(models["checkpoint"], checkpoint)
    save_calibration(checkpoint, SQUEEZE, fitted_on={"records": 9, "chunks": 120, "sequences": 53})
    load_calibration(checkpoint)
    assert "fitted on 53 sequences only, fewer than 200: its Viral_probability and FDR are rough" in caplog.text
    caplog.clear()
    save_calibration(checkpoint, SQUEEZE, fitted_on={"records": 90, "chunks": 1200, "sequences": 530})
    load_calibration(checkpoint)
    assert "rough" not in caplog.text


@pytest.fixture(scope="module")
def calibrated_checkpoint(models, tmp_path_factory):
    folder = tmp_path_factory.mktemp("calibrated")
    checkpoint = folder / "model_fastesm650_300.pth"
    shutil.copy(models["checkpoint"], checkpoint)
    save_calibration(checkpoint, SQUEEZE)
    return str(checkpoint)


@pytest.fixture(scope="module")
def calibrated_run(models, calibrated_checkpoint, tmp_path_factory):
    output = tmp_path_factory.mktemp("run") / "out"
    assert predictor.main(predict_args(models, output, checkpoint=calibrated_checkpoint)) == 0
    return output


def test_prediction_writes_calibrated_probabilities_and_the_fdr(calibrated_run):
    chunks = read_tsv(calibrated_run / "prediction_results_highestscore.csv")
    for row in chunks:
        assert float(row["Viral_probability"]) == pytest.approx(0.05 + 0.9 * float(row["Viral_score"]), abs=1e-6)
    chunk_p = {row["Modified_ID"]: float(row["Viral_probability"]) for row in chunks}
    summary = read_tsv(calibrated_run / "prediction_summary.tsv")
    called = [row for row in summary if row["Call"] == "virus"]
    assert called and any(row["Call"] == "others" for row in summary)
    for row in summary:
        mine = [p for chunk_id, p in chunk_p.items() if chunk_id.rsplit("_chunk_", 1)[0] == row["Sequence_ID"]]
        if row["Call"] in ("virus", "others"):
            assert float(row["Viral_probability"]) == pytest.approx(np.mean(mine), abs=1e-6)
        if row["Call"] != "virus":
            assert row["FDR"] == "NA"
    probabilities = [float(row["Viral_probability"]) for row in called]
    for row, p in zip(called, probabilities):                       # the definition, by brute force
        assert float(row["FDR"]) == pytest.approx(np.mean([1 - q for q in probabilities if q >= p]), abs=1e-6)
    run = json.loads((calibrated_run / "run.json").read_text())
    assert run["thresholds"]["scores"] == "calibrated" and run["settings"]["calibration"]["sha256"]


def test_min_score_and_max_fdr_filter_the_virus_calls(models, calibrated_checkpoint, calibrated_run, tmp_path):
    called = [row for row in read_tsv(calibrated_run / "prediction_summary.tsv") if row["Call"] == "virus"]
    min_score = float(np.quantile([float(row["Viral_probability"]) for row in called], 0.25))
    max_fdr = float(np.quantile([float(row["FDR"]) for row in called], 0.75))
    output = tmp_path / "filtered"
    assert predictor.main(predict_args(models, output, "--min-score", str(min_score), "--max-fdr", str(max_fdr),
                                       checkpoint=calibrated_checkpoint)) == 0
    unfiltered = {row["Sequence_ID"]: row for row in read_tsv(calibrated_run / "prediction_summary.tsv")}
    kept = []
    for row in read_tsv(output / "prediction_summary.tsv"):
        before = unfiltered[row["Sequence_ID"]]
        assert (row["Viral_probability"], row["FDR"]) == (before["Viral_probability"], before["FDR"])
        if before["Call"] != "virus":
            assert row["Call"] == before["Call"]
            continue
        passes = float(row["Viral_probability"]) >= min_score and float(row["FDR"]) <= max_fdr
        assert row["Call"] == ("virus" if passes else "below_threshold")
        kept += [row["Sequence_ID"]] if passes else []
    assert 0 < len(kept) < len(called)
    assert [r.id for r in read_fasta(output / "viral_sequences.fna")] == kept
    run = json.loads((output / "run.json").read_text())
    assert run["thresholds"]["min_score"] == min_score and run["thresholds"]["max_fdr"] == max_fdr
    assert run["calls"]["below_threshold"] == len(called) - len(kept)


def test_filters_need_a_calibrated_classifier(models, tmp_path, capsys):
    with pytest.raises(InputError, match="not calibrated.*evaluate_compare.py"):
        predictor.main(predict_args(models, tmp_path / "out", "--max-fdr", "0.05"))
    with pytest.raises(SystemExit):
        predictor.main(predict_args(models, tmp_path / "out", "--min-score", "1.5"))
    assert "between 0 and 1" in capsys.readouterr().err


def test_uncalibrated_runs_say_so(models, calibrated_checkpoint, tmp_path):
    input_fasta = tmp_path / "few.fasta"
    with open(input_fasta, "w") as handle:
        for record in list(read_fasta(GOLDEN / "prediction/input.fasta"))[:3]:
            write_fasta_record(handle, record.id, record.sequence)
    output = tmp_path / "raw"
    assert predictor.main(predict_args(models, output, "--uncalibrated", input_fasta=input_fasta,
                                       checkpoint=calibrated_checkpoint)) == 0
    summary = read_tsv(output / "prediction_summary.tsv")
    assert {(row["Viral_probability"], row["FDR"]) for row in summary} <= {("uncalibrated", "uncalibrated"),
                                                                           ("NA", "NA")}
    assert json.loads((output / "run.json").read_text())["thresholds"]["scores"] == "uncalibrated"


def test_the_evaluation_record_travels_with_its_classifier_and_only_with_it(models, tmp_path):
    checkpoint = tmp_path / "model_fastesm650_300.pth"
    shutil.copy(models["checkpoint"], checkpoint)
    assert load_evaluation_record(checkpoint, 300) is None
    save_evaluation_record(checkpoint, 300, 0.8, 0.95, "10 viral and 10 host held-out reads of 300 bp")
    assert load_evaluation_record(checkpoint, 300)["sensitivity"] == 0.8
    assert load_evaluation_record(checkpoint, 500) is None                       # measured at another length
    installed = install_classifier(str(checkpoint), 300, str(tmp_path / "models"))
    assert load_evaluation_record(installed, 300)["specificity"] == 0.95
    units.save_checkpoint(units.MLPClassifier(MERGED_DIM, 512, 2), checkpoint, chunk_length=300)
    assert load_evaluation_record(checkpoint, 300) is None                       # retrained: the record is gone
    shutil.copy(evaluation_path(installed), evaluation_path(checkpoint))
    assert load_evaluation_record(checkpoint, 300) is None                       # another classifier's
