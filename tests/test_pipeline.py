"""The comparison pipeline on a ~0.2M-parameter random model: results.json holds every method x N x evaluation,
the report is written, and a rerun reuses finished stages and evaluations."""
import json

import pytest
import torch

from conftest import SMALL
from mpi_kit.tasks.clevr.data import build_datasets
from mpi_kit.data import load_kit_data
from mpi_kit.folders import StateError
from mpi_kit.pipeline import PipelineConfig, run_pipeline, table



@pytest.fixture(scope="module")
def base(tmp_path_factory):
    from mpi_kit.tiny import build_tiny, save_tiny

    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("pipe")
    build_datasets(out=str(root / "d"), num_policies=2, num_scenes=6, depth=2, progress=False, kinds=("vmcpt",))
    texts = ["".join(p["text"] or "" for m in r["prompt"] + r["completion"] for p in m["content"])
             for r in load_kit_data(root / "d", "vmcpt")["train"]]
    model, processor = build_tiny(texts * 4, dims=SMALL)
    return str(save_tiny(model, processor, root / "base"))


def test_pipeline_results_and_resume(base, tmp_path):
    cfg = PipelineConfig(out=str(tmp_path / "run"), depths=(2,), methods=("In-Context", "CoT SFT"), num_policies=2,
                         num_scenes=8, sft_steps=1, eval_limit=2, max_new_tokens=8, forgetting=False, model=base)
    res = run_pipeline(cfg)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert set(saved["methods"]) == {"N2/In-Context", "N2/CoT SFT"}
    for r in saved["methods"].values():
        assert {"accuracy", "override", "branching_error", "referral"} <= set(r)
    assert "policy_in_context" in saved["methods"]["N2/CoT SFT"]
    ids = [[r["id"] for r in m["rows"]] for m in saved["methods"].values()]  # per-row outcomes, ids shared
    assert ids[0] == ids[1] and len(ids[0]) == saved["methods"]["N2/CoT SFT"]["n"]
    assert saved["efficiency"]["2"][0]["prompt_tokens_in_context"] > saved["efficiency"]["2"][0][
        "prompt_tokens_no_policy"]
    assert saved["paper"]["accuracy_7b"]["6"]["TriMPI w/ PoRo-DAPO"] == 77.8
    assert (tmp_path / "run" / "report.html").stat().st_size > 10_000
    assert "CoT SFT" in table(res)
    stage_summary = tmp_path / "run" / "N2" / "cot_sft" / "summary.json"
    before = stage_summary.stat().st_mtime_ns
    # a rerun with one more method: the finished stage and evaluations are reused
    res2 = run_pipeline(PipelineConfig(**{**cfg.__dict__, "methods": ("In-Context", "CoT SFT", "Direct SFT")}))
    assert stage_summary.stat().st_mtime_ns == before
    assert res2["methods"]["N2/CoT SFT"] == saved["methods"]["N2/CoT SFT"]
    assert "N2/Direct SFT" in res2["methods"]
    # each method keeps its own time, so the comparison's wall time adds up across resumed runs
    assert all(r["seconds"] > 0 for r in res2["methods"].values()) and res2["data_seconds"]["N2"] > 0
    assert res2["seconds_all_runs"] == pytest.approx(sum(r["seconds"] for r in res2["methods"].values())
                                                     + res2["data_seconds"]["N2"], abs=0.2)
    assert res2["seconds_this_run"] < res2["seconds_all_runs"]  # the rerun trained only Direct SFT
    # a rerun with any other setting is refused, naming the difference: results.json only describes what ran
    results = (tmp_path / "run" / "results.json").read_bytes()
    cfg2 = {**cfg.__dict__, "methods": ("In-Context", "CoT SFT", "Direct SFT")}
    for change, named in [({"sft_steps": 2}, "sft_steps: 1 there, 2 asked"), ({"seed": 1}, "seed: 0 there"),
                          ({"num_policies": 3}, "num_policies"), ({"num_scenes": 10}, "num_scenes"),
                          ({"eval_limit": 3}, "eval_limit: 2 there, 3 asked"),
                          ({"methods": ("In-Context", "CoT SFT")}, "Direct SFT there but not asked"),
                          ({"overrides": {"sft_cot.learning_rate": 0.5}}, "recipe.sft_cot.learning_rate")]:
        with pytest.raises(StateError, match=named):
            run_pipeline(PipelineConfig(**{**cfg2, **change}))
    assert (tmp_path / "run" / "results.json").read_bytes() == results


