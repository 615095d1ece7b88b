"""HTML reports: a self-contained page per run (plotly figures inlined once, images embedded), and the charts,
tables and notes every task's report shares. Each task's own page is in its folder (`tasks/<task>/report.py`)."""
from __future__ import annotations

import html
import json
from pathlib import Path

from .charts import PATTERNS, SUBPLOT_TITLE, percent_axis, step_axis, title_layout


NEEDS_JS = ("Charts need JavaScript: in JupyterLab press 'Trust HTML' at the top of this file, or open it in a "
            "browser.")


def write_page(path: Path, parts: list[str], title: str) -> Path:
    """One self-contained HTML page from its parts (headings, tables, figures' HTML), titled. A page with charts
    opens with a banner saying they need JavaScript, which its first script removes: where scripts do not run
    (JupyterLab serves an untrusted file that way) the banner stays and says how to see the charts."""
    body = "".join(parts)
    banner = (f"<div id='needs-js' style='background:#fff3cd;border:1px solid #e0b000;padding:8px;margin:8px 0'>"
              f"{html.escape(NEEDS_JS)}</div><script>document.getElementById('needs-js').remove()</script>"
              if "<script" in body else "")
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
                    # long lines of a <pre> (the notes under a table) wrap instead of scrolling the page sideways
                    f"<style>pre{{white-space:pre-wrap;overflow-wrap:break-word}}</style></head>"
                    f"<body style='font-family:sans-serif'>{banner}{body}</body></html>")
    return path


CAPTIONS = {  # what each chart measures, shown under its title
    "accuracy": "Share of held-out questions whose boxed case is right with the policy NOT in the prompt (In-Context:"
                " in it). Bars: ours with 95% Wilson intervals; diamonds: the paper's Qwen2.5-VL-7B.",
    "override": "A new tree under the old name, given in context: does the model follow the new rules or its "
                "internalized ones?",
    "policy_in_context": "After training, the policy is put back in the prompt: internalization should not break "
                         "reading it.",
    "branching_error": "How far the condition ids the reasoning cites are from the gold path's (total variation "
                       "distance, %); lower is better.",
    "referral": "How accurately the reasoning cites the policy, scored 0-10 by the rule judge.",
    "perception": "The base abilities a method may forget: existence and counting questions (%), no policy involved.",
}


PERCENT = ("accuracy", "override", "policy_in_context", "branching_error", "perception")


def method_order(names) -> list[str]:
    """Method names in table order: the paper's methods in its order, then the kit's own (policy distillation) in
    the order given."""
    from .paper import METHODS

    names = list(dict.fromkeys(names))
    return [m for m in METHODS if m in names] + [m for m in names if m not in METHODS]


