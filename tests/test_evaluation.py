"""The evaluation a reviewer would accept, end to end on synthetic genomes with tiny models:
both classifiers trained on one group-held-out split, scored at the tool's own decision levels
through prediction.py, with group-bootstrap intervals; ANI grouping and group-disjoint folds."""
import json
import os
import re

import numpy as np
import pytest

import create_test_set
import evaluate_compare as evaluate
import prediction as predictor
import train_fastesm as trainer
import units
from conftest import ROOT, read_tsv, run_script
from helpers import genomes as synthetic
from virnucpro.errors import InputError
from virnucpro.prediction import outputs
from virnucpro.scoring import metrics
from virnucpro.scoring.calibration import load_calibration, load_evaluation_record
from virnucpro.sequences.fasta import read_fasta
from virnucpro.training import evaluation, splits
from virnucpro.training.report import VERDICT_ORDER

EXAMPLE_REPORT = ROOT / "reports/example_validation_report.md"
SLOW = pytest.mark.slow          # what builds the study: genomes, features of both pipelines, two classifiers


@pytest.fixture(scope="module")
def study(tiny_models, tmp_path_factory):
    """Genomes, features of both pipelines, a split by organism, both classifiers trained on it."""
    root = tmp_path_factory.mktemp("study")
    data = root / "data"
    data.mkdir()
    records = synthetic.make_genomes(data, organisms=12)
    for pipeline, merge, protein in (("fastesm650", "data_merge", tiny_models["protein"]),
                                     ("esm2_3b", "data_merge_esm2_3b", tiny_models["esm2_3b"])):
        synthetic.extract_merged(records, root / "work", root / merge, pipeline, tiny_models["dna"], protein)
    split = root / "test_metadata.json"
    assert create_test_set.main(["--merge-dir", str(root / "data_merge"), "--data-dir", str(data),
                                 "--test-fraction", "0.25", "--output", str(split)]) == 0
    for pipeline, merge in (("fastesm650", "data_merge"), ("esm2_3b", "data_merge_esm2_3b")):
        assert trainer.main(["--pipeline", pipeline, "--merge-dir", str(root / merge), "--split", str(split),
                             "--output", str(root / f"model_{pipeline}_300.pth"), "--device", "cpu", "--lr", "0.01",
                             "--epochs", "8", "--patience", "8", "--batch-size", "16"]) == 0
    return {"root": root, "data": data, "records": records, "split": split, "models": tiny_models}


def evaluate_args(study, reports, *extra):
    root, models = study["root"], study["models"]
    return ["--checkpoint", str(root / "model_fastesm650_300.pth"), "--merge-dir", str(root / "data_merge"),
            "--baseline-checkpoint", str(root / "model_esm2_3b_300.pth"), "--baseline-merge-dir",
            str(root / "data_merge_esm2_3b"), "--split", str(study["split"]), "--data-dir", str(study["data"]),
            "--work-dir", str(root / "evaluation"), "--output-dir", str(reports), "--device", "cpu",
            "--dna-model", models["dna"], "--protein-model", models["protein"], "--baseline-protein-model",
            models["esm2_3b"], "--fragment-lengths", "300", "1000", "--fragments-per-record", "3",
            "--replicates", "500", *extra]


@pytest.fixture(scope="module")
def evaluated(study):
    reports = study["root"] / "reports"
    assert evaluate.main(evaluate_args(study, reports)) in (0, 1)
    return reports


@SLOW
def test_the_report_has_every_level_with_intervals_and_a_verdict(evaluated):
    report = (evaluated / "validation_report.md").read_text()
    result = re.search(r"\*\*Result: (PASSED|FAILED|INCONCLUSIVE)\*\*", report)
    assert result, report[:300]
    verdict_rows = [line for line in report.splitlines() if line.startswith("| ") and line.endswith(
        ("| PASSED |", "| FAILED |", "| INCONCLUSIVE |"))]
    assert len(verdict_rows) == 4                                             # one per level
    worst = max((row.rsplit("|", 2)[-2].strip() for row in verdict_rows), key=VERDICT_ORDER.index)
    assert worst == result.group(1)
    for title in ("### Sequences", "### Chunks", "### Frames (every stop-free frame)",
                  "### Frames of annotated CDS (the training selection)", "## Precision at other viral prevalences",
                  "## By held-out sequence length", "## By frame length", "held out by organism",
                  "trained on this split with the same recipe", "scored by prediction.py"):
        assert title in report, title
    for level in ("sequences", "chunks", "frames", "frames_cds"):
        ours = json.loads((evaluated / "metrics_fastesm650.json").read_text())[level]
        theirs = json.loads((evaluated / "metrics_esm2_3b.json").read_text())[level]
        assert ours["n"] == theirs["n"] > 0                                    # the same rows for both
        low, high = ours["intervals_95"]["accuracy"]
        assert low <= ours["accuracy"] <= high


