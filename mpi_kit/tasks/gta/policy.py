"""GTAPolicy: a versioned tool catalogue and 24 tool-calling rules conditioned on a user profile (paper §3).

The policy is one long text document with two parts: `### Tool Descriptions ###` (14 tool types, some in several
versions, each with JSON argument specs following the GTA benchmark) and `### Tool Calling Rules ###` (which
version to call for a user with a given account type A-D, credits and age, plus four general tips). The rules
are data (`RULES`), so `tool_version` resolves them, `render` writes them, and an override block
(`### Tool Calling Rule Override ###`) replaces the outcomes of named rules.
"""
from __future__ import annotations

import difflib
import json
import random
from dataclasses import dataclass, field

from ..clevr.policy import PolicyError

POLICY_NAME = "GTA-Toolbox"
ACCOUNT_TYPES = ("A", "B", "C", "D")


# ------------------------------------------------------------------------------------------- tool catalogue

@dataclass(frozen=True)
class Arg:
    """One argument of a tool: its JSON name, what it holds, and a default when it is optional."""
    name: str
    description: str
    default: object = None
    optional: bool = False


@dataclass(frozen=True)
class Tool:
    """A tool type (e.g. OCR) and its callable names: 'OCR_v1'...'OCR_v5', or just 'Calculator' when unversioned."""
    type: str
    description: str
    args: tuple[Arg, ...]
    versions: int = 0  # 0 = a single unversioned tool

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f"{self.type}_v{k}" for k in range(1, self.versions + 1)) if self.versions else (self.type,)

    def defaults(self) -> dict:
        return {a.name: a.default for a in self.args if a.optional and a.default is not None}

    def spec(self) -> str:
        """The JSON argument spec shown in the policy, e.g. {"image": "...", "text": "..."}."""
        return json.dumps({a.name: a.description + (f" (optional, default {json.dumps(a.default)})"
                                                    if a.optional else "") for a in self.args})


IMAGE = Arg("image", "string: an image name")
BBOX = Arg("bbox", 'string: "(x1, y1, x2, y2)"')
TOOLS: dict[str, Tool] = {t.type: t for t in (
    Tool("Calculator", "A calculator that evaluates one arithmetic expression.",
         (Arg("expression", 'string: a Python arithmetic expression, e.g. "(3 + 4) * 2"'),)),
    Tool("OCR", "Recognizes all the text in an image.", (IMAGE,), 5),
    Tool("CountGivenObject", "Counts the objects of a given description in an image.",
         (IMAGE, Arg("text", "string: the object to count, in English"),
          Arg("bbox", 'string: only count inside this box "(x1, y1, x2, y2)"', optional=True)), 4),
    Tool("ImageDescription", "Returns a brief description of an image.", (IMAGE,), 5),
    Tool("GoogleSearch", "Searches the web and returns the top results.",
         (Arg("query", "string: the search query"), Arg("k", "integer: how many results to return", 10, True)), 3),
    Tool("RegionAttributeDescription", "Describes an attribute of a region of an image.",
         (IMAGE, BBOX, Arg("attribute", "string: the attribute to describe, e.g. color or material")), 2),
    Tool("TextToBbox", "Detects the object matching a description and returns its box and score.",
         (IMAGE, Arg("text", "string: the object description, in English"),
          Arg("top1", "boolean: return only the best match", True, True))),
    Tool("Plot", "Runs Python code that draws a chart with matplotlib and returns the image.",
         (Arg("command", "string: Python code defining a function `solution()` that returns a figure"),)),
    Tool("MathOCR", "Recognizes a mathematical expression or equation in an image and returns it as LaTeX.",
         (IMAGE,)),
    Tool("Solver", "Runs Python code that solves a math problem with sympy.",
         (Arg("command", "string: Python code defining a function `solution()` that returns the answer"),)),
    Tool("DrawBox", "Draws a box on an image, optionally with a label.",
         (IMAGE, BBOX, Arg("annotation", "string: a label to write on the box", optional=True))),
    Tool("AddText", "Writes text on an image.",
         (IMAGE, Arg("text", "string: the text to write"),
          Arg("position", 'string: "(x, y)" or a corner code such as "lt", "mt", "rb"'),
          Arg("color", "string: a color name", "red", True))),
    Tool("TextToImage", "Generates an image from keywords.",
         (Arg("keywords", "string: comma-separated keywords describing the image"),), 3),
    Tool("ImageStylization", "Restyles an image following an instruction.",
         (IMAGE, Arg("instruction", "string: what the new style should be")), 3),
)}
TOOL_NAMES: dict[str, str] = {n: t.type for t in TOOLS.values() for n in t.names}  # "OCR_v3" -> "OCR"