def comparison_figures(results: dict) -> list:
    """One plotly bar chart per evaluation in a pipeline's `results`: ours per method and N (bars, with 95%
    intervals where known), the paper's Qwen2.5-VL-7B number beside it where it reports one (diamonds). Each says
    what it measures; a chart whose bars are all 0 says so instead of drawing an empty axis. Evaluations no method
    has are left out."""
    import plotly.graph_objects as go

    rows = list(results["methods"].values())
    depths = sorted({r["depth"] for r in rows})
    methods = method_order(r["method"] for r in rows)
    row = lambda m, d: next((r for r in rows if r["method"] == m and r["depth"] == d), {})  # noqa: E731
    paper = results.get("paper", {})
    figs = []

    def bars(title, key, paper_key=None, ytitle="accuracy (%)"):
        values = [row(m, d).get(key) for m in methods for d in depths]
        if all(v is None for v in values):
            return
        fig = go.Figure()
        for d in depths:
            ys = [row(m, d).get(key) for m in methods]
            err = None
            cis = [_interval(row(m, d), key) for m in methods]
            if any(ci for ci in cis):  # 95% intervals where measured (a method without this evaluation: none)
                lo = [y - ci[0] if ci and y is not None else 0 for ci, y in zip(cis, ys)]
                hi = [ci[1] - y if ci and y is not None else 0 for ci, y in zip(cis, ys)]
                err = dict(type="data", symmetric=False, array=hi, arrayminus=lo)
            fig.add_trace(go.Bar(name=f"ours N={d}", x=methods, y=ys, error_y=err,
                                 marker_pattern_shape=PATTERNS[depths.index(d) % len(PATTERNS)]))
            ref = paper.get(paper_key, {}) if paper_key else {}
            ref = ref.get(str(d), ref.get(d, {}))
            if ref:
                fig.add_trace(go.Scatter(name=f"paper 7B N={d}", x=methods, y=[ref.get(m) for m in methods],
                                         mode="markers", marker=dict(symbol="diamond", size=11)))
        ns = sorted({n for m in methods for d in depths if (n := _n(row(m, d), key))})
        sub = CAPTIONS.get(key, "") + (f" n = {'/'.join(map(str, ns))} per bar, 95% Wilson intervals." if ns else "")
        fig.update_layout(**title_layout(title, wrap(sub)), barmode="group", yaxis_title=ytitle, height=460)
        if key in PERCENT or key == "referral":
            fig.update_yaxes(**percent_axis(100 if key in PERCENT else 10))
        for a in not_measured([[row(m, d).get(key) for m in methods] for d in depths]):
            fig.add_annotation(a)
        if all(not v for v in values):  # all zero: say why instead of an empty chart
            fig.add_annotation(text=wrap("Every bar is 0 here: no method got any of these right. " +
                                          limits_note(results)), x=0.5, y=0.5, xref="paper", yref="paper",
                               showarrow=False, font=dict(size=14), bgcolor="#fff8e0")
        figs.append(fig)

    bars("Accuracy with no policy in context (In-Context: policy in the prompt)", "accuracy", "accuracy_7b")
    bars("Policy Override: a new tree under the old name, in context", "override", "override_7b")
    bars("Policy back in context after training", "policy_in_context", "in_context_after_7b")
    bars("Branching error (lower is better; TV distance of cited condition IDs, %)", "branching_error",
         ytitle="branching error")
    bars("Policy Referral (rule judge, 0-10)", "referral", "referral_7b", ytitle="score")
    bars("Forgetting: perception and counting accuracy after training (In-Context = base model)", "perception")
    return figs


def not_measured(values: list[list]) -> list[dict]:
    """An 'n/a' annotation over each bar slot with no value (`values`: one list per bar trace, one value per
    category), so an evaluation a method does not have reads as not measured, never as an empty 0% bar."""
    out, k = [], len(values)
    for j, ys in enumerate(values):
        for i, y in enumerate(ys):
            if y is None:  # a category's bars share 0.8 of its width (plotly's bargap 0.2), trace j at its offset
                out.append(dict(x=i - 0.4 + (j + 0.5) * 0.8 / k, y=0, xref="x", yref="y", yanchor="bottom",
                                text="n/a", showarrow=False, font=dict(size=11, color="#666"),
                                hovertext="not measured for this method"))
    return out


def _interval(r: dict, key: str):
    """The 95% interval of evaluation `key` in a results row: the main accuracy's or a secondary one's."""
    return r.get("interval_95") if key == "accuracy" else r.get("intervals", {}).get(key)


def _n(r: dict, key: str):
    return r.get("n") if key == "accuracy" else r.get("ns", {}).get(key)


