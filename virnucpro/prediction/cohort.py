"""A cohort: many samples in one command, from a sample sheet in the nf-core convention, each a run of its
own in ``<output>/<sample>/`` (the result files a single run writes, byte for byte), with the models loaded
once; then one table across the samples, each one's viral load with a 95% interval (and corrected for the
classifier's errors when its sensitivity and specificity were measured), and MultiQC's custom content.

The sheet: a header, one row per sample; columns ``sample`` and ``fastq_1``, optional ``fastq_2`` (the
second mates) and ``fasta`` (contigs): a row gives reads (``fastq_1``, with ``fastq_2`` for pairs) or
contigs (``fasta``), paths relative to the sheet's folder.
"""
from __future__ import annotations

import collections
import csv
import dataclasses
import io
import json
import math
import os
import re
import time
from typing import NamedTuple

from virnucpro.devices import device_name, resolve_device
from virnucpro.errors import InputError
from virnucpro.files import atomic_write, open_raw
from virnucpro.log import logger, plural
from virnucpro.models.modelfiles import MEASURED_FRAMES, known_rates
from virnucpro.prediction import outputs, predict
from virnucpro.prediction.inputs import checked_files
from virnucpro.runs import cpu_seconds
from virnucpro.scoring.calibration import Calibration, load_evaluation_record

SHEET_COLUMNS = ("sample", "fastq_1", "fastq_2", "fasta")
SAMPLE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")        # a folder's name on every file system
SUMMARY_FILE = "samples_summary.tsv"
SUMMARY_JSON = "samples_summary.json"
MULTIQC_STATS, MULTIQC_CALLS = "virnucpro_stats_mqc.tsv", "virnucpro_calls_mqc.tsv"
COHORT_RUN = "cohort.json"
COHORT_FILES = (SUMMARY_FILE, SUMMARY_JSON, MULTIQC_STATS, MULTIQC_CALLS, COHORT_RUN)   # beside the samples' folders
Z95 = 1.959964                         # the normal quantile of a 95% interval


@dataclasses.dataclass(frozen=True)
class Sample:
    name: str
    input: str                          # reads (fastq_1) or contigs (fasta)
    mate2: str | None                   # the second mates (fastq_2)
    column: str                         # where the sheet gives the input: fastq_1 or fasta
    missing: str | None = None          # a file of the sample that is not there: the sample is refused

    @property
    def kind(self) -> str:
        """What a sequence of the sample is, as the table counts it: a pair counts once."""
        return "pairs" if self.mate2 else "contigs" if self.column == "fasta" else "reads"


def read_sheet(path: str) -> list[Sample]:
    """The samples of a sheet; a sheet that is not one, a duplicate sample name and a row of reads and
    contigs both or neither are each one line; a sample whose file is missing is marked (a run refuses it and
    runs the others)."""
    with open_raw(path) as handle:
        content = handle.read()
    try:
        rows = list(csv.reader(io.StringIO(content.decode("utf-8-sig"), newline="")))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a sample sheet (not text); give a CSV file: sample,fastq_1,fastq_2") from None
    header = [cell.strip() for cell in rows[0]] if rows else []
    if "sample" not in header or not {"fastq_1", "fasta"} & set(header) or set(header) - set(SHEET_COLUMNS):
        raise InputError(f"{path}: not a sample sheet: its header is {','.join(header) or 'empty'}; a sheet's "
                         f"columns are {', '.join(SHEET_COLUMNS)} (sample and fastq_1 or fasta needed), one row a "
                         "sample, as nf-core pipelines take")
    folder, samples, seen = os.path.dirname(os.path.abspath(path)), [], {}
    for number, row in enumerate(rows[1:], start=2):
        if not any(cell.strip() for cell in row):
            continue
        cells = {column: (row[k].strip() if k < len(row) else "") for k, column in enumerate(header)}
        samples.append(_sample(path, number, cells, folder, seen))
    if not samples:
        raise InputError(f"{path}: the sample sheet has no sample")
    return samples


