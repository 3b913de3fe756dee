"""Viral regions along sequences, and the hit files prediction.py writes for the next tool."""
import json

import pytest
import torch

import prediction as predictor
import units
from conftest import GOLDEN, ROOT, predict_args, read_tsv
from helpers import genomes as synthetic
from helpers.models import save_classifier
from virnucpro.models.features import FeatureSet, find_merged_files
from virnucpro.models.pins import MERGED_DIM
from virnucpro.scoring.calls import NUM_CLASSES, viral_regions
from virnucpro.scoring.checkpoints import HIDDEN_DIM
from virnucpro.sequences.chunks import chunk_starts
from virnucpro.sequences.fasta import read_fasta


def chunk(start, score, viral, size=300):
    return (start, start + size, score, viral)


def track(pattern: str, size=300):
    """'V' viral, 'o' not viral, '-' no stop-free frame; chunks back to back."""
    return [(k * size, (k + 1) * size, None if c == "-" else (0.9 if c == "V" else 0.2), c == "V")
            for k, c in enumerate(pattern)]


def spans(pattern, **options):
    return [(r.start, r.end, r.chunks) for r in viral_regions(track(pattern), **options)]


def test_regions_bridge_gaps_of_one_chunk():
    assert spans("oVVoVVo") == [(301, 1800, 5)]                 # one chunk not viral: bridged
    assert spans("oVV-VVo") == [(301, 1800, 5)]                 # one chunk without frames: bridged
    assert spans("oVVooVVo") == [(301, 900, 2), (1501, 2100, 2)]  # two: not bridged
    assert spans("oVVooVVo", max_gap=2) == [(301, 2100, 6)]


def test_regions_at_the_edges_single_chunks_and_whole_sequences():
    assert spans("VVoo") == [(1, 600, 2)] and spans("ooVV") == [(601, 1200, 2)]
    assert spans("V") == [(1, 300, 1)] and spans("o") == [] and spans("-") == []
    assert spans("VVVVV") == [(1, 1500, 5)]                     # viral end to end: one region
    assert spans("VooooV", min_length=301) == []                # single-chunk regions below the minimum
    assert spans("VVoooV", min_length=301) == [(1, 600, 2)]


def test_region_scores_and_overlapping_last_chunk():
    chunks = [chunk(0, 0.9, True), chunk(300, 0.3, False), chunk(550, 0.6, True)]   # a 850-bp sequence
    (region,) = viral_regions(chunks)
    assert (region.start, region.end, region.length) == (1, 850, 850)
    assert region.mean_score == pytest.approx(0.6) and region.max_score == pytest.approx(0.9)


@pytest.fixture(scope="module")
def every_region(models, tmp_path_factory):
    """The golden input with every viral region reported (--min-region 1)."""
    output = tmp_path_factory.mktemp("regions") / "out"
    assert predictor.main(predict_args(models, output, "--min-region", "1")) == 0
    return output


def test_region_files_follow_the_chunking_and_the_input(every_region):
    output = every_region
    inputs = {r.id: r.sequence for r in read_fasta(GOLDEN / "prediction/input.fasta")}
    summary = {row["Sequence_ID"]: row for row in read_tsv(output / "prediction_summary.tsv")}
    regions = read_tsv(output / "viral_regions.tsv")
    assert regions, "the tiny classifier calls some chunks viral"
    for row in regions:
        starts = chunk_starts(len(inputs[row["sequence_id"]]), 300)
        ends = [min(s + 300, len(inputs[row["sequence_id"]])) for s in starts]
        assert int(row["start"]) - 1 in starts and int(row["end"]) in ends
        assert int(row["length"]) == int(row["end"]) - int(row["start"]) + 1
    bed = [line.split("\t") for line in (output / "viral_regions.bed").read_text().splitlines()]
    assert [(b[0], int(b[1]) + 1, int(b[2])) for b in bed] == [
        (r["sequence_id"], int(r["start"]), int(r["end"])) for r in regions]
    fasta = list(read_fasta(output / "viral_regions.fna"))
    for record, row in zip(fasta, regions, strict=True):
        assert record.id == f"{row['sequence_id']}|{row['start']}-{row['end']}"
        assert record.sequence == inputs[row["sequence_id"]][int(row["start"]) - 1:int(row["end"])]
    viral = [r.id for r in read_fasta(output / "viral_sequences.fna")]
    assert viral == [i for i, row in summary.items() if row["Call"] == "virus"]
    assert all(inputs[r.id] == r.sequence for r in read_fasta(output / "viral_sequences.fna"))
    run = json.loads((output / "run.json").read_text())
    assert run["viral_regions"] == len(regions) and run["viral_sequences"] == len(viral)
    assert run["sequences"] == len(summary) and run["thresholds"]["min_region"] == 1
    assert run["chunks"] == sum(int(row["Chunks"]) for row in summary.values())