def test_methods_on_the_same_rows_are_compared_with_a_paired_test():
    from mpi_kit.paper import paper_table
    from mpi_kit.tasks.clevr.report import markdown_table
    from mpi_kit.report import paired

    def method(name, right):  # 20 shared rows, the first `right` of them answered right
        ok = [i < right for i in range(20)]
        return {"method": name, "depth": 4, "accuracy": 5.0 * right, "n": 20, "interval_95": [0.0, 100.0],
                "rows": [{"id": f"P/s{i}", "correct": c} for i, c in enumerate(ok)]}

    res = {"paper": paper_table(), "methods": {"N4/CoT SFT": method("CoT SFT", 2),
                                               "N4/TriMPI w/ PoRo-GRPO": method("TriMPI w/ PoRo-GRPO", 10),
                                               "N4/TriMPI w/ GRPO-2G": method("TriMPI w/ GRPO-2G", 9)}}
    tests = {(t["higher"], t["lower"]): t for t in paired(res)}
    assert tests[("TriMPI w/ PoRo-GRPO", "CoT SFT")]["discordant"] == [8, 0]
    assert tests[("TriMPI w/ PoRo-GRPO", "CoT SFT")]["p"] == pytest.approx(2 / 2 ** 8)
    assert not tests[("TriMPI w/ PoRo-GRPO", "TriMPI w/ GRPO-2G")]["differ"]  # one row apart: p = 1
    text = table(res)
    assert "differ (exact McNemar on the same rows, p < 0.05): N=4: TriMPI w/ PoRo-GRPO 50.0 > CoT SFT 10.0" in text
    assert "GRPO-2G 45.0 > CoT SFT" in text and "TriMPI w/ GRPO-2G" in markdown_table(res)


def test_unknown_method_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="unknown methods"):
        run_pipeline(PipelineConfig(out=str(tmp_path), methods=("CoT SFT", "RLHF")))


def test_table_shows_intervals_and_what_lies_beyond_them():
    from mpi_kit.paper import paper_table
    from mpi_kit.stats import wilson_percent
    from mpi_kit.report import beyond

    assert wilson_percent(150, 200) == [68.6, 80.5]  # Wilson, 150 of 200: 74.5 -+ 6.0 by hand
    res = {"paper": paper_table(), "methods": {
        "N4/CoT SFT": {"method": "CoT SFT", "depth": 4, "accuracy": 30.0, "n": 200, "interval_95": [24.1, 36.7]},
        "N4/CoT SFT + GRPO": {"method": "CoT SFT + GRPO", "depth": 4, "accuracy": 34.0, "n": 200,
                              "interval_95": [27.8, 40.8]},
        "N4/TriMPI w/ PoRo-GRPO": {"method": "TriMPI w/ PoRo-GRPO", "depth": 4, "accuracy": 75.0, "n": 200,
                                   "interval_95": wilson_percent(150, 200)}}}
    assert beyond(res) == ["N=4: TriMPI w/ PoRo-GRPO 75.0 > CoT SFT 30.0",
                           "N=4: TriMPI w/ PoRo-GRPO 75.0 > CoT SFT + GRPO 34.0"]
    text = table(res)
    assert "[68.6-80.5]" in text and "n = 200 per cell" in text and "beyond the intervals: N=4: TriMPI" in text
    assert "CoT SFT + GRPO 34.0 > CoT SFT" not in text  # overlapping intervals are not a difference


def test_table_reports_each_rl_methods_early_groups():
    """Under the table, one line per RL method: its first quarter of steps, weighted by groups per step."""
    from mpi_kit.paper import paper_table
    from mpi_kit.pipeline import table

    step = lambda i, z, r, g: {"step": i, "groups": g, "frac_zero_std": z, "frac_rescued": r}  # noqa: E731
    res = {"paper": paper_table(), "methods": {
        "N4/CoT SFT + GRPO": {"method": "CoT SFT + GRPO", "depth": 4, "accuracy": 30.0, "n": 200,
                              "interval_95": [24.1, 36.7],
                              "rollouts": [step(1, 1.0, 0.0, 2), step(2, 0.5, 0.0, 2)] + [step(3, 0.0, 0.0, 2)] * 6},
        "N4/TriMPI w/ PoRo-GRPO": {"method": "TriMPI w/ PoRo-GRPO", "depth": 4, "accuracy": 31.0, "n": 200,
                                   "interval_95": [25.0, 37.7],
                                   "rollouts": [step(1, 0.0, 1.0, 1), step(2, 1.0, 0.0, 3), step(3, 0.0, 0.0, 1)]}}}
    text = table(res)
    assert "N4/CoT SFT + GRPO: first 2 RL steps, 3 of 4 groups with zero reward variance" in text
    assert "N4/TriMPI w/ PoRo-GRPO: first RL step, 0 of 1 group with zero reward variance, 1 rescued" in text
    assert "%" not in text.split("RL groups:")[1]  # counts said plainly, not "50% of 2 groups"
    assert "little left to learn" not in text and "where the wrong answers" not in text  # no such data: no claim