@SLOW
def test_the_levels_are_predictions_own_calls(study, evaluated, tmp_path):
    """prediction.py run by hand on the held-out sequences gives the evaluation's sequence and chunk figures."""
    work, models = study["root"] / "evaluation", study["models"]
    held_out = {row["sequence_id"]: row for row in read_tsv(work / "held_out.tsv")}
    assert predictor.main([str(work / "held_out.fasta"), "300", str(study["root"] / "model_fastesm650_300.pth"),
                           "-o", str(tmp_path / "by_hand"), "--device", "cpu", "--dna-model", models["dna"],
                           "--protein-model", models["protein"]]) == 0
    summary = [row for row in read_tsv(tmp_path / "by_hand/prediction_summary.tsv") if row["Call"] in ("virus", "others")]
    labels = [int(held_out[row["Sequence_ID"]]["label"]) for row in summary]
    calls = [int(row["Call"] == "virus") for row in summary]
    saved = json.loads((evaluated / "metrics_fastesm650.json").read_text())
    assert saved["sequences"]["n"] == len(summary)
    assert saved["sequences"]["accuracy"] == pytest.approx(np.mean(np.equal(labels, calls)))
    reads = [(label, call) for row, label, call in zip(summary, labels, calls)
             if int(held_out[row["Sequence_ID"]]["length"]) <= 300]
    record = load_evaluation_record(study["root"] / "model_fastesm650_300.pth", 300)      # a cohort's correction
    assert record["sensitivity"] == pytest.approx(np.mean([call for label, call in reads if label == 1]))
    assert record["specificity"] == pytest.approx(1 - np.mean([call for label, call in reads if label == 0]))
    chunks = read_tsv(tmp_path / "by_hand/prediction_results_highestscore.csv")
    chunk_labels = [int(held_out[row["Modified_ID"].rsplit("_chunk_", 1)[0]]["label"]) for row in chunks]
    chunk_calls = [int(row["Is_Virus"] == "True") for row in chunks]
    assert saved["chunks"]["n"] == len(chunks)
    assert saved["chunks"]["accuracy"] == pytest.approx(np.mean(np.equal(chunk_labels, chunk_calls)))
    calibration = load_calibration(study["root"] / "model_fastesm650_300.pth")    # the evaluation's
    # the scores read back as the float32 the tool scored: a steep stretch of the curve magnifies a decimal's rounding
    assert [float(row["Viral_probability"]) for row in chunks] == pytest.approx(
        calibration.chunk_probabilities([np.float32(row["Viral_score"]) for row in chunks]), abs=1e-6)


@SLOW
def test_each_classifier_is_calibrated_on_its_validation_records(study, evaluated):
    root, work = study["root"], study["root"] / "evaluation"
    test_records = set(json.loads(study["split"].read_text())["test_accessions"])
    summary = json.loads((evaluated / "validation_summary.json").read_text())["calibration"]
    held_out = evaluation.read_held_out(work / "held_out.tsv")
    for pipeline, name in (("fastesm650", "FastESM2_650"), ("esm2_3b", "ESM2-3B")):
        checkpoint = root / f"model_{pipeline}_300.pth"
        calibration = load_calibration(checkpoint)
        table = evaluation.read_held_out(work / f"validation_{pipeline}.tsv")
        records = {row["record"] for row in table.values()}
        assert records and not records & test_records
        assert splits.record_fingerprint(records) == units.load_checkpoint(checkpoint)[1]["split"][
            "validation_records"]                                     # the records its training validated on
        fitted = evaluation.level_scores(str(work / f"validation_{pipeline}"), table)
        assert metrics.fit_calibration(*fitted["chunks"], *fitted["sequences"]).to_json() == calibration.to_json()
        scores, labels = evaluation.level_scores(str(work / f"prediction_{pipeline}"), held_out)["chunks"]
        assert summary[name]["ece_before_after"]["chunks"] == pytest.approx(
            [metrics.expected_calibration_error(scores, labels),
             metrics.expected_calibration_error(calibration.chunk_probabilities(scores), labels)])
    report = (evaluated / "validation_report.md").read_text()
    assert "## Calibration" in report and "model_esm2_3b_300.calibration.json" in report
    assert (evaluated / "reliability.png").read_bytes()[:4] == b"\x89PNG"