def _sample(path: str, line: int, cells: dict, folder: str, seen: dict) -> Sample:
    where = f"{path}, line {line}"
    name = cells["sample"]
    if not SAMPLE_NAME.fullmatch(name):
        raise InputError(f"{where}: sample name {name!r} is not a folder name (letters, digits, '.', '_', '-', "
                         "starting with a letter or digit); rename it")
    if name in COHORT_FILES:
        raise InputError(f"{where}: sample name {name!r} is the name of a file the cohort writes beside the samples' "
                         "folders; rename the sample")
    first = seen.setdefault(name.casefold(), (name, line))     # a case-insensitive file system keeps one folder
    if first[1] != line:
        raise InputError(f"{where}: sample {name!r} again (first on line {first[1]}); sample names are unique"
                         if first[0] == name else f"{where}: sample {name!r} differs from sample {first[0]!r} (line "
                         f"{first[1]}) by case alone, and a case-insensitive file system (macOS, Windows) gives "
                         "both one folder; rename one")
    reads, mate2, contigs = (cells.get(column, "") for column in ("fastq_1", "fastq_2", "fasta"))
    if bool(reads) == bool(contigs):
        raise InputError(f"{where}: sample {name!r} gives {'both reads (fastq_1) and contigs (fasta)' if reads else 'no file'}; "
                         "give one of them (reads and contigs of one sample are two samples)")
    if mate2 and not reads:
        raise InputError(f"{where}: sample {name!r} gives fastq_2 without fastq_1")
    files = [os.path.join(folder, given) for given in (reads or contigs, mate2) if given]
    missing = next((f"{where}: sample {name!r}: {given}: {'a folder, not a file' if os.path.isdir(given) else 'no such file'}"
                    for given in files if not os.path.isfile(given)), None)
    return Sample(name, files[0], files[1] if mate2 else None, "fastq_1" if reads else "fasta", missing)


def check_folder(output_dir: str) -> None:
    """A cohort's folder holds its samples' folders (each checked by its sample's run) and the cohort's own
    files; a file of anything else (a single run's results, a user's files) refuses it, before any model loads."""
    if not os.path.isdir(output_dir):
        return
    others = sorted(name for name in os.listdir(output_dir)
                    if not os.path.isdir(os.path.join(output_dir, name)) and not _cohort_file(name))
    if others:
        raise InputError(f"{output_dir} holds files that are not a cohort's ({', '.join(others[:3])}"
                         f"{', ...' if len(others) > 3 else ''}); give another -o: a cohort's folder holds its "
                         "samples' folders and the tables across them")


def _cohort_file(name: str) -> bool:
    """One of the cohort's files, or a temporary one of them left by a killed run."""
    return name in COHORT_FILES or name.endswith(".tmp") and any(name.startswith(f".{own}.") for own in COHORT_FILES)


# ---------------------------------------------------------------- the runs
def present(samples: list[Sample]) -> list[Sample]:
    """The samples whose files are all there; each missing one said."""
    for sample in samples:
        if sample.missing:
            logger.error(sample.missing)
    return [sample for sample in samples if not sample.missing]


def checked_inputs(samples: list[Sample], chunk_length: int, min_length: int) -> tuple[dict, dict]:
    """Every sample's input read once, checked and counted (the plan); ``({sample: Input}, {sample: why})``
    for the samples whose input is refused."""
    checked, refused = {}, {sample.name: sample.missing for sample in samples if sample.missing}
    for sample in present(samples):
        try:
            checked[sample.name] = checked_files(sample.input, sample.mate2, chunk_length, min_length)
        except InputError as error:
            refused[sample.name] = str(error)
            logger.error(f"sample {sample.name}: {error}")
    return checked, refused


def run_samples(samples: list[Sample], request: predict.Request, classifier, metadata: dict,
                calibration: Calibration | None) -> dict[str, str]:
    """Each sample a run of its own in ``<output>/<sample>/``, the models loaded once; a sample that fails
    does not stop the others. Writes the cross-sample table, its MultiQC files and the cohort's costs;
    returns ``{sample: why}`` of the samples that failed."""
    from tqdm import tqdm

    started, cpu_started = time.perf_counter(), cpu_seconds()
    checked, failed = checked_inputs(samples, request.chunk_length, request.min_length)
    frames = sum(source.frames for source in checked.values())
    logger.info(f"{plural(len(samples), 'sample')}: {plural(sum(s.sequences for s in checked.values()), 'sequence')}"
                f", {plural(sum(s.chunks for s in checked.values()), 'chunk')}, {plural(frames, 'frame')} to score"
                + (f"; {plural(len(failed), 'sample')} refused" if failed else ""))
    engines, costs, planned = {}, {}, 0
    with tqdm(total=frames, desc="frames", unit="frame") as progress:
        for sample in samples:
            if sample.name in failed:
                continue
            planned += checked[sample.name].frames
            one = dataclasses.replace(request, input_path=sample.input, mate2=sample.mate2,
                                      output_dir=os.path.join(request.output_dir, sample.name))
            try:
                counts = predict.run(one, classifier, metadata, calibration, engines, checked[sample.name], progress)
            except InputError as error:
                failed[sample.name] = str(error)
                logger.error(f"sample {sample.name}: {error}")
                continue
            finally:
                progress.update(planned - progress.n)     # a sample finished earlier counts as done
            if counts is not None:                         # None: finished by an earlier run
                costs[sample.name] = counts["costs"]
    summarize(request.output_dir, [sample for sample in samples if sample.name not in failed])
    with atomic_write(os.path.join(request.output_dir, COHORT_RUN)) as handle:
        json.dump({"samples": costs, "failed": failed, "costs": total_costs(costs, time.perf_counter() - started,
                                                                               cpu_seconds() - cpu_started)},
                  handle, indent=1)
    return failed