def rollout_figure(results: dict):
    """PolicyRollout made visible, per RL step of each RL method: the share of groups with no reward variance
    (no learning signal; GRPO's problem), the share PoRo rescued (no correct no-policy completion, a correct
    policy-aware one), and the mean reward of each half. None when no RL method ran."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    runs = [r for r in results["methods"].values() if r.get("rollouts")]
    if not runs:
        return None
    fig = make_subplots(rows=1, cols=2, subplot_titles=("share of groups per step (%)", "mean reward per step"))
    for r in runs:
        steps = [x["step"] for x in r["rollouts"]]
        name = f"{r['method']} N={r.get('depth', '')}"
        pct = lambda k: [None if x[k] is None else 100 * x[k] for x in r["rollouts"]]  # noqa: E731
        fig.add_trace(go.Scatter(x=steps, y=pct("frac_zero_std"), name=f"{name}: zero variance", mode="lines+markers",
                                 line=dict(dash="dot")), row=1, col=1)
        if all("frac_solved" in x for x in r["rollouts"]):
            fig.add_trace(go.Scatter(x=steps, y=pct("frac_solved"), name=f"{name}: solved", mode="lines+markers",
                                     line=dict(dash="dashdot")), row=1, col=1)
        if "PoRo" in r["method"]:
            fig.add_trace(go.Scatter(x=steps, y=pct("frac_rescued"), name=f"{name}: rescued by PoRo",
                                     mode="lines+markers"), row=1, col=1)
        for half, dash in (("no_policy", "solid"), ("policy_aware", "dash")):
            ys = [x[f"reward_{half}"] for x in r["rollouts"]]
            if any(y is not None for y in ys):
                fig.add_trace(go.Scatter(x=steps, y=ys, name=f"{name}: {half.replace('_', '-')} half",
                                         mode="lines+markers", line=dict(dash=dash)), row=1, col=2)
    sub = ("Zero variance: every completion of a prompt got the same reward, so its advantages are 0 and it teaches "
           "nothing; solved: zero variance because every completion was right. Rescued: no no-policy completion was "
           "right but a policy-aware one was, so the pooled group still has a signal, trained on the no-policy "
           "prompt.")
    fig.update_layout(**title_layout("PolicyRollout made visible: what the RL groups saw", wrap(sub),
                                     above_plot=SUBPLOT_TITLE), height=520)
    fig.update_yaxes(**percent_axis(), row=1, col=1)
    fig.update_xaxes(title_text="RL step", **step_axis([x["step"] for r in runs for x in r["rollouts"]]))
    return fig


def wrap(text: str, width: int = 110) -> str:
    import textwrap

    return "<br>".join(textwrap.wrap(text, width))


def limits_note(results: dict) -> str:
    """What limits a run's numbers: on the tiny recipe, the base model's own measured abilities (its card)."""
    if results.get("config", {}).get("recipe") != "tiny":
        return "Check the rollout log (reward per step) and the stage summaries (loss) for what went wrong."
    from .recipes import TINY_MODEL_DIR

    card = Path(TINY_MODEL_DIR) / "eval_results.json"
    if not card.exists():
        return ("The tiny recipe runs on a random stand-in model (assets/tiny-vlm is missing): its answers mean "
                "nothing.")
    ev = json.loads(card.read_text())
    ic = ", ".join(f"{100 * ev[k]:.0f}% at N = {k[12:]}" for k in sorted(ev) if k.startswith("in_context_N") and
                   not k.endswith("majority"))
    return (f"On the tiny recipe the ceiling is the 5M-parameter base model: it follows a policy in context "
            f"{ic} and answers {100 * ev['perception']:.0f}% of perception questions (assets/tiny-vlm/README.md). "
            f"Training stages can only internalize what it can read.")


def efficiency_figure(rows: list[dict], paper: dict | None = None):
    """Prompt tokens and prefill time with the policy in context vs without it, as a function of N: `rows` are
    `efficiency.efficiency` rows (several N, one or more batch sizes). The paper's best reductions go in the
    subtitle."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    fig = make_subplots(rows=1, cols=2, subplot_titles=("prompt tokens per example", "prefill time (s)"))
    for bs in sorted({r["batch_size"] for r in rows}):
        rs = sorted((r for r in rows if r["batch_size"] == bs), key=lambda r: r["depth"])
        x = [f"N={r['depth']}" for r in rs]
        for col, key in ((1, "prompt_tokens"), (2, "prefill_s")):
            if col == 1 and bs != min(r["batch_size"] for r in rows):
                continue  # tokens per example do not depend on the batch size
            for setting, dash in (("in_context", "solid"), ("no_policy", "dot")):
                label = ("policy in context" if setting == "in_context" else "no policy (MPI)")
                fig.add_trace(go.Scatter(x=x, y=[r[f"{key}_{setting}"] for r in rs], mode="lines+markers",
                                         line=dict(dash=dash), legendgroup=f"{setting}{bs}",
                                         name=label + (f", batch {bs}" if col == 2 else "")), row=1, col=col)
    sub = (f"Paper, 7B: up to {paper['prompt_token_reduction_pct']}% fewer prompt tokens, "
           f"{paper['prefill_time_reduction_pct']}% less prefill time." if paper else "")
    fig.update_layout(**title_layout("The cost of carrying the policy", sub, above_plot=SUBPLOT_TITLE), height=440)
    return fig


