"""ClevrPolicy's widgets and figures: the decision tree, the path a scene takes, a data browser, and the scene view
the rollout inspector shows beside a group.

Built-in ipywidgets only, and plotly shown with `fig.show()` (Colab breaks FigureWidget and plotly inside
widgets), so inside widgets the tree is drawn as inline SVG, which renders everywhere. `cot_steps` (and the shared
`mpi_kit.widgets.excerpt`) cut long texts for display without cutting a line or a reasoning step in half.
"""
from __future__ import annotations

import html
import re
from pathlib import Path

from ...widgets import beside, image_html, wrapping
from .policy import Policy
from .scenes import Scene, scene_image


YES, NO, HOT, COLD = "#2a9d3f", "#c0392b", "#f39c12", "#b8b8b8"


def tree_layout(policy: Policy) -> tuple[dict, list]:
    """Node positions for drawing: {id: (x, depth, label, is_case)} and edges [(parent, child, is_yes)].
    Leaves are spread evenly left to right; a decision node sits above the middle of its leaves."""
    pos: dict = {}
    edges: list = []
    counter = [0]

    def place(node: str, depth: int) -> float:
        if node not in policy.conditions:
            x = counter[0]
            counter[0] += 1
            pos[node] = (x, depth, node, True)
            return x
        c = policy.conditions[node]
        xs = [place(c.yes, depth + 1), place(c.no, depth + 1)]
        edges.extend([(node, c.yes, True), (node, c.no, False)])
        x = sum(xs) / 2
        pos[node] = (x, depth, f"{node}: {policy.subject_text(c.subject)}?", False)
        return x

    place(policy.root, 0)
    return pos, edges


def _on_path(path: list[str], outcome: str | None) -> set:
    return set(path) | ({outcome} if outcome else set())


EDGE_LABEL_AT = 0.3  # where "yes" / "no" sit along an edge, from its parent: clear of the child's id above it


def tree_figure(policy: Policy, path: list[str] | None = None, outcome: str | None = None):
    """The policy's decision tree as a plotly figure (yes edges green, no edges red, the path highlighted). The
    legend sits in the top margin and the y range leaves room over the root, so neither covers a node's id; each
    "yes" / "no" is written beside its edge near the parent."""
    import plotly.graph_objects as go

    from ...charts import title_layout

    pos, edges = tree_layout(policy)
    hot = _on_path(path or [], outcome)
    fig = go.Figure()
    for a, b, yes in edges:
        on = a in hot and b in hot
        fig.add_trace(go.Scatter(x=[pos[a][0], pos[b][0]], y=[-pos[a][1], -pos[b][1]], mode="lines",
                                 line=dict(color=HOT if on else (YES if yes else NO), width=4 if on else 1.5),
                                 hoverinfo="skip", showlegend=False))
    at = lambda a, b, i: pos[a][i] + EDGE_LABEL_AT * (pos[b][i] - pos[a][i])
    fig.add_trace(go.Scatter(  # "yes" on the outside of the left (yes) edge, "no" of the right one
        x=[at(a, b, 0) for a, b, _ in edges], y=[-at(a, b, 1) for a, b, _ in edges], mode="text",
        text=["yes" if yes else "no" for *_, yes in edges], hoverinfo="skip", showlegend=False,
        textposition=["middle left" if yes else "middle right" for *_, yes in edges],
        textfont=dict(size=10, color=[YES if yes else NO for *_, yes in edges])))
    for kind in (False, True):
        ids = [k for k, v in pos.items() if v[3] == kind]
        fig.add_trace(go.Scatter(
            x=[pos[k][0] for k in ids], y=[-pos[k][1] for k in ids], mode="markers+text",
            text=[k.replace("Case ", "") if kind else k for k in ids],
            textposition="bottom center" if kind else "top center",
            hovertext=[pos[k][2] for k in ids], hoverinfo="text",
            marker=dict(size=9 if kind else 13, symbol="square" if kind else "circle",
                        color=[HOT if k in hot else ("#555" if kind else "#3b6fb6") for k in ids]),
            name="cases" if kind else "conditions"))
    depth = max(v[1] for v in pos.values())
    leaves = max(v[0] for v in pos.values())
    top = title_layout(f"{policy.name}: {len(policy.conditions)} conditions (hover for the question), "
                       f"{len(policy.cases)} cases (numbers under the leaves)", above_plot=LEGEND_ROW)
    top["margin"].update(l=10, r=10, b=10)
    fig.update_layout(**top, height=340 + top["margin"]["t"], plot_bgcolor="white",
                      legend=dict(orientation="h", x=0, xanchor="left", y=1, yanchor="bottom"),
                      xaxis=dict(visible=False, range=[-0.6, leaves + 0.6]),
                      yaxis=dict(visible=False, range=[-depth - 0.5, 0.5]))  # room for the root's id, leaves' cases
    return fig


