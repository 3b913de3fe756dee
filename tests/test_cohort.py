"""virnucpro/prediction/cohort.py: a sample sheet run in one command, each sample's files those of a single
run, the models loaded once, the table across samples with its intervals, MultiQC's files, the plan, and the
run's costs."""
import csv
import gzip
import json
import math
import os
import shutil
import subprocess
import sys

import pytest

import prediction
from conftest import GOLDEN, ROOT, fastq, predict_args, read_tsv, result_bytes
from helpers.models import save_classifier
from virnucpro.errors import InputError
from virnucpro.models import loaders
from virnucpro.prediction import cohort, outputs
from virnucpro.scoring.calibration import save_evaluation_record
from virnucpro.sequences.fasta import read_fasta

SAMPLE = ROOT / "data/sample.fasta"


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Three samples as a cohort brings them: paired FASTQ (gzip), single-end FASTQ, contigs; and the sheet."""
    folder = tmp_path_factory.mktemp("study")
    reads = [(record.id, record.sequence) for record in read_fasta(SAMPLE)]
    (folder / "reads").mkdir()
    (folder / "reads/gut_R1.fq.gz").write_bytes(gzip.compress(fastq(
        (f"p{k} 1:N:0", sequence) for k, (_, sequence) in enumerate(reads[:5])).encode()))
    (folder / "reads/gut_R2.fq.gz").write_bytes(gzip.compress(fastq(
        (f"p{k} 2:N:0", sequence) for k, (_, sequence) in enumerate(reads[5:])).encode()))
    (folder / "reads/soil.fq").write_text(fastq(reads))
    contigs = list(read_fasta(GOLDEN / "prediction/input.fasta"))[:6]
    (folder / "contigs.fa").write_text("".join(f">{record.title}\n{record.sequence}\n" for record in contigs))
    (folder / "samples.csv").write_text("sample,fastq_1,fastq_2,fasta\ngut,reads/gut_R1.fq.gz,reads/gut_R2.fq.gz,\n"
                                        "soil,reads/soil.fq,,\nassembly,,,contigs.fa\n")
    return folder


@pytest.fixture(scope="module")
def mixed(models, tmp_path_factory):
    """The tiny models and a classifier that calls some sequences of each sample viral, some not."""
    checkpoint = save_classifier(tmp_path_factory.mktemp("mixed") / "model_fastesm650_300.pth", viral_bias=0.5)
    return {**models, "checkpoint": checkpoint}


def sheet_args(models, sheet, output, *extra):
    args = predict_args(models, output, *extra)
    return ["--samples", str(sheet), *args[1:]]


def run_counting_loads(args) -> int:
    """Run prediction.py; how many times DNABERT-S was loaded."""
    loads = []
    with pytest.MonkeyPatch.context() as patch:
        load = loaders.load_dnabert_s
        patch.setattr(loaders, "load_dnabert_s", lambda *a, **k: (loads.append(1), load(*a, **k))[1])
        assert prediction.main(args) == 0
    return len(loads)


@pytest.fixture(scope="module")
def cohort_run(mixed, study, tmp_path_factory):
    output = tmp_path_factory.mktemp("cohort") / "out"
    return output, run_counting_loads(sheet_args(mixed, study / "samples.csv", output))


def test_each_sample_gets_what_a_single_run_of_it_writes_and_the_models_load_once(mixed, study, cohort_run,
                                                                                   tmp_path):
    output, loads = cohort_run
    assert loads == 1
    singles = {"gut": ("reads/gut_R1.fq.gz", "--mate2", str(study / "reads/gut_R2.fq.gz")), "soil": ("reads/soil.fq",),
               "assembly": ("contigs.fa",)}
    for name, (given, *extra) in singles.items():
        alone = tmp_path / name
        assert prediction.main(predict_args(mixed, alone, *extra, input_fasta=study / given)) == 0
        assert result_bytes(output / name) == result_bytes(alone), name
        costs = json.loads((output / name / "run.json").read_text())["costs"]
        assert {"wall_seconds", "cpu_seconds", "peak_host_memory_mb", "peak_gpu_memory_mb", "frames_per_second",
                "device", "frames_scored"} <= set(costs)
    record = json.loads((output / cohort.COHORT_RUN).read_text())
    assert set(record["samples"]) == set(singles) and record["failed"] == {}
    assert record["costs"]["frames_scored"] == sum(cost["frames_scored"] for cost in record["samples"].values())


def test_the_table_across_samples_counts_what_each_summary_counts(cohort_run):
    output, _ = cohort_run
    rows = {row["sample"]: row for row in read_tsv_after_comments(output / cohort.SUMMARY_FILE)}
    assert [rows[name]["unit"] for name in ("gut", "soil", "assembly")] == ["pairs", "reads", "contigs"]
    for name, row in rows.items():
        table = read_tsv(output / name / (outputs.PAIRS_FILE if name == "gut" else outputs.SUMMARY_FILE))
        calls = [line["Call"] for line in table]
        assert int(row["sequences"]) == len(table) and int(row["virus"]) == calls.count("virus")
        assert int(row["scored"]) == sum(calls.count(call) for call in ("virus", "others", "below_threshold"))
        regions = read_tsv(output / name / outputs.REGIONS_FILE)
        assert int(row["viral_region_bases"]) == sum(int(region["length"]) for region in regions)
        low, fraction, high = (float(row[key]) for key in ("viral_fraction_low", "viral_fraction",
                                                            "viral_fraction_high"))
        assert low <= fraction <= high and row["corrected_viral_fraction"] == "NA" and row["correction"] == "none"
        reasons = ("too_short", "no_frames", "not_scored", "no_sequence", "mates_differ")
        assert int(row["sequences"]) == int(row["scored"]) + sum(int(row[reason]) for reason in reasons)
    assert int(rows["gut"]["sequences"]) == 5                                  # a pair counts once
    assert 0 < int(rows["gut"]["virus"]) < 5 and 0 < int(rows["soil"]["virus"]) < 10     # the test can tell
    assert json.loads((output / cohort.SUMMARY_JSON).read_text())["samples"][0]["sample"] == "gut"


def test_a_second_run_keeps_the_finished_samples_and_corrects_by_the_evaluation_record(mixed, study, cohort_run,
                                                                                       tmp_path):
    output = tmp_path / "out"
    shutil.copytree(cohort_run[0], output)
    record = save_evaluation_record(mixed["checkpoint"], 300, 0.8, 0.9, "a test")
    try:
        assert run_counting_loads(sheet_args(mixed, study / "samples.csv", output)) == 0     # nothing to score
    finally:
        os.remove(record)
    assert result_bytes(output / "gut") == result_bytes(cohort_run[0] / "gut")
    assert json.loads((output / cohort.COHORT_RUN).read_text())["samples"] == {}        # this run scored none
    table = (output / cohort.SUMMARY_FILE).read_text()
    assert "Rogan-Gladen: sensitivity 0.800, specificity 0.900" in table
    for row in read_tsv_after_comments(output / cohort.SUMMARY_FILE):
        if row["unit"] == "contigs":
            assert row["corrected_viral_fraction"] == "NA" and row["correction"] == "contigs"
            continue
        expected, clipped = cohort.rogan_gladen(float(row["viral_fraction"]), 0.8, 0.9)
        assert float(row["corrected_viral_fraction"]) == pytest.approx(expected, abs=1e-4)
        assert row["correction"] == ("clipped" if clipped else "corrected")
        assert float(row["corrected_low"]) <= float(row["corrected_viral_fraction"]) <= float(row["corrected_high"])


def test_summarize_samples_writes_the_cohorts_table_from_finished_runs_of_one_kind(study, cohort_run, tmp_path, cli):
    output, args = tmp_path / "out", ["--samples", str(study / "samples.csv"), "-o", str(tmp_path / "out")]
    shutil.copytree(cohort_run[0], output)
    for name in (cohort.SUMMARY_FILE, cohort.SUMMARY_JSON, cohort.MULTIQC_STATS, cohort.MULTIQC_CALLS):
        (output / name).unlink()
    assert cli("summarize_samples", args)[0] == 0
    for name in (cohort.SUMMARY_FILE, cohort.SUMMARY_JSON, cohort.MULTIQC_STATS, cohort.MULTIQC_CALLS):
        assert (output / name).read_bytes() == (cohort_run[0] / name).read_bytes(), name
    run = json.loads((output / "soil/run.json").read_text())
    (output / "soil/run.json").write_text(json.dumps(run | {"settings": run["settings"] | {"min_score": 0.9}}))
    status, stderr = cli("summarize_samples", args)
    assert status == 2 and "sample 'soil' was run with another min_score than sample 'gut'" in stderr
    shutil.rmtree(output / "assembly")
    status, stderr = cli("summarize_samples", args)
    assert status == 2 and "sample 'assembly' has no finished run; run it first" in stderr
    (output / "notes.txt").write_text("mine")
    status, stderr = cli("summarize_samples", args)
    assert status == 2 and "holds files that are not a cohort's (notes.txt)" in stderr


def read_tsv_after_comments(path):
    lines = [line for line in path.read_text().splitlines() if not line.startswith("#")]
    return list(csv.DictReader(lines, delimiter="\t"))


def test_a_missing_sample_file_leaves_the_others_to_run_and_ends_with_exit_2(models, study, tmp_path, cli):
    shutil.copytree(study, tmp_path / "study")
    (tmp_path / "study/reads/soil.fq").unlink()
    args = sheet_args(models, tmp_path / "study/samples.csv", tmp_path / "out")
    status, stderr = cli("prediction", args)
    assert status == 2 and "Traceback" not in stderr
    assert "sample 'soil': " in stderr and "soil.fq: no such file" in stderr
    assert stderr.strip().splitlines()[-1].startswith("error: 1 sample of 3 failed: soil")
    assert (tmp_path / "out/gut/prediction_summary.tsv").exists() and (tmp_path / "out/assembly/run.json").exists()
    assert not (tmp_path / "out/soil").exists()


@pytest.mark.parametrize("sheet, words", [
    ("sample,fastq_1\ngut,a.fq\ngut,b.fq\n", "line 3: sample 'gut' again (first on line 2)"),
    ("id,reads\nx,a.fq\n", "not a sample sheet: its header is id,reads"),
    ("sample,fastq_1,fasta\nx,a.fq,b.fa\n", "gives both reads (fastq_1) and contigs (fasta)"),
    ("sample,fastq_1\n../up,a.fq\n", "sample name '../up' is not a folder name"),
    ("sample,fastq_1\nsoil,a.fq\nSoil,b.fq\n", "line 3: sample 'Soil' differs from sample 'soil' (line 2) by case"),
    ("sample,fasta\ncohort.json,a.fa\n", "sample name 'cohort.json' is the name of a file the cohort writes"),
    (b"\x1f\x8b\x08\x00\xff\xfe", "not a sample sheet (not text)"),
    (None, "sheet.csv: no such file"),
])
def test_a_sheet_that_cannot_be_run_is_one_line_before_any_model_loads(models, tmp_path, cli, monkeypatch, sheet,
                                                                          words):
    if sheet is not None:
        (tmp_path / "sheet.csv").write_bytes(sheet if isinstance(sheet, bytes) else sheet.encode())
    monkeypatch.setattr(loaders, "load_dnabert_s", lambda *a, **k: pytest.fail("no model may load"))
    status, stderr = cli("prediction", sheet_args(models, tmp_path / "sheet.csv", tmp_path / "out"))
    assert status == 2 and words in stderr and "Traceback" not in stderr
    assert not (tmp_path / "out").exists()


def test_a_sample_file_that_is_a_folder_is_said_so(tmp_path):
    (tmp_path / "reads").mkdir()
    (tmp_path / "sheet.csv").write_text("sample,fastq_1\ngut,reads\n")
    (sample,) = cohort.read_sheet(str(tmp_path / "sheet.csv"))
    assert sample.missing.endswith(f"sample 'gut': {tmp_path}/reads: a folder, not a file")


def test_a_folder_of_other_files_is_refused_before_any_model_loads(models, study, tmp_path, cli, monkeypatch):
    """A cohort writes beside its samples' folders: never into a folder of a single run's results or a user's files."""
    single = tmp_path / "single"
    single.mkdir()
    (single / outputs.SUMMARY_FILE).write_text("Sequence_ID\n")
    (single / f".{cohort.SUMMARY_FILE}.x1.tmp").write_text("")            # a killed cohort's: its own
    monkeypatch.setattr(loaders, "load_dnabert_s", lambda *a, **k: pytest.fail("no model may load"))
    status, stderr = cli("prediction", sheet_args(models, study / "samples.csv", single))
    assert status == 2 and "Traceback" not in stderr
    assert f"holds files that are not a cohort's ({outputs.SUMMARY_FILE}); give another -o" in stderr
    assert sorted(os.listdir(single)) == [f".{cohort.SUMMARY_FILE}.x1.tmp", outputs.SUMMARY_FILE]


