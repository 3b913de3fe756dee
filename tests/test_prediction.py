"""prediction.py end to end with tiny models and checkpoints made by the tests."""
import logging
import os
import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

import plot_predictions
import prediction
import units
from conftest import GOLDEN, ROOT, interrupt_after, predict_args, read_tsv
from virnucpro.errors import InputError
from virnucpro.models.pins import MERGED_DIM, PROTEIN_DIM
from virnucpro.prediction import outputs, shards
from virnucpro.scoring.engine import predict_probabilities
from virnucpro.sequences.chunks import chunk_starts
from virnucpro.sequences.fasta import read_fasta

INPUT = GOLDEN / "prediction/input.fasta"          # 40 contigs -> 377 chunks of 300 bp


@pytest.fixture(scope="module")
def reference_run(models, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run") / "out"
    assert prediction.main(predict_args(models, output_dir, "--plot")) == 0
    return output_dir


# ------------------------------------------------------------ outputs
def test_frame_results_cover_every_frame_in_the_published_format(reference_run):
    text = (reference_run / "prediction_results.txt").read_text()
    assert text.startswith("Sequence_ID\tPrediction\tscore1\tscore2\n")
    rows = read_tsv(reference_run / "prediction_results.txt")
    expected_ids = [r.id for r in read_fasta(GOLDEN / "prediction/chunked300_identified_nucleotide.fa")]
    assert [row["Sequence_ID"] for row in rows] == expected_ids          # every frame, in input order
    for row in rows:
        others, virus = np.float32(row["score1"]), np.float32(row["score2"])
        assert str(others) == row["score1"] and abs(float(others) + float(virus) - 1) < 1e-6
        assert row["Prediction"] == ("virus" if virus > others else "others")
    assert {row["Prediction"] for row in rows} == {"virus", "others"}


def test_a_classifier_trained_on_other_encoder_precisions_is_named(models, tmp_path, caplog):
    classifier, _ = units.load_checkpoint(models["checkpoint"])
    checkpoint = tmp_path / "fp16_features.pth"
    units.save_checkpoint(classifier, checkpoint, encoder_precision={"dna": "float32", "protein": "float16"})
    few = tmp_path / "few.fasta"
    few.write_text(">a\n" + "ATGAAACCCGGGTTTAAACCCGGGATGAAA" * 10 + "\n")
    assert prediction.main(predict_args(models, tmp_path / "out", input_fasta=few, checkpoint=str(checkpoint))) == 0
    assert "trained on features of DNABERT-S in float32 and the protein model in float16; this run embeds in " \
           "float32 and float32" in caplog.text
    caplog.clear()
    assert prediction.main(predict_args(models, tmp_path / "out2", input_fasta=few)) == 0
    assert "trained on features" not in caplog.text                 # no record, nothing claimed


def test_scores_belong_to_their_frames(reference_run, models, tmp_path):
    """Recompute one shard's scores straight through units and compare by id."""
    dna_model = units.load_dnabert_s(models["dna"], "cpu")
    protein_model = units.load_fast_esm(models["protein"], "cpu")
    classifier, _ = units.load_checkpoint(models["checkpoint"])
    nucleotide = GOLDEN / "prediction/chunked300_identified_nucleotide.fa"
    protein = GOLDEN / "prediction/chunked300_identified_protein.faa"
    units.extract_DNABERT_S(nucleotide, str(tmp_path / "d.pt"), model=dna_model[0], tokenizer=dna_model[1])
    units.extract_fast_esm(protein, str(tmp_path / "p.pt"), model=protein_model[0], tokenizer=protein_model[1])
    units.merge_data(tmp_path / "d.pt", tmp_path / "p.pt", tmp_path / "m.pt")
    merged = torch.load(tmp_path / "m.pt", weights_only=True)
    expected = predict_probabilities(classifier, merged["data"]).numpy()
    got = {row["Sequence_ID"]: (float(row["score1"]), float(row["score2"]))
           for row in read_tsv(reference_run / "prediction_results.txt")}
    for frame_id, (others, virus) in zip(merged["ids"], expected):
        assert got[frame_id] == pytest.approx((others, virus), abs=2e-5)


def test_chunk_calls_and_sequence_summary_are_consistent(reference_run):
    frames = read_tsv(reference_run / "prediction_results.txt")
    best = {}
    for row in frames:
        pair = best.setdefault(row["Sequence_ID"][:-2], [-1.0, -1.0])
        pair[0], pair[1] = max(pair[0], float(row["score1"])), max(pair[1], float(row["score2"]))
    header = (reference_run / "prediction_results_highestscore.csv").read_text().split("\n", 1)[0]
    assert header == "Modified_ID\tIs_Virus\tViral_score\tViral_probability"    # the published two first
    chunk_calls = read_tsv(reference_run / "prediction_results_highestscore.csv")
    assert [row["Modified_ID"] for row in chunk_calls] == list(best)
    for row in chunk_calls:
        assert row["Is_Virus"] == str(best[row["Modified_ID"]][1] >= best[row["Modified_ID"]][0])
        assert float(row["Viral_score"]) == best[row["Modified_ID"]][1]
        assert row["Viral_probability"] == "uncalibrated"                 # the test classifier has no calibration

    summary = read_tsv(reference_run / "prediction_summary.tsv")
    records = list(read_fasta(INPUT))
    assert [row["Sequence_ID"] for row in summary] == [r.id for r in records]
    assert sum(int(row["Chunks"]) for row in summary) == 377             # every input chunk accounted for
    calls = {row["Modified_ID"]: row["Is_Virus"] == "True" for row in chunk_calls}
    for record, row in zip(records, summary):
        chunk_ids = [f"{record.id}_chunk_{k}" for k in range(1, len(chunk_starts(len(record.sequence), 300)) + 1)]
        scored = [c for c in chunk_ids if c in calls]
        assert int(row["Length"]) == len(record.sequence) and int(row["Chunks"]) == len(chunk_ids)
        assert int(row["Chunks_without_frames"]) == len(chunk_ids) - len(scored)
        assert int(row["Viral_chunks"]) == sum(calls[c] for c in scored)
        if scored:
            assert float(row["Best_viral_score"]) == max(best[c][1] for c in scored)
            assert row["Call"] == ("virus" if 2 * int(row["Viral_chunks"]) >= len(scored) else "others")
            assert (row["Viral_probability"], row["FDR"]) == ("uncalibrated", "uncalibrated")
        else:
            assert (row["Best_viral_score"], row["Call"]) == ("NA", "no_frames")
            assert (row["Viral_probability"], row["FDR"]) == ("NA", "NA")
    assert any(row["Call"] == "no_frames" for row in summary)            # reported, not dropped


def test_plot_run_folder_and_intermediates(reference_run):
    assert (reference_run / "prediction.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in reference_run.iterdir()) == [
        "prediction.png", "prediction_results.txt", "prediction_results_highestscore.csv",
        "prediction_summary.tsv", "run.json", "viral_regions.bed", "viral_regions.fna", "viral_regions.tsv",
        "viral_sequences.fna"]


def test_plot_script_on_our_results_and_on_published_ones(reference_run, tmp_path, monkeypatch):
    drawn = []
    monkeypatch.setattr(plot_predictions, "plot_chunk_scores", lambda panels, *args, **kwargs: drawn.append(panels))
    assert plot_predictions.main([str(reference_run)]) == 0
    summary = {row["Sequence_ID"]: row for row in read_tsv(reference_run / outputs.SUMMARY_FILE)}
    best = [float(summary[header.split()[0]]["Best_viral_score"]) for header, _, _ in drawn[0]]
    assert best == sorted(best, reverse=True) and len(best) == outputs.PLOTTED_SEQUENCES  # the highest first
    for header, length, track in drawn[0]:                   # every chunk, the unscored ones as grey bars
        row = summary[header.split()[0]]
        assert len(track) == int(row["Chunks"]) and track[-1][1] == length == int(row["Length"])
        assert sum(margin is None for *_, margin in track) == int(row["Chunks_without_frames"])
        assert all((margin >= 0) == viral for _, _, _, viral, margin in track if margin is not None)
    monkeypatch.undo()
    assert plot_predictions.main([str(reference_run), "--output", str(tmp_path / "ours.png")]) == 0
    published = GOLDEN / "reference_vanilla/prediction_results.txt"
    assert plot_predictions.main([str(published), "--output", str(tmp_path / "published.png")]) == 0
    for name in ("ours.png", "published.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    assert outputs.best_chunk_scores(str(published))["synthetic_seq_2"][1] == (np.float32(0.5501341),
                                                                              np.float32(0.93954605))


def test_records_longer_than_a_shard_spread_over_shards_and_resume(models, reference_run, tmp_path, monkeypatch):
    """7-chunk shards cut most of the golden contigs (up to 19 chunks) across shards; an interrupted
    run resumes; the results equal those of 100-chunk shards."""
    output_dir = tmp_path / "out"
    args = predict_args(models, output_dir)[:-1] + ["7"]
    interrupt_after(monkeypatch, shards, "score_shard", 20)
    with pytest.raises(KeyboardInterrupt):
        prediction.main(args)
    monkeypatch.undo()
    continued = [row for folder in sorted((output_dir / "shards").iterdir()) if (folder / "chunks.tsv").exists()
                 for row in read_tsv(folder / "chunks.tsv")[:1] if not row["chunk_id"].endswith("_chunk_1")]
    assert continued                                      # shards that start inside a record
    assert prediction.main(args) == 0
    for name in outputs.RESULT_FILES:             # other batches: scores equal to fp32 rounding, calls identical
        assert same_within(output_dir / name, reference_run / name, 1e-6), name


@pytest.mark.slow
def test_two_processes_under_torchrun_write_what_one_process_writes(models, reference_run, tmp_path):
    output = tmp_path / "team"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
               str(ROOT / "prediction.py"), *predict_args(models, output, "--plot")]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert done.returncode == 0, done.stderr[-3000:]
    assert "2 processes" in done.stderr and done.stderr.count("40 sequences: ") == 1     # one process assembles
    for name in outputs.RESULT_FILES:
        assert (output / name).read_bytes() == (reference_run / name).read_bytes(), name


