#!/usr/bin/env python3
"""Predict which sequences of a FASTA file are viral.

    python prediction.py input.fasta 500 [model_fastesm650_500.pth]

Each sequence is cut into chunks of the model's length (300 or 500 bp), every
stop-free frame of a chunk is embedded with DNABERT-S and the protein model
and scored by the classifier. A chunk is viral when its best viral score is
at least its best non-viral score.

Without a checkpoint, the classifier for the chunk length in the models folder
is used: the FastESM2_650 one installed by train_fastesm.py --install, else
the published ESM2-3B one (scripts/fetch_models.py fetches it and the models).

Input: FASTA or FASTQ, plain or compressed (gzip, bzip2, xz, zstd), or - for
standard input. Sequences shorter than --min-length are not scored (reported
as too_short); U is read as T. Paired reads: two mate files (--mate2 R2) or
one interleaved file (--interleaved); mates have the same id, or the same but
for /1 and /2, and each is scored as a read named <pair>/1 or <pair>/2.

Outputs, in the output folder (default: <input without extension>_merged/):
  prediction_results.txt               per frame: Sequence_ID, Prediction, score1, score2
  prediction_results_highestscore.csv  per chunk: Modified_ID, Is_Virus (tab-separated, as published),
                                       Viral_score (best viral score), Viral_probability
  prediction_summary.tsv               per input sequence: length, chunks, chunks without a
                                       stop-free frame, viral chunks, best viral score, call
                                       (virus, others, below_threshold, or why it was not
                                       scored: no_frames, not_scored, too_short, no_sequence),
                                       Viral_probability, FDR and the viral regions (start-end,...)
  prediction_pairs.tsv                 paired reads: per pair, both mates' calls and best viral
                                       scores, and the pair's call from both mates' chunks
  viral_regions.tsv                    per viral region: sequence, 1-based start and end, length,
                                       chunks, mean and max of the chunks' best viral scores
  viral_regions.bed                    the same regions as BED (0-based start), name seq|start-end,
                                       in input order (sort -k1,1 -k2,2n gives bedtools sort's)
  viral_regions.fna                    the regions' sequences, ids seq|start-end
  viral_sequences.fna                  the whole sequences called viral, with their descriptions
  prediction.png                       with --plot: chunk scores and viral regions along the
                                       sequences with the highest viral scores
  run.json                             the settings, the run's state, its counts and thresholds

A sequence is called viral when at least half of its scored chunks are; so
is a read pair, from its two mates' chunks.
With a calibrated classifier (scripts/evaluate_compare.py writes
<classifier>.calibration.json beside it), Viral_probability is the
probability of being viral learnt on labelled validation sequences, and FDR
is the expected share of false calls among the virus calls whose probability
is at least this one's; --min-score and --max-fdr then filter the virus calls.
Without one, both columns say "uncalibrated".

A viral region is a run of viral chunks along a sequence, gaps of one chunk
(not viral, or without a stop-free frame) bridged, from its first chunk's
start to its last chunk's end; every virus call has at least one (regions
shorter than --min-region, if given, are left out). A sequence viral end to
end is one region; a read shorter than the chunk length, its own.

The input is processed in shards of --chunks-per-shard chunks (a long record
spread over several), so memory stays flat as the number of records grows (the
longest record is held whole: about 3.5 bytes a base of it); each shard is
embedded and scored in memory, and on a GPU the next shard's frames and tokens
are prepared in a background thread meanwhile. An interrupted run, re-run with the same arguments, resumes
at the first unfinished shard and ends with the same outputs. A finished run
is not redone (--overwrite starts over); one run at a time writes into an
output folder.

Many samples: --samples SHEET in place of the input (CSV as nf-core takes it:
sample,fastq_1,fastq_2,fasta; paths relative to the sheet) runs each sample into
<output>/<sample>/ as a run of its own, the models loaded once, then writes
samples_summary.tsv (the calls and viral fraction of each sample, with its 95%
interval) and MultiQC's files; a sample that fails leaves the others to run.
--estimate prints the plan (sequences, chunks, frames, time) and scores nothing.

    python prediction.py --samples samples.csv 300 -o study

Several GPUs or machines: under torchrun (--nproc-per-node, --nnodes) or as
a SLURM array with --slurm-array (sbatch --array=0-7 for 8 tasks), process k
of N scores shards k+1, k+1+N, ...; the results are assembled once, by process
0 of torchrun or by the last array task to finish. An array job whose tasks
each run their own input needs nothing: each task is a run of its own.
"""
from __future__ import annotations

import os
import sys

