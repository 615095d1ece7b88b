"""Rollout inspector: look at an RL run's rollout log one group at a time, in plots and a widget.

The tables are `mpi_kit.rollout_log`'s (plain pandas, re-exported here); `rollout_figures` plots the run over
steps, and `RolloutInspector` is the widget (built-in ipywidgets only; it works on a recorded run, with no model
and no GPU, for any task: ClevrPolicy or GTAPolicy). `pack_run` / `record_demo_run` make the small recorded run
shipped in assets/rollouts (`mpi_kit.recorded_run`).
"""
from __future__ import annotations

import difflib
import html
from pathlib import Path

import pandas as pd

from .charts import PATTERNS, step_axis, title_layout
from .recorded_run import ASSET_RUN, CHECKOUT, DEMO, pack_run, portable, record_demo_run  # noqa: F401
from .rollout_log import (NO_POLICY, OUTCOMES, POLICY_AWARE, REWARD_COLUMNS, answer_text, filter_groups,  # noqa: F401
                          filter_rows, find_data_dir, group_outcomes, group_table, load_rollouts, policy_rescues,
                          group_arithmetic, rescore, run_summary, step_stats, summary_table)
from .widgets import beside, wrapping

SOURCE_COLOR = {NO_POLICY: "#3b6fb6", POLICY_AWARE: "#b5651d"}
SHORT = {"format_reward": "fmt", "accuracy_reward": "acc"}


def outcome_figure(df: pd.DataFrame, title: str = "where the accuracy reward came from"):
    """Stacked bars of `group_outcomes` over steps, each outcome coloured and hatched (told apart without colour)."""
    import plotly.graph_objects as go

    o = group_outcomes(df)
    colors = (SOURCE_COLOR[NO_POLICY], SOURCE_COLOR[POLICY_AWARE], "#bbbbbb")
    fig = go.Figure([go.Bar(x=o.index, y=o[c], name=c, marker_color=k, marker_pattern_shape=PATTERNS[i])
                     for i, (c, k) in enumerate(zip(OUTCOMES, colors))])
    fig.update_layout(**title_layout(title), barmode="stack", xaxis_title="step", yaxis_title="groups", height=300)
    fig.update_layout(margin=dict(l=40, r=20, b=40), xaxis=step_axis(o.index))
    return fig


# ------------------------------------------------------------------------------------------------ figures

def rollout_figures(df: pd.DataFrame, title: str = "") -> list:
    """Plotly figures over steps: reward mean +- std, fraction of zero-std groups (and truncated completions),
    format vs accuracy reward, and no-policy vs policy-aware reward and accuracy. Show them with `fig.show()`."""
    import plotly.graph_objects as go

    s = step_stats(df)
    x = s["step"]
    pre = f"{title}: " if title else ""

    def fig(name, traces, **kw):
        f = go.Figure(traces)
        f.update_layout(**title_layout(pre + name), height=300, xaxis=dict(title="step", **step_axis(x)), **kw)
        f.update_layout(margin=dict(l=40, r=20, b=40))
        return f

    lines = lambda col, name, **kw: go.Scatter(x=x, y=s[col], mode="lines+markers", name=name, **kw)
    figs = [
        fig("reward (mean ± std over completions)",
            [go.Scatter(x=x, y=s["reward_mean"], error_y=dict(type="data", array=s["reward_std"]),
                        mode="lines+markers", name="reward")], yaxis_title="reward"),
        fig("groups with no learning signal", [lines("frac_zero_std", "zero-std groups"),
                                               lines("frac_truncated", "truncated completions")],
            yaxis=dict(range=[-0.05, 1.05], title="fraction")),
        fig("format vs accuracy reward", [lines(c.removesuffix("_reward"), c.removesuffix("_reward"))
                                          for c in REWARD_COLUMNS if c.removesuffix("_reward") in s],
            yaxis=dict(range=[-0.05, 1.05], title="mean reward")),
    ]
    if (df["source"] == POLICY_AWARE).any():
        figs.append(fig("PolicyRollout: the two halves of each group", [
            lines("reward_no_policy", "reward, no-policy", line=dict(color=SOURCE_COLOR[NO_POLICY])),
            lines("reward_policy_aware", "reward, policy-aware", line=dict(color=SOURCE_COLOR[POLICY_AWARE])),
            lines("acc_no_policy", "accuracy, no-policy", line=dict(color=SOURCE_COLOR[NO_POLICY], dash="dot")),
            lines("acc_policy_aware", "accuracy, policy-aware",
                  line=dict(color=SOURCE_COLOR[POLICY_AWARE], dash="dot"))],
            yaxis=dict(range=[-0.05, 1.05], title="mean")))
    return figs


