#!/usr/bin/env python3
"""Plot chunk scores along sequences from an existing prediction result.

    python scripts/plot_predictions.py reads_merged/prediction_results.txt

Replaces the published drew_fig.py. Each chunk is drawn at its position with
its best viral score, red when the chunk is called viral (best viral score at
least its best non-viral score), for the first sequences of the file. Chunk
positions are exact when prediction_summary.tsv (sequence lengths) lies beside
the results; otherwise chunk k is drawn at (k-1)*length as the published
script did, and chunks without a scored frame are not known. Works on results
of the published tool too.
"""
from __future__ import annotations

import argparse
import os

from virnucpro.commands.cli import run_cli
from virnucpro.errors import InputError
from virnucpro.files import check_writable_file
from virnucpro.log import logger
from virnucpro.prediction import outputs
from virnucpro.prediction.plots import panel_label, plot_chunk_scores
from virnucpro.scoring.calls import chunk_is_viral
from virnucpro.sequences.chunks import chunk_starts


def chunk_length(folder: str, given: int | None) -> int:
    """--length, else the chunk length run.json records beside the results, else 500."""
    if given:
        return given
    run = outputs.read_run(folder)
    return run["settings"].get("chunk_length", 500) if run else 500


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="prediction_results.txt, or the folder holding it")
    parser.add_argument("--length", type=int, choices=(300, 500),
                        help="chunk length (default: from run.json beside the results, else 500)")
    parser.add_argument("--output", help="PNG to write (default: prediction.png beside the results)")
    args = parser.parse_args(argv)
    results = os.path.join(args.results, outputs.FRAMES_FILE) if os.path.isdir(args.results) else args.results
    folder = os.path.dirname(os.path.abspath(results))
    size = chunk_length(folder, args.length)
    summary = outputs.summary_rows(folder)
    lengths = {sequence_id: int(row["Length"]) for sequence_id, row in summary.items()}

    panels, labels = [], []
    for sequence_id, chunks in list(outputs.best_chunk_scores(results).items())[:outputs.PLOTTED_SEQUENCES]:
        starts = chunk_starts(lengths[sequence_id], size) if sequence_id in lengths else None
        spans = []
        for number, (others, virus) in sorted(chunks.items()):
            start = starts[number - 1] if starts else (number - 1) * size
            end = min(start + size, lengths[sequence_id]) if starts else start + size
            spans.append((start, end, float(virus), bool(chunk_is_viral(virus, others))))
        panels.append((sequence_id, lengths.get(sequence_id, max(end for _, end, _, _ in spans)), spans))
        row = summary.get(sequence_id)
        labels.append(panel_label(row["Call"], row["Best_viral_score"]) if row else "")
    if not panels:
        raise InputError(f"{results}: no scored frames to plot")
    output = args.output or os.path.join(folder, outputs.PLOT_FILE)
    check_writable_file(output, "-o", "the plot")
    plot_chunk_scores(panels, output, size, labels=labels)
    logger.info(f"plotted {len(panels)} sequences to {output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
