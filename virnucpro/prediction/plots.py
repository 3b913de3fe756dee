"""Plots a user opens: chunk scores along sequences (prediction), ROC curves and reliability (evaluation)."""
from __future__ import annotations

from virnucpro.files import atomic_write
from virnucpro.scoring.calls import ViralRegion


def literal(text: str) -> str:
    """Text matplotlib draws as it is: a ``$`` in a sequence id would start mathtext."""
    return text.replace("$", r"\$")


def panel_label(call: str, best: str) -> str:
    """A panel's title on the right: the sequence's call and best viral score (``NA``: none)."""
    return call if best == "NA" else f"{call}, best viral score {float(best):.3f}"


def plot_chunk_scores(sequences: list[tuple[str, int, list[tuple[int, int, float | None, bool]]]], out_png,
                      chunk_size: int, regions: list[list[ViralRegion]] | None = None, title: str = "",
                      labels: list[str] | None = None) -> None:
    """One panel per sequence, spanning its length: each chunk drawn at its
    position with its best viral score, red when the chunk is called viral,
    light grey along the bottom when it has no scored frame (the published
    drew_fig.py, with real coordinates), and each sequence's viral regions
    shaded. ``sequences`` holds ``(sequence id, length, [(start, end, best
    viral score or None, viral)])``; ``labels`` (its call and best score, say)
    is written at the right of each panel's title, ``title`` above them all."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(nrows=len(sequences), ncols=1, figsize=(14, 1.9 * len(sequences)),
                                squeeze=False)
    for number, (axis, (sequence_id, length, chunks)) in enumerate(zip(axes[:, 0], sequences)):
        for region in (regions[number] if regions else ()):
            axis.axvspan(region.start - 1, region.end, color="mistyrose", zorder=0)
        for start, end, score, viral in chunks:
            if score is None:
                axis.plot([start, end], [0, 0], color="lightgray", linewidth=5, solid_capstyle="butt")
            else:
                axis.plot([start, end], [score, score], color="red" if viral else "darkblue", linewidth=2.5)
        axis.axhline(0.5, color="lightgray", linewidth=0.8, zorder=0)
        axis.set_title(literal(sequence_id), fontsize=11, loc="left")
        if labels:
            axis.set_title(literal(labels[number]), fontsize=10, loc="right")
        axis.set_xlim(0, length)
        axis.set_ylim(-0.05, 1.05)
        axis.set_ylabel("viral score")
        axis.spines[["top", "right"]].set_visible(False)
    axes[-1, 0].set_xlabel(f"position (bp); {chunk_size}-bp chunks: red viral, blue not viral, "
                           "grey no stop-free frame; shaded: viral regions")
    height = figure.get_figheight()
    if title:           # in inches from the top, above the panels, whatever the figure's height
        figure.suptitle(title, fontsize=11, y=1 - 0.08 / height, va="top")
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.3 / height if title else 1))
    with atomic_write(out_png, "wb") as handle:
        figure.savefig(handle, format="png", dpi=110)
    plt.close(figure)


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