# ------------------------------------------------------------------------------------------------ HTML pieces

def diff_html(old: str, new: str) -> str:
    """`new` with the words that are not in `old` highlighted (how a completion drifted since an earlier step)."""
    a, b = old.split(" "), new.split(" ")
    out = []
    for op, _, _, j1, j2 in difflib.SequenceMatcher(a=a, b=b, autojunk=False).get_opcodes():
        words = html.escape(" ".join(b[j1:j2]))
        out.append(words if op == "equal" else f"<span style='background:#fff3b0'>{words}</span>" if words else "")
    return " ".join(w for w in out if w)


CARD_FONT_PX = 13  # readable from the back of a room on a projector
CARD_MIN_PX = 130  # a card never narrower: a half's cards go onto a second row instead
CARDS_MIN_PX = 420  # the cards' room beside the scene; narrower, they move below it
COMPACT_CHARS = 80  # a compact card's text: its end, where the last step and the \boxed{} answer are


def shown_text(text: str, max_chars: int = 700, tail: int = 160) -> str:
    """A completion cut to `max_chars` for a card, keeping its end: the answer (`\\boxed{}`) comes last, so a long
    completion loses the middle of its reasoning, never its answer."""
    if len(text) <= max_chars:
        return text
    return text[:max_chars - tail] + " […] " + text[-tail:]


def completion_card(row, base: str | None = None, dim: bool = False, max_chars: int = 700,
                    noted: bool = False, badge: str = "", compact: bool = False) -> str:
    """One completion as an HTML card: source, rewards, advantage, length, truncation, parsed vs gold, and the
    whole text (no inner scroll: the card grows, so the answer at the end shows). `noted`: the group's note (see
    `advantage_note`) explains this card's advantage; `badge`: a line saying what the update does with it.
    `compact`: the text's last COMPACT_CHARS (the last step and the answer) with the whole completion one click
    away, so a group of 2G cards fits a projector's screen."""
    color = SOURCE_COLOR.get(row["source"], "#555")
    adv = float(row["advantage"])
    bar = (f"<div style='height:6px;background:#eee'><div style='height:6px;width:{min(abs(adv), 2) * 50:.0f}%;"
           f"background:{'#2a9d3f' if adv > 0 else '#c0392b'}'></div></div>")
    ok = "✓" if row["correct"] else "✗"
    text = shown_text(row["text"], max_chars)
    body = diff_html(base, text) if base is not None else html.escape(text)
    if compact and base is None and len(row["text"]) > COMPACT_CHARS:  # highlighted changes show in full
        body = (f"[…] {html.escape(row['text'][-COMPACT_CHARS:])}<details><summary style='cursor:pointer;"
                f"color:#555'>whole completion</summary>{body}</details>")
    body = body.replace("&lt;/think&gt;", "&lt;/think&gt;<wbr>")  # a narrow card breaks before \boxed{, not in it
    flags = " · <b style='color:#c0392b'>truncated</b>" if row["truncated"] else ""
    rewards = " ".join(f"{SHORT.get(c, c)} {row[c]:.2g}" for c in REWARD_COLUMNS if c in row)
    note = f"<div style='background:#e6f4ea;font-weight:bold;margin:2px 0'>{html.escape(badge)}</div>" if badge else ""
    return (f"<div style='border:2px solid {color};border-radius:6px;padding:4px;min-width:0;"
            f"font-size:{CARD_FONT_PX}px;line-height:1.3;opacity:{0.35 if dim else 1}'>"
            f"<div style='color:{color};font-weight:bold'>{row['source']}</div>{note}"
            f"reward <b>{row['reward']:.2f}</b> ({rewards}) · adv <b>{adv:+.2f}</b>"
            f"{' <i>(why? see the note)</i>' if noted else ''}{bar}"
            f"len {row['length']}{flags}<br>answer <b>{html.escape(answer_text(row['parsed_answer']))}</b> {ok} "
            f"gold {html.escape(answer_text(row['gold'], 'unknown'))}"
            f"<div style='white-space:pre-wrap;overflow-wrap:break-word;font-size:{CARD_FONT_PX}px;"
            f"background:#fafafa;margin-top:3px'>{body}</div></div>")


