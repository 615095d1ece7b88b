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
from mpi_kit.tasks.clevr.policy import sample_policy
from mpi_kit.report import comparison_figures, efficiency_figure, rollout_figure
from mpi_kit.tasks.clevr.report import errors_figure, pipeline_report
from mpi_kit.tasks.clevr.scenes import sample_scene
from mpi_kit.training import loss_figure
from mpi_kit.widgets import image_html
from mpi_kit.tasks.gta.widgets import rule_explorer
from mpi_kit.tasks.clevr.widgets import tree_figure

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


def test_the_data_report_has_a_title_the_banner_and_alt_text(tmp_path):
    from mpi_kit.tasks.clevr.data import build_datasets
    from mpi_kit.tasks.clevr.report import data_report

    build_datasets(out=str(tmp_path), num_policies=2, num_scenes=4, depth=2, progress=False, kinds=("eval",))
    page = data_report(tmp_path, num_scenes=2).read_text()
    assert "<title>mpi-kit data report</title>" in page and "Charts need JavaScript" in visible_text(page)
    alts = re.findall(r'<img [^>]*alt="([^"]*)"', page)
    assert alts and len(alts) == page.count("<img ")
    assert all(re.fullmatch(r"image of scene\d+: a .+", a) for a in alts)  # its id and its objects, in words


def test_the_report_tables_have_readable_headers(results, tmp_path):
    page = pipeline_report(tmp_path, results).read_text()
    headers = re.findall(r"<th>([^<]*)</th>", page)
    assert "prompt tokens, policy in context" in headers and "less prefill time (%)" in headers
    assert not [h for h in headers if "_" in h]


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


def test_every_chart_keeps_its_title_and_subtitle_in_the_top_margin(results, df):
    for fig, above in figures(results, df):
        assert_title_clear_of_plot(fig, above)


def test_the_rl_chart_leaves_room_for_its_subplot_titles(results):
    fig = rollout_figure(results)
    sub_titles = [a for a in fig.layout.annotations if a.yref == "paper" and a.y == 1]
    assert len(sub_titles) == 2 and all(a.yanchor == "bottom" for a in sub_titles)  # drawn just above the plot
    assert fig.layout.title.subtitle.text.count("<br>") >= 2  # the three lines that hid the left one's title
    assert_title_clear_of_plot(fig, above_plot=SUBPLOT_TITLES)


def test_bounded_axes_leave_room_over_the_papers_diamonds(results):
    bounded = [f for f in comparison_figures(results) if f.layout.yaxis.range is not None]
    assert len(bounded) >= 5  # the % charts and the 0-10 referral score
    for fig in bounded:
        top = max(y for tr in fig.data for y in tr.y if y is not None)
        lo, hi = fig.layout.yaxis.range
        assert hi >= 1.04 * top, (fig.layout.title.text, top, hi)  # a diamond at 99 is drawn whole
        ticks = fig.layout.yaxis.tickvals
        assert ticks and max(ticks) in (100, 10) and max(ticks) < hi  # ticked to 100 (10), not to the headroom
    diamonds = [y for f in comparison_figures(results) for tr in f.data if tr.type == "scatter" for y in tr.y if y]
    assert max(diamonds) > 98  # the demo's results do carry the paper's 98-99


def test_step_axes_tick_whole_steps(results, df):
    short = rollout_figures(df) + [outcome_figure(df)]
    short.append(loss_figure({"x": {"loss": [{"step": s, "loss": 1.0} for s in (1, 2, 3)]}}))
    for fig in short:
        assert fig.layout.xaxis.tickformat == "d" and fig.layout.xaxis.dtick == 1, fig.layout.title.text
    long = rollout_figure(results)  # 24 RL steps: whole numbers, plotly picks how many
    assert long.layout.xaxis.tickformat == "d" and long.layout.xaxis2.tickformat == "d"


