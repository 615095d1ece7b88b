"""ClevrPolicy's pages and tables: the data report (policies as trees, held-out scenes and their answers), the
pipeline's report and its plain-text and Markdown tables, and where the wrong answers broke."""
from __future__ import annotations

import html
import json
from pathlib import Path

from ...charts import PATTERNS, title_layout
from ...report import (comparison_figures, differences_note, efficiency_figure, efficiency_table, limits_note,
                       method_order, paired, rl_groups_note, rollout_figure, wrap, write_page)
from .data import load_policies, load_scenes
from .scenes import scene_image
from ...widgets import image_html
from .widgets import scene_alt, tree_figure, walk_html


def data_report(out: str | Path, num_scenes: int = 6, image_size=(240, 160)) -> Path:
    """Write `out/report.html`: the data summary, each policy's tree, and test scenes with their answers."""
    out = Path(out)
    from ...folders import read_json

    summary = read_json(out / "summary.json", f"Rebuild the data with `mpi-kit data --out {out}`.")
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
        parts.append(f"<div style='display:flex;gap:16px;margin:8px 0'>"
                     f"{image_html(scene_image(s, image_size), 240, scene_alt(s))}"
                     f"<div>{'<br>'.join(walk_html(p, s) for p in policies)}</div></div>")
    return write_page(out / "report.html", parts, "mpi-kit data report")


def errors_figure(results: dict):
    """Where the wrong answers broke, per method and N: stacked bars of the first wrong part of each wrong chain
    of thought (`evaluate.error_parts`). A policy error (question, go-to, case) is what internalization can still
    fix; a misread scene (yes/no) is the base model's perception. None when no method recorded them."""
    import plotly.graph_objects as go

    rows = [(k, r) for k, r in results["methods"].items() if r.get("errors") is not None]
    if not rows:
        return None
    from .evaluate import ERROR_PARTS

    fig = go.Figure()
    for i, part in enumerate(ERROR_PARTS):  # hatched as well as coloured: told apart without colour too
        fig.add_trace(go.Bar(name=PART_WORDS[part], x=[k for k, _ in rows],
                             y=[r["errors"].get(part, 0) for _, r in rows],
                             marker_pattern_shape=PATTERNS[i % len(PATTERNS)]))
    if not any(sum(r["errors"].values()) for _, r in rows):
        fig.add_annotation(text="No wrong answers: every method got every question right.", x=0.5, y=0.5,
                           xref="paper", yref="paper", showarrow=False, font=dict(size=14), bgcolor="#fff8e0")
    ns = sorted({r["n"] for _, r in rows})
    sub = ("Each wrong answer counted once, at the first part of its chain of thought that differs from the gold one: "
           "a question or a go-to / case id is the policy not recalled; a yes/no is the scene misread. "
           f"n = {'/'.join(map(str, ns))} questions per bar.")
    fig.update_layout(**title_layout("Where the wrong answers broke", wrap(sub)), barmode="stack",
                      yaxis_title="wrong answers", height=440)
    return fig


def pipeline_report(out: str | Path, results: dict) -> Path:
    """Write `out/report.html`: the comparison against the paper, one plotly chart per evaluation."""
    out = Path(out)
    paper = results["paper"]
    figs = comparison_figures(results)
    for extra in (errors_figure(results), rollout_figure(results)):
        if extra is not None:
            figs.append(extra)
    eff = [dict(e, N=int(n)) for n, es in results.get("efficiency", {}).items() for e in es]
    if eff:
        figs.append(efficiency_figure(eff, paper.get("efficiency")))
    parts = ["<h1>mpi-kit: the paper's comparison on the "
             f"{results['config']['recipe']} recipe</h1><pre>{html.escape(clevr_table(results))}</pre>"]
    best = max((r.get("accuracy") or 0 for r in results["methods"].values()), default=0)
    if best < 50:
        parts.append(f"<p style='background:#fff8e0;padding:8px'><b>Why these numbers are low.</b> "
                     f"{html.escape(limits_note(results))}</p>")
    parts += [f.to_html(full_html=False, include_plotlyjs=(i == 0)) for i, f in enumerate(figs)]
    if eff:
        parts.append("<h2>Efficiency: prompt tokens and prefill time, with vs without the policy</h2>"
                     + efficiency_table(eff) + f"<p>Paper (7B): up to "
                     f"{paper['efficiency']['prompt_token_reduction_pct']}% fewer prompt tokens, "
                     f"{paper['efficiency']['prefill_time_reduction_pct']}% less prefill time.</p>")
    parts.append(f"<h2>Configuration</h2><pre>{html.escape(json.dumps(results['config'], indent=1))}</pre>")
    return write_page(out / "report.html", parts, f"mpi-kit report: ClevrPolicy, {results['config']['recipe']} recipe")


