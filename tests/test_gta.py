"""GTAPolicy: the 24 rules at their boundaries, the override, the scorer/reward, the GTA loader, the generator."""
import hashlib
import json
import pathlib
import re

import pytest
from hypothesis import given, settings, strategies as st
from PIL import Image

from mpi_kit.data import DataError, load_kit_data
from mpi_kit.tasks.gta.data import INSTANCE_TYPES, build_gta_datasets, generate_instances, load_gta, override_instances
from mpi_kit.tasks.gta.policy import (BASE_POLICY, DEFAULT_OVERRIDE, RULES, TOOLS, GTAPolicy, PolicyError, UserProfile,
                                      rule_leaves, tool_version)
from mpi_kit.tasks.gta.rewards import arg_score, gta_format_reward, gta_reward, parse_call, safe_eval, score_call
from mpi_kit.tasks.gta.task import score_rows, summarize

P = UserProfile
MATH = {"math_image": True}

# (tool, profile, context, expected name, expected rule): every version rule on both sides of each boundary
BOUNDARIES = [
    ("ImageDescription", P("A", 0, 30), {}, "ImageDescription_v5", "ImageDescription.1"),
    ("ImageDescription", P("A", 1000, 70), {}, "ImageDescription_v5", "ImageDescription.1"),
    ("ImageDescription", P("B", 500, 30), {}, "ImageDescription_v3", "ImageDescription.2"),
    ("ImageDescription", P("B", 501, 30), {}, "ImageDescription_v4", "ImageDescription.2"),
    ("ImageDescription", P("C", 500, 30), {}, "ImageDescription_v3", "ImageDescription.2"),
    ("ImageDescription", P("C", 501, 30), {}, "ImageDescription_v4", "ImageDescription.2"),
    ("ImageDescription", P("D", 500, 30), {}, "ImageDescription_v1", "ImageDescription.3"),
    ("ImageDescription", P("D", 501, 30), {}, "ImageDescription_v2", "ImageDescription.3"),
    ("OCR", P("A", 0, 30), {}, "OCR_v5", "OCR.1"),
    ("OCR", P("D", 250, 15), {}, "OCR_v5", "OCR.1"),
    ("OCR", P("A", 251, 30), {}, "OCR_v4", "OCR.2"),
    ("OCR", P("B", 750, 30), {}, "OCR_v4", "OCR.2"),
    ("OCR", P("C", 251, 30), {}, "OCR_v3", "OCR.2"),
    ("OCR", P("D", 750, 30), {}, "OCR_v3", "OCR.2"),
    ("OCR", P("A", 751, 20), {}, "OCR_v2", "OCR.3"),
    ("OCR", P("C", 751, 21), {}, "OCR_v1", "OCR.3"),
    ("OCR", P("B", 100, 30), MATH, "MathOCR", "OCR.4"),
    ("OCR", P("D", 900, 15), MATH, "MathOCR", "OCR.4"),
    ("GoogleSearch", P("A", 900, 20), {}, "GoogleSearch_v1", "GoogleSearch.1"),
    ("GoogleSearch", P("B", 499, 21), {}, "GoogleSearch_v2", "GoogleSearch.2"),
    ("GoogleSearch", P("C", 500, 21), {}, "GoogleSearch_v3", "GoogleSearch.2"),
    ("GoogleSearch", P("D", 0, 60), {}, "GoogleSearch_v2", "GoogleSearch.2"),
    ("TextToImage", P("A", 0, 30), {}, "TextToImage_v1", "TextToImage.1"),
    ("TextToImage", P("B", 900, 30), {}, "TextToImage_v1", "TextToImage.1"),
    ("TextToImage", P("C", 501, 30), {}, "TextToImage_v1", "TextToImage.1"),
    ("TextToImage", P("D", 500, 30), {}, "TextToImage_v3", "TextToImage.2"),
    ("TextToImage", P("D", 501, 30), {}, "TextToImage_v2", "TextToImage.2"),
    ("RegionAttributeDescription", P("A", 0, 30), {}, "RegionAttributeDescription_v2", "RegionAttributeDescription.1"),
    ("RegionAttributeDescription", P("B", 0, 30), {}, "RegionAttributeDescription_v2", "RegionAttributeDescription.1"),
    ("RegionAttributeDescription", P("C", 0, 30), {}, "RegionAttributeDescription_v1", "RegionAttributeDescription.2"),
    ("RegionAttributeDescription", P("D", 0, 30), {}, "RegionAttributeDescription_v1", "RegionAttributeDescription.2"),
    ("CountGivenObject", P("A", 249, 30), {}, "CountGivenObject_v1", "CountGivenObject.1"),
    ("CountGivenObject", P("A", 250, 30), {}, "CountGivenObject_v2", "CountGivenObject.2"),
    ("CountGivenObject", P("A", 499, 30), {}, "CountGivenObject_v2", "CountGivenObject.2"),
    ("CountGivenObject", P("A", 500, 30), {}, "CountGivenObject_v3", "CountGivenObject.3"),
    ("CountGivenObject", P("A", 749, 30), {}, "CountGivenObject_v3", "CountGivenObject.3"),
    ("CountGivenObject", P("A", 750, 30), {}, "CountGivenObject_v4", "CountGivenObject.4"),
    ("ImageStylization", P("A", 0, 20), {}, "ImageStylization_v1", "ImageStylization.1"),
    ("ImageStylization", P("A", 0, 21), {}, "ImageStylization_v2", "ImageStylization.2"),
    ("ImageStylization", P("A", 0, 59), {}, "ImageStylization_v2", "ImageStylization.2"),
    ("ImageStylization", P("A", 0, 60), {}, "ImageStylization_v3", "ImageStylization.3"),
]