import units
from virnucpro.commands import options
from virnucpro.commands.cli import at_least, fraction, run_cli
from virnucpro.errors import InputError
from virnucpro.log import logger, plural
from virnucpro.prediction import cohort, outputs, predict
from virnucpro.prediction.inputs import checked_files
from virnucpro.prediction.outputs import PLOTTED_SEQUENCES, UNCALIBRATED
from virnucpro.runs import Team
from virnucpro.scoring.calibration import calibration_path, load_calibration
from virnucpro.scoring.checkpoints import default_classifier


def parse_args(argv):
    argv = sys.argv[1:] if argv is None else list(argv)
    sheet = any(word == "--samples" or word.startswith("--samples=") for word in argv)
    parser = options.parser(__doc__)
    if not sheet:                       # a sample sheet takes the input's place
        parser.add_argument("input_fasta", help="FASTA or FASTQ file of reads or contigs (plain, gzip, bzip2, xz "
                                                "or zstd; - for standard input); or --samples SHEET instead")
    parser.add_argument("expect_length", type=int, choices=(300, 500), help="chunk length of the model: 300 or 500")
    parser.add_argument("model_path", nargs="?",
                        help="classifier checkpoint (.pth); default: the one installed in the models folder for "
                             "this chunk length (FastESM2_650 if installed, else the published ESM2-3B one)")
    parser.add_argument("--samples", metavar="SHEET",
                        help="a sample sheet in place of INPUT_FASTA (CSV as nf-core takes it: sample,fastq_1,"
                             "fastq_2,fasta; paths relative to the sheet): every sample a run of its own in "
                             "<output>/<sample>/, the models loaded once, then samples_summary.tsv and MultiQC's "
                             "files across them")
    parser.add_argument("--estimate", action="store_true",
                        help="read and check the input (every sample's) and print the plan: sequences, chunks, "
                             "frames, and the time at this device's last measured rate; score nothing")
    paired = parser.add_mutually_exclusive_group()
    paired.add_argument("--mate2", metavar="R2",
                        help="paired reads: the file of the second mates (input_fasta holds the first ones, in "
                             "the same order); each mate is scored as a read and prediction_pairs.tsv calls the "
                             "pairs")
    paired.add_argument("--interleaved", action="store_true",
                        help="paired reads: input_fasta holds each pair's mates one after the other")
    options.models_dir(parser)
    options.output_dir(parser, "the results", default_help="<input without extension>_merged")
    parser.add_argument("--min-length", type=at_least(1),
                        help="shortest sequence scored, in bp (default: half the chunk length, 150 or 250); "
                             "shorter ones are listed as too_short")
    parser.add_argument("--min-region", type=at_least(1), default=predict.MIN_REGION,
                        help="shortest viral region reported, in bp (default: %(default)s: every viral chunk is in "
                             "a region, so every virus call has one)")
    parser.add_argument("--min-score", type=fraction,
                        help="a sequence the chunk rule calls viral stays a virus call only when its calibrated "
                             "Viral_probability is at least this (0-1; needs a calibrated classifier); "
                             "else its call is below_threshold")
    parser.add_argument("--max-fdr", type=fraction,
                        help="keep as virus calls only those with an FDR of at most this (0-1; needs a calibrated "
                             "classifier), e.g. 0.05; the others are called below_threshold")
    parser.add_argument("--uncalibrated", action="store_true",
                        help="ignore the classifier's calibration: the raw scores only (evaluation uses this)")
    options.pipeline(parser, default=None)
    options.device(parser)
    options.language_models(parser)
    options.encoder_settings(parser)
    parser.add_argument("--chunks-per-shard", type=at_least(1), default=predict.CHUNKS_PER_SHARD,
                        help="chunks processed together; bounds memory and the work redone on resume "
                             "(default %(default)s)")
    parser.add_argument("--keep-intermediate", action="store_true",
                        help="keep each shard's tables, frame FASTA files and feature files (the formats of "
                             "features_extract.py) under <output>/shards/")
    parser.add_argument("--plot", action="store_true",
                        help=f"also draw prediction.png: chunk scores and viral regions along the {PLOTTED_SEQUENCES} "
                             "sequences with the highest viral scores")
    parser.add_argument("--slurm-array", action="store_true",
                        help="share this run among the tasks of the SLURM array job it is a task of (sbatch "
                             "--array=0-7 gives 8 tasks): each scores its part of the shards, the last to finish "
                             "assembles; without it every task is a run of its own")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over: redo a finished run, replace a run of other settings or the result "
                             "files of something else in the output folder")
    args = parser.parse_args(argv)
    if args.min_length is None:
        args.min_length = predict.default_min_length(args.expect_length)
    if args.uncalibrated and (args.min_score is not None or args.max_fdr is not None):
        parser.error("--min-score and --max-fdr filter on calibrated probabilities; leave out --uncalibrated")
    if sheet and (args.mate2 or args.interleaved or args.slurm_array):
        parser.error("a sample sheet gives each sample's mates (fastq_2) and runs in one process; leave out "
                     "--mate2, --interleaved and --slurm-array (many samples on a cluster: the Snakemake workflow, "
                     "docs/prediction.md#cohorts)")
    if not sheet:
        args.samples = None
    return args