def test_the_mini_trees_legend_sits_above_the_plot_not_on_the_root():
    policy = sample_policy(depth=2, rng=0)
    case, path = policy.evaluate(sample_scene(3))
    fig = tree_figure(policy, path, case)
    legend = fig.layout.legend
    assert legend.orientation == "h" and legend.y >= 1 and legend.yanchor == "bottom"
    assert_title_clear_of_plot(fig, above_plot=20)  # the legend row between title and plot
    assert fig.layout.yaxis.range[1] >= 0.4  # room over the root (at y = 0) for its id
    # "yes" / "no" sit beside their edge near the parent (one level = 1), clear of the child's id over the child
    labels = next(tr for tr in fig.data if tr.mode == "text")
    assert all((-y) % 1 <= 0.4 for y in labels.y)
    assert set(labels.textposition) == {"middle left", "middle right"}


# ------------------------------------------------------------------------------------------ missing values, colour

def test_a_method_with_no_value_reads_n_a_not_0(results):
    fig = next(f for f in comparison_figures(results) if f.layout.title.text.startswith("Policy back in context"))
    bars = [tr for tr in fig.data if tr.type == "bar"]
    methods = list(bars[0].x)
    missing = [i for i, y in enumerate(bars[0].y) if y is None]
    assert [methods[i] for i in missing] == ["In-Context"]  # In-Context trains nothing: no 'after training'
    na = [a for a in fig.layout.annotations if a.text == "n/a"]
    assert len(na) == 1 and abs(na[0].x - missing[0]) < 0.41 and na[0].y == 0 and na[0].yref == "y"
    full = next(f for f in comparison_figures(results) if f.layout.title.text.startswith("Accuracy"))
    assert not [a for a in full.layout.annotations if a.text == "n/a"]


def test_stacked_categories_are_hatched_as_well_as_coloured(results, df):
    for fig in (errors_figure(results), outcome_figure(df)):
        shapes = [tr.marker.pattern.shape for tr in fig.data]
        assert len(set(shapes)) == len(shapes) == len(fig.data) >= 3, fig.layout.title.text


def test_the_rule_explorer_says_in_words_which_rows_changed():
    table = rule_explorer().children[-1].value  # the default profile: the default override changes some tools
    changed = re.findall(r'<tr style="background:#fde9c8">(.*?)</tr>', table)
    assert changed and all("(changed)" in row for row in changed)
    assert table.count("(changed)") == len(changed)


def test_scene_images_have_alt_text():
    from PIL import Image

    assert 'alt="scene image"' in image_html(Image.new("RGB", (4, 4)), 8)
    ins = RolloutInspector(ASSET_RUN)
    assert re.search(r'<img [^>]*alt="image of [^"]+: a [^"]+"', ins.scene.value)


# ------------------------------------------------------------------------------------------ the rollout inspector

def rescued_group(df):
    key = policy_rescues(df)["group"].iloc[0]
    return df[df["group"] == key]


def test_each_half_sits_in_one_grid_of_cards_that_wraps_rather_than_squeezes(df):
    """A half's G cards share a row wherever G cards of CARD_MIN_PX fit (a projector at 1,280 px: 4 + 4), and go
    onto a second row below that width instead of shrinking until their letters overlap (800 px, file browser
    open: seen in a browser)."""
    from mpi_kit.inspector import CARD_MIN_PX

    g = rescued_group(df)
    page = group_html(g)
    rows = re.findall(r"grid-template-columns:repeat\(auto-fit, minmax\((\d+)px, 1fr\)\)", page)
    assert rows == [str(CARD_MIN_PX)] * 2 and 120 <= CARD_MIN_PX <= 140  # 4 cards fit the 590 px JupyterLab leaves
    assert "minmax(0, 1fr)" not in page and "width:230px" not in page


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
    # the cards take the width beside the scene, and move below it when that is under CARDS_MIN_PX
    from mpi_kit.inspector import CARDS_MIN_PX

    assert ins.cards.layout.flex == f"1 1 {CARDS_MIN_PX}px" and ins.cards.layout.min_width == "0"
    assert ins.children[4].children == (ins.scene, ins.cards) and ins.children[4].layout.flex_flow == "row wrap"
    # the playground's box keeps its 2 px margins inside the widget (at 100% it stuck out 4 px: a scrollbar)
    assert ins.edit.layout.width == "calc(100% - 4px)"


# ------------------------------------------------------------------------------------------ printed output

RAW_REPR = re.compile(r"\{'|\['|\b[A-Z]\w*\(\w+=")  # a dict's, a list's or a dataclass's repr


