"""A prediction run: from a checked request (prediction.py's arguments) and a
loaded classifier to the result files, resumable shard by shard.

The run checks the input and the output folder first (one line for a user's
mistake, before any model is loaded), decides whether it is new, a resume or
already complete (run.json), scores the shards it owns (host work one shard
ahead in a background thread on a GPU) and assembles the result files.
Under torchrun process 0 leads: it holds the folder, checks, and assembles
once every process has scored its shards. A SLURM array task checks for
itself, holds the folder only to set the run up and to assemble, and the last
task to finish assembles.
"""
from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch

from virnucpro.errors import InputError
from virnucpro.files import check_writable, file_sha256
from virnucpro.log import logger, plural
from virnucpro.models.loaders import Encoders
from virnucpro.models.modelfiles import record_rate
from virnucpro.precision import model_precision
from virnucpro.prediction import assembly, shards
from virnucpro.prediction.inputs import Input, is_pipe, run_input
from virnucpro.prediction.outputs import (
    deleted_during_the_run,
    own_shards,
    read_run,
    remove_shards,
    remove_temporaries,
    run_state,
    start_over,
    write_run,
)
from virnucpro.runs import Costs, Team, folder_lock, rare_garbage_collection
from virnucpro.scoring.calibration import Calibration, calibration_path
from virnucpro.scoring.engine import Engine, prefetched

CHUNKS_PER_SHARD = 10_000      # the default: bounds memory, and the work a resumed run redoes


MIN_REGION = 1                 # the default: every viral chunk is in a region, so every virus call has one


def default_min_length(chunk_length: int) -> int:
    """The default of ``--min-length``: half the chunk length (one to a few codons are no evidence)."""
    return chunk_length // 2


@dataclass(frozen=True)
class Request:
    """What a prediction run is asked to do: prediction.py's arguments, checked."""
    input_path: str
    chunk_length: int
    classifier_path: str
    pipeline: str
    output_dir: str
    min_length: int
    min_region: int
    min_score: float | None
    max_fdr: float | None
    device: str
    dna_model: str | None
    protein_model: str | None
    models_dir: str | None
    dna_batch_tokens: int
    protein_batch_tokens: int
    chunks_per_shard: int
    keep_intermediate: bool
    plot: bool
    overwrite: bool
    slurm_array: bool                     # the tasks of this SLURM array job share the run
    mate2: str | None = None              # paired reads: the second mates' file
    interleaved: bool = False             # paired reads: mates one after the other in the input
    dna_fp32: bool = False                # DNABERT-S in fp32 on a GPU too (default there: bf16)
    tf32: bool = False                    # float32 encoders on TF32 tensor cores on a GPU


def run(request: Request, classifier: torch.nn.Module, metadata: dict, calibration: Calibration | None,
        engines: dict | None = None, source: Input | None = None, progress=None) -> dict | None:
    """The run; its counts, or None when this process did not assemble (the run
    was complete, or another process of the team assembles). A cohort passes its ``engines`` (the models
    loaded once, by encoders), each sample's ``source`` checked beforehand and its ``progress`` bar of frames."""
    check_writable(request.output_dir, "-o")
    team = Team.from_environment(request.slurm_array)
    if team.world > 1 and any(is_pipe(path) for path in (request.input_path, request.mate2) if path):
        raise InputError(f"{request.input_path}: under torchrun or in a SLURM array every process reads the "
                         "input; give a file, not a pipe")
    if team.array and request.overwrite:
        raise InputError(f"--overwrite in a SLURM array would make every task start over; remove "
                         f"{request.output_dir} or give another -o instead")
    lock = folder_lock(request.output_dir) if team.rank == 0 and not team.array else contextlib.nullcontext()
    checked = contextlib.nullcontext(source) if source else \
        run_input(request.input_path, request.mate2, request.interleaved, request.output_dir, request.chunk_length,
                  request.min_length, team.leads)
    with team, lock, checked as source, rare_garbage_collection():
        return _run(request, source, classifier, metadata, calibration, team, {} if engines is None else engines,
                    progress)