# ------------------------------------------------------------------------------------------------ the policy

def test_catalogue_and_rule_count():
    assert len(TOOLS) == 14
    assert {t: TOOLS[t].versions for t in TOOLS if TOOLS[t].versions} == {
        "OCR": 5, "CountGivenObject": 4, "ImageDescription": 5, "GoogleSearch": 3, "RegionAttributeDescription": 2,
        "TextToImage": 3, "ImageStylization": 3}
    per_tool = {}
    for r in RULES:
        per_tool[r.tool or "tip"] = per_tool.get(r.tool or "tip", 0) + 1
    assert per_tool == {"ImageDescription": 3, "OCR": 4, "GoogleSearch": 2, "TextToImage": 2,
                        "RegionAttributeDescription": 2, "CountGivenObject": 4, "ImageStylization": 3, "tip": 4}
    assert len(RULES) == 24 and len({r.id for r in RULES}) == 24


@pytest.mark.parametrize("tool,profile,context,name,rule", BOUNDARIES,
                         ids=[f"{b[4]}-{b[1].account_type}{b[1].credits}-{b[1].age}" for b in BOUNDARIES])
def test_rule_boundaries(tool, profile, context, name, rule):
    assert tool_version(tool, profile, context) == name
    assert BASE_POLICY.resolve(tool, profile, context) == (name, rule)


def test_boundary_table_covers_every_version_rule_and_branch():
    hit = {(BASE_POLICY.decide(t, p, c)[1].id, BASE_POLICY.decide(t, p, c)[2]) for t, p, c, _, _ in BOUNDARIES}
    assert hit == {(rid, b) for rid, b, _ in rule_leaves()}
    assert len({rid for rid, _ in hit}) == 20  # + 4 tips = 24


def test_unversioned_tools_and_errors():
    assert tool_version("Calculator", P("A", 0, 0)) == "Calculator"
    assert tool_version("MathOCR", P("A", 0, 0)) == "MathOCR"
    with pytest.raises(PolicyError, match="did you mean"):
        tool_version("OCRR", P("A", 0, 0))
    for bad in [("E", 1, 1), ("A", -1, 1), ("A", 1, True), ("A", 1.5, 1)]:
        with pytest.raises(PolicyError):
            P(*bad)


def test_render():
    text = BASE_POLICY.text()
    assert text.startswith("Policy: GTA-Toolbox") and "### Tool Descriptions ###" in text
    assert text.index("### Tool Descriptions ###") < text.index("### Tool Calling Rules ###")
    for r in RULES:
        assert f"Rule {r.id}:" in text
    for t in TOOLS.values():
        for name in t.names:
            assert name in text
    assert "GoogleSearch_v2 if credits < 500, otherwise use GoogleSearch_v3" in text


# ------------------------------------------------------------------------------------------------ override

def _grid():
    for acc in "ABCD":
        for credits in (0, 249, 250, 251, 499, 500, 501, 749, 750, 751, 1000):
            for age in (15, 20, 21, 59, 60, 80):
                yield P(acc, credits, age)


@pytest.mark.parametrize("override", [DEFAULT_OVERRIDE, {"OCR.4": "OCR_v5"}, {"GoogleSearch.2": ["GoogleSearch_v1",
                                                                                                  "GoogleSearch_v1"]}])