def clevr_table(results: dict) -> str:
    """ClevrPolicy as plain text: methods down, N across, our accuracy with its 95% interval (paper 7B in
    brackets), the differences beyond the intervals, and what the RL groups saw."""
    depths = sorted({r["depth"] for r in results["methods"].values()})
    acc = results["paper"]["accuracy_7b"]
    methods = method_order(r["method"] for r in results["methods"].values())
    w = max([22] + [len(m) + 1 for m in methods])
    lines = [f"{'method':<{w}}" + "".join(f"{'N=' + str(d):>26}" for d in depths)]
    for m in methods:
        cells = []
        for d in depths:
            r = results["methods"].get(f"N{d}/{m}")
            p = acc.get(str(d), acc.get(d, {})).get(m)
            ci = f" [{r['interval_95'][0]:4.1f}-{r['interval_95'][1]:4.1f}]" if r and "interval_95" in r else ""
            paper = f" ({p:4.1f})" if p is not None else f" ({'-':>4})"  # the same width: columns stay aligned
            cells.append(f"{r['accuracy']:5.1f}{ci}{paper}" if r else "-")
        if any(c != "-" for c in cells):
            lines.append(f"{m:<{w}}" + "".join(f"{c:>26}" for c in cells))
    ns = sorted({r["n"] for r in results["methods"].values() if "n" in r})
    return ("\n".join(lines) + f"\n(ours: accuracy % with no policy in context, In-Context has it; [95% Wilson "
            f"interval], n = {'/'.join(map(str, ns))} per cell; paper 7B in brackets)" + differences_note(results)
            + rl_groups_note(results) + errors_note(results))


def markdown_table(results: dict) -> str:
    """ClevrPolicy results as a Markdown table for a README or a card: methods down, N across, each cell our accuracy
    with its 95% interval and the paper's Qwen2.5-VL-7B number beside it."""
    depths = sorted({r["depth"] for r in results["methods"].values()})
    acc = results["paper"]["accuracy_7b"]
    lines = ["| method | " + " | ".join(f"N = {d}: ours (95% interval) | paper 7B" for d in depths) + " |",
             "|---|" + "---|---|" * len(depths)]
    for m in method_order(r["method"] for r in results["methods"].values()):
        rows = [results["methods"].get(f"N{d}/{m}") for d in depths]
        if not any(rows):
            continue
        cells = []
        for d, r in zip(depths, rows):
            p = acc.get(str(d), acc.get(d, {})).get(m)
            ours = f"{r['accuracy']:.1f} ({r['interval_95'][0]:.1f}-{r['interval_95'][1]:.1f})" if r else "-"
            cells += [ours, "-" if p is None else f"{p:.1f}"]
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    ns = sorted({r["n"] for r in results["methods"].values() if "n" in r})
    return ("\n".join(lines) + f"\n\nn = {'/'.join(map(str, ns))} held-out questions per cell, greedy."
            + (differences_note(results).replace("\n", "\n\n") if paired(results) else ""))


PART_WORDS = {"question": "question (policy not recalled)", "yes_no": "yes/no (scene misread)",
              "go_to": "go-to id", "case": "case id", "other": "other"}


def error_parts_text(errors: dict) -> str:
    """Where wrong answers first broke (`evaluate.error_parts`, e.g. {'yes_no': 8}) in words: 'yes/no (scene
    misread) 8'; 'no wrong answers' when there are none."""
    return ", ".join(f"{PART_WORDS.get(p, p)} {k}" for p, k in errors.items()) or "no wrong answers"


def errors_note(results: dict) -> str:
    """Where each method's wrong answers first broke in the chain of thought (`evaluate.error_parts`): a question
    of the policy not recalled, the scene misread, or the tree's go-to / case ids not recalled."""
    out = []
    for key, r in results["methods"].items():
        e = r.get("errors")
        if e is None:
            continue
        out.append(f"{key}: {sum(e.values())} of {r['n']} wrong" + (f" ({error_parts_text(e)})" if e else ""))
    return ("\nwhere the wrong answers broke first: " + "; ".join(out)) if out else ""
