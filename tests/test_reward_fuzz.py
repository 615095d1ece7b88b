"""Every public reward of both tasks is total: for any completion (huge, deeply nested, adversarial for regexes,
non-finite numbers, weird types) each call returns quickly, one finite score per completion in its documented
range, or raises a ValueError naming a completions/golds mismatch. Deterministic: a fixed seed."""
import json
import math
import random
import signal
import time

import pytest

from mpi_kit.tasks.gta.rewards import arg_score, gta_format_reward, gta_reward, parse_call, score_call
from mpi_kit.tasks.clevr.rewards import accuracy_reward, format_reward, total_reward

LIMIT = 0.5  # seconds one reward call may take; rewards run on every completion of every RL step


class TooSlow(BaseException):
    """Raised by the alarm; a BaseException so the rewards' own `except Exception` cannot swallow it."""


def timed(fn, *args, **kwargs):
    """fn(*args, **kwargs), failing the test when it takes longer than LIMIT (cut off after a few LIMITs)."""
    def stop(*_):
        raise TooSlow
    old = signal.signal(signal.SIGALRM, stop)
    signal.setitimer(signal.ITIMER_REAL, 4 * LIMIT)
    t = time.perf_counter()
    try:
        out = fn(*args, **kwargs)
    except TooSlow:
        pytest.fail(f"{fn.__name__} ran past {4 * LIMIT} s on {_short(args)}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    took = time.perf_counter() - t
    assert took < LIMIT, f"{fn.__name__} took {took:.2f} s on {_short(args)}"
    return out


def _short(x) -> str:
    text = repr(x)
    return text if len(text) < 120 else text[:100] + f"... ({len(text)} chars)"


def _in_range(x, allowed=None) -> bool:
    return type(x) is float and math.isfinite(x) and 0.0 <= x <= 1.0 and (allowed is None or x in allowed)


class Weird:
    """A value whose comparisons, str and repr all raise."""
    def __eq__(self, other):
        raise RuntimeError("no comparing")

    def __str__(self):
        raise RuntimeError("no str")

    __repr__ = __str__
    __hash__ = object.__hash__


def _call(name, **args) -> str:
    return json.dumps({"name": name, "arguments": args})


GOLDS = [_call("RegionAttributeDescription_v2", image="image/image_1.jpg", bbox="(10, 20, 50, 60)", attribute="color"),
         _call("CountGivenObject_v1", image="image/image_1.jpg", text="cubes", bbox="(0, 0, 5, 5)"),
         _call("Calculator", expression="3 * 4 + 2"), _call("GoogleSearch_v1", query="cube faces", k=1),
         _call("TextToBbox", image="image/image_1.jpg", text="red cube", top1=True),
         _call("AddText", image="image/image_1.jpg", text="Cubes: 2", position="lt", color="red"),
         {"name": "OCR_v1", "arguments": {"image": "a"}}, "not json", "{}", "[1, 2]", "[" * 100000,
         '{"name": 5}', '{"name": "OCR_v1", "arguments": [1]}', _call("Calculator", expression=1e308),
         json.dumps({"name": "DrawBox", "arguments": {"image": "a", "bbox": [float("nan"), 0, 1, 1]}})]

BIG = "x" * 100_000
VALUES = [None, True, False, 0, -1, 7, 2 ** 200, 1e308, -1e308, -1.797e308, float("nan"), float("inf"),
          float("-inf"), 1e-320, "", " ", "x", BIG, "(1, 2, 3, 4)", "(1e400, 0, 1, 1)", "(" + "9" * 400 + ", 0, 1, 1)",
          "1" * 10_000, [1, 2, 3, 4], [1, 2, 3], [1, 2, 3, "4"], [float("nan"), 0, 1, 1], [-1e308, 0, 1e308, 0],
          [174, -1.797e308, 0, 0], [174, -1.797e308, -1332, 0], [1e308] * 4, [True, 0, 1, 1], [[1, 2], [3, 4]],
          {"a": 1}, (1, 2, 3, 4), "2**99999", "9**64 * 9**64 * 9**64", "1/0", "(-8) ** 0.5", "-" * 450 + "1",
          "(" * 300 + "1" + ")" * 300, "__import__('os')", "😀" * 1000, b"bytes", {1, 2}, 1j, Weird(), object()]
NAMES = ["bbox", "expression", "image", "text", "k", "top1", "query", "color", "position", "", "unknown", 5, None]

# completions built to make regexes backtrack, parsers recurse or numbers overflow
CALL = _call("RegionAttributeDescription_v2", image="image/image_1.jpg", bbox="(10, 20, 50, 60)", attribute="color")
ADVERSARIAL = [
    "```" + " " * 4000 + "x", "```json" + " " * 100_000 + "x", "```" + " " * 100_000 + "```" + " " * 100_000 + "x",
    "`" * 100_000, "`" * 100_000 + "x", "```" + "\n" * 50_000 + CALL + "\n" * 50_000 + "x",
    " " * 100_000 + "x", "\t\n " * 30_000 + "x", BIG, "{" * 100_000, "}" * 100_000, "{" * 50_000 + "}" * 50_000,
    "[" * 100_000, "]" * 100_000, '{"a":' * 100_000, "<think>" + "[" * 100_000 + "</think>" + "[" * 100_000,
    '{"name": "OCR_v1", "arguments": {"image": ' + "[" * 100_000 + "}}",
    '{"name": "RegionAttributeDescription_v2", "arguments": {"bbox": ' + "[" * 900 + "]" * 900 + "}}",
    "<think>" * 20_000, "</think>" * 20_000, "<think>" + "a" * 100_000, "<think>" + "<" * 100_000 + "</think>{}",
    "<think>a</think>" + " " * 100_000 + "x", "<think>a</think>\\boxed{a}" + " " * 100_000 + "x",
    "\\boxed{" * 20_000, "\\boxed{" + "a" * 100_000, ("\\boxed{" + " " * 1000) * 100, "<think>" + "}" * 100_000,
    "<think>x</think>\\boxed{" + "{" * 100_000 + "}", "😀" * 30_000, "\x00" * 1000, "\udcff" * 100,
    '{"name": "Calculator", "arguments": {"expression": "' + "(" * 200 + "1" + ")" * 200 + '"}}',
    _call("Calculator", expression="9**64 * 9**64"), _call("Calculator", expression="-" * 450 + "1"),
    '{"name": "GoogleSearch_v1", "arguments": {"query": "q", "k": NaN}}',
    '{"name": "GoogleSearch_v1", "arguments": {"query": "q", "k": Infinity}}',
    '{"name": "GoogleSearch_v1", "arguments": {"query": "q", "k": ' + "1" * 5000 + "}}",
    '{"name": "RegionAttributeDescription_v2", "arguments": {"bbox": [1e308, -1e308, 1e999, 0], "attribute": 1}}',
    _call("RegionAttributeDescription_v2", image="image/image_1.jpg", bbox=[-1e308, 0, 1e308, 0],
          attribute="color"),
    _call("RegionAttributeDescription_v2", image="image/image_1.jpg", bbox="(-1e308, 0, 1e308, 0)"),
    _call("RegionAttributeDescription_v2", bbox=[1, 2, 3]),
    _call("RegionAttributeDescription_v2", bbox=["1", 2, 3, 4]),
    _call("RegionAttributeDescription_v2", bbox=[[1, 2], [3, 4]]), _call("CountGivenObject_v1", bbox=None),
    '{"name": 5, "arguments": {}}', '{"name": null}', '{"name": ["OCR_v1"]}', '{"name": {"a": 1}}',
    '{"name": "OCR_v1", "arguments": "image"}', CALL, "<think>r</think>" + CALL, "```json\n" + CALL + "\n```",
    None, 5, 1.5, float("nan"), b"bytes", [], [{}], [{"role": "assistant"}], [{"role": "assistant", "content": 5}],
    [{"role": "assistant", "content": [{"type": "text", "text": 5}, {"text": None}, "part"]}],
    {"name": "OCR_v1", "arguments": {"image": "a"}}, {"name": 1, "arguments": {}}, {"arguments": []}, {1: 2},
    Weird(), object(),
]

PIECES = ["<think>", "</think>", "{", "}", "[", "]", '"name"', '"arguments"', ":", ",", '"OCR_v1"', '"bbox"',
          '"expression"', '"2**99999"', "1e308", "-1e308", "NaN", "Infinity", "null", "true", "```", "```json",
          "\\boxed{", "Case 1", " ", "\n", "\\", '"', "😀", "\x00", "`"]


def _random_completions(n: int, seed: int = 0) -> list:
    """Random strings: pieces of calls, boxes and fences glued with noise, some repeated into long runs."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        parts = [rng.choice(PIECES) * (rng.choice([1, 1, 1, 50, 2000])) if rng.random() < 0.9
                 else "".join(chr(rng.randrange(0x20, 0x3000)) for _ in range(rng.randrange(20)))
                 for _ in range(rng.randrange(1, 30))]
        out.append("".join(parts))
    return out


COMPLETIONS = ADVERSARIAL + _random_completions(300)


def test_gta_parse_call_is_total():
    for c in COMPLETIONS:
        call, why = timed(parse_call, c)
        assert (isinstance(call, dict) and isinstance(call["name"], str) and isinstance(call["arguments"], dict)
                and why == "") or (call is None and isinstance(why, str) and why), _short(c)


def test_gta_score_call_is_total():
    rng = random.Random(1)
    for c in COMPLETIONS:
        for gold in rng.sample(GOLDS, 3):
            s = timed(score_call, c, gold)
            assert _in_range(s.tool, (0.0, 1.0)) and _in_range(s.args) and _in_range(s.overall), (_short(c), s)
            assert isinstance(s.reason, str) and len(s.reason) < 2000


def test_gta_rewards_give_one_score_per_completion():
    rng = random.Random(2)
    for k in range(0, len(COMPLETIONS), 4):
        batch = COMPLETIONS[k:k + 4]
        golds = [rng.choice(GOLDS) for _ in batch]
        scores = timed(gta_reward, batch, answer=golds)
        assert len(scores) == len(batch) and all(_in_range(x) for x in scores)
        fmt = timed(gta_format_reward, batch)
        assert len(fmt) == len(batch) and all(_in_range(x, (0.0, 1.0)) for x in fmt)
    assert timed(gta_reward, ["a", "b"], answer=GOLDS[0]) == [0.0, 0.0]  # one gold for all: broadcast
    assert timed(gta_reward, ["a", "b"]) == [0.0, 0.0]  # no gold column: nothing to match


def test_gta_arg_score_is_total():
    for name in NAMES:
        for pred in VALUES:
            for gold in VALUES:
                score, why = timed(arg_score, name, pred, gold)
                assert _in_range(score) and isinstance(why, str) and len(why) < 2000, (name, _short(pred),
                                                                                       _short(gold), score)


def test_huge_bboxes_score_finite():
    assert arg_score("bbox", [174, -1.797e308, 0, 0], [174, -1.797e308, -1332, 0])[0] == pytest.approx(174 / 1506)
    assert arg_score("bbox", [-1e308, 0, 1e308, 0], [-1e308, 0, 1e308, 0])[0] == 1.0
    assert arg_score("bbox", [-1e308, 0, 1e308, 1e308], [0, 0, 1e308, 1e308])[0] == pytest.approx(0.5)
    s = score_call(_call("RegionAttributeDescription_v2", image="a", bbox=[-1e308, 0, 1e308, 0], attribute="c"),
                   _call("RegionAttributeDescription_v2", image="a", bbox="(0, 0, 2, 2)", attribute="c"))
    assert _in_range(s.overall) and s.per_arg["bbox"] == 0.0


def test_clevr_rewards_are_total():
    for k in range(0, len(COMPLETIONS), 4):
        batch = COMPLETIONS[k:k + 4]
        for fn, kw in ((format_reward, {}), (accuracy_reward, {"case": ["Case 1"] * len(batch)})):
            out = timed(fn, batch, **kw)
            assert len(out) == len(batch) and all(_in_range(x, (0.0, 1.0)) for x in out), fn.__name__
    for c in COMPLETIONS[::3]:
        assert _in_range(timed(total_reward, c, "Case 1"))
    assert format_reward(["<think>a</think>\\boxed{Case 1}"]) == accuracy_reward(["\\boxed{Case 1}"], case="Case 1")


@pytest.mark.parametrize("reward, kw", [(gta_reward, "answer"), (accuracy_reward, "case")])
def test_a_gold_per_completion_or_a_clear_error(reward, kw):
    with pytest.raises(ValueError, match="3 completions but 1 "):
        reward(["a", "b", "c"], **{kw: ["gold"]})
    with pytest.raises(ValueError, match="2 completions but 3 "):
        reward(["a", "b"], **{kw: ["g", "g", "g"]})
