"""Issue 32, what a learner sees: the report says how to see its charts where JupyterLab will not run them, no
chart prints text over its plot (titles in the margin, headroom over 100%, whole-number steps, the tree's legend
off its root), a missing value reads n/a, categories are told apart without colour, tables have readable headers,
images have alt text, and the rollout inspector fits a projector and names the groups PolicyRollout rescued."""
import json
import re
from pathlib import Path

import pytest

from mpi_kit.inspector import (ASSET_RUN, RolloutInspector, completion_card, group_html, is_rescued, load_rollouts,
                               outcome_figure, policy_rescues, rollout_figures)
from mpi_kit.report import comparison_figures, efficiency_figure, errors_figure, pipeline_report, rollout_figure
from mpi_kit.training import loss_figure

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "assets" / "demo" / "results.json"


@pytest.fixture(scope="module")
def results():
    return json.loads(DEMO.read_text())


@pytest.fixture(scope="module")
def df():
    return load_rollouts(ASSET_RUN)


# ------------------------------------------------------------------------------------------ the report page

def visible_text(page: str) -> str:
    """What a browser shows with scripts off: the page without its <script> and <style> elements and tags."""
    page = re.sub(r"<(script|style)\b.*?</\1>", "", page, flags=re.S)
    return re.sub(r"<[^>]+>", " ", page)


def test_the_report_says_how_to_see_its_charts_and_has_a_title(results, tmp_path):
    page = pipeline_report(tmp_path, results).read_text()
    assert re.search(r"<head>.*<title>mpi-kit report[^<]*</title>.*</head>", page, flags=re.S)
    shown = visible_text(page)
    assert "Charts need JavaScript" in shown and "Trust HTML" in shown and "open it in a browser" in shown
    # the banner comes before any chart, and the first script (there only where scripts run) removes it
    banner = page.index("id='needs-js'")
    first_script = page.index("<script")
    assert banner < first_script and "getElementById('needs-js').remove()" in page[first_script:first_script + 80]


# ------------------------------------------------------------------------------------------ chart text

TITLE, SUB, LINE, SUB_GAP = 17, 12, 1.3, 1.6  # plotly's title and subtitle font sizes and its spacings
SUBPLOT_TITLES = 20  # the row of subplot titles over a make_subplots plot


def title_block(fig) -> float:
    """Pixels from the figure's top to the last line of its title or subtitle, as plotly draws a title pinned to
    the top (yref container, y 1, yanchor top)."""
    t = fig.layout.title
    lines = lambda s: s.count("<br>") + 1 if s else 0
    sub = t.subtitle.text if t.subtitle else ""
    h = (t.pad.t or 0) + lines(t.text) * (t.font.size or TITLE) * LINE
    return h + (SUB_GAP * SUB + lines(sub) * SUB * LINE if sub else 0)


def assert_title_clear_of_plot(fig, above_plot: float = 0):
    t = fig.layout.title
    assert (t.yref, t.y, t.yanchor) == ("container", 1, "top"), "a title centred in the margin hangs into the plot"
    if t.subtitle and t.subtitle.text:
        assert t.subtitle.font.size == SUB
    assert fig.layout.margin.t >= title_block(fig) + above_plot + 8, (t.text, fig.layout.margin.t)


def figures(results, df):
    """(figure, pixels it needs between title and plot: subplot titles or a legend row) for every kit chart."""
    figs = [(f, 0) for f in comparison_figures(results)]
    figs += [(rollout_figure(results), SUBPLOT_TITLES), (errors_figure(results), 0)]
    eff = [dict(e, N=int(n)) for n, es in results["efficiency"].items() for e in es]
    figs.append((efficiency_figure(eff, results["paper"]["efficiency"]), SUBPLOT_TITLES))
    figs += [(f, 0) for f in rollout_figures(df, "PoRo")] + [(outcome_figure(df), 0)]
    figs.append((loss_figure({"CoT SFT": {"loss": [{"step": s, "loss": 1 / s} for s in (1, 2, 3)]}}), 0))
    return figs


# ------------------------------------------------------------------------------------------ missing values, colour

# ------------------------------------------------------------------------------------------ the rollout inspector

def rescued_group(df):
    key = policy_rescues(df)["group"].iloc[0]
    return df[df["group"] == key]


def test_each_half_sits_in_one_row_of_G_cards(df):
    g = rescued_group(df)
    page = group_html(g)
    rows = re.findall(r"grid-template-columns:repeat\((\d+), minmax\(0, 1fr\)\)", page)
    assert rows == [str((g["source"] == s).sum()) for s in g["source"].unique()] == ["4", "4"]
    assert "flex-wrap:wrap" not in page and "width:230px" not in page


def test_card_text_is_readable_and_whole(df):
    g = rescued_group(df)
    page = group_html(g)
    sizes = [int(x) for x in re.findall(r"font-size:(\d+)px", page)]
    assert sizes and min(sizes) >= 13
    assert "max-height" not in page and "overflow:auto" not in page  # no inner scroll hiding the answer
    assert page.count("\\boxed{") == len(g)  # every card shows its answer
    long = dict(g.iloc[0], text="<think>" + "Condition 1: yes. " * 80 + "</think>\\boxed{Case 7}")
    card = completion_card(long)
    assert "[…]" in card and re.sub(r"(</div>)+$", "", card).endswith("\\boxed{Case 7}")  # the end is kept


def test_a_rescued_group_says_so_and_what_the_update_does(df):
    g = rescued_group(df)
    assert is_rescued(g)
    page = group_html(g)
    assert ("rescued by PolicyRollout: the no-policy half failed, the policy-aware half succeeded; its completions "
            "are trained on the no-policy prompt") in page
    assert page.count("trained on the no-policy prompt") >= 2  # the header and the rescuing card
    other = df[~df["group"].isin(policy_rescues(df)["group"])]
    plain = other[other["group"] == other["group"].iloc[0]]
    assert not is_rescued(plain) and "rescued by PolicyRollout" not in group_html(plain)
    ins = RolloutInspector(ASSET_RUN)
    ins.rescued.value = True
    assert "rescued by PolicyRollout" in ins.cards.value


def test_the_control_rows_wrap_on_a_narrow_screen():
    ins = RolloutInspector(ASSET_RUN)
    assert ins.children[1].layout.flex_flow == "row wrap" and ins.children[2].layout.flex_flow == "row wrap"
    assert ins.cards.layout.flex == "1 1 0%"  # the cards take the width beside the scene