@SLOW
def test_held_out_sequences_are_slices_of_held_out_records_only(study, evaluated):
    work, records = study["root"] / "evaluation", study["records"]
    split = json.loads(study["split"].read_text())
    table = read_tsv(work / "held_out.tsv")
    sequences = {r.id: r.sequence for r in read_fasta(work / "held_out.fasta")}
    assert {row["record"] for row in table} == set(split["test_accessions"])
    for row in table:
        record = records[row["record"]]
        assert sequences[row["sequence_id"]] == record["sequence"][int(row["start"]) - 1:int(row["end"])]
        assert int(row["label"]) == record["label"] and row["group"] == split["test_group_of"][row["record"]]
    modified = os.stat(work / "held_out.fasta").st_mtime_ns          # unchanged: kept, so prediction resumes
    evaluation.write_held_out([({**row}, sequences[row["sequence_id"]]) for row in table],
                              work / "held_out.fasta", work / "held_out.tsv")
    assert os.stat(work / "held_out.fasta").st_mtime_ns == modified


def test_fragments_spread_evenly_without_overlap():
    assert evaluation.fragment_spans(250, 300, 5) == [(0, 250)]              # shorter: whole
    assert evaluation.fragment_spans(300, 300, 5) == [(0, 300)]
    assert evaluation.fragment_spans(1000, 300, 1) == [(350, 650)]           # one: the middle
    assert evaluation.fragment_spans(1000, 300, 5) == [(0, 300), (350, 650), (700, 1000)]
    spans = evaluation.fragment_spans(10_000, 1000, 4)
    assert spans[0][0] == 0 and spans[-1][1] == 10_000 and len(spans) == 4
    assert all(end <= start for (_, end), (start, _) in zip(spans, spans[1:]))


def write_prediction_outputs(folder, frames, chunks, summary):
    folder.mkdir()
    (folder / "prediction_results.txt").write_text(
        "Sequence_ID\tPrediction\tscore1\tscore2\n" + "".join(f"{i}\t{p}\t{a}\t{b}\n" for i, p, a, b in frames))
    (folder / "prediction_results_highestscore.csv").write_text(
        "Modified_ID\tIs_Virus\n" + "".join(f"{i}\t{v}\n" for i, v in chunks))
    (folder / "prediction_summary.tsv").write_text(
        outputs.header(outputs.SummaryRow) + "".join(f"{i}\t600\t2\t0\t0\tNA\t{call}\n" for i, call in summary))


def test_level_rules_by_hand(tmp_path):
    """Two sequences: s1 has a viral and a host chunk (ties go viral), s2 one host chunk; s3 was too short."""
    frames = [("s1_chunk_1F1", "virus", 0.3, 0.7), ("s1_chunk_1R2", "others", 0.9, 0.1),
              ("s1_chunk_2F2", "others", 0.8, 0.2), ("s2_chunk_1F3", "others", 0.6, 0.4)]
    write_prediction_outputs(tmp_path / "run", frames,
                             [("s1_chunk_1", True), ("s1_chunk_2", False), ("s2_chunk_1", False)],
                             [("s1", "virus"), ("s2", "others"), ("s3", "too_short")])
    levels = evaluation.prediction_levels(tmp_path / "run")
    assert levels["frames"]["s1_chunk_1R2"] == (0, pytest.approx(0.1))
    assert levels["chunks"]["s1_chunk_1"] == (1, pytest.approx(0.7 - 0.9))    # best score2 - best score1
    assert levels["chunks"]["s2_chunk_1"] == (0, pytest.approx(0.4 - 0.6))
    assert levels["sequences"] == {"s1": (1, 0.5), "s2": (0, 0.0)}              # s3: not scored, left out
    assert evaluation.sequence_of("frames", "s1_chunk_2F2") == "s1" == evaluation.sequence_of("chunks", "s1_chunk_2")
    # s1 host and s2 viral: both wrong; AUC ranks s1 (0.5) over s2 (0.0)
    result = metrics.call_metrics([0, 1], [1, 0], [0.5, 0.0])
    assert result["accuracy"] == 0 and result["confusion_matrix"] == [[0, 1], [1, 0]] and result["roc_auc"] == 0


