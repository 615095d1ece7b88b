"""Widgets and figures for policies and data: the decision tree, the path a scene takes, a data browser.

Built-in ipywidgets only, and plotly shown with `fig.show()` (Colab breaks FigureWidget and plotly inside
widgets), so inside widgets the tree is drawn as inline SVG, which renders everywhere.
"""
from __future__ import annotations

import base64
import html
import io
from pathlib import Path

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


def tree_figure(policy: Policy, path: list[str] | None = None, outcome: str | None = None):
    """The policy's decision tree as a plotly figure (yes edges green, no edges red, the path highlighted)."""
    import plotly.graph_objects as go

    pos, edges = tree_layout(policy)
    hot = _on_path(path or [], outcome)
    fig = go.Figure()
    for a, b, yes in edges:
        on = a in hot and b in hot
        fig.add_trace(go.Scatter(x=[pos[a][0], pos[b][0]], y=[-pos[a][1], -pos[b][1]], mode="lines",
                                 line=dict(color=HOT if on else (YES if yes else NO), width=4 if on else 1.5),
                                 hoverinfo="skip", showlegend=False))
    for kind in (False, True):
        ids = [k for k, v in pos.items() if v[3] == kind]
        fig.add_trace(go.Scatter(
            x=[pos[k][0] for k in ids], y=[-pos[k][1] for k in ids], mode="markers+text" if kind else "markers",
            text=[k.replace("Case ", "") for k in ids] if kind else None, textposition="bottom center",
            hovertext=[pos[k][2] for k in ids], hoverinfo="text",
            marker=dict(size=9 if kind else 13, symbol="square" if kind else "circle",
                        color=[HOT if k in hot else ("#555" if kind else "#3b6fb6") for k in ids]),
            name="cases" if kind else "conditions"))
    fig.update_layout(title=f"{policy.name}: {len(policy.conditions)} conditions, {len(policy.cases)} cases "
                            f"(green = yes, red = no)", height=380, margin=dict(l=10, r=10, t=40, b=10),
                      xaxis=dict(visible=False), yaxis=dict(visible=False), plot_bgcolor="white")
    return fig


def tree_svg(policy: Policy, path: list[str] | None = None, outcome: str | None = None,
             width: int = 640, height: int = 260) -> str:
    """The same tree as an inline SVG string (for widgets.HTML), with hover titles on every node."""
    pos, edges = tree_layout(policy)
    hot = _on_path(path or [], outcome)
    n_leaves = max(v[0] for v in pos.values()) + 1
    depth = max(v[1] for v in pos.values())
    X = lambda x: 12 + x * (width - 24) / max(1, n_leaves - 1)
    Y = lambda d: 14 + d * (height - 28) / max(1, depth)
    out = [f'<svg width="{width}" height="{height}" xmlns="http://www.w3.org/2000/svg">']
    for a, b, yes in edges:
        on = a in hot and b in hot
        out.append(f'<line x1="{X(pos[a][0]):.1f}" y1="{Y(pos[a][1]):.1f}" x2="{X(pos[b][0]):.1f}" '
                   f'y2="{Y(pos[b][1]):.1f}" stroke="{HOT if on else (YES if yes else NO)}" '
                   f'stroke-width="{4 if on else 1.2}"/>')
    for k, (x, d, label, is_case) in pos.items():
        fill = HOT if k in hot else ("#555" if is_case else "#3b6fb6")
        shape = (f'<rect x="{X(x) - 4:.1f}" y="{Y(d) - 4:.1f}" width="8" height="8" fill="{fill}">'
                 if is_case else f'<circle cx="{X(x):.1f}" cy="{Y(d):.1f}" r="6" fill="{fill}">')
        tag = "rect" if is_case else "circle"
        out.append(f"{shape}<title>{html.escape(label)}</title></{tag}>")
    out.append("</svg>")
    return "".join(out)