def test_table_says_why_rl_had_little_to_work_with():
    """An SFT model that already answers its RL prompts: GRPO's zero-variance groups are solved ones, and PoRo
    rescues nothing because its no-policy half is right; the table says so, and where the wrong answers broke."""
    from mpi_kit.paper import paper_table
    from mpi_kit.pipeline import table

    solved = {"step": 1, "groups": 4, "frac_zero_std": 1.0, "frac_solved": 0.75, "frac_rescued": 0.0,
              "acc_no_policy": 0.95}
    res = {"paper": paper_table(), "methods": {
        "N4/CoT SFT": {"method": "CoT SFT", "depth": 4, "accuracy": 97.0, "n": 200, "interval_95": [93.6, 98.6],
                       "errors": {"yes_no": 4, "case": 2}},
        "N4/CoT SFT + GRPO": {"method": "CoT SFT + GRPO", "depth": 4, "accuracy": 97.0, "n": 200,
                              "interval_95": [93.6, 98.6], "rollouts": [solved] * 4},
        "N4/TriMPI w/ PoRo-GRPO": {"method": "TriMPI w/ PoRo-GRPO", "depth": 4, "accuracy": 94.0, "n": 200,
                                   "interval_95": [89.8, 96.5], "rollouts": [solved] * 4}}}
    text = table(res)
    assert "4 of 4 groups with zero reward variance (3 solved: every completion right; 1 all wrong" in text
    assert "0 rescued by PolicyRollout (a group is rescued only when its no-policy half is all wrong; that half " \
           "was right 95% of the time)" in text
    assert text.count("little left to learn") == 2
    assert "N4/CoT SFT: 6 of 200 wrong (yes/no (scene misread) 4, case id 2)" in text
    from mpi_kit.tasks.clevr.report import errors_figure
    fig = errors_figure(res)
    assert [t.name for t in fig.data][:2] == ["question (policy not recalled)", "yes/no (scene misread)"]
    assert list(fig.data[1].x) == ["N4/CoT SFT"] and list(fig.data[1].y) == [4] and list(fig.data[3].y) == [2]
    res["methods"]["N4/CoT SFT"]["errors"] = {}
    assert "No wrong answers" in errors_figure(res).layout.annotations[0].text
    del res["methods"]["N4/CoT SFT"]["errors"]
    assert errors_figure(res) is None  # no method recorded them: no chart


def test_report_on_empty_metrics_explains_itself(tmp_path):
    """All-zero results (the old demo: 0.0 everywhere) draw no empty -1..1 axis: each chart says what it measures,
    the zeros are called out with what limits them, and accuracy bars carry their intervals."""
    from mpi_kit.paper import paper_table
    from mpi_kit.report import comparison_figures
    from mpi_kit.tasks.clevr.report import pipeline_report

    res = {"config": {"recipe": "tiny"}, "paper": paper_table(), "methods": {
        f"N4/{m}": {"method": m, "depth": 4, "accuracy": 0.0, "n": 200, "interval_95": [0.0, 1.9], "override": 0.0}
        for m in ("In-Context", "CoT SFT")}}
    figs = comparison_figures(res)
    assert len(figs) == 2
    for f in figs:
        assert f.layout.title.subtitle.text and list(f.layout.yaxis.range) == [0, 105]  # headroom over 100
        assert "Every bar is 0 here" in f.layout.annotations[0].text
    assert list(figs[0].data[0].error_y.array) == [1.9, 1.9]
    assert figs[1].data[0].error_y.array is None  # override measured with no interval: no error bars invented
    res["methods"]["N4/CoT SFT"].update(ns={"override": 50}, intervals={"override": [0.0, 7.1]})
    over = comparison_figures(res)[1]
    assert list(over.data[0].error_y.array) == [0, 7.1] and "n = 50 per bar" in over.layout.title.subtitle.text
    page = pipeline_report(tmp_path, res).read_text()
    assert "Why these numbers are low" in page and "base model" in page


