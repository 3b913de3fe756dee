#!/usr/bin/env python3
"""Extract the training features: DNABERT-S + FastESM2_650, merged and labelled.

    python features_extract.py [--data-dir data]

The published flow, made robust:
  1. find the identified_nucleotide.fa / identified_protein.fa pairs that
     scripts/make_train_dataset.py wrote under the data folder;
  2. split each into files of --sequences-per-file frames (10,000 as published:
     <name>.identified_nucleotide/output_N.fa, and the same for proteins); only
     full files are used, so a genome of 25,000 frames gives two and its last
     5,000 frames are left out, and a small data set needs a smaller value;
  3. take every full viral file, and a host sample balanced over the seven host
     categories (vertebrate, protozoa, plant, invertebrate, fungi, bacteria,
     archaea): ceil(n_viral / 7) files per category, then sampled down to
     n_viral files (seed 42);
  4. extract DNABERT-S and protein features of each file (models loaded once)
     and merge them into <merge-dir>/<name>_merged/output_N_merged.pt with the
     label (viral 1, host 0);
  5. check every merged file of this run (2048-d, finite, unique ids, labels).

A file's category is the first word of its name, as scripts/download_data.py
names them: viral, or a host category (vertebrate_* counts as vertebrate);
one's own data is named so too (viral.myphages.identified_nucleotide.fa).

A re-run skips finished files (every file is written atomically); failed
sequences are logged to extraction_failures.log and counted. The merge folder's
extraction.json records what the features depend on (pipeline, the models by
snapshot commit or by their files, split size, seed): a re-run with anything
different is refused, naming it, unless --restart redoes this selection.

Several GPUs or nodes: run the same command under torchrun or accelerate
launch, or as a SLURM array with --slurm-array; each process takes files i,
i+N, ... of the same selection by its rank (RANK/WORLD_SIZE, or
SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT) and uses GPU LOCAL_RANK.
"""
from __future__ import annotations

import os

import units
from virnucpro.commands import options
from virnucpro.commands.cli import at_least, run_cli
from virnucpro.files import check_writable
from virnucpro.log import logger, plural
from virnucpro.models.features import FAILURE_LOG, load_merged_file
from virnucpro.models.loaders import PIPELINES, Encoders, Pipeline
from virnucpro.runs import Team, folder_lock
from virnucpro.scoring import engine
from virnucpro.scoring.engine import prefetched
from virnucpro.training import selection


def parse_args(argv):
    parser = options.parser(__doc__)
    options.data_dir(parser, "folder holding the identified_* files")
    options.merge_dirs(parser)
    options.pipeline(parser)
    options.device(parser)
    options.language_models(parser)
    options.models_dir(parser)
    options.encoder_settings(parser)
    parser.add_argument("--sequences-per-file", type=at_least(1), default=10000,
                        help="frames per split file; only full files are used (default %(default)s, as published)")
    parser.add_argument("--seed", type=int, default=42, help="host sampling seed (default 42, as published)")
    parser.add_argument("--slurm-array", action="store_true",
                        help="share the selection among the tasks of the SLURM array job this is a task of: task "
                             "i takes files i, i+N, ...")
    parser.add_argument("--restart", action="store_true",
                        help="extract this selection again, replacing features made with other settings")
    args = parser.parse_args(argv)
    options.merge_dir_defaults(args)
    return args


def extract_file(split: selection.SplitFile, prepared: tuple, merged: str, models, pipeline: Pipeline, args) -> int:
    """Features of one split file (its ``prepared`` tokens), merged; returns the number of failed sequences."""
    (dna_model, dna_tokenizer), (protein_model, protein_tokenizer) = models
    dna_file, protein_file = selection.feature_files(split, pipeline.name)
    dna = units.extract_DNABERT_S(split.nucleotide, dna_file, model=dna_model, tokenizer=dna_tokenizer,
                                  toks_per_batch=args.dna_batch_tokens, prepared=prepared[0])
    proteins = units.extract_protein(pipeline, split.protein, protein_file, protein_model, protein_tokenizer,
                                     toks_per_batch=args.protein_batch_tokens, prepared=prepared[1])
    units.merge_data(dna_file, protein_file, merged, data_type=split.label, protein_dim=pipeline.protein.dim,
                     chunk_length=split.chunk_length)
    return split.sequences - len(set(dna["nucleotide"]) & set(proteins["proteins"]))


def extract_share(args, mine: list[selection.SplitFile], team: Team):
    """Extract and merge the files of this process not merged yet (all of
    them with --restart); ``(files done now, {split file: its failed sequences})``."""
    from tqdm import tqdm

    todo = [split for split in mine if args.restart or not os.path.exists(split.merged(args.merge_dir))]
    if not todo:
        return todo, {}
    encoders = Encoders.choose(args.pipeline, team.device(args.device), args.dna_model, args.protein_model,
                               args.models_dir, args.dna_fp32, args.tf32)
    settings = selection.extraction_settings(encoders, args.sequences_per_file, args.seed)
    selection.check_resume(args.merge_dir, settings, args.restart, mine)
    models = encoders.load()
    tokenizing = (engine.dna_tokenizing(models[0][1]), engine.protein_tokenizing(models[1][1]))

    def prepare(split):              # host work: on a GPU, the next file's, while the device embeds this one
        return split, (engine.file_tokens(split.nucleotide, "dna", tokenizing[0]),
                       engine.file_tokens(split.protein, "protein", tokenizing[1]))

    failed = {}
    prepared_files = prefetched(todo, prepare, ahead=int(encoders.device.type != "cpu"))
    for split, prepared in tqdm(prepared_files, total=len(todo), desc="files", unit="file"):
        failed[split.nucleotide] = extract_file(split, prepared, split.merged(args.merge_dir), models,
                                                encoders.pipeline, args)
    return todo, {path: count for path, count in failed.items() if count}


def main(argv=None):
    args = parse_args(argv)
    check_writable(args.merge_dir, "--merge-dir", "the features")
    team = Team.from_environment(args.slurm_array)
    pairs = selection.discover(args.data_dir)
    selected = selection.select_files(selection.full_split_files(pairs, args.sequences_per_file), args.seed)
    mine = team.share_of(selected)
    n_viral = sum(split.label == "viral" for split in selected)
    logger.info(f"{plural(n_viral, 'viral file')} and {plural(len(selected) - n_viral, 'host file')} selected; process {team.rank + 1} of "
                f"{team.world} takes {len(mine)}")
    with folder_lock(args.merge_dir, "--merge-dir", name=f".virnucpro.rank{team.rank}.lock"):
        todo, failed = extract_share(args, mine, team)

    rows = {"viral": 0, "host": 0}
    for split in mine:
        checked = load_merged_file(split.merged(args.merge_dir), PIPELINES[args.pipeline].input_dim)
        rows["viral" if checked["label"] == 1 else "host"] += len(checked["ids"])
    failures = sum(failed.values())
    logger.info(f"done: {len(todo)} files merged now, {len(mine) - len(todo)} before; {rows['viral']} viral "
                f"and {rows['host']} host rows checked in {args.merge_dir}; {plural(failures, 'sequence')} failed"
                + (f" (listed in {FAILURE_LOG} beside their split files, e.g. "
                   f"{os.path.join(os.path.dirname(next(iter(failed))), FAILURE_LOG)})" if failures else ""))
    return 0


if __name__ == "__main__":
    run_cli(main)