@SLOW
def test_missing_genomes_are_named_and_frames_only_needs_none(study, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    args = evaluate_args(study, tmp_path / "r")
    args[args.index("--data-dir") + 1] = str(empty)
    with pytest.raises(InputError, match="held-out records are not in the .*genomic.fna.gz files"):
        evaluate.main(args)
    assert evaluate.main(args + ["--frames-only"]) in (0, 1)
    assert "### Sequences" not in (tmp_path / "r/validation_report.md").read_text()


# ------------------------------------------------------------ grouping by ANI, folds
def test_ani_clusters_join_genomes_of_one_species(tmp_path):
    rng = synthetic.random.Random(5)
    first = synthetic.genome(rng, 20_000, 0.5)
    strain = "".join(rng.choice("ACGT".replace(b, "")) if rng.random() < 0.02 else b for b in first)   # ~98% ANI
    other = synthetic.genome(rng, 20_000, 0.5)
    clusters = splits.ani_clusters({"a": [first], "b": [strain[:12_000], strain[12_000:]], "c": [other]})
    assert clusters == {"a": "a", "b": "a", "c": "c"}
    assert splits.ani_clusters({"a": [first], "b": [strain]}, ani=99) == {"a": "a", "b": "b"}


@SLOW
def test_split_by_ani_holds_out_strains_with_their_species(study, tmp_path):
    """Two organisms of the study are made strains of one species: the ANI split keeps them on one side."""
    data = tmp_path / "data"
    data.mkdir()
    records = {**study["records"]}
    viral = sorted(r for r in records if records[r]["label"] == 1)
    rng = synthetic.random.Random(1)
    template = records[viral[0]]["sequence"]
    for record in viral[-3:]:                                   # three organisms, one species
        copy = "".join(rng.choice("ACGT".replace(b, "")) if rng.random() < 0.01 else b for b in template)
        records[record] = {**records[record], "sequence": copy}
    for stem in ("viral.1.1", "bacteria.1.1"):
        with synthetic.gzip.open(data / f"{stem}.genomic.fna.gz", "wt") as out:
            out.writelines(f">{r}\n{v['sequence']}\n" for r, v in records.items() if v["stem"] == stem)
        (data / f"{stem}.identified.json").write_text((study["data"] / f"{stem}.identified.json").read_text())
    species = {viral[0], *viral[-3:]}                           # records of 4 organisms
    organisms = len({lineage["organism"] for lineage in splits.read_lineages(str(data)).values()})
    for seed in range(4):
        split_file = tmp_path / f"split{seed}.json"
        assert create_test_set.main(["--merge-dir", str(study["root"] / "data_merge"), "--data-dir", str(data),
                                     "--group-by", "ani", "--seed", str(seed), "--test-fraction", "0.3",
                                     "--output", str(split_file)]) == 0
        split = json.loads(split_file.read_text())
        assert split["grouping"]["level"] == "ani" and split["grouping"]["ani_percent"] == 95
        assert split["grouping"]["groups"] == organisms - 3                  # the 4 organisms are one group
        assert species & set(split["test_accessions"]) in (set(), species)


@SLOW
def test_folds_are_group_disjoint_and_cover_every_group(study, tmp_path):
    splits = []
    for fold in (1, 2, 3):
        path = tmp_path / f"fold{fold}.json"
        assert create_test_set.main(["--merge-dir", str(study["root"] / "data_merge"), "--data-dir",
                                     str(study["data"]), "--folds", "3", "--fold", str(fold), "--output",
                                     str(path)]) == 0
        splits.append(json.loads(path.read_text()))
    tests = [set(s["test_accessions"]) for s in splits]
    groups = [set(s["test_groups"]) for s in splits]
    everything = tests[0] | set(splits[0]["train_accessions"])
    assert set.union(*tests) == everything and sum(map(len, tests)) == len(everything)
    assert not (groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2])
    assert splits[1]["fold"] == {"fold": 2, "folds": 3}
    for s in splits:                                            # both classes in every fold
        assert s["classes"]["viral"]["test"]["rows"] > 0 and s["classes"]["host"]["test"]["rows"] > 0
    with pytest.raises(InputError, match="20 folds need at least 20 groups of each class"):
        create_test_set.main(["--merge-dir", str(study["root"] / "data_merge"), "--data-dir", str(study["data"]),
                              "--folds", "20", "--fold", "1", "--output", str(tmp_path / "x.json")])


