"""Evaluations on fixtures whose right value is known by construction."""
import pytest

from mpi_kit.tasks.clevr.data import build_datasets, load_policies
from mpi_kit.data import load_kit_data
from mpi_kit.tasks.clevr.evaluate import (RuleJudge, branching_error, cited_conditions, error_parts, referral_scores,
                                          score_rows, summarize)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("eval") / "d"
    build_datasets(out=str(out), num_policies=3, num_scenes=40, depth=4, progress=False, kinds=("eval",))
    return out


def gold_completion(row):
    return row["completion"][0]["content"][0]["text"]


@pytest.mark.parametrize("setting", ["no_policy", "in_context", "override"])
def test_gold_stub_scores_100_and_no_branching_error(data, setting):
    ds = load_kit_data(data, "eval")[setting]
    rows = score_rows(ds, [gold_completion(r) for r in ds], "gold", setting)
    [s] = summarize(rows)
    assert s["accuracy"] == 100.0 and s["n"] == len(ds)
    assert branching_error(rows) == 0.0
    assert all(r["cited"] == r["gold_path"] for r in rows)


def test_case0_stub_scores_the_share_of_case0(data):
    ds = load_kit_data(data, "eval")["no_policy"]
    rows = score_rows(ds, ["<think>x</think>\\boxed{Case 0}"] * len(ds), "case0")
    share = 100 * sum(r["case"] == "Case 0" for r in ds) / len(ds)
    assert summarize(rows)[0]["accuracy"] == pytest.approx(share, abs=0.01)
    assert branching_error(rows) == 100.0  # cites nothing the gold paths cite


def test_error_parts_name_where_each_wrong_chain_broke(data):
    """Gold chains broken on purpose in one place each: the tally names that place (the policy's question, the
    scene's yes/no, the case id, or a chain cut short), and right answers count nowhere."""
    ds = load_kit_data(data, "eval")["no_policy"]
    gold = [gold_completion(r) for r in ds]
    first_case = lambda t: t[t.index("the response is Case ") + len("the response is "):t.index(".</think>")]  # noqa: E731
    wrong_box = lambda t: t[:t.index("\\boxed{")] + "\\boxed{Case 99}"  # noqa: E731
    broken = [wrong_box(gold[0].replace("Is there a ", "Is there a big ", 1)),  # a question misremembered
              wrong_box(gold[1].replace("? Yes, ", "? @@, ", 1).replace("? No, ", "? Yes, ", 1).replace("@@", "No")),
              gold[2].replace(first_case(gold[2]), "Case 99"),  # the case id (step and box) wrong
              "<think>Condition 1:</think>\\boxed{Case 99}"] + gold[4:]
    rows = score_rows(ds, broken)
    assert error_parts(rows) == {"question": 1, "yes_no": 1, "case": 1, "other": 1}
    assert [r["breaks_at"] for r in rows[:4]] == ["question", "yes_no", "case", "other"]
    assert all(r["breaks_at"] is None for r in rows[4:])


def test_branching_error_of_a_wrong_branch(data):
    ds = load_kit_data(data, "eval")["no_policy"]
    rows = score_rows(ds, [gold_completion(r) for r in ds])
    for r in rows:  # always take the first condition only: half the citation mass moves
        r["cited"] = r["cited"][:1]
    assert 0 < branching_error(rows) < 100


def test_rule_judge(data):
    policies = load_policies(data)
    ds = load_kit_data(data, "eval")["no_policy"]
    rows = score_rows(ds, [gold_completion(r) for r in ds])
    assert referral_scores(rows, policies) == 10.0
    judge = RuleJudge()
    r = rows[0]
    p = policies[r["policy"]]
    text = r["completion"]
    assert judge(p, "no citations at all \\boxed{Case 1}") == 0.0
    # flip every answer: each step now names the wrong next section
    flipped = text.replace("Yes, ", "@@").replace("No, ", "Yes, ").replace("@@", "No, ")
    assert judge(p, flipped) == 0.0
    # cite a section that does not exist
    assert judge(p, text.replace("Condition 1:", "Condition 9:", 1)) < 10.0
    assert cited_conditions("Condition 1: a? Yes, go to Condition 1.1. Condition 1.1: b? No, the response is "
                            "Case 2.") == ["1", "1.1"]