def all_viral_classifier(path):
    """A classifier that calls every frame viral (its output bias says so)."""
    return save_classifier(path, seed=0, viral_bias=50.0)


def regions_by_sequence(output):
    found = {}
    for row in read_tsv(output / "viral_regions.tsv"):
        found.setdefault(row["sequence_id"], []).append(f"{row['start']}-{row['end']}")
    return found


def test_every_virus_call_has_a_region_and_the_summary_says_where(every_region):
    """The golden input by default (a 443-bp contig whose viral chunk is its short last one included)."""
    summary = read_tsv(every_region / "prediction_summary.tsv")
    regions = regions_by_sequence(every_region)
    assert any(row["Call"] == "virus" and int(row["Length"]) % 300 for row in summary)
    for row in summary:
        if row["Call"] == "virus":
            assert regions.get(row["Sequence_ID"]), row
        assert row["Viral_regions"] == ",".join(regions.get(row["Sequence_ID"], [])) or "NA", row


def test_reads_shorter_than_a_chunk_called_viral_are_their_own_regions(models, tmp_path):
    """298-bp reads (data/sample.fasta), a classifier that calls every frame viral."""
    output, sample = tmp_path / "out", ROOT / "data/sample.fasta"
    assert predictor.main(predict_args(models, output, input_fasta=sample,
                                       checkpoint=all_viral_classifier(tmp_path / "viral.pth"))) == 0
    summary = read_tsv(output / "prediction_summary.tsv")
    assert {row["Call"] for row in summary} == {"virus"}
    assert regions_by_sequence(output) == {row["Sequence_ID"]: [f"1-{row['Length']}"] for row in summary}
    headers = [line[1:] for line in (output / "viral_sequences.fna").read_text().splitlines() if line[0] == ">"]
    assert headers == [record.title for record in read_fasta(sample)]     # the description after the id


def test_bed_rows_follow_the_input_and_each_sequence_by_start(every_region):
    """The order docs/prediction.md states: sequences as in the input, a sequence's regions by start."""
    order = {row["Sequence_ID"]: k for k, row in enumerate(read_tsv(every_region / "prediction_summary.tsv"))}
    rows = [line.split("\t") for line in (every_region / "viral_regions.bed").read_text().splitlines()]
    assert rows and [(order[row[0]], int(row[1])) for row in rows] == sorted((order[row[0]], int(row[1]))
                                                                         for row in rows)


@pytest.mark.slow
def test_min_region_leaves_short_regions_out(models, every_region, tmp_path):
    assert predictor.main(predict_args(models, tmp_path / "long", "--min-region", "700")) == 0
    every = read_tsv(every_region / "viral_regions.tsv")
    assert read_tsv(tmp_path / "long/viral_regions.tsv") == [r for r in every if int(r["length"]) >= 700]