def settings_of(request: Request, input_identity: dict, encoders: Encoders, calibrated: bool) -> dict:
    """What the results depend on, by content; a resumed run must match it (a run begun on a GPU in half
    precision is not finished on a CPU in fp32)."""
    calibration = calibration_path(request.classifier_path)
    return {"input": input_identity, "precision": encoders.precision, "chunk_length": request.chunk_length,
            "min_length": request.min_length, "min_region": request.min_region, "min_score": request.min_score,
            "max_fdr": request.max_fdr,
            "calibration": {"path": os.path.abspath(calibration), "sha256": file_sha256(calibration)}
            if calibrated else None,
            "classifier": {"path": os.path.abspath(request.classifier_path),
                           "sha256": file_sha256(request.classifier_path)},
            "pipeline": request.pipeline, **encoders.identity(), "chunks_per_shard": request.chunks_per_shard}


def warn_on_precision_change(classifier_path: str, metadata: dict, scorer: Engine) -> None:
    """Warn when the classifier was trained on features of other encoder dtypes than this run's."""
    trained = metadata.get("encoder_precision")
    running = {"dna": model_precision(scorer.dna_encoder.model),
               "protein": model_precision(scorer.protein_encoder.model)}
    if trained and trained != running:
        logger.warning(
            f"{classifier_path}: trained on features of DNABERT-S in {trained['dna']} and the protein model in "
            f"{trained['protein']}; this run embeds in {running['dna']} and {running['protein']}, so scores may "
            "differ slightly from those of the training precision"
            + ("; --dna-fp32 runs DNABERT-S in float32" if trained["dna"] == "float32" != running["dna"] else ""))