def test_override_changes_exactly_the_named_rules(override):
    new = BASE_POLICY.with_override(override)
    changed_rules = set()
    for tool in TOOLS:
        for ctx in ({}, MATH) if tool == "OCR" else ({},):
            for p in _grid():
                old_name, old_rule, branch = BASE_POLICY.decide(tool, p, ctx)
                new_name, new_rule, new_branch = new.decide(tool, p, ctx)
                assert (getattr(old_rule, "id", None), branch) == (getattr(new_rule, "id", None), new_branch)
                if old_rule is None or old_rule.id not in override:
                    assert new_name == old_name
                else:
                    named = override[old_rule.id]
                    targets = [named] if isinstance(named, str) else named
                    assert new_name == targets[branch]
                    if new_name != old_name:
                        changed_rules.add(old_rule.id)
    assert changed_rules == set(override)
    block = new.override_block()
    assert block.startswith("### Tool Calling Rule Override ###")
    assert sorted(re.findall(r"Rule (\S+):", block)) == sorted(override)


def test_override_errors():
    with pytest.raises(PolicyError, match="unknown rule"):
        BASE_POLICY.with_override({"OCR.9": "OCR_v1"})
    with pytest.raises(PolicyError, match="tip"):
        BASE_POLICY.with_override({"Tip.1": "OCR_v1"})
    with pytest.raises(PolicyError, match="one tool name per outcome"):
        BASE_POLICY.with_override({"OCR.2": "OCR_v1"})
    with pytest.raises(PolicyError, match="not a version of OCR"):
        BASE_POLICY.with_override({"OCR.1": "ImageDescription_v1"})
    with pytest.raises(PolicyError, match="no overrides"):
        BASE_POLICY.override_block()
    again = GTAPolicy.from_dict(json.loads(json.dumps(BASE_POLICY.with_override(DEFAULT_OVERRIDE).to_dict())))
    assert again.resolve("OCR", P("A", 100, 30)) == ("OCR_v3", "OCR.1")


# ------------------------------------------------------------------------------------------------ scoring

def call(name, **args):
    return {"name": name, "arguments": args}


def test_scorer_per_argument_type():
    img = "image/image_1.jpg"
    # exact: image, position, color, k, top1
    assert arg_score("image", img, img)[0] == 1 and arg_score("image", "image/image_2.jpg", img)[0] == 0
    assert arg_score("position", "mt", "mt")[0] == 1 and arg_score("position", "lt", "mt")[0] == 0
    assert arg_score("position", "(10, 20)", "(10,20)")[0] == 1
    assert arg_score("color", "Blue", "blue")[0] == 1 and arg_score("color", "red", "blue")[0] == 0
    assert arg_score("k", 4, 4)[0] == 1 and arg_score("k", 1, 4)[0] == 0
    assert arg_score("k", "4", 4) == (0.0, "k must be a JSON integer, got '4'") and arg_score("k", True, 1)[0] == 0
    assert arg_score("top1", True, True)[0] == 1 and arg_score("top1", "true", True)[0] == 0
    # text similarity (token F1, offline stand-in for BERTScore)
    for name in ("attribute", "text", "query", "command", "annotation", "keywords", "instruction"):
        assert arg_score(name, "the Red cube", "the red cube")[0] == 1
        assert 0 < arg_score(name, "red cube", "the red cube")[0] < 1
        assert arg_score(name, "banana", "the red cube")[0] == 0
        assert arg_score(name, 3, "the red cube")[0] == 0
    assert abs(arg_score("query", "volume of a sphere", "formula for the volume of a sphere")[0] - 8 / 11) < 1e-9
    # expression: evaluated safely
    assert arg_score("expression", "3 * 4 + 2 * 7", "3*4+2*7")[0] == 1
    assert arg_score("expression", "26", "3*4+14")[0] == 1 and arg_score("expression", "27", "3*4+14")[0] == 0
    assert arg_score("expression", "__import__('os').system('echo hi')", "1")[0] == 0
    assert arg_score("expression", "2**10000000", "1")[0] == 0 and arg_score("expression", "1/0", "1")[0] == 0
    # bbox: IoU
    assert arg_score("bbox", "(0, 0, 10, 10)", "(0, 0, 10, 10)")[0] == 1
    assert abs(arg_score("bbox", "(0, 0, 10, 10)", "(5, 0, 15, 10)")[0] - 1 / 3) < 1e-9
    assert arg_score("bbox", [0, 0, 10, 10], "(0, 0, 10, 10)")[0] == 1
    assert arg_score("bbox", "(0, 0, 10)", "(0, 0, 10, 10)")[0] == 0 and arg_score("bbox", {}, "(0,0,1,1)")[0] == 0