def advantage_note(group: pd.DataFrame) -> str:
    """Why a wrong answer can get a positive advantage, in words, for the group on screen ("" if none does).
    GRPO's advantage is a completion's reward minus the mean of its whole group (PolicyRollout pools both halves),
    so a wrong but well-formed answer is pushed up when the rest of the group, e.g. a garbled policy-aware half,
    scored less: it is rewarded for its format, not for its answer."""
    up = group[~group["correct"].astype(bool) & (group["advantage"] > 0)]
    if up.empty:
        return ""
    one = len(up) == 1
    it, they = ("it", "it scores") if one else ("them", "they score")
    mean, r = group["reward"].mean(), up["reward"].max()
    pooled = ", both halves pooled" if group["source"].nunique() > 1 else ""
    why = (f"{'A wrong answer gets' if one else f'{len(up)} wrong answers get'} a positive advantage here. "
           f"Advantages are relative to the group's mean reward ({mean:.2f}{pooled}), and {they} "
           f"{'' if one else 'up to '}{r:.2f}")
    format_only = {"format_reward", "accuracy_reward"} <= set(up.columns) and bool(
        (up["format_reward"] > 0).all() and (up["accuracy_reward"] == 0).all())
    if format_only:
        why += " from the format reward alone"
    aware = group[group["source"] == POLICY_AWARE]
    if len(aware) and (up["source"] == NO_POLICY).all() and aware["reward"].mean() < up["reward"].min():
        garbled = int((aware["format_reward"] == 0).sum()) if "format_reward" in aware else 0
        why += (f"; the policy-aware half averaged {aware['reward'].mean():.2f}"
                + (f" ({garbled} of {len(aware)} not well formed)" if garbled else "")
                + f", which pulls the mean below {it}")
    if format_only:
        return why + f". So GRPO pushes {it} up for the format, not for the answer."
    return why + f". Beating the mean is all GRPO looks at, so it pushes {it} up, right answer or not."


RESCUED = ("rescued by PolicyRollout: the no-policy half failed, the policy-aware half succeeded; its completions "
           "are trained on the no-policy prompt, so the update pushes the model toward the right answer without "
           "the policy in view.")
HALF_WORDS = {NO_POLICY: "no-policy half: sampled without the policy, as the model is tested",
              POLICY_AWARE: "policy-aware half: sampled with the policy in the prompt, trained without it"}


def is_rescued(group: pd.DataFrame) -> bool:
    """Did PolicyRollout rescue this group: no no-policy completion right, a policy-aware one right? (The test of
    `policy_rescues`: without the policy-aware half the group's accuracy reward would be all 0.)"""
    halves = [group[group["source"] == s]["correct"].astype(bool) for s in (NO_POLICY, POLICY_AWARE)]
    return all(len(h) for h in halves) and not halves[0].any() and bool(halves[1].any())


def group_html(group: pd.DataFrame, keep: set | None = None, base: pd.DataFrame | None = None,
               compact: bool = False) -> str:
    """A group's completions, each half's G cards in one row (no-policy half first), under a header saying when
    PolicyRollout rescued the group and what the update does with it. Completions not in `keep` (row index) are
    dimmed; with `base` (the same prompt at an earlier step), each card highlights the words changed since."""
    note, rescued = advantage_note(group), is_rescued(group)
    box = "padding:4px 8px;margin-bottom:6px;font-size:13px"
    lines = [f"<div style='background:#e6f4ea;border-left:4px solid #2a9d3f;{box}'><b>{html.escape(RESCUED)}</b>"
             f"</div>"] if rescued else []
    if note:
        lines.append(f"<div style='background:#fff8e1;border-left:4px solid #f39c12;{box}'>{html.escape(note)}</div>")
    both = group["source"].nunique() > 1
    for source in (NO_POLICY, POLICY_AWARE):
        half = group[group["source"] == source]
        earlier = base[base["source"] == source]["text"].tolist() if base is not None else []
        if not len(half):
            continue
        cards = [completion_card(r, earlier[i] if i < len(earlier) else None, keep is not None and k not in keep,
                                 noted=bool(note) and not r["correct"] and r["advantage"] > 0,
                                 badge="rescues the group: trained on the no-policy prompt"
                                 if rescued and source == POLICY_AWARE and r["correct"] else "", compact=compact)
                 for i, (k, r) in enumerate(half.iterrows())]
        if both:
            lines.append(f"<div style='font-size:13px;color:{SOURCE_COLOR[source]}'>{HALF_WORDS[source]}</div>")
        lines.append(f"<div style='display:grid;grid-template-columns:repeat(auto-fit, minmax({CARD_MIN_PX}px, 1fr));"
                     f"gap:6px;margin-bottom:6px'>{''.join(cards)}</div>")
    return "".join(lines)


