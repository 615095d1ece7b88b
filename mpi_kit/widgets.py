"""Display pieces every task's widgets and pages share: an image as an inline <img>, a long text cut between
lines, the layouts that let a row of widgets wrap on a narrow screen. Each task's own widgets are in its folder
(`tasks/clevr/widgets.py`: the decision tree, a scene's path, the data browser; `tasks/gta/widgets.py`: the rule
explorer)."""
from __future__ import annotations

import base64
import html
import io


YES, NO, HOT, COLD = "#2a9d3f", "#c0392b", "#f39c12", "#b8b8b8"


def image_html(img, width: int = 288, alt: str = "scene image") -> str:
    """A PIL image as an <img> tag (pixelated upscaling, so tiny renders stay crisp), with `alt`: what a screen
    reader says, and what a page shows where the image does not load (`scene_alt` words a scene)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    return (f'<img src="data:image/png;base64,{b64}" width="{width}" alt="{html.escape(alt)}" '
            f'style="image-rendering: pixelated"/>')


def excerpt(text: str, max_chars: int = 800) -> str:
    """The first whole lines of `text` that fit in `max_chars`, and, if any were left out, a last line saying how
    many: a long policy shown in a cell is cut between lines, never inside one, and the cut is marked."""
    if len(text) <= max_chars:
        return text
    lines, kept, used = text.splitlines(), [], 0
    for line in lines:
        if kept and used + len(line) + 1 > max_chars:
            break
        kept.append(line)
        used += len(line) + 1
    rest = len(lines) - len(kept)
    return "\n".join(kept) + f"\n... ({rest} more line{'s' if rest != 1 else ''} of {len(lines)})"


def wrapping():
    """An ipywidgets row layout that wraps its children onto the next line on a narrow screen instead of clipping
    or squeezing them."""
    import ipywidgets as w

    return w.Layout(flex_flow="row wrap")


def beside(min_px: int):
    """The layout of what sits right of a picture in a `wrapping()` row: the room left over, and the whole row
    below the picture when that room is under `min_px`."""
    import ipywidgets as w

    return w.Layout(flex=f"1 1 {min_px}px", min_width="0")