LEGEND_ROW = 28  # a horizontal legend's height, in pixels


CHAR_W = 0.6  # a character's width, in font sizes (a generous average), to decide which labels fit


def _text_w(text: str, size: float) -> float:
    return len(text) * CHAR_W * size


def tree_svg(policy: Policy, path: list[str] | None = None, outcome: str | None = None,
             width: int = 640, height: int = 260) -> str:
    """The same tree as an inline SVG string (for widgets.HTML): the condition id above each node (with its
    question where it fits, always on hover), "yes"/"no" on the edges and the case under every leaf; a label that
    would overlap its neighbours is left out (the hover title still has it)."""
    pos, edges = tree_layout(policy)
    hot = _on_path(path or [], outcome)
    n_leaves = max(v[0] for v in pos.values()) + 1
    depth = max(v[1] for v in pos.values())
    cases = [k for k, v in pos.items() if v[3]]
    longest = max(cases, key=len)
    pad = max(12.0, _text_w(longest, 9) / 2 + 2)
    gap = (width - 2 * pad) / max(1, n_leaves - 1)  # between neighbouring leaves
    if gap < _text_w(longest.replace("Case ", ""), 9) + 2:  # even the numbers would touch: no "Case", rotated
        pad = 12.0
        gap = (width - 2 * pad) / max(1, n_leaves - 1)
    leaf_mode = "full" if gap >= _text_w(longest, 9) + 4 else "short" if gap >= _text_w(
        longest.replace("Case ", ""), 9) + 2 else "rotated"
    bottom = 8 + (8 if leaf_mode != "rotated" else _text_w(longest.replace("Case ", ""), 8) + 6)
    X = lambda x: pad + x * (width - 2 * pad) / max(1, n_leaves - 1)
    # "yes" / "no" beside an edge, near the parent, where the edge is wide enough and the levels far enough apart
    # not to touch the child's id; the colours are explained in a legend line otherwise
    words = (height - 36 - bottom) / max(1, depth) >= 30
    worded = {(a, b) for a, b, _ in edges if words and abs(X(pos[b][0]) - X(pos[a][0])) >= _text_w("yes", 9) + 4}
    unlabelled = len(worded) < len(edges)
    top = 36 if unlabelled or leaf_mode != "full" else 24  # a legend line sits above the root's id, not on it
    Y = lambda d: top + d * (height - top - bottom) / max(1, depth)

    rows: dict = {}  # depth -> sorted x (pixels) of the conditions there, to measure the room beside each
    for k, (x, d, _, is_case) in pos.items():
        if not is_case:
            rows.setdefault(d, []).append(X(x))
    for xs in rows.values():
        xs.sort()

    def room(x_px: float, d: int) -> float:
        xs = rows[d]
        i = xs.index(x_px)
        left = x_px - xs[i - 1] if i > 0 else float("inf")
        right = xs[i + 1] - x_px if i + 1 < len(xs) else float("inf")
        return min(left, right, 2 * (x_px - 2), 2 * (width - 2 - x_px)) if len(xs) > 1 else width - 4

    def clamp(x_px: float, w: float) -> float:  # keep a centred label inside the picture
        return min(max(x_px, w / 2 + 2), width - w / 2 - 2)

    # drawn at width x height, shrunk to fit a narrower box (never clipped at its right edge)
    out = [f'<svg width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'style="max-width:100%;height:auto" xmlns="http://www.w3.org/2000/svg" font-family="sans-serif">']
    for a, b, yes in edges:
        on = a in hot and b in hot
        color = YES if yes else NO
        x1, y1, x2, y2 = X(pos[a][0]), Y(pos[a][1]), X(pos[b][0]), Y(pos[b][1])
        out.append(f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{HOT if on else color}" '
                   f'stroke-width="{4 if on else 1.2}"/>')
        if (a, b) in worded:
            out.append(f'<text x="{x1 + 0.4 * (x2 - x1) + (-3 if yes else 3):.1f}" y="{y1 + 0.4 * (y2 - y1):.1f}" '
                       f'font-size="9" fill="{color}" text-anchor="{"end" if yes else "start"}">'
                       f'{"yes" if yes else "no"}</text>')
    for k, (x, d, label, is_case) in pos.items():
        fill = HOT if k in hot else ("#555" if is_case else "#3b6fb6")
        shape = (f'<rect x="{X(x) - 4:.1f}" y="{Y(d) - 4:.1f}" width="8" height="8" fill="{fill}">'
                 if is_case else f'<circle cx="{X(x):.1f}" cy="{Y(d):.1f}" r="6" fill="{fill}">')
        tag = "rect" if is_case else "circle"
        out.append(f"{shape}<title>{html.escape(label)}</title></{tag}>")
        bold = ' font-weight="bold"' if k in hot else ""
        if is_case:
            text = html.escape(k if leaf_mode == "full" else k.replace("Case ", ""))
            if leaf_mode == "rotated":
                x0, y0 = X(x) + 3, Y(d) + 8
                out.append(f'<text x="{x0:.1f}" y="{y0:.1f}" font-size="8" text-anchor="end"{bold} '
                           f'transform="rotate(-90 {x0:.1f} {y0:.1f})">{text}</text>')
            else:
                out.append(f'<text x="{X(x):.1f}" y="{Y(d) + 15:.1f}" font-size="9" text-anchor="middle"{bold}>'
                           f'{text}</text>')
            continue
        fits = [t for t in (label, k) if _text_w(t, 10) <= room(X(x), d) - 6]
        if fits:
            w = _text_w(fits[0], 10)
            out.append(f'<text x="{clamp(X(x), w):.1f}" y="{Y(d) - 9:.1f}" font-size="10" text-anchor="middle"'
                       f'{bold}>{html.escape(fits[0])}</text>')
    colours = f'<tspan fill="{YES}">green</tspan> = yes, <tspan fill="{NO}">red</tspan> = no'
    legend = ([colours] if unlabelled else []) + (["leaf numbers: cases"] if leaf_mode != "full" else [])
    if legend:
        out.append(f'<text x="{width - 2}" y="10" font-size="9" text-anchor="end" fill="#555">'
                   f'{" · ".join(legend)}</text>')
    out.append("</svg>")
    return "".join(out)


def scene_alt(scene: Scene) -> str:
    """A scene image's alt text: its id and its objects left to right, the facts a policy's questions ask about."""
    return f"image of {scene.scene_id or 'a scene'}: {scene.describe()}"


def scene_table_html(scene: Scene) -> str:
    rows = "".join(f"<tr><td>{i}</td><td>{o.size}</td><td>{o.color}</td><td>{o.material}</td><td>{o.shape}</td>"
                   f"<td>({o.x:.2f}, {o.y:.2f})</td></tr>" for i, o in enumerate(scene.objects))
    return ("<table style='font-size:12px'><tr><th>#</th><th>size</th><th>color</th><th>material</th>"
            f"<th>shape</th><th>x, y</th></tr>{rows}</table>")


def cot_steps(cot: str, ids=None) -> list[str]:
    """A CoT cut into its steps, one per condition visited, and the closing `</think>\\boxed{...}`. It is cut only
    where a step starts ("Condition <id>: "; with `ids`, only those ids), never at a reference inside a step such
    as "go to Condition 1.1."."""
    head = "|".join(re.escape(i) for i in ids) if ids else r"[^\s:]+"
    parts = re.split(rf"(?=Condition (?:{head}): )|(?=</think>)", cot)
    return [p.strip() for p in parts if p.strip()]


def walk_html(policy: Policy, scene: Scene) -> str:
    """Outcome, path and gold CoT of `policy` on `scene`, as HTML: one line per reasoning step."""
    case, path = policy.evaluate(scene)
    steps = "<br>".join(html.escape(s) for s in cot_steps(policy.gold_cot(scene), path))
    keep = "white-space:nowrap"  # "L4-Bozezo" and "Case 8" never split over two lines
    return (f"<b style='{keep}'>{policy.name}</b> → <b style='color:{HOT};{keep}'>{case}</b> via "
            f"{' → '.join(path)}<div style='font-size:12px;color:#333;font-family:monospace'>{steps}</div>")


def policy_explorer(policy: Policy, scenes: list[Scene], image_size=(288, 192)):
    """Pick a scene and watch the path it takes through the policy (image, scene graph, tree, CoT)."""
    import ipywidgets as w

    pick = w.Dropdown(options=[(f"{s.scene_id} ({len(s.objects)} objects)", i) for i, s in enumerate(scenes)],
                      description="scene")
    left, walk = w.HTML(), w.HTML()
    tree = w.HTML(layout=beside(360))

    def show(_=None):
        s = scenes[pick.value]
        case, path = policy.evaluate(s)
        left.value = image_html(scene_image(s, image_size), image_size[0], scene_alt(s)) + scene_table_html(s)
        tree.value = tree_svg(policy, path, case, height=300)
        walk.value = walk_html(policy, s)

    pick.observe(show, names="value")
    show()
    return w.VBox([pick, w.HBox([left, tree], layout=wrapping()), walk])



def data_browser(out: str | Path, split: str = "test", image_size=(288, 192)):
    """Browse a built dataset folder: each scene with its scene graph and every policy's answer and CoT."""
    import ipywidgets as w

    from .data import load_policies, load_scenes

    policies = list(load_policies(out).values())
    scenes = load_scenes(out, split)
    slider = w.IntSlider(0, 0, len(scenes) - 1, description=f"{split} scene")
    pick = w.Dropdown(options=[p.name for p in policies], description="policy")
    left, right = w.HTML(), w.HTML(layout=beside(360))

    def show(_=None):
        s = scenes[slider.value]
        p = next(p for p in policies if p.name == pick.value)
        case, path = p.evaluate(s)
        left.value = (f"<b>{s.scene_id}</b><br>" + image_html(scene_image(s, image_size), image_size[0], scene_alt(s))
                      + scene_table_html(s))
        answers = "".join(f"<li>{q.name}: <b>{q.evaluate(s)[0]}</b></li>" for q in policies)
        right.value = (f"<ul>{answers}</ul>" + tree_svg(p, path, case, width=520, height=220)
                       + walk_html(p, s))

    slider.observe(show, names="value")
    pick.observe(show, names="value")
    show()
    return w.VBox([w.HBox([slider, pick], layout=wrapping()), w.HBox([left, right], layout=wrapping())])


class SceneView:
    """The rollout inspector's picture of a ClevrPolicy group: the scene, the gold path through its policy and the
    tree with that path lit (`Task.prompt_view`)."""

    def __init__(self, data_dir, width: int = 240):
        from ...folders import read_json
        from .data import load_policies, load_scenes

        self.scenes = {s.scene_id: s for s in load_scenes(data_dir)}
        try:
            self.policies = load_policies(data_dir)
        except Exception:
            self.policies = {}
        summary = Path(data_dir) / "summary.json"
        cfg = read_json(summary, "Rebuild the data into that folder.").get("config", {}) if summary.exists() else {}
        self.image_size, self.width = tuple(cfg.get("image_size", (96, 64))), width

    def __call__(self, row) -> str | None:
        scene = self.scenes.get(row["scene_id"])
        if scene is None:
            return None
        out = image_html(scene_image(scene, self.image_size), self.width, scene_alt(scene))
        policy = self.policies.get(str(row["prompt_id"]).split("/")[0])
        if policy is not None:
            case, path = policy.evaluate(scene)
            out += f"<br><small>{policy.name}: gold path {' → '.join(path)} → {case}</small><br>"
            out += tree_svg(policy, path, case, width=self.width, height=120)
        return out