def test_safe_eval():
    assert safe_eval("(3 + 4) * 2 - 2 ** 3 / 4") == 12.0 and safe_eval("-7 % 3") == 2.0
    for bad in ["x + 1", "abs(-1)", "().__class__", "[1]", "1 if 1 else 2", "lambda: 1", "9**9**9", "(" * 500,
                "True + 1", "'a' * 3", ""]:
        with pytest.raises(ValueError):
            safe_eval(bad)


def test_score_call_overall():
    gold = call("RegionAttributeDescription_v2", image="image/image_1.jpg", bbox="(0, 0, 10, 10)", attribute="color")
    assert score_call(json.dumps(gold), gold).overall == 1.0
    think = "<think>Rule RegionAttributeDescription.1: account_type is A or B.</think>" + json.dumps(gold)
    assert score_call(think, json.dumps(gold)).overall == 1.0
    wrong_version = dict(gold, name="RegionAttributeDescription_v1")
    s = score_call(wrong_version, gold)
    assert (s.tool, s.args, s.overall) == (0.0, 1.0, 0.5) and "gold RegionAttributeDescription_v2" in s.reason
    half_box = call("RegionAttributeDescription_v2", image="image/image_1.jpg", bbox="(5, 0, 15, 10)",
                    attribute="color")
    assert abs(score_call(half_box, gold).overall - (0.5 + 0.5 * (1 + 1 / 3 + 1) / 3)) < 1e-9
    missing = call("RegionAttributeDescription_v2", image="image/image_1.jpg", attribute="color")
    assert abs(score_call(missing, gold).args - 2 / 3) < 1e-9 and "bbox: missing" in score_call(missing, gold).reason
    # defaults fill in optional arguments (top1=true, color="red")
    assert score_call(call("TextToBbox", image="a", text="cube"), call("TextToBbox", image="a", text="cube",
                                                                        top1=True)).overall == 1.0
    assert score_call(call("AddText", image="a", text="hi", position="mt"),
                      call("AddText", image="a", text="hi", position="mt", color="red")).overall == 1.0
    extra = score_call(call("OCR_v1", image="a", text="x"), call("OCR_v1", image="a"))
    assert extra.args == 0.5 and "not an argument" in extra.reason
    for bad, why in [("not json", "not JSON"), ('{"name": "OCR_v9", "arguments": {}}', "unknown tool"),
                     ("[1, 2]", "JSON list"), ('{"arguments": {}}', 'no "name"'),
                     ('{"name": "OCR_v1", "arguments": [1]}', "not a JSON object"), ("<think>a</think>", "no JSON"),
                     ('{"name": "OCR", "arguments": {"image": "a"}}', "unknown tool")]:
        s = score_call(bad, call("OCR_v1", image="a"))
        assert s.overall == 0 and why in s.reason, (bad, s.reason)


def test_trl_rewards():
    gold = json.dumps(call("OCR_v1", image="image/image_1.jpg"))
    good = "<think>Rule OCR.3: credits > 750 and not (age < 21), so the call is OCR_v1.</think>" + gold
    conv = [{"role": "assistant", "content": good}]
    assert gta_reward([good, conv, gold, "nope"], answer=[gold] * 4) == [1.0, 1.0, 1.0, 0.0]
    assert gta_format_reward([good, conv, gold, good + " extra", "<think>a</think><think>b</think>{}"]) == \
        [1.0, 1.0, 0.0, 0.0, 0.0]
    assert parse_call("```json\n" + gold + "\n```")[0]["name"] == "OCR_v1"
    rows = [{"id": "x", "tool": "OCR", "answer": gold, "path": ["OCR.3"]}] * 2
    scored = score_rows(rows, [good, "bad"], method="m")
    assert scored[0]["cited"] == ["OCR.3"] and scored[1]["pred"] is None
    assert summarize(scored) == [{"method": "m", "setting": "no_policy", "n": 2, "tool": 50.0, "args": 50.0,
                                  "overall": 50.0}]


PIECES = st.sampled_from(["<think>", "</think>", "{", "}", '"name"', '"arguments"', ":", ",", '"OCR_v1"', "[", "]",
                          '"image"', '"bbox"', '"expression"', '"2**99999"', '"(1,2,3,4)"', "null", "true", "1e999",
                          "\\", '"', "\x00", "😀", "```json"])
TEXTS = st.one_of(st.text(max_size=40), st.lists(PIECES | st.text(max_size=4), max_size=40).map("".join))
JSONISH = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=6),
                       lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
                       max_leaves=8)
CALLS = st.builds(lambda n, a: json.dumps({"name": n, "arguments": a}),
                  st.sampled_from(["OCR_v1", "Calculator", "RegionAttributeDescription_v2", "GoogleSearch_v1", "x"]),
                  st.dictionaries(st.sampled_from(["image", "bbox", "expression", "k", "top1", "query", "color"]),
                                  JSONISH, max_size=4))