@pytest.mark.slow
def test_a_slurm_array_scores_by_task_and_the_last_task_assembles(models, reference_run, tmp_path, monkeypatch,
                                                                   caplog):
    caplog.set_level(logging.INFO, logger="virnucpro")
    output = tmp_path / "array"
    monkeypatch.setenv("SLURM_ARRAY_TASK_COUNT", "2")
    monkeypatch.setenv("SLURM_ARRAY_TASK_MIN", "3")                 # sbatch --array=3-4: 4 shards, 2 each
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "4")                  # tasks start in any order, one at a time
    assert prediction.main(predict_args(models, output, "--plot", "--slurm-array")) == 0
    assert "2 of 4 shards wait for other tasks" in caplog.text
    assert sorted(p.name for p in (output / "shards").iterdir()) == [outputs.SHARDS_MARK, "000002", "000004"]
    assert not (output / "prediction_summary.tsv").exists()
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "3")
    assert prediction.main(predict_args(models, output, "--plot", "--slurm-array")) == 0
    assert "40 sequences: " in caplog.text and not (output / "shards").exists()
    for name in outputs.RESULT_FILES:
        assert (output / name).read_bytes() == (reference_run / name).read_bytes(), name
    with pytest.raises(InputError, match="--overwrite in a SLURM array would make every task start over"):
        prediction.main(predict_args(models, output, "--overwrite", "--slurm-array"))
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")
    with pytest.raises(InputError, match="is not one of 2 consecutive tasks"):
        prediction.main(predict_args(models, output, "--slurm-array"))


