"""HTML reports: a self-contained page per run (plotly figures inlined once, images embedded)."""
from __future__ import annotations

import html
import json
from pathlib import Path

from .data import load_policies, load_scenes
from .scenes import scene_image
from .widgets import image_html, tree_figure, walk_html


def data_report(out: str | Path, num_scenes: int = 6, image_size=(240, 160)) -> Path:
    """Write `out/report.html`: the data summary, each policy's tree, and test scenes with their answers."""
    out = Path(out)
    summary = json.loads((out / "summary.json").read_text())
    policies = list(load_policies(out).values())
    scenes = load_scenes(out, "test")[:num_scenes]
    parts = [f"<h1>mpi-kit data report</h1><p>{len(policies)} policies, "
             f"{summary['num_scenes']['train']} train / {summary['num_scenes']['test']} test scenes, "
             f"depth N = {summary['config']['depth']}, variant -{summary['config']['variant']}.</p>",
             "<h2>Datasets</h2><table border=1 cellpadding=4><tr><th>kind</th><th>split</th><th>rows</th></tr>"]
    for kind, splits in summary["datasets"].items():
        parts += [f"<tr><td>{kind}</td><td>{s}</td><td>{n}</td></tr>" for s, n in splits.items()]
    parts.append("</table><h2>Policies</h2>")
    for i, p in enumerate(policies):
        c = summary["cases"][p.name]
        parts.append(f"<h3>{p.name}</h3><p>{c['num_cases']} cases ({c['cases_seen']} occur in the scenes), "
                     f"largest case share {c['majority_share']:.0%}, {c['policy_chars']} characters.</p>")
        parts.append(tree_figure(p).to_html(full_html=False, include_plotlyjs=(i == 0)))
    parts.append(f"<h2>Policy text: {policies[0].name}</h2><pre>{html.escape(policies[0].text())}</pre>")
    parts.append("<h2>Held-out scenes</h2>")
    for s in scenes:
        parts.append(f"<div style='display:flex;gap:16px;margin:8px 0'>{image_html(scene_image(s, image_size), 240)}"
                     f"<div>{'<br>'.join(walk_html(p, s) for p in policies)}</div></div>")
    path = out / "report.html"
    path.write_text("<html><head><meta charset='utf-8'></head><body style='font-family:sans-serif'>"
                    + "".join(parts) + "</body></html>")
    return path