COMPLETIONS = st.one_of(TEXTS, CALLS, CALLS.map(lambda c: "<think>r</think>" + c), st.none(), st.integers(),
                        TEXTS.map(lambda t: [{"role": "assistant", "content": t}]), st.just([{"role": "assistant"}]))
GOLDS = st.sampled_from([json.dumps(call("Calculator", expression="3*4")),
                         json.dumps(call("RegionAttributeDescription_v2", image="a", bbox="(0,0,2,2)", attribute="c")),
                         json.dumps(call("GoogleSearch_v1", query="q", k=1)), None, "not json", "{}"])


@settings(max_examples=300, deadline=None)
@given(st.lists(COMPLETIONS, min_size=1, max_size=4), GOLDS)
def test_fuzzed_completions_never_raise(completions, gold):
    r = gta_reward(completions, answer=[gold] * len(completions))
    f = gta_format_reward(completions)
    assert len(r) == len(f) == len(completions)
    assert all(0.0 <= x <= 1.0 for x in r + f)


# ------------------------------------------------------------------------------------------------ GTA loader

def _gta_file(root: pathlib.Path, dialogs_override=None, files=None) -> pathlib.Path:
    (root / "image").mkdir(parents=True, exist_ok=True)
    for k in (1, 2):
        Image.new("RGB", (640, 480), (k * 60, 10, 10)).save(root / "image" / f"image_{k}.jpg")
    data = {
        "0": {"tools": [{"name": "OCR"}, {"name": "Calculator"}],
              "files": files or [{"type": "image", "path": "image/image_1.jpg", "url": None}],
              "dialogs": dialogs_override or [
                  {"role": "user", "content": "How much do two coffees cost?"},
                  {"role": "assistant", "thought": "Read the menu.", "tool_calls": [
                      {"type": "function", "function": {"name": "OCR", "arguments": {"image": "image/image_1.jpg"}}}]},
                  {"role": "tool", "name": "OCR", "content": {"type": "text", "content": "Coffee 3.5"}},
                  {"role": "assistant", "tool_calls": [
                      {"type": "function", "function": {"name": "Calculator", "arguments": {"expression": "2*3.5"}}}]},
                  {"role": "tool", "name": "Calculator", "content": {"type": "text", "content": "7.0"}},
                  {"role": "assistant", "content": "7 dollars"}],
              "gt_answer": {"whitelist": [["7"]], "blacklist": None}},
        "1": {"tools": [{"name": "MathOCR"}],
              "files": [{"type": "image", "path": "image/image_2.jpg"}],
              "dialogs": [{"role": "user", "content": "Solve it."},
                          {"role": "assistant", "tool_calls": [{"type": "function", "function": {
                              "name": "MathOCR", "arguments": {"image": "image/image_2.jpg"}}}]},
                          {"role": "tool", "name": "MathOCR", "content": {"type": "text", "content": "x+1=2"}},
                          {"role": "assistant", "content": "x = 1"}],
              "gt_answer": ["x = 1"]}}
    (root / "dataset.json").write_text(json.dumps(data))
    return root


def test_gta_loader(tmp_path):
    insts = load_gta(_gta_file(tmp_path), seed=0)
    assert [i.id for i in insts] == ["gta0/0", "gta0/1", "gta1/0"]
    ocr, calc, math = insts
    assert ocr.query == "How much do two coffees cost?" and ocr.history == [] and ocr.images[0].size == (427, 320)
    assert ocr.answer()["name"] == tool_version("OCR", ocr.profile) and ocr.profile == calc.profile
    assert calc.answer() == {"name": "Calculator", "arguments": {"expression": "2*3.5"}}
    assert [(s.tool, s.result) for s in calc.history] == [("OCR", "Coffee 3.5")]
    assert tool_version("OCR", calc.profile) in calc.prompt_text()  # the history is versioned for this user
    assert math.answer()["name"] == "MathOCR" and math.cited_rules()[0] == "OCR.4"
    assert load_gta(tmp_path / "dataset.json", seed=0)[0].profile == ocr.profile