def test_result_tables_read_in_words(results):
    from mpi_kit.report import efficiency_frame, efficiency_note, frame

    rows = [{"method": "CoT SFT", "setting": "no_policy", "depth": 2, "n": 4, "accuracy": 25.0,
             "interval_95": [4.6, 69.9], "cited": ["1", "1.1"], "majority": None}]
    t = frame(rows, ["setting", "depth", "n", "accuracy", "interval_95", "cited", "majority"])
    assert not [c for c in t.columns if "_" in c]
    assert t.iloc[0].tolist() == ["no policy", 2, 4, 25.0, "4.6-69.9", "1 → 1.1", "n/a"]
    eff = [dict(e, N=int(n)) for n, es in results["efficiency"].items() for e in es]
    e = efficiency_frame(eff)
    assert len(e.columns) <= 7 and not [c for c in e.columns if "_" in c]
    assert "negative prefill saving" not in efficiency_note(eff)
    assert "negative prefill saving" in efficiency_note([dict(eff[0], prefill_reduction_pct=-18.6)])


def test_summaries_print_as_sentences_not_reprs():
    from mpi_kit.tasks.gta.rewards import call_text, score_call
    from mpi_kit.report import datasets_note
    from mpi_kit.tasks.clevr.report import error_parts_text
    from mpi_kit.training import summary_text

    gold = {"name": "Calculator", "arguments": {"expression": "9"}}
    texts = [str(score_call('{"name": "Calculator", "arguments": {"expression": "2 * 3.5 + 2"}}', gold)),
             str(score_call("not a call", gold)), call_text(gold), call_text(None),
             datasets_note({"qa": {"train": 144, "test": 36}, "eval": {"no_policy": 36, "in_context": 36}}),
             error_parts_text({"yes_no": 8}),
             summary_text({"steps": 24, "loss": [{"step": 1, "loss": 7.25}], "final_loss": 0.98,
                           "steps_per_second": 2.8, "peak_memory_gib": 1.2,
                           "params": {"total": 4933504, "trainable": 3631616, "trainable_pct": 73.6}})]
    assert not [t for t in texts if RAW_REPR.search(t) or "_" in t.replace("_v", "")], texts
    assert texts[0].startswith("Tool Acc 1 · Arg Score 1.00") and "why it lost points: the answer" in texts[1]
    assert texts[2] == 'Calculator with expression "9"' and "qa:   144 train, 36 test" in texts[4]
    assert texts[5] == "yes/no (scene misread) 8" and "3,631,616 of 4,933,504 parameters" in texts[6]


def test_the_shipped_report_is_what_the_kit_writes_from_the_shipped_results(results, tmp_path):
    """assets/demo/report.html is rewritten whenever the report changes: its text is the current code's from
    assets/demo/results.json (a stale copy had its table's columns shifted where the paper has no number), its table
    lines up, and long lines wrap rather than scroll the page sideways."""
    shipped = (ROOT / "assets" / "demo" / "report.html").read_text()
    fresh = pipeline_report(tmp_path, results).read_text()
    assert visible_text(shipped) == visible_text(fresh)
    table = re.search(r"<pre>(.*?)</pre>", fresh, flags=re.S).group(1).split("\n")
    rows = [line for line in table if line.startswith(("In-Context", "CoT SFT", "VM-CPT", "TriMPI"))]
    assert len(rows) >= 5 and len({len(line) for line in rows}) == 1  # every method's row the same width
    assert "pre{white-space:pre-wrap" in fresh


def test_trees_beside_a_scene_shrink_or_move_below_it_rather_than_clip():
    """Seen in a browser at 1,280 px: the policy explorer's tree (drawn 936 px wide in an 848 px box) lost its right
    subtree. The SVG now scales down to its box, and the box moves below the scene where it would be too narrow."""
    from mpi_kit.tasks.clevr.widgets import policy_explorer, tree_svg

    policy = sample_policy(depth=4, rng=0)
    scene = sample_scene(3)
    case, path = policy.evaluate(scene)
    svg = tree_svg(policy, path, case, width=900, height=300)
    assert 'viewBox="0 0 900 300"' in svg and "max-width:100%" in svg
    box = policy_explorer(policy, [scene]).children[1]
    assert box.layout.flex_flow == "row wrap" and box.children[1].layout.min_width == "0"


