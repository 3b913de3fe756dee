"""The decision rules, as pure functions over scores (the published ones, and what this tool adds).

- a frame is viral when its viral score beats its non-viral one (``others`` on an exact tie, as published);
- a chunk is viral when its best viral score is at least its best non-viral score, over its frames;
- a sequence is viral when at least half of its scored chunks are; one without a scored chunk says why;
  so is a read pair, from both mates' chunks;
- with a calibration, a viral call whose probability is under ``--min-score`` or whose FDR is over
  ``--max-fdr`` becomes ``below_threshold``;
- a viral region is a run of viral chunks along a sequence, gaps of ``max_gap`` chunks bridged.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

NUM_CLASSES = 2
CLASS_NAMES = {0: "others", 1: "virus"}      # the classifier's outputs, by index


def frame_is_viral(probabilities: np.ndarray) -> np.ndarray:
    """Per frame (rows of ``[others, virus]`` probabilities): viral when ``virus > others``."""
    probabilities = np.asarray(probabilities)
    return probabilities[:, 1] > probabilities[:, 0]


def frame_classes(probabilities: np.ndarray) -> np.ndarray:
    """The published frame class names, ``virus`` or ``others``, per frame."""
    return np.where(frame_is_viral(probabilities), CLASS_NAMES[1], CLASS_NAMES[0])


def chunk_is_viral(best_virus: np.ndarray, best_others: np.ndarray) -> np.ndarray:
    """Per chunk: viral when its best viral score is at least its best non-viral score (a tie is viral)."""
    return best_virus >= best_others


def sequence_calls(chunks: np.ndarray, without_frames: np.ndarray, scored: np.ndarray,
                   viral: np.ndarray) -> np.ndarray:
    """Per sequence, from its counts of chunks, chunks without a stop-free frame, scored and viral chunks:
    ``virus`` when at least half of its scored chunks are viral, else ``others``; without a scored chunk,
    ``no_frames`` (no chunk has a stop-free frame) or ``not_scored`` (every frame failed to embed)."""
    call = np.where(2 * viral >= scored, "virus", "others").astype(object)
    unscored = scored == 0
    call[unscored] = np.where(without_frames == chunks, "no_frames", "not_scored")[unscored]
    return call


def pair_call(scored: int, viral: int, first: str, second: str) -> str:
    """The call of a read pair, from both mates' chunks by the sequence rule: ``virus`` when at least half
    of its scored chunks are viral, unless no mate is a virus call any more (then a threshold took the call:
    ``below_threshold``); without a scored chunk, the mates' reasons (``too_short+no_frames``, or one when
    they agree)."""
    if not scored:
        return first if first == second else f"{first}+{second}"
    if 2 * viral < scored:
        return "others"
    return "virus" if "virus" in (first, second) else "below_threshold"


def thresholded_call(call: str, probability: float, fdr: float | None, min_score: float | None,
                     max_fdr: float | None) -> str:
    """A ``virus`` call that misses ``min_score`` (its calibrated probability) or ``max_fdr`` becomes
    ``below_threshold``; other calls stay."""
    missed = call == "virus" and ((min_score is not None and probability < min_score)
                                  or (max_fdr is not None and fdr is not None and fdr > max_fdr))
    return "below_threshold" if missed else call


@dataclass(frozen=True)
class ViralRegion:
    """A stretch of a sequence called viral: 1-based inclusive coordinates."""
    start: int
    end: int
    chunks: int
    mean_score: float
    max_score: float

    @property
    def length(self) -> int:
        return self.end - self.start + 1


def viral_regions(chunks: Sequence[tuple[int, int, float | None, bool]], min_length: int = 0,
                  max_gap: int = 1) -> list[ViralRegion]:
    """The viral regions along one sequence from its chunks, in order, as
    ``(start (0-based), end, best viral score or None, viral)``: runs of viral
    chunks, bridging gaps of at most ``max_gap`` chunks (not viral, or without
    a scored frame); a region runs from its first viral chunk's start to its
    last one's end, its scores are those of the scored chunks it spans.
    Regions shorter than ``min_length`` bp are left out."""
    runs: list[list[int]] = []
    for k in (k for k, chunk in enumerate(chunks) if chunk[3]):
        if runs and k - runs[-1][-1] - 1 <= max_gap:
            runs[-1].append(k)
        else:
            runs.append([k])
    regions = []
    for run in runs:
        spanned = chunks[run[0]:run[-1] + 1]
        scores = [chunk[2] for chunk in spanned if chunk[2] is not None]
        region = ViralRegion(spanned[0][0] + 1, max(chunk[1] for chunk in spanned), len(spanned),
                             float(np.mean(scores)), float(max(scores)))
        if region.length >= min_length:
            regions.append(region)
    return regions