def test_gta_loader_errors(tmp_path):
    with pytest.raises(DataError, match="download gta_dataset.zip"):
        load_gta(tmp_path / "nowhere")
    _gta_file(tmp_path, files=[{"type": "image", "path": "image/missing.jpg"}])
    with pytest.raises(DataError, match="missing.jpg is missing"):
        load_gta(tmp_path)
    assert len(load_gta(tmp_path, missing_images="blank")) == 3
    _gta_file(tmp_path, dialogs_override=[{"role": "user", "content": "q"}, {"role": "assistant", "tool_calls": [
        {"function": {"name": "Teleport", "arguments": {}}}]}])
    with pytest.raises(DataError, match="unknown tool 'Teleport'"):
        load_gta(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"0": {"files": []}}))
    with pytest.raises(DataError, match="missing 'dialogs'"):
        load_gta(tmp_path)
    (tmp_path / "dataset.json").write_text(json.dumps({"0": {"dialogs": []}}))
    with pytest.raises(DataError, match="missing 'files'"):
        load_gta(tmp_path)


# ------------------------------------------------------------------------------------------------ generator

def _fingerprint(insts):
    return [(i.id, i.prompt_text(), i.cot(), [hashlib.md5(im.tobytes()).hexdigest() for im in i.images])
            for i in insts]


def test_generator_deterministic_and_covers_every_rule_and_tool():
    a = generate_instances(len(INSTANCE_TYPES) * 6, seed=3)
    assert _fingerprint(a) == _fingerprint(generate_instances(len(INSTANCE_TYPES) * 6, seed=3))
    assert _fingerprint(a) != _fingerprint(generate_instances(len(INSTANCE_TYPES) * 6, seed=4))
    cited = {r for i in a for r in i.cited_rules()}
    assert cited == {r.id for r in RULES}
    assert {(r.id, b) for i in a for _, r, b in [BASE_POLICY.decide(i.tool, i.profile, i.context)] if r} == \
        {(rid, b) for rid, b, _ in rule_leaves()}
    assert {BASE_POLICY.decide(i.tool, i.profile, i.context)[0].split("_v")[0] for i in a} == set(TOOLS)
    for i in a:  # the tips hold in the data
        assert i.image_names == [f"image/image_{k + 1}.jpg" for k in range(len(i.images))]
        if "image" in i.arguments:
            assert i.arguments["image"] in i.image_names
        if len(i.images) > 1:
            assert i.tool == "ImageDescription" and not i.history and i.arguments["image"] == i.image_names[0]
        if i.tool == "RegionAttributeDescription":
            assert i.history[-1].tool == "TextToBbox" and i.arguments["bbox"] in i.history[-1].result
        if i.tool == "GoogleSearch":
            assert i.arguments["k"] == (4 if "find me some" in i.query else 1)
        assert i.cot().startswith("<think>") and score_call(i.cot(), i.answer()).overall == 1.0


def test_override_instances_change_their_answer():
    updated = BASE_POLICY.with_override(DEFAULT_OVERRIDE)
    out = override_instances(generate_instances(45, seed=0, prefix="ovr"), updated)
    assert out and all(i.answer(updated)["name"] != i.answer()["name"] for i in out)
    assert {i.tool for i in out} <= {"OCR", "CountGivenObject", "ImageStylization"}


def test_build_gta_datasets(tmp_path):
    from mpi_kit.cpt import check_vmcpt
    from mpi_kit.sft import check_sft
    from mpi_kit.training import check_rows

    s = build_gta_datasets(out=str(tmp_path / "d"), num_instances=30, seed=0)
    assert s["num_instances"] == {"train": 24, "test": 6, "override": 6}
    assert s["datasets"]["eval"] == {"no_policy": 6, "in_context": 6, "override": 6}
    cot, vm, rl, ev = (load_kit_data(tmp_path / "d", k) for k in ("cot", "vmcpt", "rl", "eval"))
    check_sft(cot["train"], "CoT SFT")
    check_vmcpt(vm["train"])
    for ds in (cot["train"], vm["train"], ev["in_context"], ev["override"]):
        check_rows(ds, "test")
    row = rl["train"][0]
    rules = "### Tool Calling Rules ###"
    assert rules not in str(row["prompt"]) and rules in str(row["policy"])
    assert gta_reward([cot["train"][0]["completion"]], answer=[cot["train"][0]["answer"]]) == [1.0]
    for r in ev["override"]:
        assert "### Tool Calling Rule Override ###" in r["prompt"][0]["content"][0]["text"] + \
            r["prompt"][0]["content"][1]["text"]
        assert json.loads(r["answer"])["name"] in r["completion"][0]["content"][0]["text"]
        assert not {"depth", "variant", "case"} & set(r)  # ClevrPolicy's columns: a GTA row does not pose as one
    build_gta_datasets(out=str(tmp_path / "again"), num_instances=30, seed=0)
    for kind in ("cot", "eval"):
        for split, ds in load_kit_data(tmp_path / "d", kind).items():
            assert ds.to_list() == load_kit_data(tmp_path / "again", kind)[split].to_list()