def image_html(img, width: int = 288) -> str:
    """A PIL image as an <img> tag (pixelated upscaling, so tiny renders stay crisp)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    b64 = base64.b64encode(buf.getvalue()).decode()
    return f'<img src="data:image/png;base64,{b64}" width="{width}" style="image-rendering: pixelated"/>'


def scene_table_html(scene: Scene) -> str:
    rows = "".join(f"<tr><td>{i}</td><td>{o.size}</td><td>{o.color}</td><td>{o.material}</td><td>{o.shape}</td>"
                   f"<td>({o.x:.2f}, {o.y:.2f})</td></tr>" for i, o in enumerate(scene.objects))
    return ("<table style='font-size:12px'><tr><th>#</th><th>size</th><th>color</th><th>material</th>"
            f"<th>shape</th><th>x, y</th></tr>{rows}</table>")


def walk_html(policy: Policy, scene: Scene) -> str:
    """Outcome, path and gold CoT of `policy` on `scene`, as HTML."""
    case, path = policy.evaluate(scene)
    cot = html.escape(policy.gold_cot(scene)).replace("Condition ", "<br>Condition ")
    return (f"<b>{policy.name}</b> → <b style='color:{HOT}'>{case}</b> via "
            f"{' → '.join(path)}<div style='font-size:12px;color:#333'>{cot}</div>")


def policy_explorer(policy: Policy, scenes: list[Scene], image_size=(288, 192)):
    """Pick a scene and watch the path it takes through the policy (image, scene graph, tree, CoT)."""
    import ipywidgets as w

    pick = w.Dropdown(options=[(f"{s.scene_id} ({len(s.objects)} objects)", i) for i, s in enumerate(scenes)],
                      description="scene")
    left, tree, walk = w.HTML(), w.HTML(), w.HTML()

    def show(_=None):
        s = scenes[pick.value]
        case, path = policy.evaluate(s)
        left.value = image_html(scene_image(s, image_size), image_size[0]) + scene_table_html(s)
        tree.value = tree_svg(policy, path, case)
        walk.value = walk_html(policy, s)

    pick.observe(show, names="value")
    show()
    return w.VBox([pick, w.HBox([left, tree]), walk])


def data_browser(out: str | Path, split: str = "test", image_size=(288, 192)):
    """Browse a built dataset folder: each scene with its scene graph and every policy's answer and CoT."""
    import ipywidgets as w

    from .data import load_policies, load_scenes

    policies = list(load_policies(out).values())
    scenes = load_scenes(out, split)
    slider = w.IntSlider(0, 0, len(scenes) - 1, description=f"{split} scene")
    pick = w.Dropdown(options=[p.name for p in policies], description="policy")
    left, right = w.HTML(), w.HTML()

    def show(_=None):
        s = scenes[slider.value]
        p = next(p for p in policies if p.name == pick.value)
        case, path = p.evaluate(s)
        left.value = (f"<b>{s.scene_id}</b><br>" + image_html(scene_image(s, image_size), image_size[0])
                      + scene_table_html(s))
        answers = "".join(f"<li>{q.name}: <b>{q.evaluate(s)[0]}</b></li>" for q in policies)
        right.value = (f"<ul>{answers}</ul>" + tree_svg(p, path, case, width=520, height=220)
                       + walk_html(p, s))

    slider.observe(show, names="value")
    pick.observe(show, names="value")
    show()
    return w.VBox([w.HBox([slider, pick]), w.HBox([left, right])])


def rule_explorer(policy=None, override: dict | None = None):
    """GTAPolicy rule explorer: pick a user profile (account type, credits, age, a math image or not) and see which
    version of every tool the rules give and which rule decides it, beside the version under an override."""
    import ipywidgets as w

    from .gta_policy import ACCOUNT_TYPES, BASE_POLICY, DEFAULT_OVERRIDE, UserProfile

    base = policy or BASE_POLICY
    updated = base.with_override(override or DEFAULT_OVERRIDE)
    acc = w.Dropdown(options=ACCOUNT_TYPES, value="B", description="account type")
    credits = w.IntSlider(value=600, min=0, max=1000, description="credits", continuous_update=False)
    age = w.IntSlider(value=30, min=13, max=90, description="age", continuous_update=False)
    math = w.Checkbox(value=False, description="the image shows math")
    out = w.HTML()

    def refresh(_=None):
        p, ctx = UserProfile(acc.value, credits.value, age.value), {"math_image": math.value}
        rows = []
        for a, b in zip(base.versions(p, ctx), updated.versions(p, ctx)):
            hot = ' style="background:#fde9c8"' if a["call"] != b["call"] else ""
            rows.append(f"<tr{hot}><td>{a['tool']}</td><td><b>{a['call']}</b></td><td>{a['rule']}</td>"
                        f"<td>{b['call']}</td></tr>")
        out.value = ("<table><tr><th>tool</th><th>call</th><th>decided by</th><th>under the override</th></tr>"
                     + "".join(rows) + "</table>")

    for x in (acc, credits, age, math):
        x.observe(refresh, names="value")
    refresh()
    return w.VBox([w.HBox([acc, math]), credits, age, out])
