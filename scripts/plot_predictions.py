#!/usr/bin/env python3
"""Plot chunk scores along sequences from an existing prediction result.

    python scripts/plot_predictions.py reads_merged/prediction_results.txt

Replaces the published drew_fig.py, drawing what decides each call: every
chunk at its best viral frame score less its best non-viral one, red (called
viral) at 0 or above, blue below, for the sequences with the highest viral
scores (as prediction.py --plot draws them). Chunk positions are exact, and
chunks without a scored frame are drawn as grey bars, when
prediction_summary.tsv (sequence lengths and chunks) lies beside the results;
otherwise chunk k is drawn at (k-1)*length as the published script did, and
chunks without a scored frame are not known. Works on results of the
published tool too.
"""
from __future__ import annotations

import os

from virnucpro.commands import options
from virnucpro.commands.cli import run_cli
from virnucpro.errors import InputError
from virnucpro.files import check_writable_file
from virnucpro.log import logger, plural
from virnucpro.prediction import outputs
from virnucpro.prediction.plots import panel_label, plot_chunk_scores
from virnucpro.scoring.calls import chunk_is_viral
from virnucpro.sequences.chunks import chunk_starts
from virnucpro.sequences.fasta import read_fasta


def chunk_length(folder: str, given: int | None) -> int:
    """--length, else the chunk length run.json records beside the results, else 500."""
    if given:
        return given
    run = outputs.read_run(folder)
    return run["settings"].get("chunk_length", 500) if run else 500


def chunk_track(chunks: dict[int, tuple], length: int | None, size: int) -> list[tuple]:
    """``(start, end, best viral score or None, viral, margin or None)`` of each chunk of a sequence: at its
    real place, and with the chunks no frame of which was scored, when its length is known."""
    starts = chunk_starts(length, size) if length else [(number - 1) * size for number in range(1, max(chunks) + 1)]
    track = []
    for number, start in enumerate(starts, start=1):
        end = min(start + size, length) if length else start + size
        if number in chunks:
            others, virus = chunks[number]
            track.append((start, end, float(virus), bool(chunk_is_viral(virus, others)), float(virus - others)))
        elif length:
            track.append((start, end, None, False, None))
    return track


def main(argv=None):
    parser = options.parser(__doc__)
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

    viral = os.path.join(folder, outputs.VIRAL_FASTA)            # the viral sequences' whole headers
    headers = {record.id: record.title for record in read_fasta(viral, alphabet=None)} \
        if os.path.exists(viral) and os.path.getsize(viral) else {}
    scores = outputs.best_chunk_scores(results)
    best = {sequence_id: max(float(virus) for _, virus in chunks.values()) for sequence_id, chunks in scores.items()}
    shown = sorted(scores, key=lambda sequence_id: -best[sequence_id])[:outputs.PLOTTED_SEQUENCES]
    panels, labels = [], []
    for sequence_id in shown:
        track = chunk_track(scores[sequence_id], lengths.get(sequence_id), size)
        panels.append((headers.get(sequence_id, sequence_id), lengths.get(sequence_id, max(end for _, end, *_ in track)),
                       track))
        row = summary.get(sequence_id)
        labels.append(panel_label(row["Call"], row["Best_viral_score"]) if row else "")
    if not panels:
        raise InputError(f"{results}: no scored frames to plot")
    output = args.output or os.path.join(folder, outputs.PLOT_FILE)
    check_writable_file(output, "-o", "the plot")
    plot_chunk_scores(panels, output, size, labels=labels)
    logger.info(f"plotted {plural(len(panels), 'sequence')} to {output}")
    return 0


if __name__ == "__main__":
    run_cli(main)