def total_costs(costs: dict[str, dict], wall_seconds: float, cpu_seconds: float) -> dict:
    """The cohort's costs: its own wall and CPU time (the checks of every input included), the loading time
    and frames of the samples it scored summed, their peaks' peak, and the rate of the whole run without
    loading."""
    known = list(costs.values())
    if not known:
        return {}
    loading = sum(cost["model_loading_seconds"] for cost in known)
    frames = sum(cost["frames_scored"] for cost in known)
    gpu = [cost["peak_gpu_memory_mb"] for cost in known if cost["peak_gpu_memory_mb"] is not None]
    return {"device": known[0]["device"], "wall_seconds": round(wall_seconds, 2), "cpu_seconds": round(cpu_seconds, 2),
            "model_loading_seconds": round(loading, 2),
            "peak_host_memory_mb": max(cost["peak_host_memory_mb"] for cost in known),
            "peak_gpu_memory_mb": max(gpu) if gpu else None, "frames_scored": frames,
            "frames_per_second": round(frames / max(wall_seconds - loading, 1e-9), 1)}


# ---------------------------------------------------------------- the table across samples
class SampleRow(NamedTuple):
    """samples_summary.tsv: a row per sample; a pair of reads counts once."""
    sample: str
    unit: str                                   # reads, pairs or contigs
    sequences: int
    scored: int
    virus: int
    others: int
    below_threshold: int
    too_short: int
    no_frames: int
    not_scored: int
    no_sequence: int
    mates_differ: int                           # pairs whose mates were left out for two reasons
    viral_region_bases: int
    viral_fraction: str
    viral_fraction_low: str
    viral_fraction_high: str
    corrected_viral_fraction: str
    corrected_low: str
    corrected_high: str
    correction: str                             # corrected, clipped, or why not