def same_within(path, other, tolerance) -> bool:
    """Two text files that differ at most in numbers, by at most ``tolerance``."""
    cells = [[line.split("\t") for line in open(p).read().splitlines()] for p in (path, other)]
    if [len(row) for row in cells[0]] != [len(row) for row in cells[1]]:
        return False
    for a, b in zip(sum(cells[0], []), sum(cells[1], [])):
        if a != b:
            try:
                if abs(float(a) - float(b)) > tolerance:
                    return False
            except ValueError:
                return False
    return True


def test_keep_intermediate_and_changed_settings(models, tmp_path):
    output_dir = tmp_path / "out"
    sample = ROOT / "data/sample.fasta"
    assert prediction.main(predict_args(models, output_dir, "--keep-intermediate", input_fasta=sample)) == 0
    shard = output_dir / "shards/000001"
    assert {"identified_nucleotide.fa", "identified_protein.faa", "DNABERT_S.pt", "ESM.pt", "merged.pt",
            "frames.tsv", "chunks.tsv"} <= {p.name for p in shard.iterdir()}
    scored = [line.split("\t")[0] for line in (shard / "frames.tsv").read_text().splitlines()]
    dna, protein = (torch.load(shard / name, weights_only=True) for name in ("DNABERT_S.pt", "ESM.pt"))
    assert dna["nucleotide"] == protein["proteins"] == scored                       # features_extract.py's layouts
    assert [row["label"] for row in dna["data"]] == scored and protein["data"][0].shape == (PROTEIN_DIM,)
    assert torch.load(shard / "merged.pt", weights_only=True)["ids"] == scored
    assert len(read_tsv(output_dir / "prediction_summary.tsv")) == 10
    with pytest.raises(InputError, match="holds a run with other settings \\(chunks_per_shard\\)"):
        prediction.main(predict_args(models, output_dir, input_fasta=sample)[:-1] + ["50"])