# ------------------------------------------------------------------------------------------------ the widget

def arithmetic_html(a: dict) -> str:
    """The selected group's advantage arithmetic as a small table: each completion's half, reward and advantage
    (recomputed by `mpi_kit.advantages`, beside the one the run logged), with the group's mean and std."""
    formula = {"group": "(reward - mean) / (std + 1e-4)", "batch": "(reward - mean) / (batch std + 1e-4)",
               "none": "reward - mean"}[a["scale"]]
    td = "<td style='padding:1px 10px'>"  # columns apart: "reward advantage logged", not "rewardadvantagelogged"
    cells = "".join(f"<tr>{td}{k + 1}</td>{td}{html.escape(str(r.source))}</td>{td}{r.reward:.2f}</td>"
                    f"{td}<b>{r.advantage:+.2f}</b></td>{td}{r.logged:+.2f}</td></tr>"
                    for k, r in enumerate(a["rows"].itertuples()))
    head = "".join(f"<th style='padding:1px 10px'>{h}</th>" for h in ("#", "half", "reward", "advantage", "logged"))
    return (f"<div style='font-size:13px'><b>Advantage arithmetic</b> ({html.escape(a['rule'])}, scale "
            f"{html.escape(a['scale'])}): mean reward <b>{a['mean']:.3f}</b>, std <b>{a['std']:.3f}</b>; advantage = "
            f"{formula}, from <code>mpi_kit.advantages</code>."
            f"<table style='border-collapse:collapse'><tr>{head}</tr>{cells}</table></div>")


try:
    import ipywidgets as _w
    _Box = _w.VBox
except ImportError:  # pragma: no cover - the pure functions above still work
    _w, _Box = None, object