COLUMN_NAMES = {"N": "N", "depth": "N (tree depth)", "batch_size": "batch size", "variant": "policy text variant",
                "prompt_tokens_in_context": "prompt tokens, policy in context",
                "prompt_tokens_no_policy": "prompt tokens, no policy", "token_reduction_pct": "fewer tokens (%)",
                "prefill_s_in_context": "prefill s, policy in context", "prefill_s_no_policy": "prefill s, no policy",
                "prefill_reduction_pct": "less prefill time (%)",
                "n": "questions", "accuracy": "accuracy (%)", "interval_95": "95% interval (%)",
                "parsed": "parsed answer", "cited": "conditions cited", "pred": "called tool",
                "reason": "why it lost points", "before": "before (%)", "after": "after (%)",
                "change": "change (points)", "majority": "always the commonest answer (%)",
                "paper_7b": "paper 7B (%)", "paper_3b": "paper 3B (%)",
                "reward_mean": "mean reward", "frac_zero_std": "share of groups with equal rewards",
                "reward_no_policy": "reward, no-policy half", "reward_policy_aware": "reward, policy-aware half",
                "rescued_groups": "groups rescued", "mean_length": "mean length (tokens)",
                "acc_no_policy": "right, no-policy half", "acc_policy_aware": "right, policy-aware half",
                "advantage_of_correct": "advantage of the right answer", "prompt_id": "prompt",
                "group_size": "completions per group", "steps_per_second": "steps/s",
                "peak_memory_gib": "peak memory (GiB)", "seconds": "seconds"}


SETTING_NAMES = {"no_policy": "no policy", "in_context": "policy in context", "override": "Policy Override"}


NEGATIVE_SAVING = ("A negative prefill saving means the shorter prompt happened to run slower: on a prompt this "
                   "small the timing noise of the machine is larger than the time the policy costs.")


def column_name(key: str) -> str:
    """A results key as a table header a reader can read: the kit's words for it, else its words unjoined."""
    return COLUMN_NAMES.get(key, key.replace("_", " "))


def cell_text(value):
    """One table cell in words: an interval [low, high] as 'low-high', a path of condition ids as '1 → 1.2', a
    setting in words (`SETTING_NAMES`), a fraction to 3 significant digits and a missing value as 'n/a'; anything
    else as it is."""
    if value is None or value != value:  # None or NaN
        return "n/a"
    if isinstance(value, (list, tuple)):
        if len(value) == 2 and all(isinstance(v, (int, float)) for v in value):
            return f"{value[0]:g}-{value[1]:g}"
        return " → ".join(map(str, value)) or "none"
    if isinstance(value, float) and value != int(value):  # 3 significant digits (one decimal from 100): 0.679, 12.3
        return round(value, 1) if abs(value) >= 100 else float(f"{value:.3g}")
    return SETTING_NAMES.get(value, value) if isinstance(value, str) else value


def frame(rows: list[dict], cols=None):
    """Result rows (one dict each) as a pandas table a class can read: only the columns `cols` (default: every
    key of the first row), headers in words (`column_name`), cells in words (`cell_text`)."""
    import pandas as pd

    cols = list(cols or rows[0])
    return pd.DataFrame([[cell_text(r.get(c)) for c in cols] for r in rows], columns=[column_name(c) for c in cols])


