"""Layout rules every kit chart follows, so that no text is printed over other text in a browser.

Plotly centres a title in the top margin and hangs its subtitle below it, into the plot when the margin is short;
`title_layout` pins the title to the top and makes the margin as tall as the lines it holds. `step_axis` ticks
training steps at whole numbers, `percent_axis` leaves room above 100% for a marker drawn at 99, and `PATTERNS`
tell stacked categories apart without colour.
"""
from __future__ import annotations

TITLE_SIZE, SUBTITLE_SIZE = 17, 12  # plotly's default title size for a 12 px page font, and its subtitle's
LINE = 1.3  # plotly's line spacing, in font sizes
SUBTITLE_GAP = 1.6  # plotly's space between a title and its subtitle, in subtitle font sizes
PAD, GAP = 10, 16  # pixels above the title and between the last title line and what comes under it
SUBPLOT_TITLE = 26  # the row of subplot titles `make_subplots` puts just above the plot (16 px font)
PATTERNS = ("", "/", "x", ".", "\\", "+", "-", "|")  # the first category plain, each other one hatched


def lines(text: str) -> int:
    """How many lines plotly draws for `text`: one per <br>, plus one (0 for no text)."""
    return text.count("<br>") + 1 if text else 0


def title_height(title: str, subtitle: str = "") -> float:
    """Pixels a title and its subtitle take from the top of the figure, as plotly lays them out."""
    h = PAD + lines(title) * TITLE_SIZE * LINE
    if subtitle:
        h += SUBTITLE_GAP * SUBTITLE_SIZE + lines(subtitle) * SUBTITLE_SIZE * LINE
    return h


def title_layout(title: str, subtitle: str = "", above_plot: float = 0) -> dict:
    """`update_layout` arguments for a title (and subtitle) pinned to the top of the figure, over a top margin tall
    enough for them and for `above_plot` more pixels (subplot titles, a legend) between them and the plot."""
    t = dict(text=title, yref="container", y=1, yanchor="top", pad=dict(t=PAD), automargin=True,
             font=dict(size=TITLE_SIZE))
    if subtitle:
        t["subtitle"] = dict(text=subtitle, font=dict(size=SUBTITLE_SIZE))
    return dict(title=t, margin=dict(t=round(title_height(title, subtitle) + GAP + above_plot)))


def step_axis(steps) -> dict:
    """An x axis of training steps: whole numbers only, every step ticked while there are few of them."""
    steps = [s for s in steps if s is not None]
    axis = dict(tickformat="d")
    if steps and max(steps) - min(steps) <= 12:
        axis["dtick"] = 1
    return axis


def percent_axis(top: float = 100, headroom: float = 0.05) -> dict:
    """A 0-`top` y axis (100 for %, 10 for a 0-10 score) with room above the top for a marker near it (the paper's
    98-99% diamonds would be cut in half at 100), ticked up to `top` only."""
    return dict(range=[0, top * (1 + headroom)], tickvals=[top * i / 5 for i in range(6)])
