"""GTAPolicy scoring, which is also the RL reward (paper App. C.3, Eq. 5): a predicted JSON tool call vs the gold one.

Tool Acc = exact tool name, version included. Arg Score = the mean over argument fields (gold's and the
prediction's, missing optional ones filled with their defaults) of a per-type score in [0, 1]:
  exact match   image, position, color, k, top1
  text F1       attribute, text, query, command, annotation, keywords, instruction: token-level F1, offline.
                It replaces the paper's BERTScore (needs a model download); close paraphrases score lower here.
  expression    both sides evaluated by an AST walker over numbers and + - * / ** % ( ), never Python `eval`
  IoU           bbox
Overall = 0.5 x Tool Acc + 0.5 x Arg Score. Bad JSON, unknown tools and wrong argument types score 0 with a
reason; nothing here raises, whatever the completion, and every score is a finite float in [0, 1]. Parsing is
string search, linear in the completion's length (a backtracking regex on model output can hang a training step).
"""
from __future__ import annotations

import ast
import json
import math
import operator
import re
import reprlib
from collections import Counter
from dataclasses import dataclass, field

from .policy import TOOL_NAMES, TOOLS
from ...rewards import REWARD_WEIGHTS, after_think, completion_text, one_gold_each

EXACT = ("image", "position", "color", "k", "top1")
TEXT = ("attribute", "text", "query", "command", "annotation", "keywords", "instruction")
_NUM = re.compile(r"-?\d+(?:\.\d+)?")
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 60
_short = _REPR.repr  # values quoted in reasons: short, and never raising


@dataclass
class CallScore:
    """The score of one predicted call: tool (0/1), args and overall in [0, 1], why, and each argument's score."""
    tool: float = 0.0
    args: float = 0.0
    overall: float = 0.0
    reason: str = ""
    per_arg: dict = field(default_factory=dict)

    def __str__(self) -> str:
        """What print shows: the paper's three scores, each argument's score and why it lost points, in words (the
        dataclass repr stays for debugging)."""
        per = ", ".join(f"{k} {v:.2f}" for k, v in self.per_arg.items())
        text = f"Tool Acc {self.tool:g} · Arg Score {self.args:.2f}" + (f" ({per})" if per else "")
        why = f" · why it lost points: {self.reason}" if self.reason else ""
        return text + f" · Overall {self.overall:.2f}" + why


def call_text(call: dict | None) -> str:
    """A tool call in words for a reader, e.g. 'OCR_v4 with image "image/image_1.jpg"'; the model itself writes it
    as JSON. 'no call' when there is none."""
    if not call:
        return "no call"
    args = ", ".join(f"{k} {json.dumps(v)}" for k, v in (call.get("arguments") or {}).items())
    return f"{call.get('name')} with " + (args or "no arguments")


# ------------------------------------------------------------------------------------------------- parsing

def parse_call(completion) -> tuple[dict | None, str]:
    """(call, "") from a completion '<think>...</think>{"name": ..., "arguments": {...}}' (the think block is
    optional, a ```json fence is allowed), or (None, reason)."""
    try:
        text = completion_text(completion)
        if "</think>" in text:
            text = text.rsplit("</think>", 1)[1]
        text = _unfence(text.strip())
        if not text:
            return None, "no JSON tool call after the reasoning"
        try:
            call = json.loads(text)
        except (ValueError, RecursionError):  # not JSON, nested too deeply, an integer of thousands of digits
            start, end = text.find("{"), text.rfind("}")
            if start < 0 or end <= start:
                return None, "the answer is not JSON"
            try:
                call = json.loads(text[start:end + 1])
            except (ValueError, RecursionError):
                return None, "the answer is not valid JSON"
        if not isinstance(call, dict):
            return None, f"the answer is a JSON {type(call).__name__}, not an object"
        if not isinstance(call.get("name"), str):
            return None, 'the call has no "name" string'
        if not isinstance(call.get("arguments", {}), dict):
            return None, '"arguments" is not a JSON object'
        return {"name": call["name"], "arguments": call.get("arguments", {})}, ""
    except Exception as e:  # a completion of a type nobody expected: score 0, do not crash training
        return None, f"unreadable completion ({type(e).__name__})"


def _unfence(text: str) -> str:
    """The inside of a ```json ... ``` (or ``` ... ```) fence wrapping the whole text, else the text itself."""
    if len(text) >= 6 and text.startswith("```") and text.endswith("```"):
        inner = text[3:-3]
        return (inner[4:] if inner.startswith("json") else inner).strip()
    return text


def format_ok(completion) -> bool:
    """`<think>reasoning</think>` then one JSON object and nothing else."""
    try:
        rest = after_think(completion_text(completion))
        call = None if rest is None else json.loads(rest.strip())
        return isinstance(call, dict) and isinstance(call.get("name"), str)
    except Exception:
        return False