def test_a_sheet_under_torchrun_is_refused_in_one_line(models, study, tmp_path, cli, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    status, stderr = cli("prediction", sheet_args(models, study / "samples.csv", tmp_path / "out"))
    assert status == 2 and "under torchrun: a sample sheet runs in one process" in stderr
    assert not (tmp_path / "out").exists()


def test_the_estimate_prints_the_plan_and_scores_nothing(models, study, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(loaders, "load_dnabert_s", lambda *a, **k: pytest.fail("an estimate loads no model"))
    assert prediction.main(sheet_args(models, study / "samples.csv", tmp_path / "out", "--estimate")) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("gut: 5 read pairs, 10 300-bp chunks, ") and lines[1].startswith("soil: 10 sequences")
    assert lines[-1].startswith("in all: ") and "no rate of the fastesm650 pipeline on CPU" in lines[-1]
    assert not (tmp_path / "out").exists()
    (tmp_path / "models").mkdir()
    (tmp_path / "models/device_rates.json").write_text(json.dumps({cohort.device_name(cohort.resolve_device("cpu")):
                                                                   {"fastesm650": 2.0}}))
    args = sheet_args(models, study / "samples.csv", tmp_path / "out", "--estimate", "--models-dir",
                      str(tmp_path / "models"))
    assert prediction.main(args) == 0
    last = capsys.readouterr().out.splitlines()[-1]
    frames = int(last.split()[2].replace(",", ""))
    assert f"about {cohort.format_duration(frames / 2.0)} on CPU" in last and "at the 2 frames/s its last" in last
    assert prediction.main(predict_args(models, tmp_path / "out", "--estimate", input_fasta=SAMPLE)) == 0   # one input
    assert capsys.readouterr().out.startswith(f"{SAMPLE}: 10 sequences, 10 300-bp chunks, ")



def test_the_estimate_of_a_sheet_with_a_refused_sample_plans_the_others_and_stops_with_it(models, study,
                                                                                            tmp_path, capsys):
    shutil.copytree(study, tmp_path / "study")
    (tmp_path / "study/reads/soil.fq").write_bytes(b"\x00binary")
    args = sheet_args(models, tmp_path / "study/samples.csv", tmp_path / "out", "--estimate")
    with pytest.raises(InputError, match=r"^1 sample of 3 refused: soil \(each one's reason is above\); the plan "
                                         "leaves it out$"):
        prediction.main(args)
    plan = capsys.readouterr().out
    assert plan.startswith("gut: 5 read pairs") and "\nassembly: " in plan and "soil" not in plan


def test_the_viral_fraction_and_its_intervals():
    low, high = cohort.wilson_interval(3, 10)
    assert low < 0.3 < high and 0 <= low and high <= 1
    narrower = cohort.wilson_interval(300, 1000)
    assert low < narrower[0] < 0.3 < narrower[1] < high                    # narrows as the sample grows
    assert cohort.wilson_interval(0, 20)[0] == 0 and cohort.wilson_interval(20, 20)[1] == 1
    assert all(math.isnan(value) for value in cohort.wilson_interval(0, 0))
    # Rogan-Gladen by hand: apparent 0.30, sensitivity 0.80, specificity 0.90 -> (0.30 + 0.90 - 1) / 0.70
    assert cohort.rogan_gladen(0.30, 0.80, 0.90) == (pytest.approx(0.2 / 0.7), False)
    assert cohort.rogan_gladen(0.05, 0.80, 0.90) == (0.0, True)               # below what false calls make
    assert cohort.rogan_gladen(0.95, 0.80, 0.90) == (1.0, True)


def test_multiqc_reads_the_cohort_as_it_is(cohort_run, tmp_path):
    pytest.importorskip("multiqc")
    output, _ = cohort_run
    report = tmp_path / "multiqc"
    done = subprocess.run([sys.executable, "-m", "multiqc", str(output), "-o", str(report), "--no-ansi"],
                          capture_output=True, text=True)
    assert done.returncode == 0 and "broke" not in done.stderr, done.stderr
    general = read_tsv(report / "multiqc_data/multiqc_general_stats.txt")
    assert sorted(row["Sample"] for row in general) == ["assembly", "gut", "soil"]
    table = {row["sample"]: row for row in read_tsv_after_comments(output / cohort.SUMMARY_FILE)}
    for row in general:
        percent = next(value for key, value in row.items() if key.endswith("viral_percent"))
        assert float(percent) == pytest.approx(100 * float(table[row["Sample"]]["viral_fraction"]), abs=0.01)
    calls = read_tsv(report / "multiqc_data/multiqc_virnucpro_calls_plot.txt")
    assert {row["Sample"]: int(float(row["virus"])) for row in calls} == {
        name: int(row["virus"]) for name, row in table.items()}
    assert (report / "multiqc_report.html").exists()


# ---------------------------------------------------------------- the Snakemake workflow
WORKFLOW = ROOT / "workflow/Snakefile"


def snakemake(*args, cwd):
    """Snakemake from this environment, its jobs finding this environment's virnucpro command."""
    pytest.importorskip("snakemake")
    environment = {**os.environ, "PATH": f"{os.path.dirname(sys.executable)}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([sys.executable, "-m", "snakemake", "-s", str(WORKFLOW), *args], cwd=cwd, env=environment,
                          capture_output=True, text=True)


def test_the_workflow_passes_snakemakes_lint(study, tmp_path):
    done = snakemake("--lint", "--config", f"samples={study / 'samples.csv'}", cwd=tmp_path)
    assert done.returncode == 0 and "Congratulations" in done.stdout + done.stderr, done.stdout + done.stderr


def test_the_workflow_runs_a_job_per_sample_and_writes_what_the_cohort_command_writes(mixed, study, cohort_run,
                                                                                     tmp_path):
    sheet = tmp_path / "two.csv"
    sheet.write_text("sample,fastq_1,fastq_2\n"
                     f"gut,{study / 'reads/gut_R1.fq.gz'},{study / 'reads/gut_R2.fq.gz'}\nsoil,{study / 'reads/soil.fq'},\n")
    options = f"--device cpu --dna-model {mixed['dna']} --protein-model {mixed['protein']} --chunks-per-shard 100"
    done = snakemake("-c", "2", "--config", f"samples={sheet}", "output=out", f"classifier={mixed['checkpoint']}",
                     "fetch_models=False", f"predict_options={options}", cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("gut", "soil"):
        assert result_bytes(tmp_path / "out" / name) == result_bytes(cohort_run[0] / name), name
    ours = read_tsv_after_comments(tmp_path / "out" / cohort.SUMMARY_FILE)
    cohorts = {row["sample"]: row for row in read_tsv_after_comments(cohort_run[0] / cohort.SUMMARY_FILE)}
    assert ours == [cohorts["gut"], cohorts["soil"]]
    assert (tmp_path / "out" / cohort.MULTIQC_STATS).exists() and (tmp_path / "out/logs/gut.log").exists()