def test_rescued_groups_counted_on_a_hand_built_rollout_log(tmp_path):
    """Two steps of a PoRo log, G = 2: step 1 has one rescued group (no-policy wrong, policy-aware right) and one
    group where the no-policy half is already right; step 2 has one zero-variance group (all wrong)."""
    import pandas as pd

    from mpi_kit.pipeline import rollout_steps
    from mpi_kit.report import rollout_figure

    def rows(step, prompt, no_policy, aware):
        out = []
        for src, correct in (("no-policy", no_policy), ("policy-aware", aware)):
            for c in correct:
                out.append({"step": step, "prompt": [], "completion": [{"role": "assistant", "content":
                            "<think>x</think>\\\\boxed{Case %d}" % (1 if c else 2)}], "format_reward": 1.0,
                            "accuracy_reward": float(c), "attempt": 0, "gold": "Case 1", "length": 5,
                            "parsed_answer": "Case 1" if c else "Case 2", "prompt_id": prompt, "scene_id": prompt,
                            "source": src, "truncated": False, "advantage": 0.0})
        return out
    log = tmp_path / "run" / "completions"
    log.mkdir(parents=True)
    step1 = rows(1, "a", [0, 0], [1, 0]) + rows(1, "b", [1, 0], [0, 0])
    step2 = rows(2, "a", [0, 0], [0, 0]) + rows(2, "b", [1, 1], [1, 0])
    pd.DataFrame(step1).to_parquet(log / "completions_00001.parquet")
    pd.DataFrame(step2).to_parquet(log / "completions_00002.parquet")
    (tmp_path / "run" / "summary.json").write_text("{}")
    steps = rollout_steps(tmp_path / "run")
    assert [s["frac_rescued"] for s in steps] == [0.5, 0.0]
    assert [s["frac_zero_std"] for s in steps] == [0.0, 0.5]
    assert [s["frac_solved"] for s in steps] == [0.0, 0.0]  # step 2's zero-variance group is all wrong, not solved
    assert [s["acc_no_policy"] for s in steps] == [0.25, 0.5]
    assert steps[0]["reward_policy_aware"] < steps[0]["reward_no_policy"] + 1  # both halves reported
    fig = rollout_figure({"methods": {"N2/TriMPI w/ PoRo-GRPO": {"method": "TriMPI w/ PoRo-GRPO", "depth": 2,
                                                                 "rollouts": steps}}})
    assert any("rescued by PoRo" in t.name for t in fig.data)


def test_the_shipped_demo_results_are_todays_demo():
    """assets/demo/results.json (read by notebook 00 and quoted in the README) was made by `demo_config()` as it
    is now: changing the demo's sizes without re-running it fails here."""
    import json

    from mpi_kit.pipeline import config_record, demo_config
    from mpi_kit.recipes import ASSETS_DIR

    demo = json.loads((ASSETS_DIR / "demo" / "results.json").read_text())
    today = {k: v for k, v in config_record(demo_config()).items() if k != "out"}
    assert {k: demo["config"][k] for k in today} == today
    assert all(r["n"] >= 200 for r in demo["methods"].values())
    assert set(demo["methods"]) == {f"N4/{m}" for m in demo_config().methods}
    report = (ASSETS_DIR / "demo" / "report.html").read_text()  # the demo's report ships beside its results
    assert "<title>" in report and all(m in report for m in demo_config().methods)