def test_forgetting_of_an_unchanged_model_is_zero():
    from pathlib import Path

    from mpi_kit.tasks.clevr.evaluate import forgetting
    from mpi_kit.tiny import load_tiny

    shipped = Path(__file__).resolve().parents[1] / "assets" / "tiny-vlm"
    if not (shipped / "model.safetensors").exists():
        pytest.skip("assets/tiny-vlm is not built")
    pair = load_tiny(shipped)
    rows = forgetting(pair, pair, n_perception=4)
    assert [r["task"] for r in rows] == ["exist", "count", "perception"]
    assert all(r["change"] == 0 and r["before"] == r["after"] and 0 <= r["before"] <= 100 for r in rows)


def test_comparison_and_efficiency_figures():
    from mpi_kit.paper import paper_table
    from mpi_kit.report import comparison_figures, efficiency_figure

    results = {"paper": paper_table(), "methods": {
        "N4/In-Context": {"method": "In-Context", "depth": 4, "accuracy": 10.0, "override": 5.0,
                          "branching_error": 80.0, "referral": 1.0},
        "N4/CoT SFT": {"method": "CoT SFT", "depth": 4, "accuracy": 20.0, "override": 6.0, "policy_in_context": 7.0,
                       "branching_error": 40.0, "referral": 2.0}}}
    figs = comparison_figures(results)
    assert len(figs) == 5  # no perception measured: no forgetting chart
    acc = figs[0]
    assert list(acc.data[0].y) == [10.0, 20.0]  # ours
    assert list(acc.data[1].y) == [32.2, 49.1]  # the paper's 7B numbers at N = 4, beside ours
    eff = [{"batch_size": bs, "depth": d, "prompt_tokens_in_context": 100 * d, "prompt_tokens_no_policy": 30,
            "prefill_s_in_context": 0.01 * d, "prefill_s_no_policy": 0.005} for d in (2, 4, 6) for bs in (1, 8)]
    fig = efficiency_figure(eff, paper_table()["efficiency"])
    assert "93.9" in fig.layout.title.subtitle.text
    assert list(fig.data[0].y) == [200, 400, 600] and list(fig.data[0].x) == ["N=2", "N=4", "N=6"]
    assert len(fig.data) == 2 + 2 * 2  # tokens (once) + time per batch size, each with and without the policy


def test_eval_limit_spreads_over_every_policy(data):
    """Eval splits are grouped by policy: a limit takes evenly spaced rows, so every policy is in the subset."""
    from mpi_kit.data import spread
    ds = load_kit_data(data, "eval")["no_policy"]
    names = set(ds["policy_name"])
    sub = spread(ds, len(names) * 2)
    assert len(sub) == len(names) * 2 and set(sub["policy_name"]) == names
    assert spread(ds, None) is ds and spread(ds, len(ds) + 5) is ds
    assert sub["id"] == spread(ds, len(names) * 2)["id"]  # deterministic


def test_eval_limit_draws_distinct_scenes_before_repeating_one(data):
    """Each test scene appears once per policy; a limit up to the scene count shows every row a different scene
    (errors on one hard scene count once), and a larger one shows every scene before any twice."""
    from collections import Counter

    from mpi_kit.data import spread
    ds = load_kit_data(data, "eval")["no_policy"]
    scenes, policies = set(ds["scene_id"]), set(ds["policy_name"])
    assert len(ds) == len(scenes) * len(policies) > len(scenes)  # the grid the old spread drew from
    sub = spread(ds, len(scenes))
    assert len(set(sub["scene_id"])) == len(scenes) and set(sub["policy_name"]) == policies
    per_policy = Counter(sub["policy_name"]).values()
    assert max(per_policy) - min(per_policy) <= 1  # every policy equally represented
    more = spread(ds, len(scenes) + 3)
    assert set(more["scene_id"]) == scenes and max(Counter(more["scene_id"]).values()) == 2
    assert len(set(more["id"])) == len(more)  # no row twice


def test_wilson_interval_on_known_cases():
    from mpi_kit.stats import wilson_interval

    lo, hi = wilson_interval(0, 24)
    assert lo == 0.0 and hi == pytest.approx(0.1380, abs=1e-4)  # 0 of 24 is not "exactly 0%"
    lo, hi = wilson_interval(24, 24)
    assert hi == 1.0 and lo == pytest.approx(0.8620, abs=1e-4)
    assert wilson_interval(12, 24) == pytest.approx((0.3143, 0.6857), abs=1e-4)  # by hand: 0.5 -+ 0.1857
    assert wilson_interval(50, 100) == pytest.approx((0.4038, 0.5962), abs=1e-4)
    a, b = wilson_interval(30, 100), wilson_interval(300, 1000)
    assert a[0] < b[0] < 0.3 < b[1] < a[1]  # more data, narrower
    assert wilson_interval(0, 0) == (0.0, 1.0)
