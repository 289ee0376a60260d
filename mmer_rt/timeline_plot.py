"""The timeline's chart: each emotion's probability over time above the speakers' segments, speech regions shaded.

matplotlib is an extra (``pip install 'mmer-rt[plot]'``), imported only when a chart is drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import MMERError
from .timeline import Timeline

PLOT_INSTALL_HINT = "--plot needs matplotlib: pip install 'mmer-rt[plot]'"


def plot_timeline(result: Timeline, out: str | Path, title: str | None = None) -> Path:
    """Draw ``result`` to ``out`` (PNG, or any format matplotlib infers from the suffix) and return the path."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # files only: no display is needed or wanted
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise MMERError(PLOT_INSTALL_HINT) from error

    speakers = list(dict.fromkeys(s.speaker for s in result.segments)) or [None]
    colours = {label: plt.get_cmap("tab10")(i) for i, label in enumerate(result.labels)}
    width = min(max(8.0, result.duration / 10.0), 40.0)
    figure, (top, bottom) = plt.subplots(
        2, 1, figsize=(width, 3.0 + 0.5 * len(speakers)), sharex=True,
        gridspec_kw={"height_ratios": [3, max(1, len(speakers))]},
    )
    for region in result.regions:
        for axis in (top, bottom):
            axis.axvspan(region.start, region.end, color="0.92", zorder=0, lw=0)

    for label in result.labels:
        # one step per segment, broken (NaN) between segments that do not touch, so silence draws no line
        times, values = [], []
        for segment in result.segments:
            if times and segment.start > times[-1] + 1e-6:
                times.append(times[-1])
                values.append(np.nan)
            start = max(segment.start, times[-1]) if times else segment.start  # an overlap: drawn from its end
            times += [start, segment.end]
            values += [segment.scores[label]] * 2
        top.plot(times, values, color=colours[label], lw=1.2, label=label)
    top.set_ylim(0, 1)
    top.set_ylabel("probability")
    top.legend(loc="upper right", ncols=len(result.labels), fontsize="small", frameon=False)
    top.set_title(f"{title or 'emotion timeline'} (grey: speech found by voice activity)")

    for row, speaker in enumerate(speakers):
        spans = [(s.start, s.end - s.start) for s in result.segments if s.speaker == speaker]
        faces = [colours[s.label] for s in result.segments if s.speaker == speaker]
        bottom.broken_barh(spans, (row - 0.35, 0.7), facecolors=faces, edgecolor="white", lw=0.3)
    bottom.set_yticks(range(len(speakers)), [str(s) if s is not None else "(no speaker)" for s in speakers])
    bottom.set_ylim(-0.6, len(speakers) - 0.4)
    bottom.invert_yaxis()
    bottom.set_xlabel("seconds")
    bottom.set_xlim(0, max(result.duration, 1e-3))
    bottom.set_title("label per segment and speaker", fontsize="small")
    figure.tight_layout()
    out = Path(out)
    figure.savefig(out, dpi=110)
    plt.close(figure)
    return out
