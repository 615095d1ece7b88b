"""GTAPolicy's page and table: Tool Acc, Arg Score and Overall per method beside the paper's numbers."""
from __future__ import annotations

import html
import json
from pathlib import Path

from ...charts import percent_axis, title_layout
from ...report import efficiency_table, method_order, write_page


def gta_pipeline_report(out: str | Path, results: dict) -> Path:
    """Write `out/report.html` for a GTAPolicy pipeline: Tool Acc / Arg Score / Overall per method (bars) with the
    paper's Qwen2.5-VL-7B numbers where it reports them (diamonds), with no policy, under override, with the
    policy back in context; the prompt-cost table; the configuration."""
    import plotly.graph_objects as go

    out = Path(out)
    rows = {r["method"]: r for r in results["methods"].values()}
    methods = method_order(rows)
    paper = results["paper"]
    figs = []
    for title, key, ref in (("Next tool call with no policy in context (In-Context: policy in the prompt)", None,
                             "gta_7b"), ("Policy Override: changed rules in context", "override", "gta_override_7b"),
                            ("Policy back in context after training", "policy_in_context",
                             "gta_in_context_after_7b")):
        got = {m: (rows[m] if key is None else rows[m].get(key)) or {} for m in methods}
        if not any(got.values()):
            continue
        fig = go.Figure()
        for i, k in enumerate(("tool", "args", "overall")):
            fig.add_trace(go.Bar(name=f"ours {k}", x=methods, y=[got[m].get(k) for m in methods]))
            ys = [(paper.get(ref, {}).get(m) or (None,) * 3)[i] for m in methods]
            if any(y is not None for y in ys):
                fig.add_trace(go.Scatter(name=f"paper 7B {k}", x=methods, y=ys, mode="markers",
                                         marker=dict(symbol="diamond", size=11)))
        fig.update_layout(**title_layout(title), barmode="group", yaxis_title="%", height=420)
        fig.update_yaxes(**percent_axis())
        figs.append(fig)
    parts = [f"<h1>mpi-kit: GTAPolicy comparison on the {results['config']['recipe']} recipe</h1>"
             f"<pre>{html.escape(gta_table(results))}</pre>"]
    parts += [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]
    eff = [e for es in results.get("efficiency", {}).values() for e in es]
    if eff:
        parts.append("<h2>Efficiency: prompt tokens and prefill time, with vs without the policy</h2>"
                     + efficiency_table(eff))
    if "context" in results:
        parts.append(f"<h2>Context</h2><pre>{html.escape(json.dumps(results['context'], indent=1))}</pre>")
    parts.append(f"<h2>Configuration</h2><pre>{html.escape(json.dumps(results['config'], indent=1))}</pre>")
    return write_page(out / "report.html", parts, f"mpi-kit report: GTAPolicy, {results['config']['recipe']} recipe")


def gta_table(results: dict) -> str:
    """GTAPolicy: methods down; Tool Acc, Arg Score, Overall and Override overall across (paper 7B in brackets)."""
    paper = results["paper"]
    cols = (("tool", None, 0), ("args", None, 1), ("overall", None, 2), ("override", "overall", 2))
    names = {"tool": "Tool Acc", "args": "Arg Score", "overall": "Overall", "override": "Override Overall"}
    methods = method_order(r["method"] for r in results["methods"].values())
    w = max([22] + [len(m) + 1 for m in methods])
    lines = [f"{'method':<{w}}" + "".join(f"{names[c]:>18}" for c, _, _ in cols)]
    for m in methods:
        r = results["methods"].get(f"GTA/{m}")
        if not r:
            continue
        cells = []
        for c, sub, i in cols:
            ours = r.get(c, {}).get(sub) if sub else r.get(c)
            ref = (paper["gta_override_7b"] if c == "override" else paper["gta_7b"]).get(m)
            p = ref[i] if ref else None
            paper_cell = f"({p:.1f})".rjust(8) if p is not None else " " * 8
            cells.append(("-".rjust(6) if ours is None else f"{ours:6.1f}") + paper_cell)  # one width: aligned
        lines.append(f"{m:<{w}}" + "".join(f"{c:>18}" for c in cells))
    return "\n".join(lines) + ("\n(GTAPolicy, ours: % with no policy in context; In-Context has it; override: the "
                               "changed rules in context; paper Qwen2.5-VL-7B in brackets, Tables 1-3)")