def test_a_third_task_plugs_in_through_the_task_interface(base, tmp_path, capsys):
    """A toy task registered beside ClevrPolicy and GTAPolicy runs through the unchanged pipeline: its rows, its
    data, its evaluation, its table and its report; training stages are the pipeline's own."""
    from mpi_kit.generation import generate_completions
    from mpi_kit.tasks import TASKS, Row, Task, register_task, task_of

    class Echo(Task):
        name, title, methods = "echo", "Echo", ("In-Context", "CoT SFT")
        config_fields = ("num_policies",)

        def rows(self, cfg):
            return [Row("E1", (("level", 1),))]

        def build_data(self, cfg, row, data_dir, recipe):  # ClevrPolicy's builder, relabelled as this task's
            build_datasets(out=str(data_dir), num_policies=cfg.num_policies, num_scenes=10, depth=1, progress=False)
            s = json.loads((data_dir / "summary.json").read_text())
            (data_dir / "summary.json").write_text(json.dumps({**s, "task": self.name}))

        def completion_budget(self, cfg, data_dir):
            return 4

        def evaluate(self, method, model, processor, data_dir, cfg):
            rows = load_kit_data(data_dir, "eval")["no_policy"].select(range(2))
            texts = generate_completions(model, processor, rows, self.completion_budget(cfg, data_dir))
            return {"accuracy": 100.0 * sum(bool(t) for t in texts) / len(texts), "n": len(texts)}

        def table(self, results):
            return "\n".join(f"echo {k}: {r['accuracy']:.0f}" for k, r in results["methods"].items())

        def report(self, out, results):
            (out / "report.html").write_text(f"<pre>{self.table(results)}</pre>")
            return out / "report.html"

    register_task(Echo())
    try:
        res = run_pipeline(PipelineConfig(out=str(tmp_path / "echo"), dataset="echo", num_policies=1, sft_steps=1,
                                          model=base))
        saved = json.loads((tmp_path / "echo" / "results.json").read_text())
        assert saved["dataset"] == "echo" and set(saved["methods"]) == {"E1/In-Context", "E1/CoT SFT"}
        assert saved["methods"]["E1/CoT SFT"]["level"] == 1 and saved["methods"]["E1/CoT SFT"]["n"] == 2
        assert "depths" not in saved["config"] and "gta_root" not in saved["config"]  # the other tasks' fields
        assert saved["config"]["methods"] == ["In-Context", "CoT SFT"]  # the task's default methods
        assert (tmp_path / "echo" / "E1" / "cot_sft" / "summary.json").exists()
        assert task_of(tmp_path / "echo" / "E1" / "data").name == "echo"
        assert table(res).startswith("echo E1/In-Context:")
        assert (tmp_path / "echo" / "report.html").read_text().startswith("<pre>echo E1/")
        assert "Loading weights" not in capsys.readouterr().err  # the pipeline's bar, not the library's
    finally:
        TASKS.pop("echo")


def test_the_markdown_table_shows_ours_with_intervals_beside_the_paper():
    from mpi_kit.paper import paper_table
    from mpi_kit.tasks.clevr.report import markdown_table

    res = {"paper": paper_table(), "methods": {
        "N2/CoT SFT": {"method": "CoT SFT", "depth": 2, "accuracy": 99.5, "n": 200, "interval_95": [97.2, 99.9]},
        "N4/CoT SFT": {"method": "CoT SFT", "depth": 4, "accuracy": 93.5, "n": 200, "interval_95": [89.2, 96.2]}}}
    lines = markdown_table(res).splitlines()
    assert lines[0] == "| method | N = 2: ours (95% interval) | paper 7B | N = 4: ours (95% interval) | paper 7B |"
    paper = {d: res["paper"]["accuracy_7b"][d].get("CoT SFT") for d in (2, 4)}
    cell = {d: "-" if paper[d] is None else f"{paper[d]:.1f}" for d in (2, 4)}  # the paper gives no N = 2 row
    assert lines[2] == f"| CoT SFT | 99.5 (97.2-99.9) | {cell[2]} | 93.5 (89.2-96.2) | {cell[4]} |"
    assert len(lines) == 5 and "n = 200" in lines[-1]  # header, rule, one method, blank, the n


def test_evaluation_sizes_are_capped_by_the_data_that_exists(base, tmp_path):
    res = run_pipeline(PipelineConfig(out=str(tmp_path / "big"), depths=(2,), methods=("In-Context",),
                                      num_policies=2, num_scenes=8, eval_limit=100_000, max_new_tokens=4,
                                      forgetting=True, model=base, cot_share=0.5))
    assert res["config"]["cot_share"] == 0.5 and "cot_source" not in res["config"]  # recorded when not the default
    cot = json.loads((tmp_path / "big" / "N2" / "data" / "summary.json").read_text())["cot"]
    assert cot["share"] == 0.5 and cot["kept"] == 2 * 3  # half of each policy's 6 training scenes
    r = res["methods"]["N2/In-Context"]
    assert r["n"] == 4 and r["ns"]["override"] == 4  # 2 policies x 2 held-out scenes: every row, no more
    assert r["ns"]["perception"] == 2 * r["n"]  # existence + counting, one question each per held-out row


