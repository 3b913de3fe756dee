"""Plots a user opens: chunk scores along sequences (prediction), ROC curves and reliability (evaluation)."""
from __future__ import annotations

import warnings

from virnucpro.files import atomic_write
from virnucpro.log import warn_once
from virnucpro.scoring.calls import ViralRegion


def literal(text: str) -> str:
    """Text matplotlib draws as it is: a ``$`` in a sequence id would start mathtext."""
    return text.replace("$", r"\$")


def panel_label(call: str, best: str) -> str:
    """A panel's title on the right: the sequence's call and best viral score (``NA``: none)."""
    return call if best == "NA" else f"{call}, best viral score {float(best):.3f}"


TITLE_CHARACTERS = 100        # a panel's title: the sequence's header (id and description), cut to this


def plot_chunk_scores(sequences: list[tuple[str, int, list[tuple]]], out_png, chunk_size: int,
                      regions: list[list[ViralRegion]] | None = None, title: str = "",
                      labels: list[str] | None = None) -> None:
    """One panel per sequence, spanning its length, drawing what decides each call: every chunk at its
    position and at its margin, the best viral score of its frames less their best non-viral score (the
    chunk is viral at 0 or above: red, else blue); a dot at each chunk's middle keeps chunks visible on a
    chromosome-long panel; chunks without a scored frame are a grey bar along the bottom; viral regions
    shaded. ``sequences`` holds ``(header, length, [(start, end, best viral score or None, viral, margin or
    None)])``; ``labels`` (its call and best score, say) goes at the right of each panel's title, ``title``
    above them all. Characters the fonts lack are drawn as boxes, said once."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(nrows=len(sequences), ncols=1, figsize=(14, 1.9 * len(sequences)),
                                squeeze=False)
    unscored_drawn = False
    for number, (axis, (header, length, chunks)) in enumerate(zip(axes[:, 0], sequences)):
        for region in (regions[number] if regions else ()):
            axis.axvspan(region.start - 1, region.end, color="mistyrose", zorder=0)
        for start, end, _, viral, margin in chunks:
            if margin is None:
                axis.plot([start, end], [-1, -1], color="lightgray", linewidth=5, solid_capstyle="butt")
                unscored_drawn = True
                continue
            color = "red" if viral else "darkblue"
            axis.plot([start, end], [margin, margin], color=color, linewidth=2.5)
            axis.plot([(start + end) / 2], [margin], marker="o", markersize=2.5, color=color)
        axis.axhline(0, color="gray", linewidth=0.8, zorder=0)
        axis.set_title(literal(shortened(header)), fontsize=10, loc="left")
        if labels:
            axis.set_title(literal(labels[number]), fontsize=10, loc="right")
        axis.set_xlim(0, length)
        axis.set_ylim(-1.08, 1.08)
        axis.set_ylabel("viral - non-viral")
        axis.spines[["top", "right"]].set_visible(False)
    axes[-1, 0].set_xlabel(f"position (bp); each {chunk_size}-bp chunk at its best viral less its best non-viral "
                           "frame score: red at 0 or above, called viral; blue below, not viral"
                           + ("; grey: no stop-free frame" if unscored_drawn else "") + "; shaded: viral regions")
    height = figure.get_figheight()
    if title:           # in inches from the top, above the panels, whatever the figure's height
        figure.suptitle(title, fontsize=11, y=1 - 0.08 / height, va="top")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figure.tight_layout(rect=(0, 0, 1, 1 - 0.3 / height if title else 1))
        with atomic_write(out_png, "wb") as handle:
            figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)
    if any("missing from font" in str(warning.message) for warning in caught):
        warn_once(f"{out_png}: some characters of the sequence names are not in the plot's fonts and are drawn "
                  "as boxes")


def shortened(header: str) -> str:
    return header if len(header) <= TITLE_CHARACTERS else header[:TITLE_CHARACTERS - 3] + "..."


def reliability_png(calibrated, path: str) -> None:
    """Reliability curves before and after calibration, chunks and sequences, each calibrated classifier."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(8.4, 4.2), squeeze=False)
    for axis, level in zip(axes[0], ("chunks", "sequences")):
        for number, result in enumerate(calibrated):
            for stage, style in (("before", "--"), ("after", "-")):
                points = result.reliability[level][stage]
                axis.plot([p[0] for p in points], [p[1] for p in points], style, marker="o", markersize=3,
                          color=f"C{number}", label=f"{result.classifier} {stage}")
        axis.plot([0, 1], [0, 1], color="lightgray", linestyle=":")
        axis.set_title(f"{level.capitalize()}, test set", fontsize=10)
        axis.set_xlabel("predicted probability of being viral")
        axis.set_ylabel("share viral")
        axis.legend(loc="upper left", fontsize=8)
    save_png(figure, path)


def save_png(figure, path: str) -> None:
    """Write a figure as a PNG, atomically, and close it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    with atomic_write(path, "wb") as handle:
        figure.savefig(handle, format="png", dpi=100)
    plt.close(figure)


def roc_png(levels: dict, titles: dict[str, str], path: str) -> None:
    """ROC curves of each classifier, one panel per level."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import roc_curve

    figure, axes = plt.subplots(1, len(levels), figsize=(4.2 * len(levels), 4.2), squeeze=False)
    for axis, (name, level) in zip(axes[0], levels.items()):
        if len(set(level.labels.tolist())) == 2:
            for classifier, scores in level.scores.items():
                fpr, tpr, _ = roc_curve(level.labels, scores)
                axis.plot(fpr, tpr, label=classifier)
        axis.plot([0, 1], [0, 1], color="lightgray", linestyle="--")
        axis.set_title(titles[name].split(" (")[0], fontsize=10)
        axis.set_xlabel("false positive rate")
        axis.set_ylabel("true positive rate")
        axis.legend(loc="lower right", fontsize=8)
    save_png(figure, path)