class RolloutInspector(_Box):
    """One group at a time: its scene image (and policy path), its 2G completions side by side, a step slider
    to watch the same prompt drift, filters, and a reward playground that re-scores an edited completion.

        RolloutInspector("runs/poro_grpo")          # or RolloutInspector(df) for an already loaded log
    """

    def __init__(self, run, data_dir=None, image_width: int = 240):
        w = _w
        self.run_dir = None if isinstance(run, pd.DataFrame) else Path(run)
        self.df = run if isinstance(run, pd.DataFrame) else load_rollouts(run)
        self.data_dir = find_data_dir(self.run_dir, data_dir) if self.run_dir else data_dir
        self.image_width = image_width
        from .tasks import task_of_log

        self.view = None if self.data_dir is None else \
            task_of_log(self.df.columns).prompt_view(self.data_dir, image_width)  # ClevrPolicy: the scene
        self.groups = group_table(self.df)
        self.visible = self.groups
        self._quiet = False  # set while a handler updates other controls, so their observers wait

        self.zero_std = w.Checkbox(False, description="zero-std groups", indent=False)
        self.rescued = w.Checkbox(False, description="rescued by PoRo", indent=False)
        self.truncated = w.Checkbox(False, description="truncated", indent=False)
        self.wrong = w.Checkbox(False, description="wrong answers", indent=False)
        sources = ["all"] + [s for s in (NO_POLICY, POLICY_AWARE) if (self.df["source"] == s).any()]
        self.source = w.Dropdown(options=sources, value="all", description="source", layout=w.Layout(width="220px"))
        self.prompt = w.Dropdown(description="prompt", layout=w.Layout(width="420px"))
        self.step = w.SelectionSlider(options=[0], description="step", continuous_update=False)
        self.drift = w.Checkbox(False, description="highlight changes since first step", indent=False)
        self.compact = w.Checkbox(True, description="compact cards (each card's end; click for the whole text)",
                                  indent=False, layout=w.Layout(width="auto"))
        self.count = w.HTML()
        self.scene = w.HTML()
        # the room beside the scene; below it when that room is under CARDS_MIN_PX (a narrow window)
        self.cards = w.HTML(layout=beside(CARDS_MIN_PX))
        self.pick = w.Dropdown(description="completion", layout=w.Layout(width="300px"))
        self.edit = w.Textarea(layout=w.Layout(width="calc(100% - 4px)", height="90px"))  # its margins inside the box
        self.gold = w.Text(description="gold", placeholder="exact, e.g. Case 13", layout=w.Layout(width="220px"))
        self.score = w.HTML()
        self.arith = w.HTML()
        summary = run_summary(self.run_dir) if self.run_dir else {}
        self.policy_rollout = bool(summary.get("policy_rollout", (self.df["source"] == POLICY_AWARE).any()))
        self.scale = summary.get("scale_rewards", "group")  # the recipe's GRPO scale_rewards (TRL's default)

        for c in (self.zero_std, self.rescued, self.truncated, self.wrong, self.source):
            c.observe(self._refilter, names="value")
        self.prompt.observe(self._new_prompt, names="value")
        for c in (self.step, self.drift, self.compact):
            c.observe(self._show, names="value")
        self.pick.observe(self._load_playground, names="value")
        for c in (self.edit, self.gold):
            c.observe(self._rescore, names="value")

        head = self._header()
        super().__init__([
            w.HTML(head),
            # PolicyRollout's controls only for a run that has a policy-aware half
            w.HBox([self.zero_std, self.rescued, self.truncated, self.wrong, self.source] if self.policy_rollout
                   else [self.zero_std, self.truncated, self.wrong], layout=wrapping()),
            w.HBox([self.prompt, self.count], layout=wrapping()),
            w.HBox([self.step, self.drift, self.compact], layout=wrapping()),
            w.HBox([self.scene, self.cards], layout=wrapping()),
            self.arith,
            w.HTML("<b>Reward playground</b>: edit a completion (or the gold answer) and watch it re-scored "
                   "with the kit's reward functions, and the advantage it would get in its group."),
            w.HBox([self.pick, self.gold]), self.edit, self.score])
        self._refilter()

    # -------------------------------------------------------------- state
    def _header(self) -> str:
        s = run_summary(self.run_dir) if self.run_dir else {}
        bits = [f"{k}: <b>{s[k]}</b>" for k in ("stage", "recipe", "steps", "G", "group_size") if k in s]
        n = self.df["group"].nunique()
        where = f"images from {self.data_dir}" if self.data_dir else "no data folder found: no scene images"
        return f"{' · '.join(bits)}{' · ' if bits else ''}{n} groups, {len(self.df)} completions · {where}"

    def current_group(self) -> pd.DataFrame:
        """The completions of the group on screen (all of them, filtered or not)."""
        v = self.visible
        hits = v[(v["prompt_id"] == self.prompt.value) & (v["step"] == self.step.value)]
        if hits.empty:
            return self.df.iloc[:0]
        return self.df[self.df["group"] == hits["group"].iloc[-1]]  # the last attempt: the one trained on

    def _refilter(self, _=None):
        filters = dict(zero_std=self.zero_std.value, rescued=self.rescued.value, truncated=self.truncated.value,
                       source=self.source.value, wrong=self.wrong.value)
        self.kept = set(filter_rows(self.df, **filters).index)
        self.visible = filter_groups(self.df, self.groups, **filters)
        prompts = list(dict.fromkeys(self.visible["prompt_id"]))
        self.count.value = f"&nbsp;{len(self.visible)} of {self.df['group'].nunique()} groups match"
        old = self.prompt.value
        self._quiet = True
        self.prompt.options = prompts
        self.prompt.value = old if old in prompts else (prompts[0] if prompts else None)
        self._quiet = False
        self._new_prompt()

    def _new_prompt(self, _=None):
        steps = sorted(set(self.visible[self.visible["prompt_id"] == self.prompt.value]["step"])) or [0]
        if self._quiet:
            return
        old = self.step.value
        self._quiet = True
        self.step.options = steps
        self.step.value = old if old in steps else steps[0]
        self._quiet = False
        self._show()

    def _show(self, _=None):
        if self._quiet:
            return
        g = self.current_group()
        if g.empty:  # clear everything, the playground included: nothing on screen may belong to an old group
            self.scene.value = ""
            self.cards.value = "<i>No group matches these filters: untick one to see groups again.</i>"
            self.pick.options = []
            self.edit.value, self.gold.value = "", ""
            self.last_score = None
            self.score.value = "<i>Nothing to re-score: no group matches the filters.</i>"
            return
        self.scene.value = self._scene_html(g.iloc[0])
        self.arith.value = arithmetic_html(group_arithmetic(g, self.policy_rollout, self.scale))
        base = None
        if self.drift.value:
            first = self.visible[self.visible["prompt_id"] == self.prompt.value]["group"].iloc[0]
            base = self.df[self.df["group"] == first]
        self.cards.value = group_html(g, self.kept, base, compact=self.compact.value)
        self.pick.options = [(f"#{i} {r['source']} (reward {r['reward']:.2f})", k)
                             for i, (k, r) in enumerate(g.iterrows())]
        self.pick.value = g.index[0]
        self._load_playground()

    def _scene_html(self, row) -> str:
        g = self.current_group()
        head = (f"<b>{html.escape(str(row['prompt_id']))}</b><br>step {row['step']} · attempt {row['attempt']} · "
                f"gold <b>{html.escape(answer_text(row['gold'], 'unknown'))}</b><br>reward {g['reward'].mean():.2f} ± "
                f"{g['reward'].std(ddof=0):.2f}{' · <b>zero std</b>' if g['reward'].nunique() <= 1 else ''}<br>")
        view = self.view(row) if self.view is not None else None
        if view is None:
            return head + "<i>(no scene image: data folder not found)</i>"
        return f"<div style='width:{self.image_width + 10}px'>{head + view}</div>"

    def _load_playground(self, _=None):
        if self.pick.value is None or self.pick.value not in self.df.index:
            return
        row = self.df.loc[self.pick.value]
        with self.hold_trait_notifications():
            self.gold.value = answer_text(row["gold"], "")
            self.edit.value = row["text"]
        self._rescore()

    def _rescore(self, _=None):
        g = self.current_group()
        if self.pick.value is None or g.empty or self.pick.value not in g.index:
            self.score.value = ""
            return
        rows = group_arithmetic(g, self.policy_rollout, self.scale)["rows"]  # the trainer's order: no-policy first
        i = list(rows.index).index(self.pick.value)
        r = rescore(self.edit.value, self.gold.value, rows["reward"].tolist(), i, task=self.df["task"].iloc[0],
                    policy_rollout=self.policy_rollout, scale=self.scale)
        logged = g.loc[self.pick.value]
        self.last_score = r
        near = r["parsed_answer"] and r["accuracy_reward"] == 0 and \
            str(r["parsed_answer"]).strip().lower() == self.gold.value.strip().lower()
        hint = (" · <i>answers are compared exactly: letter case and spaces count</i>" if near else "")
        self.score.value = (f"format <b>{r['format_reward']:.2g}</b> · accuracy <b>{r['accuracy_reward']:.2g}</b> · "
                            f"reward <b>{r['reward']:.2f}</b> (logged {logged['reward']:.2f}) · parsed "
                            f"<b>{html.escape(answer_text(r['parsed_answer']))}</b> · advantage in this group "
                            f"<b>{r['advantage']:+.2f}</b> (logged {logged['advantage']:+.2f})" + hint)


__all__ = ["load_rollouts", "find_data_dir", "group_table", "filter_rows", "filter_groups", "step_stats",
           "policy_rescues", "group_outcomes", "outcome_figure", "rescore", "answer_text", "advantage_note",
           "is_rescued", "group_html", "completion_card",
           "rollout_figures", "RolloutInspector", "pack_run", "portable", "record_demo_run",  # recorded_run's
           "summary_table", "ASSET_RUN"]
