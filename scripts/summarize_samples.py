#!/usr/bin/env python3
"""Write the table across the samples of a sample sheet from their finished runs, and MultiQC's files.

    python scripts/summarize_samples.py --samples samples.csv -o results

prediction.py --samples writes this table itself after its runs. This step is for samples run as jobs of
their own, each with prediction.py <input> ... -o <output>/<sample> (the Snakemake workflow, or a scheduler's
array): it reads each sample's run in <output>/<sample>/ and writes, in <output>/:

  samples_summary.tsv   per sample: sequences (reads, pairs or contigs), scored, calls, the reasons others
                        were not scored, bases in viral regions, the viral fraction with its 95% Wilson
                        interval, and the fraction corrected for the classifier's errors when it carries an
                        evaluation record (docs/prediction.md#cohorts); samples_summary.json alike
  virnucpro_*_mqc.tsv   MultiQC's custom content: multiqc <output> adds them to its report

Every sample's run must be finished, and all made with one classifier, chunk length and thresholds; the
folder holds the samples' folders and the cohort's files alone, as prediction.py --samples keeps it.
"""
from __future__ import annotations

from virnucpro.commands import options
from virnucpro.commands.cli import run_cli
from virnucpro.files import check_writable
from virnucpro.log import logger, plural
from virnucpro.prediction import cohort, outputs


def parse_args(argv):
    parser = options.parser(__doc__)
    parser.add_argument("--samples", metavar="SHEET", required=True,
                        help="the sample sheet the samples were run from (sample,fastq_1,fastq_2,fasta)")
    options.output_dir(parser, "the samples' runs, one folder each, and the table",
                       default_help="SHEET without .csv, then _merged, as prediction.py --samples")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    samples = cohort.read_sheet(args.samples)
    output_dir = args.output_dir or outputs.default_output_dir(args.samples)
    check_writable(output_dir, "-o")
    cohort.check_folder(output_dir)
    rows = cohort.summarize(output_dir, samples)
    logger.info(f"{plural(len(rows), 'sample')}: {cohort.SUMMARY_FILE} and MultiQC's files in {output_dir}/")
    return 0


if __name__ == "__main__":
    run_cli(main)