# ---------------------------------------------------------------------------------------- safe arithmetic

_BIN = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
        ast.Pow: operator.pow, ast.Mod: operator.mod, ast.FloorDiv: operator.floordiv}
_UNARY = {ast.UAdd: operator.pos, ast.USub: operator.neg}


def safe_eval(expression: str, max_chars: int = 500) -> float:
    """The value of an arithmetic expression (numbers, + - * / // % **, parentheses); raises ValueError on
    anything else (names, calls, attributes, huge powers). Walks the AST; Python's `eval` is never called."""
    if not isinstance(expression, str) or isinstance(expression, bool):
        raise ValueError(f"an expression must be a string, got {type(expression).__name__}")
    if len(expression) > max_chars:
        raise ValueError(f"expression longer than {max_chars} characters")

    def walk(node) -> float:
        if isinstance(node, ast.Expression):
            return walk(node.body)
        if isinstance(node, ast.Constant) and type(node.value) in (int, float):
            return node.value
        if isinstance(node, ast.UnaryOp) and type(node.op) in _UNARY:
            return _UNARY[type(node.op)](walk(node.operand))
        if isinstance(node, ast.BinOp) and type(node.op) in _BIN:
            a, b = walk(node.left), walk(node.right)
            if isinstance(node.op, ast.Pow) and (abs(b) > 64 or abs(a) > 1e6):
                raise ValueError("power too large")
            value = _BIN[type(node.op)](a, b)
            if isinstance(value, complex) or not math.isfinite(value):
                raise ValueError("not a finite real number")
            return value
        raise ValueError(f"{type(node).__name__} is not allowed in an arithmetic expression")

    try:
        return float(walk(ast.parse(expression.strip(), mode="eval")))
    except (SyntaxError, ZeroDivisionError, OverflowError, RecursionError, MemoryError, TypeError) as e:
        raise ValueError(f"cannot evaluate: {type(e).__name__}") from None


# ------------------------------------------------------------------------------------------ argument scores