def test_a_parallel_run_trains_each_shared_step_once_and_evaluates_after_it():
    from mpi_kit.pipeline import parallel_plan

    plan = parallel_plan(["In-Context", "CoT SFT", "CoT SFT + GRPO", "TriMPI w/ GRPO-2G", "TriMPI w/ PoRo-GRPO"])
    train = [name for kind, name, _ in plan if kind == "train"]
    assert sorted(train) == sorted(["cot_sft", "cot_sft_grpo", "vm_cpt", "vmcpt_cot_sft", "trimpi_grpo_2g",
                                    "trimpi_poro_grpo"])  # vmcpt_cot_sft once, for both TriMPI methods
    assert train[0] == "vm_cpt"  # the longest chain starts first
    needs = {name: need for _, name, need in plan}
    assert needs["trimpi_poro_grpo"] == "vmcpt_cot_sft" and needs["In-Context"] is None
    assert needs["CoT SFT + GRPO"] == "cot_sft_grpo"  # evaluated once its last step is trained


def test_methods_in_parallel_processes_give_the_serial_run_s_results(base, tmp_path):
    """jobs = 2 trains and evaluates groups of methods in two processes (1 torch thread each); the results are the
    serial run's at 1 thread, row for row, and a rerun with jobs = 1 reuses them all."""
    common = dict(depths=(2,), methods=("In-Context", "CoT SFT", "CoT SFT + GRPO"), num_policies=2,
                  num_scenes=8, sft_steps=2, rl_steps=1, eval_limit=3, side_limit=2, max_new_tokens=8,
                  forgetting=False, model=base)
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        serial = run_pipeline(PipelineConfig(out=str(tmp_path / "serial"), **common))
    finally:
        torch.set_num_threads(2)
    par = run_pipeline(PipelineConfig(out=str(tmp_path / "par"), jobs=2, **common))
    torch.set_num_threads(before)
    assert list(par["methods"]) == list(serial["methods"])  # the table's order, not the finishing order
    for k, s in serial["methods"].items():
        assert par["methods"][k]["rows"] == s["rows"], k
        assert par["methods"][k]["accuracy"] == s["accuracy"]
    assert par["efficiency"] and par["config"] == {**serial["config"], "out": str(tmp_path / "par")}
    stage = tmp_path / "par" / "N2" / "cot_sft_grpo" / "summary.json"
    loss = lambda run: json.loads((tmp_path / run / "N2" / "cot_sft_grpo" / "summary.json").read_text())["loss"]
    assert loss("par") == loss("serial")  # the same training, step for step
    t = stage.stat().st_mtime_ns
    again = run_pipeline(PipelineConfig(out=str(tmp_path / "par"), jobs=1, **common))
    assert stage.stat().st_mtime_ns == t and again["methods"].keys() == par["methods"].keys()


def test_a_parallel_task_takes_its_trained_parents_without_their_lock(base, tmp_path):
    """Two processes reusing one finished stage at once queue on its lock (the first full comparison stopped on
    it); a task whose parents this run has trained takes them as they are, so it runs while another holds them."""
    from mpi_kit.folders import lock
    from mpi_kit.pipeline import run_stage
    from mpi_kit.recipes import as_recipe
    from mpi_kit.tasks import get_task

    cfg = PipelineConfig(out=str(tmp_path / "run"), depths=(2,), methods=("CoT SFT + GRPO",), num_policies=2,
                         num_scenes=8, sft_steps=1, rl_steps=1, eval_limit=2, forgetting=False, model=base)
    root = tmp_path / "run" / "N2"
    task = get_task("clevr")
    task.build_data(cfg, task.rows(cfg)[0], root / "data", as_recipe("tiny", model=base))
    overrides = {"model": base}
    run_stage("cot_sft", root, root / "data", cfg, overrides)
    with lock(root / "cot_sft", "a stage another process is reusing"):
        with pytest.raises(StateError, match="in use"):
            run_stage("cot_sft_grpo", root, root / "data", cfg, overrides)  # re-entering the parent: refused
        out = run_stage("cot_sft_grpo", root, root / "data", cfg, overrides, frozenset({"cot_sft"}))
    assert (out / "summary.json").exists()