def test_cli_gta_data(tmp_path, capsys):
    from mpi_kit.cli import main

    assert main(["gta-data", "--out", str(tmp_path / "g"), "--num-instances", "20", "--kinds", "qa", "eval"]) == 0
    assert json.loads((tmp_path / "g" / "summary.json").read_text())["datasets"]["qa"] == {"train": 16, "test": 4}
    assert main(["gta-data", "--out", str(tmp_path / "h"), "--override", '{"OCR.9": "OCR_v1"}']) == 2
    assert "unknown rule 'OCR.9'" in capsys.readouterr().err
    assert main(["gta-data", "--out", str(tmp_path / "h"), "--gta-root", str(tmp_path / "none")]) == 2


def test_rule_explorer_and_versions():
    from mpi_kit.tasks.gta.widgets import rule_explorer

    rows = BASE_POLICY.versions(P("B", 600, 30), {"math_image": True})
    assert {r["tool"] for r in rows} == {t for t in TOOLS if TOOLS[t].versions}
    assert {"tool": "OCR", "call": "MathOCR", "rule": "OCR.4"} in rows
    box = rule_explorer()
    assert "OCR_v4" in box.children[-1].value and "OCR_v1" in box.children[-1].value  # base | override
    box.children[1].value = 100  # credits slider
    assert "OCR_v5" in box.children[-1].value


# ------------------------------------------------------------------------ training entry points on GTA data

@pytest.fixture(scope="module")
def gta_small(tmp_path_factory):
    """(root, base): GTA rl + vmcpt data under root/data and a random SMALL model whose tokenizer knows GTA text."""
    from conftest import SMALL, message_text
    from mpi_kit.tiny import build_tiny, save_tiny

    root = tmp_path_factory.mktemp("gta-small")
    build_gta_datasets(out=str(root / "data"), num_instances=10, seed=0, kinds=("rl", "vmcpt"))
    model, processor = build_tiny(message_text(load_kit_data(root / "data", "vmcpt")["train"]) * 4, dims=SMALL)
    return root, str(save_tiny(model, processor, root / "base"))


def test_task_of_a_data_folder(tmp_path):
    import json as _json

    from mpi_kit.tasks.clevr.data import build_datasets
    from mpi_kit.tasks import task_of

    build_gta_datasets(out=str(tmp_path / "g"), num_instances=4, kinds=("qa",))
    build_datasets(out=str(tmp_path / "c"), num_policies=1, num_scenes=4, depth=2, kinds=("qa",), progress=False)
    assert task_of(tmp_path / "g").name == "gta" and task_of(tmp_path / "c").name == "clevr"
    for d in ("g", "c"):  # a folder written before summaries named their task is still told apart
        path = tmp_path / d / "summary.json"
        path.write_text(_json.dumps({k: v for k, v in _json.loads(path.read_text()).items() if k != "task"}))
    assert task_of(tmp_path / "g").name == "gta" and task_of(tmp_path / "c").name == "clevr"
    with pytest.raises(DataError, match="no summary.json"):
        task_of(tmp_path / "none")


def test_cli_rl_on_gta_data_uses_the_gta_reward(gta_small, tmp_path, capsys):
    import pandas as pd

    from mpi_kit.cli import main

    root, base = gta_small
    argv = ["rl", "--recipe", base, "--data", str(root / "data"), "--max-steps", "1", "--num-generations", "2",
            "--set", "grpo.max_completion_length=8", "grpo.per_device_train_batch_size=2"]
    assert main(argv + ["--out", str(tmp_path / "auto")]) == 0  # --reward auto: summary.json says GTA
    s = json.loads((tmp_path / "auto" / "summary.json").read_text())
    assert s["steps"] == 1 and s["reward_funcs"] == ["gta_format_reward", "gta_reward"]
    log = pd.concat(pd.read_parquet(f) for f in (tmp_path / "auto" / "completions").glob("*.parquet"))
    assert {"gta_format_reward", "gta_reward"} <= set(log.columns) and "accuracy_reward" not in log.columns
    # the inspector reads the run as GTAPolicy (summary.json's "task") and scores it as the GTA reward does
    from mpi_kit.rollout_log import load_rollouts
    from mpi_kit.tasks import get_task

    df, gta = load_rollouts(tmp_path / "auto"), get_task("gta")
    assert s["task"] == "gta" and set(df["task"]) == {"gta"}
    weighted = 0.1 * log["gta_format_reward"].to_numpy() + 0.9 * log["gta_reward"].to_numpy()
    assert df["reward"].tolist() == pytest.approx(weighted.tolist())
    assert df["reward"].tolist() == pytest.approx([gta.reward(t, g) for t, g in zip(df["text"], df["gold"])])
    capsys.readouterr()  # ClevrPolicy's rewards on GTA rows (no boxed case to compare with): a clear refusal
    assert main(argv + ["--out", str(tmp_path / "clevr"), "--reward", "clevr"]) == 2
    err = capsys.readouterr().err
    assert "GTAPolicy data" in err and "'case'" in err and "--reward gta" in err
    assert not (tmp_path / "clevr" / "summary.json").exists()
    assert main(argv + ["--out", str(tmp_path / "x"), "--data", str(tmp_path / "nowhere")]) == 2
    assert "no summary.json" in capsys.readouterr().err