def main(argv=None):
    args = parse_args(argv)
    samples = cohort.read_sheet(args.samples) if args.samples else None       # before any model loads
    if samples:
        cohort.check_folder(args.output_dir or outputs.default_output_dir(args.samples))
    if samples and Team.from_environment().world > 1:
        raise InputError(f"--samples {args.samples} under torchrun: a sample sheet runs in one process, sample "
                         "after sample; give each GPU samples of its own (the Snakemake workflow, or a part of the "
                         "sheet each), or run one large sample under torchrun")
    if args.model_path is None:
        args.model_path, pipeline, why = default_classifier(args.expect_length, args.models_dir)
        args.pipeline = args.pipeline or pipeline
        logger.info(f"classifier {args.model_path}, {args.pipeline} pipeline: {why}")
    classifier, metadata = units.load_checkpoint(args.model_path, args.pipeline, chunk_length=args.expect_length)
    calibration = None if args.uncalibrated else load_calibration(args.model_path)
    if calibration is None and (args.min_score is not None or args.max_fdr is not None):
        raise InputError(f"{args.model_path}: the classifier is not calibrated, so there is no probability for "
                         "--min-score or --max-fdr; calibrate it with scripts/evaluate_compare.py (it writes "
                         f"{os.path.basename(calibration_path(args.model_path))} beside the classifier)")
    if calibration is None and not args.uncalibrated:
        logger.info(f"{args.model_path}: not calibrated, so Viral_probability and FDR say '{UNCALIBRATED}' "
                    "(scripts/evaluate_compare.py calibrates a classifier it evaluates)")
    if args.estimate:
        sources, refused = cohort.checked_inputs(samples, args.expect_length, args.min_length) if samples else \
            ({args.input_fasta: checked_files(args.input_fasta, args.mate2, args.expect_length, args.min_length,
                                              args.interleaved)}, {})
        print(cohort.estimate(sources, args.expect_length, args.device, metadata["embedding_model"], args.models_dir))
        if refused:
            raise InputError(f"{plural(len(refused), 'sample')} of {len(samples)} refused: {', '.join(refused)} (each "
                             f"one's reason is above); the plan leaves {'it' if len(refused) == 1 else 'them'} out")
        return 0
    request = predict.Request(
        input_path=args.samples or args.input_fasta, chunk_length=args.expect_length,
        classifier_path=args.model_path, pipeline=metadata["embedding_model"],
        output_dir=args.output_dir or outputs.default_output_dir(args.samples or args.input_fasta),
        min_length=args.min_length, min_region=args.min_region, min_score=args.min_score, max_fdr=args.max_fdr,
        device=args.device, dna_model=args.dna_model, protein_model=args.protein_model, models_dir=args.models_dir,
        dna_batch_tokens=args.dna_batch_tokens, protein_batch_tokens=args.protein_batch_tokens,
        chunks_per_shard=args.chunks_per_shard, keep_intermediate=args.keep_intermediate, plot=args.plot,
        overwrite=args.overwrite, slurm_array=args.slurm_array, mate2=args.mate2, interleaved=args.interleaved,
        dna_fp32=args.dna_fp32, tf32=args.tf32)
    if samples:
        failed = cohort.run_samples(samples, request, classifier, metadata, calibration)
        logger.info(f"{plural(len(samples) - len(failed), 'sample')} done: {cohort.SUMMARY_FILE} and MultiQC's "
                    f"files in {request.output_dir}/")
        if failed:
            raise InputError(f"{plural(len(failed), 'sample')} of {len(samples)} failed: {', '.join(failed)} (each "
                             "one's reason is above); fix them and run the same command again: finished samples "
                             "are kept")
        return 0
    counts = predict.run(request, classifier, metadata, calibration)
    if counts is not None:
        logger.info(outputs.report(counts, args.min_length, request.output_dir))
    return 0


if __name__ == "__main__":
    run_cli(main)