@SLOW
def test_cross_validation_tests_every_record_once_and_reports_the_spread(study, tmp_path):
    root = study["root"]
    work, report = tmp_path / "cv", tmp_path / "cross_validation.md"
    arguments = ["--folds", "2", "--merge-dir", root / "data_merge", "--baseline-merge-dir", root / "data_merge_esm2_3b",
                 "--data-dir", study["data"], "--work-dir", work, "--report", report, "--frames-only", "--device", "cpu",
                 "--epochs", "2", "--lr", "0.01"]
    status = run_script("scripts/cross_validate.py", *arguments)
    assert status.returncode == 0, status.stderr[-2000:]
    tests = [set(json.loads((work / f"fold_{k}/test_metadata.json").read_text())["test_accessions"]) for k in (1, 2)]
    assert not tests[0] & tests[1] and tests[0] | tests[1] == set(study["records"])
    text = report.read_text()
    assert "2 group-disjoint folds, records held out by organism" in text
    assert "| Accuracy | " in text and " ± " in text and "## Folds" in text and text.count("| frames | ") == 0
    assert re.search(r"\| 2 \| (PASSED|FAILED|INCONCLUSIVE) \|", text)
    again = run_script("scripts/cross_validate.py", *arguments)                       # finished folds are reused
    assert again.returncode == 0 and "train_fastesm" not in again.stderr and "epoch" not in again.stdout
    other = run_script("scripts/cross_validate.py", *arguments[:-4], "--epochs", "3")
    assert other.returncode == 2 and "holds a cross-validation with other settings" in other.stderr


def report_outline(text: str) -> list[str]:
    """What a report shows, without its numbers: headings, table headers and row labels."""
    outline = []
    for line in text.splitlines():
        if line.startswith("#") or line.startswith("| metric") or line.startswith("| level"):
            outline.append(line)
        elif line.startswith("| ") and not line.startswith("|---"):
            outline.append(line.split("|")[1].strip())
    return outline


@SLOW
def test_the_example_report_is_what_the_evaluation_writes(study, evaluated):
    """reports/example_validation_report.md (shown in README) is this test's synthetic run;
    UPDATE_EXAMPLE_REPORT=1 python -m pytest -m slow tests/test_evaluation.py -k example writes it again, with this
    run's paths made relative."""
    fresh = (evaluated / "validation_report.md").read_text().replace(f"{study['root']}/", "")
    if os.environ.get("UPDATE_EXAMPLE_REPORT") == "1":
        note = ("> Example: the synthetic run of tests/test_evaluation.py (two sources of genomes differing in GC "
                "content, tiny random-weight encoders, 12 organisms per class), not a result about the real models.\n\n")
        for name in ("roc_curves.png", "reliability.png"):
            fresh = fresh.replace(f"]({name})", f"](example_{name})")
            (EXAMPLE_REPORT.parent / f"example_{name}").write_bytes((evaluated / name).read_bytes())
        EXAMPLE_REPORT.write_text(note + fresh)
    assert report_outline(EXAMPLE_REPORT.read_text()) == report_outline(fresh)


def test_too_few_held_out_groups_give_no_verdict():
    """One record per class: the group bootstrap's interval has no width, and PASSED would be a claim."""
    labels = np.array([1, 1, 1, 0, 0, 0])
    calls = {"FastESM2_650": labels.copy(), "ESM2-3B": labels.copy()}
    few = evaluation.Level(labels, ["v1"] * 3 + ["h1"] * 3, calls, {name: labels * 1.0 for name in calls})
    enough = evaluation.Level(labels, ["v1", "v2", "v3", "h1", "h2", "h3"], calls, few.scores)
    order = ["FastESM2_650", "ESM2-3B"]
    _, intervals, verdicts = evaluation.scored_levels({"sequences": few, "chunks": enough}, order, 200, 0, 0.05)
    assert intervals["sequences"]["difference"]["accuracy"] == intervals["chunks"]["difference"]["accuracy"]
    assert verdicts == {"sequences": "INCONCLUSIVE", "chunks": "PASSED"}
    assert evaluation.too_few_groups(few) == ("1 viral held-out group and 1 host held-out group, fewer than the 3 "
                                              "per class an interval needs")
    assert evaluation.too_few_groups(enough) is None