def test_gta_pipeline_end_to_end(gta_small, tmp_path, capsys):
    from mpi_kit.cli import main
    from mpi_kit.tasks import get_task

    GTA_METHODS = get_task("gta").methods

    root, base = gta_small
    out = tmp_path / "pipe"
    argv = ["pipeline", "--dataset", "gta", "--out", str(out), "--model", base, "--num-instances", "10",
            "--cpt-steps", "1", "--sft-steps", "1", "--rl-steps", "1", "--eval-limit", "2", "--max-new-tokens", "8",
            "--no-forgetting", "--set", "sft_cot.learning_rate=0.002"]
    assert main(argv) == 0
    printed = capsys.readouterr()
    saved = json.loads((out / "results.json").read_text())
    assert saved["dataset"] == "gta" and saved["config"]["methods"] == list(GTA_METHODS)
    assert "depths" not in saved["config"] and set(saved["methods"]) == {f"GTA/{m}" for m in GTA_METHODS}
    assert saved["config"]["overrides"] == {"sft_cot.learning_rate": 0.002}  # --set reaches every stage
    assert json.loads((out / "GTA" / "cot_sft" / "mpi_run.json").read_text())["sft_cot.learning_rate"] == 0.002
    for m, r in saved["methods"].items():
        assert {"tool", "args", "overall", "override", "n"} <= set(r) and r["n"] == 2
        assert {"tool", "args", "overall"} == set(r["override"])
    assert "policy_in_context" in saved["methods"]["GTA/CoT SFT"]
    rl = json.loads((out / "GTA" / "trimpi_poro_grpo" / "summary.json").read_text())
    assert rl["reward_funcs"] == ["gta_format_reward", "gta_reward"] and rl["policy_rollout"]
    assert saved["paper"]["gta_7b"]["TriMPI w/ PoRo-GRPO"][2] == 81.06
    assert saved["context"]["in_context_prompt_tokens"] > 0 and saved["efficiency"]["GTA"]
    assert "(81.1)" in next(line for line in printed.out.splitlines() if line.startswith("TriMPI w/ PoRo-GRPO"))
    assert (out / "report.html").stat().st_size > 10_000
    # prompts past the model's trained positions still run; the check says so (the tiny model: ~4.4k > 4096)
    from mpi_kit.models import load_model

    model, processor = load_model(base)
    model.config.text_config.max_position_embeddings = 1000
    c = get_task("gta").context_check(model, processor, out / "GTA" / "data")
    assert c["beyond_trained_context"] and c["in_context_prompt_tokens"] > 1000
    assert "beyond the 1000 positions" in capsys.readouterr().err


def test_evaluate_accuracy_scores_gta_data_as_gta(gta_small, tmp_path):
    """One evaluation entry point: `evaluate_accuracy` scores as the task it is given (the one that built it)."""
    from mpi_kit.data import DataError
    from mpi_kit.evaluate import evaluate_accuracy
    from mpi_kit.tasks import get_task, task_of
    from mpi_kit.tiny import load_tiny

    root, base = gta_small
    build_gta_datasets(out=str(tmp_path / "ev"), num_instances=10, seed=0, kinds=("eval",))
    model, processor = load_tiny(base)
    with pytest.raises(DataError, match="not ClevrPolicy data.*task_of"):  # no task: ClevrPolicy's scoring refuses
        evaluate_accuracy(model, processor, tmp_path / "ev", "no_policy", limit=2, max_new_tokens=4)
    rows = evaluate_accuracy(model, processor, tmp_path / "ev", "no_policy", method="m", limit=2, max_new_tokens=4,
                             task=task_of(tmp_path / "ev"))
    assert len(rows) == 2 and {"tool", "args", "overall", "pred"} <= set(rows[0]) and "depth" not in rows[0]
    assert get_task("gta").summarize(rows)[0]["n"] == 2
