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
import csv
import json
import os

import numpy as np

import units

PLOTTED_SEQUENCES = 20


def chunk_scores(results_file: str) -> dict[str, dict[int, tuple[float, float]]]:
    """sequence id -> chunk number -> (best score1, best score2), in file order."""
    sequences: dict[str, dict[int, tuple[float, float]]] = {}
    try:
        with open(results_file) as handle:
            reader = csv.DictReader(handle, delimiter="\t")
            if reader.fieldnames != ["Sequence_ID", "Prediction", "score1", "score2"]:
                raise units.InputError(f"{results_file}: not a prediction_results.txt file "
                                       "(expected the columns Sequence_ID, Prediction, score1, score2)")
            for row in reader:
                chunk_id = row["Sequence_ID"][:-2]
                if "_chunk_" not in chunk_id:
                    raise units.InputError(f"{results_file}: {row['Sequence_ID']} is not a <sequence>_chunk_<k> "
                                           "frame id")
                sequence_id, number = chunk_id.rsplit("_chunk_", 1)
                scores = (np.float32(row["score1"]), np.float32(row["score2"]))
                chunks = sequences.setdefault(sequence_id, {})
                previous = chunks.get(int(number), scores)
                chunks[int(number)] = (max(previous[0], scores[0]), max(previous[1], scores[1]))
    except FileNotFoundError:
        raise units.InputError(f"{results_file}: no such file") from None
    return sequences


def sequence_lengths(folder: str) -> dict[str, int]:
    path = os.path.join(folder, "prediction_summary.tsv")
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        return {row["Sequence_ID"]: int(row["Length"]) for row in csv.DictReader(handle, delimiter="\t")}


def chunk_length(folder: str, given: int | None) -> int:
    if given:
        return given
    run_file = os.path.join(folder, "run.json")
    if os.path.exists(run_file):
        with open(run_file) as handle:
            run = json.load(handle)
        if isinstance(run, dict) and isinstance(run.get("settings"), dict) and "chunk_length" in run["settings"]:
            return run["settings"]["chunk_length"]
    return 500


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", help="prediction_results.txt, or the folder holding it")
    parser.add_argument("--length", type=int, help="chunk length (default: from run.json beside the results, else 500)")
    parser.add_argument("-o", "--output", help="PNG to write (default: prediction.png beside the results)")
    args = parser.parse_args(argv)
    results = os.path.join(args.results, "prediction_results.txt") if os.path.isdir(args.results) else args.results
    folder = os.path.dirname(os.path.abspath(results))
    size = chunk_length(folder, args.length)
    lengths = sequence_lengths(folder)

    panels = []
    for sequence_id, chunks in list(chunk_scores(results).items())[:PLOTTED_SEQUENCES]:
        starts = units.chunk_starts(lengths[sequence_id], size) if sequence_id in lengths else None
        spans = []
        for number, (others, virus) in sorted(chunks.items()):
            start = starts[number - 1] if starts else (number - 1) * size
            end = min(start + size, lengths[sequence_id]) if starts else start + size
            spans.append((start, end, float(virus), bool(virus >= others)))
        panels.append((sequence_id, lengths.get(sequence_id, max(end for _, end, _, _ in spans)), spans))
    if not panels:
        raise units.InputError(f"{results}: no scored frames to plot")
    output = args.output or os.path.join(folder, "prediction.png")
    units.plot_chunk_scores(panels, output, size)
    units.logger.info(f"plotted {len(panels)} sequences to {output}")
    return 0


if __name__ == "__main__":
    units.run_cli(main)