def tool_type(name: str) -> str:
    """'OCR_v3' -> 'OCR'; raises PolicyError naming the closest tools for an unknown name."""
    if name in TOOL_NAMES:
        return TOOL_NAMES[name]
    if name in TOOLS:
        return name
    close = difflib.get_close_matches(str(name), list(TOOL_NAMES) + list(TOOLS), n=3)
    raise PolicyError(f"unknown tool {name!r}" + (f"; did you mean {', '.join(close)}?" if close else
                                                 f"; tools are {', '.join(TOOLS)}"))


# -------------------------------------------------------------------------------------------- user profile

@dataclass(frozen=True)
class UserProfile:
    """The synthesized user the rules look at: account type A-D, credits and age (integers >= 0)."""
    account_type: str
    credits: int
    age: int

    def __post_init__(self):
        if self.account_type not in ACCOUNT_TYPES:
            raise PolicyError(f"account_type must be one of {', '.join(ACCOUNT_TYPES)}, got {self.account_type!r}")
        for k in ("credits", "age"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise PolicyError(f"{k} must be an integer >= 0, got {v!r}")

    def text(self) -> str:
        return f"account_type {self.account_type}, credits {self.credits}, age {self.age}"

    def to_dict(self) -> dict:
        return {"account_type": self.account_type, "credits": self.credits, "age": self.age}


def sample_profile(rng: random.Random) -> UserProfile:
    """A random user; a third of the draws sit on a rule boundary (credits 250/500/750, age 21/60) or next to it."""
    credits = rng.choice([250, 251, 499, 500, 501, 749, 750, 751]) if rng.random() < 0.33 else rng.randint(0, 1000)
    age = rng.choice([20, 21, 59, 60]) if rng.random() < 0.33 else rng.randint(13, 80)
    return UserProfile(rng.choice(ACCOUNT_TYPES), credits, age)


# ------------------------------------------------------------------------------------------------- rules

_OPS = {"in": lambda a, b: a in b, "<": lambda a, b: a < b, "<=": lambda a, b: a <= b,
        ">": lambda a, b: a > b, ">=": lambda a, b: a >= b, "is": lambda a, b: bool(a) == b}
Cond = tuple  # (field, op, value): ("credits", ">", 500), ("account_type", "in", ("B", "C")),
#                                  ("math_image", "is", True)


def _holds(cond: Cond, facts: dict) -> bool:
    f, op, v = cond
    return _OPS[op](facts.get(f, False if op == "is" else None), v)


def _cond_text(cond: Cond) -> str:
    f, op, v = cond
    if op == "in":
        return f"{f} is {v[0]}" if len(v) == 1 else f"{f} is {', '.join(v[:-1])} or {v[-1]}"
    if op == "is":
        text = {"math_image": "the image shows mathematics (an equation or formula)"}.get(f, f)
        return text if v else f"not ({text})"
    return f"{f} {op} {v}"


@dataclass(frozen=True)
class Rule:
    """Rule `id` for `tool`: when every `when` condition holds, the first branch whose conditions hold gives the
    tool name to call (a branch with no conditions is 'otherwise'). Tips (tool None) are text the data follows."""
    id: str
    tool: str | None
    when: tuple[Cond, ...] = ()
    then: tuple[tuple[tuple[Cond, ...], str], ...] = ()
    text: str = ""

    def applies(self, facts: dict) -> bool:
        return self.tool is not None and all(_holds(c, facts) for c in self.when)

    def targets(self) -> list[str]:
        return [t for _, t in self.then]

    def render(self) -> str:
        if self.tool is None:
            return f"Rule {self.id}: {self.text}"
        head = "If " + " and ".join(_cond_text(c) for c in self.when) + ": " if self.when else ""
        parts = []
        for conds, target in self.then:
            parts.append(f"use {target} if " + " and ".join(_cond_text(c) for c in conds) if conds
                         else (f"otherwise use {target}" if parts else f"use {target}"))
        extra = " instead of any OCR version (this rule comes before the other OCR rules)" if \
            self.targets() == ["MathOCR"] else ""
        return f"Rule {self.id}: {head}{', '.join(parts)}{extra}."


def _r(id, tool, when, *then):
    return Rule(id, tool, tuple(when), tuple((tuple(c), t) for c, t in then))


_ACC = lambda *types: ("account_type", "in", types)  # noqa: E731
# The 24 rules of paper §3 (Fig. 20), in order. 3 ImageDescription + 4 OCR (incl. MathOCR) + 2 GoogleSearch +
# 2 TextToImage + 2 RegionAttributeDescription + 4 CountGivenObject + 3 ImageStylization + 4 tips = 24.
RULES: tuple[Rule, ...] = (
    _r("ImageDescription.1", "ImageDescription", [_ACC("A")], ([], "ImageDescription_v5")),
    _r("ImageDescription.2", "ImageDescription", [_ACC("B", "C")],
       ([("credits", ">", 500)], "ImageDescription_v4"), ([], "ImageDescription_v3")),
    _r("ImageDescription.3", "ImageDescription", [_ACC("D")],
       ([("credits", ">", 500)], "ImageDescription_v2"), ([], "ImageDescription_v1")),
    _r("OCR.1", "OCR", [("credits", "<=", 250)], ([], "OCR_v5")),
    _r("OCR.2", "OCR", [("credits", ">", 250), ("credits", "<=", 750)],
       ([_ACC("A", "B")], "OCR_v4"), ([], "OCR_v3")),
    _r("OCR.3", "OCR", [("credits", ">", 750)],
       ([("age", "<", 21)], "OCR_v2"), ([], "OCR_v1")),
    _r("OCR.4", "OCR", [("math_image", "is", True)], ([], "MathOCR")),
    _r("GoogleSearch.1", "GoogleSearch", [("age", "<", 21)], ([], "GoogleSearch_v1")),
    _r("GoogleSearch.2", "GoogleSearch", [("age", ">=", 21)],
       ([("credits", "<", 500)], "GoogleSearch_v2"), ([], "GoogleSearch_v3")),
    _r("TextToImage.1", "TextToImage", [_ACC("A", "B", "C")], ([], "TextToImage_v1")),
    _r("TextToImage.2", "TextToImage", [_ACC("D")],
       ([("credits", ">", 500)], "TextToImage_v2"), ([], "TextToImage_v3")),
    _r("RegionAttributeDescription.1", "RegionAttributeDescription", [_ACC("A", "B")],
       ([], "RegionAttributeDescription_v2")),
    _r("RegionAttributeDescription.2", "RegionAttributeDescription", [_ACC("C", "D")],
       ([], "RegionAttributeDescription_v1")),
    _r("CountGivenObject.1", "CountGivenObject", [("credits", "<", 250)], ([], "CountGivenObject_v1")),
    _r("CountGivenObject.2", "CountGivenObject", [("credits", ">=", 250), ("credits", "<", 500)],
       ([], "CountGivenObject_v2")),
    _r("CountGivenObject.3", "CountGivenObject", [("credits", ">=", 500), ("credits", "<", 750)],
       ([], "CountGivenObject_v3")),
    _r("CountGivenObject.4", "CountGivenObject", [("credits", ">=", 750)], ([], "CountGivenObject_v4")),
    _r("ImageStylization.1", "ImageStylization", [("age", "<", 21)], ([], "ImageStylization_v1")),
    _r("ImageStylization.2", "ImageStylization", [("age", ">=", 21), ("age", "<", 60)], ([], "ImageStylization_v2")),
    _r("ImageStylization.3", "ImageStylization", [("age", ">=", 60)], ([], "ImageStylization_v3")),
    Rule("Tip.1", None, text="When the user gives several images, first call ImageDescription (the version the "
                             "rules give) on each image, in order, before any other tool."),
    Rule("Tip.2", None, text="Call TextToBbox to locate a region before RegionAttributeDescription, and pass the box "
                             "it returns, in the format (x1, y1, x2, y2)."),
    Rule("Tip.3", None, text='Refer to images by their exact names, such as "image/image_1.jpg".'),
    Rule("Tip.4", None, text="For GoogleSearch, set k=1 when the question has one factual answer and k=4 when it "
                             "is open-ended."),
)
assert len(RULES) == 24


# ------------------------------------------------------------------------------------------------- policy

INSTRUCTION = ("You are a tool-use assistant that follows Policy {name}. Given the user's images, profile and query "
               "and the tool calls made so far, decide the single next tool call. Respond with a JSON object "
               '{{"name": <tool name with its version>, "arguments": {{...}}}}.')
OVERRIDE_HEAD = "### Tool Calling Rule Override ###"


@dataclass
class GTAPolicy:
    """The tool catalogue plus the rules, with the outcomes of some rules replaced by an override.

    `overrides` maps a rule id to its new targets, one per branch: {"OCR.1": "OCR_v3", "OCR.2": ["OCR_v1",
    "OCR_v2"]}. Tips cannot be overridden (they have no version outcome)."""
    name: str = POLICY_NAME
    rules: tuple[Rule, ...] = RULES
    overrides: dict = field(default_factory=dict)

    def __post_init__(self):
        by_id = {r.id: r for r in self.rules}
        new_rules = {}
        for rid, targets in self.overrides.items():
            rule = by_id.get(rid)
            if rule is None:
                close = difflib.get_close_matches(str(rid), list(by_id), n=1)
                raise PolicyError(f"override names unknown rule {rid!r}" + (f"; did you mean {close[0]!r}?" if close
                                  else "; rule ids look like 'OCR.2'"))
            if rule.tool is None:
                raise PolicyError(f"rule {rid} is a tip, not a version rule; only version rules can be overridden")
            targets = [targets] if isinstance(targets, str) else list(targets)
            if len(targets) != len(rule.then):
                raise PolicyError(f"rule {rid} has {len(rule.then)} outcome(s) ({', '.join(rule.targets())}); the "
                                  f"override gives {len(targets)}: give one tool name per outcome, in order")
            allowed = set(TOOLS[rule.tool].names) | ({"MathOCR"} if rule.tool == "OCR" else set())
            for t in targets:
                if t not in allowed:
                    raise PolicyError(f"override of rule {rid}: {t!r} is not a version of {rule.tool}; choose from "
                                      f"{', '.join(sorted(allowed))}")
            new_rules[rid] = Rule(rule.id, rule.tool, rule.when,
                                  tuple((c, t) for (c, _), t in zip(rule.then, targets)))
        self.overrides = {rid: ([t] if isinstance(t, str) else list(t)) for rid, t in self.overrides.items()}
        self.active = tuple(new_rules.get(r.id, r) for r in self.rules)  # the rules in force

    def rule(self, rid: str) -> Rule:
        for r in self.active:
            if r.id == rid:
                return r
        raise PolicyError(f"no rule {rid!r}; rule ids: {', '.join(r.id for r in self.active)}")

    def with_override(self, overrides: dict) -> "GTAPolicy":
        """This policy with the outcomes of the named rules replaced (merged over existing overrides)."""
        return GTAPolicy(self.name, self.rules, {**self.overrides, **overrides})

    def decide(self, tool: str, profile: UserProfile, context: dict | None = None) -> tuple[str, Rule | None, int]:
        """(tool name to call, the rule that decided it, its branch index); (type, None, 0) for unversioned tools.
        A rule on a context fact (OCR.4, math images) is checked before the profile rules of its tool."""
        ttype = tool_type(tool)
        facts = {**profile.to_dict(), **(context or {})}
        rules = [r for r in self.active if r.tool == ttype]
        if not rules:
            return ttype, None, 0
        for r in sorted(rules, key=lambda r: not any(c[1] == "is" for c in r.when)):
            if r.applies(facts):
                for i, (conds, target) in enumerate(r.then):
                    if all(_holds(c, facts) for c in conds):
                        return target, r, i
        raise PolicyError(f"no {ttype} rule covers the profile {profile.text()} (context {context or {}}); "
                          f"check the rules' conditions")

    def resolve(self, tool: str, profile: UserProfile, context: dict | None = None) -> tuple[str, str | None]:
        """(tool name to call, id of the rule that decided it, or None for an unversioned tool)."""
        name, rule, _ = self.decide(tool, profile, context)
        return name, rule.id if rule else None

    def versions(self, profile: UserProfile, context: dict | None = None) -> list[dict]:
        """For one user: every versioned tool, the name to call and the rule that decides it (what a user of the
        rule explorer sees)."""
        rows = []
        for t in TOOLS.values():
            if t.versions:
                name, rid = self.resolve(t.type, profile, context if t.type == "OCR" else None)
                rows.append({"tool": t.type, "call": name, "rule": rid})
        return rows

    # ---------------------------------------------------------------------------------------- text
    def tool_descriptions(self) -> str:
        lines = [f"There are {len(TOOLS)} types of tools. Some come in several versions with the same arguments; "
                 "the Tool Calling Rules say which version to call. A call is "
                 '{"name": <tool name>, "arguments": <JSON object matching the arguments below>}.']
        for t in TOOLS.values():
            names = f" Versions: {', '.join(t.names)}." if t.versions else ""
            lines.append(f"- {t.type}: {t.description}{names} Arguments: {t.spec()}")
        return "\n".join(lines)

    def rules_text(self, rules=None) -> str:
        return "\n".join(r.render() for r in (rules or self.rules))

    def render(self) -> list[str]:
        """The policy document as parts (one string: GTAPolicy has no policy images), as `data.policy_parts` wants.
        It shows the base rules; overrides are given separately by `override_block`."""
        return [f"Policy: {self.name}\n\n{INSTRUCTION.format(name=self.name)}\n\n### Tool Descriptions ###\n"
                f"{self.tool_descriptions()}\n\n### Tool Calling Rules ###\n{self.rules_text()}\n"]

    def text(self) -> str:
        return "".join(self.render())

    def override_block(self) -> str:
        """`### Tool Calling Rule Override ###` with every overridden rule restated with its new outcomes."""
        if not self.overrides:
            raise PolicyError("this policy has no overrides; make one with policy.with_override({...})")
        changed = [r for r in self.active if r.id in self.overrides]
        return (f"{OVERRIDE_HEAD}\nThese rules of Policy {self.name} replace the rules with the same ids; every "
                f"other rule stays as it was.\n{self.rules_text(changed)}\n")

    def to_dict(self) -> dict:
        return {"name": self.name, "overrides": self.overrides}

    @classmethod
    def from_dict(cls, d: dict) -> "GTAPolicy":
        if not isinstance(d, dict):
            raise PolicyError(f"a GTA policy must be a JSON object, got {type(d).__name__}")
        return cls(d.get("name", POLICY_NAME), RULES, dict(d.get("overrides") or {}))


BASE_POLICY = GTAPolicy()
# The paper's example override is "a new OCR version mapping"; we also move one CountGivenObject and one
# ImageStylization band so that the override touches tools of several kinds.
DEFAULT_OVERRIDE = {"OCR.1": "OCR_v3", "OCR.2": ["OCR_v1", "OCR_v2"], "CountGivenObject.3": "CountGivenObject_v1",
                    "ImageStylization.2": "ImageStylization_v3"}


def tool_version(tool_type: str, profile: UserProfile, context: dict | None = None,
                 policy: GTAPolicy | None = None) -> str:
    """The tool name the rules give for this user, e.g. tool_version("OCR", UserProfile("B", 600, 30)) -> "OCR_v4".
    `context` holds facts about the step: {"math_image": True} sends OCR to MathOCR (Rule OCR.4)."""
    return (policy or BASE_POLICY).resolve(tool_type, profile, context)[0]


def rule_leaves(policy: GTAPolicy | None = None) -> list[tuple[str, int, str]]:
    """Every (rule id, branch index, target) the version rules can produce: what a generator must cover."""
    return [(r.id, i, t) for r in (policy or BASE_POLICY).active if r.tool for i, (_, t) in enumerate(r.then)]


__all__ = ["GTAPolicy", "UserProfile", "Rule", "Tool", "Arg", "TOOLS", "TOOL_NAMES", "RULES", "BASE_POLICY",
           "DEFAULT_OVERRIDE", "POLICY_NAME", "tool_version", "tool_type", "sample_profile", "rule_leaves",
           "PolicyError"]