def _run(request: Request, source: Input, classifier, metadata: dict, calibration: Calibration | None,
         team: Team, engines: dict, progress) -> dict | None:
    output_dir, chunk_length = request.output_dir, request.chunk_length
    device = team.device(request.device)
    costs = Costs(device)
    encoders = Encoders.choose(request.pipeline, device, request.dna_model, request.protein_model,
                               request.models_dir, request.dna_fp32, request.tf32)
    settings = settings_of(request, source.identity, encoders, calibration is not None)
    if team.leads:
        with team.holding(output_dir):
            state = run_state(output_dir, settings, request.overwrite)
            if team.array and state == "new":           # the first task to start sets the run up
                begin_run(request, settings)
    state, n_chunks = team.share((state, source.chunks) if team.leads else None)
    if state == "complete":
        if team.leads:
            logger.info(f"{output_dir}: this run is already complete (see its prediction_summary.tsv); "
                        "--overwrite runs it again")
        return None
    if team.leads:
        reads = plural(source.sequences // 2, "read pair") if source.paired else plural(source.sequences, "sequence")
        logger.info(f"{source.name}{f' and {source.mate2_name}' if source.mate2 else ''}: {reads}, "
                    f"{plural(n_chunks, f'{chunk_length}-bp chunk')}, {plural(source.frames, 'frame')} to score; "
                    f"{encoders.pipeline.name} pipeline on {device}"
                    + (f", task {team.rank + 1} of a SLURM array of {team.world}" if team.array else
                       f", {team.world} processes" if team.world > 1 else ""))
    if encoders not in engines:
        with costs.loading():
            engines[encoders] = Engine(*encoders.load(), classifier.to(device), request.dna_batch_tokens,
                                       request.protein_batch_tokens, encoders.pipeline.protein.name)
        warn_on_precision_change(request.classifier_path, metadata, engines[encoders])
    scorer = engines[encoders]
    if team.rank == 0 and not team.array:
        if state == "new":
            begin_run(request, settings)
        else:
            logger.info(f"resuming the run in {output_dir}")
    team.barrier()

    folders = []
    prepare = functools.partial(shards.prepare_shard, output_dir=output_dir, chunk_size=chunk_length,
                                min_length=request.min_length, scorer=scorer, owns=team.owns)
    numbered = enumerate(shards.shards(source, chunk_length, request.chunks_per_shard), start=1)
    on_gpu = device.type != "cpu"       # host work ahead and shard files behind, in background threads
    with progress_bar(progress, source, n_chunks, team) as (progress, in_frames), \
            shards.ShardWriter(background=on_gpu) as writer:
        for shard in prefetched(numbered, prepare, ahead=int(on_gpu)):
            source.check_unchanged()
            check_folder_kept(output_dir)
            if not shard.done:
                scores = shards.score_shard(shard, scorer, request.classifier_path)
                writer.write(shard, scores, scorer, request.keep_intermediate)
                costs.frames += len(shard.frames.ids)
            folders.append(shard.folder)
            progress.update(shards.frame_count(shard) if in_frames else shard.chunk_count)
    team.barrier()                          # every shard scored, by whichever process
    if team.array:
        with team.holding(output_dir):
            return assemble_when_all_scored(request, source, folders, calibration, settings, team, costs)
    return assemble(request, source, folders, calibration, settings, costs) if team.rank == 0 else None


@contextlib.contextmanager
def progress_bar(given, source: Input, n_chunks: int, team: Team):
    """``(bar, counts frames)``: the cohort's bar of frames, else this run's own (of frames alone, of chunks
    in a team, where a process sees only its own shards' frames)."""
    from tqdm import tqdm

    if given is not None:
        yield given, True
        return
    in_frames = team.world == 1
    with tqdm(total=source.frames if in_frames else n_chunks, desc="frames" if in_frames else "chunks",
              unit="frame" if in_frames else "chunk", disable=not team.leads) as bar:
        yield bar, in_frames


def check_folder_kept(output_dir: str) -> None:
    """Stop at once when the output folder, or its shards' folder, was deleted or moved during the run."""
    if not own_shards(output_dir):
        raise deleted_during_the_run(output_dir)


def begin_run(request: Request, settings: dict) -> None:
    start_over(request.output_dir, [path for path in (request.input_path, request.mate2) if path], request.plot)
    write_run(request.output_dir, settings, "running")


def assemble(request: Request, source: Input, folders: list[str], calibration: Calibration | None,
             settings: dict, costs: Costs) -> dict:
    """The final files from every shard; the run is complete, its costs recorded (and its rate, for the
    estimates of later runs on this device)."""
    remove_temporaries(request.output_dir)
    calls = assembly.Calls.of(folders, calibration, request.min_score, request.max_fdr)
    counts = assembly.write_outputs(request.output_dir, source, folders, calls, request.chunk_length,
                                    request.min_region, request.plot)
    if not request.keep_intermediate:
        remove_shards(request.output_dir)
    counts["costs"] = costs.record()
    write_run(request.output_dir, settings, "complete", counts)
    record_rate(request.models_dir, counts["costs"], request.pipeline)
    return counts


def assemble_when_all_scored(request: Request, source: Input, folders: list[str], calibration: Calibration | None,
                             settings: dict, team: Team, costs: Costs) -> dict | None:
    """An array task, holding the folder: assemble when no shard waits for another task any more."""
    run = read_run(request.output_dir)
    complete = run is not None and run.get("status") == "complete"
    waiting = 0 if complete else sum(not shards.is_done(folder) for folder in folders)
    if not complete and waiting == 0:
        return assemble(request, source, folders, calibration, settings, costs)
    logger.info(f"SLURM array task {team.rank + 1} of {team.world}: its shards are scored; "
                + ("another task has assembled the results" if complete else
                   f"{waiting} of {len(folders)} shards wait for other tasks, and the last task to finish "
                   "assembles the results"))
    return None