@pytest.fixture(scope="module")
def two_source_classifier(tiny_models, tmp_path_factory):
    """A classifier trained on the tiny models' features to tell GC-rich (viral) from AT-rich (host) genomes."""
    root = tmp_path_factory.mktemp("sources")
    records = synthetic.make_genomes(root, organisms=6, seed=3, viral_gc=0.64, host_gc=0.36)
    synthetic.extract_merged(records, root / "work", root / "merge", "fastesm650", tiny_models["dna"],
                             tiny_models["protein"])
    features = FeatureSet(find_merged_files(root / "merge"))
    inputs, labels = features.rows(range(len(features))), torch.from_numpy(features.labels)
    torch.manual_seed(0)
    model = units.MLPClassifier(MERGED_DIM, HIDDEN_DIM, NUM_CLASSES)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for _ in range(60):
        optimizer.zero_grad()
        torch.nn.functional.cross_entropy(model(inputs), labels).backward()
        optimizer.step()
    units.save_checkpoint(model, root / "model_fastesm650_300.pth", chunk_length=300)
    return str(root / "model_fastesm650_300.pth")


def test_a_viral_stretch_inserted_in_a_host_contig_is_found(models, two_source_classifier, tmp_path):
    rng = synthetic.random.Random(11)
    left, insert, right = (synthetic.genome(rng, 2150, 0.36), synthetic.genome(rng, 2500, 0.64),
                           synthetic.genome(rng, 2350, 0.36))
    contig = tmp_path / "contig.fasta"
    contig.write_text(f">contig_with_insert\n{left + insert + right}\n>host_only\n{synthetic.genome(rng, 4000, 0.36)}\n")
    output = tmp_path / "out"
    assert predictor.main(predict_args(models, output, "--plot", input_fasta=contig,
                                       checkpoint=two_source_classifier)) == 0
    regions = read_tsv(output / "viral_regions.tsv")
    assert [r["sequence_id"] for r in regions] == ["contig_with_insert"], regions
    (region,) = regions
    assert abs(int(region["start"]) - 2151) <= 300 and abs(int(region["end"]) - 4650) <= 300, region
    (found,) = read_fasta(output / "viral_regions.fna")
    assert found.sequence == (left + insert + right)[int(region["start"]) - 1:int(region["end"])]
    assert (output / "prediction.png").stat().st_size > 0


def test_the_plot_labels_each_panel_and_titles_above_them(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt

    from virnucpro.prediction.plots import plot_chunk_scores
    drawn = []
    monkeypatch.setattr(plt, "close", drawn.append)                 # keep the figure to look at it
    tracks = [(f"read{k} Escherichia phage T{k}", 600, [(0, 300, 0.6, True, 0.2), (300, 600, 0.7, False, -0.1)])
              for k in range(20)]
    labels = [f"virus, best viral score 0.{k}" for k in range(20)]
    plot_chunk_scores(tracks, tmp_path / "plot.png", 300, None, "the 20 of 90 sequences with the highest viral "
                      "scores", labels)
    (figure,) = drawn
    panels = figure.axes
    assert [(axis.get_title(loc="left"), axis.get_title(loc="right")) for axis in panels] == \
        [(f"read{k} Escherichia phage T{k}", label) for k, label in enumerate(labels)]
    # what decides the call: the viral chunk at or above 0 in red, the other below it in blue
    segments = [(line.get_ydata()[0], line.get_color()) for line in panels[0].get_lines() if len(line.get_xdata()) == 2
                and line.get_xdata()[0] != line.get_xdata()[1]]
    assert (0.2, "red") in segments and (-0.1, "darkblue") in segments
    renderer = figure.canvas.get_renderer()
    title_bottom = figure._suptitle.get_window_extent(renderer).y0
    top_panel = panels[0].get_tightbbox(renderer).y1                # its own title included
    assert title_bottom >= top_panel


def test_names_the_fonts_lack_are_said_once_not_warned_raw(tmp_path, caplog, recwarn):
    from virnucpro.prediction.plots import plot_chunk_scores

    plot_chunk_scores([("病毒_1 噬菌体", 300, [(0, 300, 0.9, True, 0.8)])], tmp_path / "plot.png", 300)
    assert not [warning for warning in recwarn if "missing from font" in str(warning.message)]
    assert caplog.text.count("are not in the plot's fonts and are drawn as boxes") == 1