def test_default_output_dir():
    assert outputs.default_output_dir("reads.fasta") == "reads_merged"
    assert outputs.default_output_dir("runs/reads.fa.gz") == "runs/reads_merged"
    assert outputs.default_output_dir("my.reads.fna") == "my.reads_merged"


# ------------------------------------------------------------ checkpoints
def test_checkpoint_round_trip_with_metadata(tmp_path):
    model = units.MLPClassifier(MERGED_DIM, 512, 2)
    units.save_checkpoint(model, tmp_path / "m.pth", epochs=3)
    loaded, metadata = units.load_checkpoint(tmp_path / "m.pth")
    assert metadata["checkpoint_version"] == "2.0.0" and metadata["embedding_model"] == "fastesm650"
    assert (metadata["dna_dim"], metadata["protein_dim"], metadata["merged_dim"]) == (768, 1280, 2048)
    assert (metadata["hidden_dim"], metadata["num_classes"], metadata["epochs"]) == (512, 2, 3)
    assert metadata["training_date"] and {"torch", "transformers"} <= set(metadata["library_versions"])
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), loaded.state_dict().values()))
    assert not loaded.training


@pytest.fixture(scope="module")
def published_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("published") / "500_model.pth"
    subprocess.run([sys.executable, str(ROOT / "tests/helpers/make_published_checkpoint.py"), str(path)], check=True)
    return path


def test_fastesm_pipeline_refuses_esm2_3b_and_unlabelled_checkpoints(published_checkpoint, tmp_path):
    for pipeline in (None, "fastesm650"):
        with pytest.raises(InputError, match="ESM2-3B checkpoint .* run it with --pipeline esm2_3b"):
            units.load_checkpoint(published_checkpoint, pipeline)
    torch.save(units.MLPClassifier(MERGED_DIM, 512, 2).state_dict(), tmp_path / "bare.pth")
    with pytest.raises(InputError, match="has no metadata"):
        units.load_checkpoint(tmp_path / "bare.pth")
    units.save_checkpoint(units.MLPClassifier(1000, 512, 2), tmp_path / "odd.pth")
    with pytest.raises(InputError, match="1000-d input; the fastesm650 pipeline needs 2048-d input"):
        units.load_checkpoint(tmp_path / "odd.pth")


def test_published_checkpoint_loads_without_running_pickled_code(published_checkpoint, tmp_path):
    model, metadata = units.load_checkpoint(published_checkpoint, "esm2_3b")
    assert model.hidden_layer.in_features == 3328 and metadata["embedding_model"] == "esm2_3b"

    class Exploit:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    with open(tmp_path / "evil.pth", "wb") as handle:
        pickle.dump(Exploit(), handle)
    with pytest.raises(InputError, match="not a VirNucPro checkpoint"):
        units.load_checkpoint(tmp_path / "evil.pth", "esm2_3b")
    assert not (tmp_path / "pwned").exists()


def test_esm2_3b_pipeline_runs_the_published_checkpoint(models, published_checkpoint, tmp_path):
    args = predict_args(models, tmp_path / "out", "--pipeline", "esm2_3b", input_fasta=ROOT / "data/sample.fasta",
                        checkpoint=str(published_checkpoint))
    args[args.index("--protein-model") + 1] = models["esm2_3b"]
    assert prediction.main(args) == 0
    rows = read_tsv(tmp_path / "out/prediction_results.txt")
    assert rows and all(row["Sequence_ID"].startswith("NC_0295") for row in rows)