def datasets_note(datasets: dict) -> str:
    """A data build's rows per kind and split (its summary's "datasets", e.g. {'qa': {'train': 144, 'test': 36}})
    as lines a class reads: 'qa: 144 train, 36 test'."""
    width = max(map(len, datasets), default=0)
    counts = lambda splits: ", ".join(f"{n:,} {SETTING_NAMES.get(s, s)}" for s, n in splits.items())  # noqa: E731
    return "rows written, per kind and split:\n" + "\n".join(
        f"  {kind + ':':<{width + 1}} {counts(splits)}" for kind, splits in datasets.items())


def efficiency_frame(rows: list[dict]):
    """`efficiency.efficiency` rows as a pandas table of at most seven columns: N, batch size, prompt tokens and
    prefill time as 'policy in context → no policy', and what leaving the policy out saves (%)."""
    import pandas as pd

    depth = lambda e: e.get("depth", e.get("N"))  # noqa: E731
    variants = {e.get("variant") for e in rows}
    out = [{**({"N (tree depth)": depth(e)} if any(depth(x) is not None for x in rows) else {}),
            **({"policy text variant": e.get("variant")} if len(variants) > 1 else {}),
            "batch size": e["batch_size"],
            "prompt tokens (policy in context → no policy)":
                f"{e['prompt_tokens_in_context']:,} → {e['prompt_tokens_no_policy']:,}",
            "fewer tokens (%)": e["token_reduction_pct"],
            "prefill ms (policy in context → no policy)":
                f"{1000 * e['prefill_s_in_context']:.1f} → {1000 * e['prefill_s_no_policy']:.1f}",
            "less prefill time (%)": e["prefill_reduction_pct"]} for e in rows]
    return pd.DataFrame(out)


def efficiency_note(rows: list[dict]) -> str:
    """What an efficiency table's numbers are, in a sentence, and why a negative prefill saving is no cost of
    leaving the policy out (timing noise on a small prompt)."""
    note = ("Prefill is the model's forward pass over the prompt before its first new token (the median of a few "
            "timed passes after a warm-up).")
    if any((e.get("prefill_reduction_pct") or 0) < 0 for e in rows):
        note += " " + NEGATIVE_SAVING
    return note


def efficiency_table(rows: list[dict]) -> str:
    """`efficiency.efficiency` rows as an HTML table with readable headers; a negative saving gets a note, as the
    shorter prompt running slower is timing noise, not a cost of leaving the policy out."""
    cols = [c for c in rows[0] if c != "N" or "depth" not in rows[0]]
    out = ("<table border=1 cellpadding=4><tr>" + "".join(f"<th>{html.escape(column_name(c))}</th>" for c in cols)
           + "</tr>" + "".join("<tr>" + "".join(f"<td>{e[c]}</td>" for c in cols) + "</tr>" for e in rows)
           + "</table>")
    if any((e.get("prefill_reduction_pct") or 0) < 0 for e in rows):
        out += f"<p><i>{NEGATIVE_SAVING}</i></p>"
    return out


def paired(results: dict, alpha: float = 0.05) -> list[dict]:
    """Every pair of methods at one N scored on the same rows (their results' per-row outcomes), with its exact
    McNemar p: whether two methods differ is a question about the rows they disagree on, not about two intervals."""
    from .stats import discordant, mcnemar_exact

    by_depth: dict = {}
    for r in results["methods"].values():
        if r.get("rows"):
            by_depth.setdefault(r.get("depth", "GTA"), []).append(r)
    out = []
    for d, rs in sorted(by_depth.items(), key=lambda kv: str(kv[0])):
        for i, a in enumerate(rs):
            for b in rs[i + 1:]:
                ca = {x["id"]: x["correct"] for x in a["rows"]}
                cb = {x["id"]: x["correct"] for x in b["rows"]}
                ids = [k for k in ca if k in cb]
                if not ids:
                    continue
                xa, xb = [ca[k] for k in ids], [cb[k] for k in ids]
                (hi, xh), (lo, xl) = sorted([(a, xa), (b, xb)], key=lambda m: -sum(m[1]))
                p = mcnemar_exact(xh, xl)
                out.append({"depth": d, "higher": hi["method"], "lower": lo["method"], "n": len(ids),
                            "discordant": list(discordant(xh, xl)), "p": p, "differ": p < alpha,
                            "acc_higher": 100 * sum(xh) / len(ids), "acc_lower": 100 * sum(xl) / len(ids)})
    return out