def wilson_interval(successes: int, trials: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a proportion: inside [0, 1], never empty, and narrower as trials grow."""
    if trials == 0:
        return math.nan, math.nan
    p = successes / trials
    centre = (p + z * z / (2 * trials)) / (1 + z * z / trials)
    half = z * math.sqrt(p * (1 - p) / trials + z * z / (4 * trials * trials)) / (1 + z * z / trials)
    return max(0.0, centre - half), min(1.0, centre + half)


def rogan_gladen(apparent: float, sensitivity: float, specificity: float) -> tuple[float, bool]:
    """The true share of a sample's sequences that are viral, from the share called viral and the classifier's
    sensitivity and specificity: (apparent + specificity - 1) / (sensitivity + specificity - 1), clipped to
    [0, 1]; ``(value, clipped)``."""
    value = (apparent + specificity - 1) / (sensitivity + specificity - 1)
    return min(1.0, max(0.0, value)), not 0 <= value <= 1


# What the calls of two runs depend on: a table across samples compares runs that agree on all of it.
CALLING_SETTINGS = ("chunk_length", "min_length", "min_score", "max_fdr", "classifier", "calibration")


def summarize(output_dir: str, samples: list[Sample]) -> list[SampleRow]:
    """The table across the samples' finished runs in ``<output>/<sample>/`` and its MultiQC files; runs not
    finished, or made with other calling settings than the first sample's, are refused in one line."""
    runs = {}
    for sample in samples:
        folder = os.path.join(output_dir, sample.name)
        run = outputs.read_run(folder)
        if run is None or run["status"] != "complete":
            raise InputError(f"{folder}: sample {sample.name!r} has no finished run; run it first (prediction.py "
                             f"{sample.input} ... -o {folder})")
        runs[sample.name] = run["settings"]
    first = samples[0].name if samples else None
    for name, settings in runs.items():
        differs = next((key for key in CALLING_SETTINGS if settings.get(key) != runs[first].get(key)), None)
        if differs:
            raise InputError(f"{output_dir}: sample {name!r} was run with another {differs} than sample {first!r}; "
                             "a table across samples compares runs of one classifier and settings: run them again "
                             "alike")
    return write_tables(output_dir, samples, correction(runs[first]) if runs else Correction(None, "NA"))


class Correction(NamedTuple):
    """What corrects the samples' viral fractions: the classifier's evaluation record, or None and why not."""
    evaluation: dict | None
    note: str                                   # the table's header line on the corrected fraction


def correction(settings: dict) -> Correction:
    """The correction of runs made with these settings: by the evaluation record beside their classifier, when
    it was measured on that very classifier at their chunk length and no threshold changed the calls."""
    classifier, chunk_length = settings["classifier"], settings["chunk_length"]
    evaluation = load_evaluation_record(classifier["path"], chunk_length) \
        if os.path.isfile(classifier["path"]) else None
    if evaluation is None or evaluation["classifier_sha256"] != classifier["sha256"]:
        return Correction(None, f"NA: the classifier carries no evaluation record at {chunk_length} bp "
                                "(scripts/evaluate_compare.py writes one beside it)")
    if settings["min_score"] is not None or settings["max_fdr"] is not None:
        return Correction(None, "NA: --min-score and --max-fdr change the calls whose errors were measured; "
                                "leave them out for a corrected fraction")
    return Correction(evaluation, (
        f"corrected for the classifier's errors (Rogan-Gladen: sensitivity {evaluation['sensitivity']:.3f}, "
        f"specificity {evaluation['specificity']:.3f}, measured by scripts/evaluate_compare.py on "
        f"{evaluation['measured_on']}), the interval's bounds corrected likewise, clipped to [0, 1] (column "
        "correction: clipped); reads and pairs only, the rates being those of reads (contigs: NA)"))


def sample_row(sample: Sample, folder: str, evaluation: dict | None) -> SampleRow:
    """A sample's row, from its run's result files: of its pairs when it has mates, else of its sequences."""
    with open(os.path.join(folder, outputs.PAIRS_FILE if sample.mate2 else outputs.SUMMARY_FILE)) as handle:
        calls = collections.Counter(row["Call"] for row in csv.DictReader(handle, delimiter="\t"))
    with open(os.path.join(folder, outputs.REGIONS_FILE)) as handle:
        bases = sum(int(row["length"]) for row in csv.DictReader(handle, delimiter="\t"))
    scored = sum(calls[call] for call in ("virus", "others", "below_threshold"))
    fraction, (low, high) = (calls["virus"] / scored if scored else math.nan), wilson_interval(calls["virus"], scored)
    corrected, how = corrected_fractions(sample, (fraction, low, high), evaluation)
    return SampleRow(sample.name, sample.kind, sum(calls.values()), scored, calls["virus"], calls["others"],
                     calls["below_threshold"], calls["too_short"], calls["no_frames"], calls["not_scored"],
                     calls["no_sequence"], sum(n for call, n in calls.items() if "+" in call), bases, *map(cell, (fraction, low, high, *corrected)), how)


def corrected_fractions(sample: Sample, fractions: tuple, evaluation: dict | None) -> tuple[tuple, str]:
    """The fraction and its bounds corrected (Rogan-Gladen), and how: ``corrected``, ``clipped`` (the formula
    left [0, 1]), or why not (``none``: no record or thresholds; ``contigs``; ``uninformative``: sensitivity
    and specificity sum to 1 or less; ``no_scored``)."""
    nothing = (math.nan,) * 3
    if evaluation is None:
        return nothing, "none"
    if sample.kind == "contigs":
        return nothing, "contigs"
    sensitivity, specificity = evaluation["sensitivity"], evaluation["specificity"]
    if sensitivity + specificity <= 1:
        return nothing, "uninformative"
    if math.isnan(fractions[0]):
        return nothing, "no_scored"
    corrected = [rogan_gladen(value, sensitivity, specificity) for value in fractions]
    return tuple(value for value, _ in corrected), "clipped" if corrected[0][1] else "corrected"


def cell(value: float) -> str:
    return "NA" if math.isnan(value) else f"{value:.4f}"


def write_tables(output_dir: str, samples: list[Sample], correct: Correction) -> list[SampleRow]:
    """samples_summary.tsv (its header's comments say what the fractions are) and .json, and MultiQC's
    custom content: general statistics and a bar plot of the calls per sample."""
    rows = [sample_row(sample, os.path.join(output_dir, sample.name), correct.evaluation) for sample in samples]
    note = ("# viral_fraction: the share of the scored sequences (a pair counts once) called virus, with its 95% "
            f"Wilson interval\n# corrected_viral_fraction: {correct.note}\n")
    with atomic_write(os.path.join(output_dir, SUMMARY_FILE)) as handle:
        handle.write(note + outputs.header(SampleRow) + "".join(outputs.line(row) for row in rows))
    with atomic_write(os.path.join(output_dir, SUMMARY_JSON)) as handle:
        json.dump({"viral_fraction": "the share of the scored sequences called virus, 95% Wilson interval",
                   "corrected_viral_fraction": correct.note, "evaluation": correct.evaluation,
                   "samples": [row._asdict() for row in rows]}, handle, indent=1)
    write_multiqc(output_dir, rows)
    return rows


def write_multiqc(output_dir: str, rows: list[SampleRow]) -> None:
    """Files that ``multiqc <output>`` takes as they are (custom content): general-statistics columns and a
    bar plot of the calls, a row per sample."""
    percent = {row.sample: "" if row.viral_fraction == "NA" else f"{100 * float(row.viral_fraction):.2f}"
               for row in rows}
    stats = multiqc_file(
        {"id": "virnucpro_stats", "section_name": "VirNucPro", "plot_type": "generalstats",
         "headers": {"viral_percent": {"title": "% viral", "description": "share of the scored sequences called "
                                       "virus (a pair counts once)", "suffix": "%", "min": 0, "max": 100,
                                       "scale": "OrRd"},
                     "virus": {"title": "Viral", "description": "sequences called virus", "format": "{:,.0f}"},
                     "scored": {"title": "Scored", "description": "sequences scored", "format": "{:,.0f}"},
                     "viral_region_bases": {"title": "Viral bp", "description": "bases in viral regions",
                                            "format": "{:,.0f}"}}},
        ("sample", "viral_percent", "virus", "scored", "viral_region_bases"),
        [(row.sample, percent[row.sample], row.virus, row.scored, row.viral_region_bases) for row in rows])
    calls = multiqc_file(
        {"id": "virnucpro_calls", "section_name": "VirNucPro calls", "plot_type": "bargraph",
         "description": "The calls of each sample's sequences (a pair counts once).",
         "pconfig": {"id": "virnucpro_calls_plot", "title": "VirNucPro: calls per sample", "ylab": "sequences"}},
        ("sample", "virus", "others", "below_threshold", "not_scored"),
        [(row.sample, row.virus, row.others, row.below_threshold,
          row.sequences - row.scored) for row in rows])
    for name, text in ((MULTIQC_STATS, stats), (MULTIQC_CALLS, calls)):
        with atomic_write(os.path.join(output_dir, name)) as handle:
            handle.write(text)


def multiqc_file(config: dict, columns: tuple, rows: list[tuple]) -> str:
    """A custom-content table: its configuration in the comment header (YAML; each value written as JSON,
    which YAML reads as it is), then the tab-separated table."""
    head = "".join(f"# {key}: {json.dumps(value)}\n" for key, value in config.items())
    return head + "\t".join(columns) + "\n" + "".join("\t".join(map(str, row)) + "\n" for row in rows)


# ---------------------------------------------------------------- --estimate
def estimate(sources: dict, chunk_length: int, device: str, pipeline: str, models: str | None) -> str:
    """The plan of a run (``sources``: each sample's, or the input's, checked input): its sequences, chunks and
    frames, and the time at the rate this device last reached with this pipeline (the models folder keeps it),
    if one was recorded."""
    lines = [f"{name}: {plural(source.sequences // (2 if source.paired else 1), 'read pair' if source.paired else 'sequence')}, "
             f"{plural(source.chunks, f'{chunk_length}-bp chunk')}, {plural(source.frames, 'frame')}"
             for name, source in sources.items()]
    frames = sum(source.frames for source in sources.values())
    where = device_name(resolve_device(device))
    rate = known_rates(models).get(where, {}).get(pipeline)
    time = (f"about {format_duration(frames / rate)} on {where}, at the {rate:,.0f} frames/s its last run of the "
            f"{pipeline} pipeline reached" if rate else
            f"no rate of the {pipeline} pipeline on {where} is recorded yet (a finished run of at least "
            f"{MEASURED_FRAMES:,} frames records its rate in the models folder)")
    return "\n".join(lines + [f"in all: {plural(frames, 'frame')} to score; {time}"])


def format_duration(seconds: float) -> str:
    minutes, hours = seconds / 60, seconds / 3600
    return f"{hours:.1f} h" if hours >= 1 else f"{minutes:.0f} min" if minutes >= 1 else f"{seconds:.0f} s"