def test_a_small_trees_legend_and_edge_words_keep_off_its_ids():
    """Seen in a browser: under the inspector's scene (a 250 x 120 tree of depth 4) the legend sat on the root's id
    and "yes" / "no" on the children's ids. Now the legend has its own line above the root's id, and levels too
    close together carry colours only (the legend says which)."""
    from mpi_kit.tasks.clevr.widgets import tree_svg

    policy = sample_policy(depth=4, rng=0)
    case, path = policy.evaluate(sample_scene(3))
    for width, height in ((250, 120), (520, 220), (900, 300)):
        svg = tree_svg(policy, path, case, width=width, height=height)
        found = re.findall(r'<text x="([\d.]+)" y="([\d.]+)"[^>]*>(.*?)</text>', svg)
        texts = [(float(x), float(y), t) for x, y, t in found]
        legend = [y for _, y, t in texts if "= yes" in t or "leaf numbers" in t]
        ids = [y for _, y, t in texts if t[:1].isdigit() and ":" in t or re.fullmatch(r"[\d.]+", t)]
        if legend:
            assert min(ids) - legend[0] >= 11, (width, height)  # a line of 9 px text apart
        if height < 200:
            assert not any(t in ("yes", "no") for _, _, t in texts) and legend  # colours only, and said so


def test_the_gta_table_lines_up_where_a_score_is_missing_and_explorer_labels_are_whole():
    """Seen in a browser (notebook 08): a method without a score shifted its row's columns; "account type" was cut
    to "account t..."."""
    from mpi_kit.tasks import get_task
    from mpi_kit.tasks.gta.report import gta_table

    results = {"paper": get_task("gta").paper_table(), "methods": {
        "GTA/In-Context": {"method": "In-Context", "tool": 50.0, "args": 40.0, "overall": 30.0},
        "GTA/CoT SFT": {"method": "CoT SFT", "tool": 10.0, "args": None, "overall": 5.0,
                        "override": {"overall": 2.5}}}}
    rows = gta_table(results).split("\n")[:3]
    assert len({len(r.rstrip()) for r in rows}) == 1, rows
    explorer = rule_explorer()
    def walk(w):
        yield w
        for c in getattr(w, "children", ()):
            yield from walk(c)
    labelled = {c.description: c for c in walk(explorer) if getattr(c, "description", "") in ("account type",
                                                                                             "credits", "age")}
    assert len(labelled) == 3 and all(c.style.description_width == "initial" for c in labelled.values())


def test_tables_show_three_significant_digits_and_the_arithmetic_columns_stand_apart(df):
    """Seen in a browser: notebook 06's stage table printed 4 decimals; the inspector's arithmetic header ran its
    words together ("rewardadvantagelogged")."""
    from mpi_kit.report import frame

    t = frame([{"seconds": 12.3456, "steps_per_second": 0.67871, "steps": 24, "accuracy": 93.5, "loss": 1234.567}])
    assert t.iloc[0].tolist() == [12.3, 0.679, 24, 93.5, 1234.6]
    ins = RolloutInspector(ASSET_RUN)
    assert "padding:1px 10px'>reward</th>" in ins.arith.value


def test_compact_cards_fit_a_projector_and_keep_the_whole_completion_one_click_away(df):
    """The inspector's default: each card shows the end of its completion (the last step and the boxed answer) and
    the whole text in a <details> one click away, so a rescued group of 4 + 4 cards fits a 1,280 x 800 screen (seen
    in a browser); ticking "highlight changes" shows the texts in full again."""
    from mpi_kit.inspector import COMPACT_CHARS

    g = rescued_group(df)
    page = group_html(g, compact=True)
    assert page.count("<details>") == len(g) == 8 and page.count("\\boxed{") == 2 * len(g)  # the end, and in full
    assert "&lt;/think&gt;<wbr>\\boxed{" in page  # a narrow card breaks before the answer, not inside "\boxed{Case"
    for card in page.split("<details>")[:-1]:
        shown = card.rsplit("[…] ", 1)[1]
        assert len(shown) <= COMPACT_CHARS + 20 and "\\boxed{" in shown
    ins = RolloutInspector(ASSET_RUN)
    assert ins.compact.value and "<details>" in ins.cards.value
    ins.compact.value = False
    assert "<details>" not in ins.cards.value