def token_f1(pred: str, gold: str) -> float:
    """Token-level F1 of lowercased word tokens (SQuAD style); 1.0 when both are empty."""
    p, g = re.findall(r"\w+", pred.lower()), re.findall(r"\w+", gold.lower())
    if not p or not g:
        return float(p == g)
    common = sum((Counter(p) & Counter(g)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(g)
    return 2 * precision * recall / (precision + recall)


def parse_bbox(value) -> tuple[float, float, float, float]:
    """(x1, y1, x2, y2) from "(x1, y1, x2, y2)" or a list of four numbers; ValueError otherwise."""
    if isinstance(value, str):
        nums = _NUM.findall(value)
    elif isinstance(value, (list, tuple)) and all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                   for x in value):
        nums = value
    else:
        raise ValueError(f"a bbox must be a string '(x1, y1, x2, y2)', got {type(value).__name__}")
    if len(nums) != 4:
        raise ValueError(f"a bbox needs 4 numbers, got {len(nums)}")
    try:
        box = tuple(float(x) for x in nums)
    except OverflowError:
        raise ValueError("a bbox coordinate is too large for a float") from None
    if not all(math.isfinite(x) for x in box):
        raise ValueError("a bbox needs 4 finite numbers")
    return box


def iou(a, b) -> float:
    """Intersection over union of two boxes (x1, y1, x2, y2), corners in any order. IoU does not change with scale,
    so both boxes are first scaled into [-1, 1]: huge coordinates cannot overflow an area to inf or NaN."""
    scale = max(abs(x) for x in (*a, *b)) or 1.0
    a, b = [x / scale for x in a], [x / scale for x in b]
    ax1, ay1, ax2, ay2 = min(a[0], a[2]), min(a[1], a[3]), max(a[0], a[2]), max(a[1], a[3])
    bx1, by1, bx2, by2 = min(b[0], b[2]), min(b[1], b[3]), max(b[0], b[2]), max(b[1], b[3])
    inter = max(0.0, min(ax2, bx2) - max(ax1, bx1)) * max(0.0, min(ay2, by2) - max(ay1, by1))
    union = (ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1) - inter
    if not union > 0:
        return float(a == b)
    score = inter / union
    return min(score, 1.0) if score >= 0 else 0.0


def _norm(value):
    return re.sub(r"\s+", "", value.lower()) if isinstance(value, str) else value


def arg_score(name: str, pred, gold) -> tuple[float, str]:
    """(score in [0, 1], reason when it is not 1) for one argument, by its type (see the module docstring).
    Any value is accepted: one that cannot be compared scores 0 with the reason."""
    try:
        score, why = _arg_score(name, pred, gold)
        score = float(score)
    except Exception as e:
        return 0.0, f"{_short(name)}: {type(e).__name__}: {_short(str(e))}"
    return (score, why) if 0.0 <= score <= 1.0 else (0.0, f"{_short(name)}: score {score} is not in [0, 1]")


def _arg_score(name, pred, gold) -> tuple[float, str]:
    try:
        if name == "bbox":
            if gold is None or pred is None:
                return float(gold is None and pred is None), "bbox missing"
            return iou(parse_bbox(pred), parse_bbox(gold)), ""
        if name == "expression":
            try:
                g = safe_eval(gold)
            except ValueError:
                return float(_norm(pred) == _norm(gold)), "expression differs"
            p = safe_eval(pred)
            return float(math.isclose(p, g, rel_tol=1e-6, abs_tol=1e-9)), f"{pred} = {p:g}, gold {g:g}"
        if name in TEXT:
            if not isinstance(pred, str) or not isinstance(gold, str):
                return (1.0, "") if pred == gold else (0.0, f"{name} must be a string")
            return token_f1(pred, gold), ""
        if name in ("k", "top1"):
            want = bool if name == "top1" else int
            if type(pred) is not want:
                return 0.0, f"{name} must be a JSON {'boolean' if want is bool else 'integer'}, got {_short(pred)}"
            return float(pred == gold), ""
        return float(_norm(pred) == _norm(gold)), ""
    except (ValueError, TypeError) as e:
        return 0.0, f"{name}: {e}"


def score_call(pred, gold) -> CallScore:
    """Score a predicted call (a completion string or a parsed dict) against the gold call (dict or JSON)."""
    try:
        gold = json.loads(gold) if isinstance(gold, str) else gold
        call, why = (pred, "") if isinstance(pred, dict) else parse_call(pred)
        if call is None:
            return CallScore(reason=why)
        name, args = call.get("name"), call.get("arguments", {})
        if not isinstance(name, str) or name not in TOOL_NAMES:
            return CallScore(reason=f"unknown tool {_short(name)}")
        if not isinstance(args, dict):
            return CallScore(reason='"arguments" is not a JSON object')
        tool = float(name == gold["name"])
        gold_type = TOOL_NAMES.get(gold["name"], gold["name"])
        defaults = TOOLS[gold_type].defaults() if gold_type in TOOLS else {}
        g_args = {**defaults, **(gold.get("arguments") or {})}
        p_args = {**(TOOLS[TOOL_NAMES[name]].defaults() if TOOL_NAMES[name] == gold_type else {}), **args}
        keys = list(dict.fromkeys(list(g_args) + list(p_args)))
        per, reasons = {}, []
        for k in keys:
            if k not in p_args or k not in g_args:
                per[k] = 0.0
                reasons.append(f"{k}: {'missing' if k not in p_args else 'not an argument of the gold call'}")
                continue
            per[k], r = arg_score(k, p_args[k], g_args[k])
            if per[k] < 1 and r:
                reasons.append(r)
        args_score = sum(per.values()) / len(per) if per else 1.0
        reason = "" if tool else f"tool {name}, gold {gold['name']}"
        reason = "; ".join([x for x in [reason] + reasons if x])
        return CallScore(tool, args_score, 0.5 * tool + 0.5 * args_score, reason, per)
    except Exception as e:  # a malformed gold or an exotic value: 0, with the reason, never an exception
        return CallScore(reason=f"cannot score ({type(e).__name__}: {_short(str(e))})")


# ------------------------------------------------------------------------------------------- TRL rewards

def gta_reward(completions, answer=None, **kwargs) -> list[float]:
    """Overall = 0.5 x tool + 0.5 x argument score of each completion against the `answer` column (gold JSON):
    one gold per completion, or one for all; a count that does not match raises a ValueError naming both."""
    completions, golds = one_gold_each("gta_reward", completions, answer, "answer", "answers")
    return [score_call(c, g).overall if g is not None else 0.0 for c, g in zip(completions, golds)]


def gta_format_reward(completions, **kwargs) -> list[float]:
    """1.0 for `<think>reasoning</think>` followed by one JSON tool call, 0.0 otherwise."""
    return [1.0 if format_ok(c) else 0.0 for c in one_gold_each("gta_format_reward", completions, None, "", "")[0]]


GTA_REWARD_FUNCS = (gta_format_reward, gta_reward)
GTA_REWARD_WEIGHTS = REWARD_WEIGHTS  # 0.1 format, 0.9 accuracy, as for ClevrPolicy

__all__ = ["CallScore", "call_text", "parse_call", "score_call", "arg_score", "safe_eval", "token_f1", "iou",
           "parse_bbox", "gta_reward", "gta_format_reward", "GTA_REWARD_FUNCS", "GTA_REWARD_WEIGHTS", "EXACT", "TEXT"]