def differences_note(results: dict) -> str:
    """Which methods differ: the paired test on shared rows when results keep them, else non-overlapping
    intervals (results written before per-row outcomes were kept)."""
    tests = paired(results)
    if tests:
        hits = [f"N={t['depth']}: {t['higher']} {t['acc_higher']:.1f} > {t['lower']} {t['acc_lower']:.1f} "
                f"(p = {t['p']:.3g})" for t in tests if t["differ"]]
        return ("\ndiffer (exact McNemar on the same rows, p < 0.05): " + "; ".join(hits) if hits else
                "\nno two methods differ (exact McNemar on the same rows, p < 0.05)")
    notes = beyond(results)
    return ("\nbeyond the intervals: " + "; ".join(notes) if notes else
            "\nno two methods differ beyond their 95% intervals at this n")


def counted(n: int, word: str) -> str:
    """A count with its noun, plural when it is not one: '1 group', '4 groups'."""
    return f"{n} {word}{'' if n == 1 else 's'}"


def rl_groups_note(results: dict) -> str:
    """What the RL groups saw, one line per RL method over its first quarter of steps, as counts of groups: those
    with zero reward variance (no learning signal), how many of those were solved (every completion right: nothing
    left to learn) and, for PoRo, those it rescued (no-policy half all wrong, policy-aware half right), with the
    reason when they leave RL little to work with."""
    out = []
    for key, r in results["methods"].items():
        ro = r.get("rollouts") or []
        if not ro:
            continue
        first = ro[:max(1, len(ro) // 4)]
        groups = round(sum(x["groups"] or 0 for x in first))
        count = lambda k: round(sum((x.get(k) or 0) * (x["groups"] or 0) for x in first))  # noqa: E731
        steps = "first RL step" if len(first) == 1 else f"first {len(first)} RL steps"
        zero = count("frac_zero_std")
        line = f"{key}: {steps}, {zero} of {counted(groups, 'group')} with zero reward variance"
        solved = count("frac_solved") if "frac_solved" in first[0] else None
        if solved is not None:  # zero variance either way: all right (solved) or all wrong (no signal yet)
            line += f" ({solved} solved: every completion right; {max(0, zero - solved)} all wrong or all equal)"
        if "PoRo" in r["method"]:
            rescued = count("frac_rescued")
            line += f", {rescued} rescued by PolicyRollout"
            acc = [x.get("acc_no_policy") for x in first if x.get("acc_no_policy") is not None]
            if 5 * rescued < groups and acc:
                line += (f" (a group is rescued only when its no-policy half is all wrong; that half was right "
                         f"{100 * sum(acc) / len(acc):.0f}% of the time)")
        if solved is not None and 2 * solved >= groups:
            line += ": the model RL starts from already answers most prompts, so RL has little left to learn"
        out.append(line)
    return ("\nRL groups: " + "; ".join(out)) if out else ""


def beyond(results: dict) -> list[str]:
    """Pairs of methods at one N whose 95% intervals do not overlap, higher first: the differences that are not
    noise at this n."""
    by_depth: dict = {}
    for r in results["methods"].values():
        if "interval_95" in r:
            by_depth.setdefault(r.get("depth", "GTA"), []).append(r)
    out = []
    for d, rs in sorted(by_depth.items(), key=lambda kv: str(kv[0])):
        for a in rs:
            for b in rs:
                if a["interval_95"][0] > b["interval_95"][1]:
                    out.append(f"N={d}: {a['method']} {a['accuracy']:.1f} > {b['method']} {b['accuracy']:.1f}")
    return out
