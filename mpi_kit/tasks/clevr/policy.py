"""ClevrPolicy policies: binary decision trees over scene attributes, rendered as named policy documents.

A decision node asks "Is there a <subject> object?" about the image. Conditions stack along true edges
(the child of "a cyan object?" on its yes edge asks "a small cyan object?"), so a child on a true edge may
not test its parent's attribute type (paper App. C.1.1). Every leaf is a unique outcome "Case k". The policy
document has a name ("L4-Surinu"), a general instruction and numbered sections `# Condition 1`,
`# Condition 1.1` (yes) / `# Condition 1.2` (no), ... that point to one another.
"""
from __future__ import annotations

import itertools
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from .scenes import ATTRIBUTES, Scene, SceneError, attribute_crop, check_attribute, short_repr

ATTR_ORDER = ("size", "color", "material", "shape")  # word order of a subject: "small cyan metal cube"
INSTRUCTION = ("You are a visual assistant that follows Policy {name}. Look at the image and start at "
               "Condition 1. Each condition asks about the objects in the image and says where to go next. "
               "Follow the conditions until you reach a case, and respond with that case.")


MAX_DEPTH = 8  # 255 conditions and ~10K tokens of policy at most; the paper's deepest is N = 6


class PolicyError(ValueError):
    """A policy that cannot be built, loaded or evaluated; the message says what is wrong and how to fix it."""


@dataclass
class Condition:
    """One `# Condition <id>` section: it tests `attribute == value`, stacked on the subject it inherits.

    `yes`/`no` name the next section (a condition id) or an outcome ("Case k")."""
    id: str
    attribute: str
    value: str
    yes: str
    no: str
    subject: dict = field(default_factory=dict, compare=False)  # derived: the full conjunction asked about


@dataclass
class Policy:
    """A named decision-tree policy. `images` maps (attribute, value) to a policy image for -M policies."""
    name: str
    depth: int
    conditions: dict[str, Condition]
    cases: list[str]
    root: str = "1"
    instruction: str = INSTRUCTION
    variant: str = "T"
    image_values: list[tuple[str, str]] = field(default_factory=list)  # values shown as policy images (-M)

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, scene: Scene) -> tuple[str, list[str]]:
        """Walk the tree on a scene graph: returns (outcome like "Case 3", path of condition ids)."""
        node, path = self.root, []
        while node in self.conditions:
            c = self.conditions[node]
            path.append(node)
            node = c.yes if scene.has(**c.subject) else c.no
        return node, path

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return {"name": self.name, "depth": self.depth, "variant": self.variant, "root": self.root,
                "instruction": self.instruction, "cases": list(self.cases),
                "image_values": [list(v) for v in self.image_values],
                "conditions": [{"id": c.id, "attribute": c.attribute, "value": c.value, "yes": c.yes, "no": c.no}
                               for c in self.conditions.values()]}

    def to_json(self, path: str | Path | None = None) -> str:
        text = json.dumps(self.to_dict(), indent=1)
        if path is not None:
            Path(path).write_text(text)
        return text

    @classmethod
    def from_dict(cls, d: dict) -> "Policy":
        """Build and validate a policy from its JSON form; raises PolicyError saying what is wrong.

        Each step is linear in the policy's size, and the size is checked against the depth before the tree
        is walked, so a huge or deep policy is refused quickly."""
        if not isinstance(d, dict):
            raise PolicyError(f"a policy must be a JSON object like {{\"name\": ..., \"conditions\": [...], "
                              f"\"cases\": [...]}}, got a {type(d).__name__}; save each policy in its own file")
        for key in ("name", "conditions", "cases"):
            if key not in d:
                raise PolicyError(f"policy is missing {key!r}; a policy needs name, conditions and cases")
        name = d["name"]
        if not isinstance(name, str) or not name.strip():
            raise PolicyError("policy has no name; give it a unique name such as 'L4-Surinu'")
        if not isinstance(d["conditions"], list) or not isinstance(d["cases"], list):
            raise PolicyError(f"policy {name}: 'conditions' and 'cases' must be lists")
        depth = d.get("depth")  # None: taken from the tree
        if depth is not None and (isinstance(depth, bool) or not isinstance(depth, int)
                                  or not 1 <= depth <= MAX_DEPTH):
            raise PolicyError(f"policy {name}: depth must be a whole number from 1 to {MAX_DEPTH}, got "
                              f"{short_repr(depth)}")
        _check_fields(name, d)
        conds: dict[str, Condition] = {}
        for i, c in enumerate(d["conditions"]):
            if not isinstance(c, dict):
                raise PolicyError(f"policy {name}: condition #{i} must be an object with id, attribute, value, "
                                  f"yes and no; got {short_repr(c)}")
            missing = [k for k in ("id", "attribute", "value", "yes", "no") if k not in c]
            if missing:
                cid = short_repr(c.get("id", f"#{i}"))
                raise PolicyError(f"policy {name}: condition {cid} is missing {', '.join(missing)}; a decision "
                                  f"node needs both a 'yes' and a 'no' child")
            empty = [k for k in ("id", "attribute", "value", "yes", "no") if not isinstance(c[k], str) or not c[k]]
            if empty:
                raise PolicyError(f"policy {name}: condition {short_repr(c['id'])} has {', '.join(empty)} set to "
                                  f"{', '.join(short_repr(c[k]) for k in empty)}; each must be a non-empty string "
                                  f"(a 'yes'/'no' names a condition id or a case such as 'Case 3')")
            if c["id"] in conds:
                raise PolicyError(f"policy {name}: duplicate condition id {c['id']!r}; ids must be unique")
            try:
                check_attribute(c["attribute"], c["value"])
            except SceneError as e:
                raise PolicyError(f"policy {name}, condition {c['id']}: {e}") from None
            conds[c["id"]] = Condition(c["id"], c["attribute"], c["value"], c["yes"], c["no"])
        levels = depth or MAX_DEPTH  # sizes before the tree is walked: a depth-N tree has 2^N - 1 conditions
        for what, n, most in (("conditions", len(d["conditions"]), 2 ** levels - 1),
                              ("cases", len(d["cases"]), 2 ** levels)):
            if n > most:
                tree = f"a depth-{depth} tree" if depth else f"a policy of at most {MAX_DEPTH} levels"
                raise PolicyError(f"policy {name} has {n} {what}; {tree} has at most {most}. Declare the "
                                  f"tree's real 'depth' (at most {MAX_DEPTH}) or split the policy")
        p = cls(name=name, depth=depth or 0, conditions=conds, cases=list(d["cases"]),
                root=d.get("root", "1"), instruction=d.get("instruction", INSTRUCTION),
                variant=d.get("variant", "T"), image_values=[tuple(v) for v in d.get("image_values", [])])
        p._link()
        return p

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "Policy":
        """A policy from JSON text (it starts with '{' or '[') or from a .json file."""
        s = str(text_or_path)
        if isinstance(text_or_path, Path) or not s.lstrip().startswith(("{", "[")):
            path = Path(s)
            try:
                s = path.read_text()
            except FileNotFoundError:
                raise PolicyError(f"no policy file at {path}") from None
            except IsADirectoryError:
                raise PolicyError(f"{path} is a folder; pass a policy .json file (a data folder keeps them in "
                                  f"policies/)") from None
            except UnicodeDecodeError:
                raise PolicyError(f"{path} is not a text file; a policy is a JSON file (see Policy.to_json)") from None
            except OSError as e:
                raise PolicyError(f"cannot read a policy file at {short_repr(str(path))}: {e.strerror}") from None
        try:
            d = json.loads(s)
        except RecursionError:
            raise PolicyError("policy JSON is nested too deeply to be a policy: a policy is one object whose "
                              "'conditions' is a flat list of objects (see Policy.to_json)") from None
        except ValueError as e:  # json.JSONDecodeError, or a number beyond Python's digit limit
            raise PolicyError(f"policy JSON does not parse: {e}") from None
        return cls.from_dict(d)

    def _link(self) -> None:
        """Check the tree (known targets, cases, no cycles, every node used once, its depth) and derive the
        subjects. One pass over the nodes; `parent` is walked only to word a repeat as a cycle."""
        if self.root not in self.conditions:
            raise PolicyError(f"policy {self.name}: root condition {short_repr(self.root)} is not defined")
        cases = set(self.cases)
        parent: dict[str, str | None] = {}
        used_cases: set[str] = set()
        deepest = 0
        stack = [(self.root, {}, None, 1, None)]  # (id, inherited subject, parent attribute if via yes, level, parent)
        while stack:
            cid, inherited, parent_attr, level, up = stack.pop()
            if cid in parent:
                ancestors = up
                while ancestors is not None and ancestors != cid:
                    ancestors = parent[ancestors]
                if ancestors == cid:
                    raise PolicyError(f"policy {self.name}: cycle: condition {cid} leads back to itself")
                raise PolicyError(f"policy {self.name}: condition {cid} is reached from two places; "
                                  f"a policy is a tree")
            parent[cid] = up
            deepest = max(deepest, level)
            c = self.conditions[cid]
            if parent_attr == c.attribute:
                raise PolicyError(f"policy {self.name}: condition {cid} is on a yes edge and tests "
                                  f"{c.attribute} again, as its parent does; pick another attribute type")
            base = inherited if c.attribute not in inherited else {}
            c.subject = {**base, c.attribute: c.value}
            for edge, target in (("yes", c.yes), ("no", c.no)):
                if target in self.conditions:
                    stack.append((target, c.subject if edge == "yes" else {},
                                  c.attribute if edge == "yes" else None, level + 1, cid))
                elif target in cases:
                    if target in used_cases:
                        raise PolicyError(f"policy {self.name}: outcome {target} is used by two leaves; each "
                                          f"leaf is a unique case")
                    used_cases.add(target)
                elif target.startswith("Case"):
                    raise PolicyError(f"policy {self.name}: condition {cid} leads to unknown case {target!r}; "
                                      f"declare it in 'cases'")
                else:
                    raise PolicyError(f"policy {self.name}: condition {cid} leads to {target!r}, which is "
                                      f"neither a condition id nor a case")
        unused = [c for c in self.conditions if c not in parent]
        if unused:
            raise PolicyError(f"policy {self.name}: conditions {short_repr(unused)} are not reachable from "
                              f"{self.root}")
        if not self.depth and deepest > MAX_DEPTH:
            raise PolicyError(f"policy {self.name}: its tree is {deepest} conditions deep; a policy has at most "
                              f"{MAX_DEPTH} levels")
        if self.depth and deepest != self.depth:
            raise PolicyError(f"policy {self.name} declares depth {self.depth} but its tree is {deepest} "
                              f"conditions deep; set 'depth' to {deepest}")
        self.depth = self.depth or deepest

    # ------------------------------------------------------------------ text
    def subject_text(self, subject: dict, images: dict | None = None) -> str:
        """'small cyan metal cube' word order; with -M, values shown as images become references."""
        words, refs = [], []
        for a in ATTR_ORDER:
            if a not in subject:
                continue
            if images and (a, subject[a]) in images:
                refs.append(f"the {a} shown in Policy Image {images[(a, subject[a])]}")
            else:
                words.append(subject[a])
        if "shape" not in subject:
            words.append("object")
        phrase = " ".join(words)
        return phrase + (" with " + " and ".join(refs) if refs else "")

    def question(self, cid: str, images: dict | None = None) -> str:
        s = self.subject_text(self.conditions[cid].subject, images)
        return f"Is there {'an' if s[0] in 'aeiou' else 'a'} {s} in the image?"

    def sections(self) -> list[str]:
        """Condition ids in reading order (breadth first, yes before no)."""
        order, queue = [], [self.root]
        while queue:
            cid = queue.pop(0)
            order.append(cid)
            c = self.conditions[cid]
            queue += [t for t in (c.yes, c.no) if t in self.conditions]
        return order

    def image_index(self) -> dict:
        return {tuple(v): i + 1 for i, v in enumerate(self.image_values)} if self.variant == "M" else {}

    def render(self, variant: str | None = None, image_size: int = 48) -> list[str | object]:
        """The policy document as parts: strings and (for -M) PIL policy images, in reading order."""
        variant = variant or self.variant
        images = {tuple(v): i + 1 for i, v in enumerate(self.image_values)} if variant == "M" else {}
        instruction = self.instruction.replace("{name}", self.name)  # not str.format: braces in it stay text
        parts: list = [f"Policy: {self.name}\n\n{instruction}\n"]
        if images:
            parts.append("\n# Policy Images\n")
            for (a, v), k in images.items():
                parts.append(f"Policy Image {k} shows a {a}: ")
                parts.append(attribute_crop(a, v, size=image_size))
                parts.append("\n")
        for cid in self.sections():
            c = self.conditions[cid]
            lines = [f"\n# Condition {cid}", self.question(cid, images)]
            for word, t in (("yes", c.yes), ("no", c.no)):
                lines.append(f"- If {word}, go to Condition {t}." if t in self.conditions
                             else f"- If {word}, the response is {t}.")
            parts.append("\n".join(lines) + "\n")
        return _merge_text(parts)

    def text(self) -> str:
        """The -T document as one string (for -M, images appear as <image> markers)."""
        return "".join(p if isinstance(p, str) else "<image>" for p in self.render())

    def images(self) -> list:
        return [p for p in self.render() if not isinstance(p, str)]

    def gold_cot(self, scene: Scene) -> str:
        """The reasoning a perfect reader writes: each visited condition, its answer, where it leads."""
        case, path = self.evaluate(scene)
        images = self.image_index()
        steps = []
        for cid in path:
            c = self.conditions[cid]
            yes = scene.has(**c.subject)
            q = self.question(cid, images)
            if images and any(tuple(kv) in images for kv in c.subject.items()):
                q = q[:-1] + f" (that is, a {self.subject_text(c.subject)})?"
            nxt = c.yes if yes else c.no
            to = f"go to Condition {nxt}" if nxt in self.conditions else f"the response is {nxt}"
            steps.append(f"Condition {cid}: {q} {'Yes' if yes else 'No'}, {to}.")
        return "<think>" + " ".join(steps) + "</think>\\boxed{" + case + "}"


def _check_fields(name: str, d: dict) -> None:
    """The fields around the tree: cases, root, instruction, variant and the -M image values."""
    cases = d["cases"]
    if not all(isinstance(c, str) and c for c in cases) or len(set(cases)) != len(cases):
        raise PolicyError(f"policy {name}: cases must be non-empty strings such as 'Case 3', each once; got "
                          f"{short_repr(cases)}")
    for key, default, kind in (("root", "1", "a condition id"), ("instruction", INSTRUCTION, "a string")):
        if not isinstance(d.get(key, default), str):
            raise PolicyError(f"policy {name}: {key!r} must be {kind}, got {short_repr(d[key])}")
    if d.get("variant", "T") not in ("T", "M"):
        raise PolicyError(f"policy {name}: variant must be 'T' or 'M' (text or multimodal), got "
                          f"{short_repr(d['variant'])}")
    values = d.get("image_values", [])
    if not isinstance(values, list) or not all(isinstance(v, (list, tuple)) and len(v) == 2 for v in values):
        raise PolicyError(f"policy {name}: image_values must be a list of [attribute, value] pairs, got "
                          f"{short_repr(values)}")
    for a, v in values:
        try:
            check_attribute(a, v)
        except SceneError as e:
            raise PolicyError(f"policy {name}, image_values: {e}") from None


def _merge_text(parts: list) -> list:
    out: list = []
    for p in parts:
        if isinstance(p, str) and out and isinstance(out[-1], str):
            out[-1] += p
        else:
            out.append(p)
    return out


# ---------------------------------------------------------------------------------------- generation

_CONSONANTS, _VOWELS = "bdfgklmnprstvz", "aeiou"


def policy_name(depth: int, rng: random.Random, taken: set[str] | None = None) -> str:
    """A unique pronounceable name like 'L4-Surinu' (L = tree depth)."""
    for _ in range(1000):
        word = "".join(rng.choice(_CONSONANTS) + rng.choice(_VOWELS) for _ in range(3)).capitalize()
        name = f"L{depth}-{word}"
        if not taken or name not in taken:
            return name
    raise PolicyError("could not find an unused policy name")


_ALL_OBJECTS = [dict(zip(ATTRIBUTES, combo)) for combo in itertools.product(*ATTRIBUTES.values())]


def _matches(obj: dict, subject: dict) -> bool:
    return all(obj[a] == v for a, v in subject.items())


def _feasible(constraints: list[tuple[dict, bool]]) -> bool:
    """Can some scene satisfy every (subject, exists?) constraint? Objects are independent, so each positive
    subject needs one object that matches it and no negative subject; brute force over the 96 object types."""
    negs = [s for s, ok in constraints if not ok]
    allowed = [o for o in _ALL_OBJECTS if not any(_matches(o, n) for n in negs)]
    return bool(allowed) and all(any(_matches(o, s) for o in allowed) for s, ok in constraints if ok)


_POOL: list = []


def _reference_pool() -> list[Scene]:
    """A fixed pool of sampled scenes used to keep conditions informative (balanced yes/no)."""
    if not _POOL:
        from .scenes import sample_scenes
        _POOL.extend(sample_scenes(300, seed=12345, prefix="pool"))
    return _POOL


def sample_policy(depth: int, rng: random.Random | int, name: str | None = None, variant: str = "T",
                  num_images: int = 3, taken: set[str] | None = None, max_tries: int = 50,
                  balance: tuple[float, float] | None = (0.25, 0.75), case_pool: int | None = None) -> Policy:
    """Sample a decision tree of `depth` levels with a unique case for every leaf.

    Each node draws an attribute type and value. On a yes edge the child may not draw its parent's type (the
    paper's rule) and extends the parent's subject; on a no edge it starts a fresh subject. A draw whose
    answer is already decided by the path (e.g. "a cyan object?" under "no cyan object") is redrawn, and a
    node with no informative draw left becomes a leaf: so some trees have fewer than 2^depth cases.
    With `balance`, a draw is preferred when the share of reference scenes reaching the node that answer
    yes lies in that range ("a small object?" is almost always yes), so that outcomes are not dominated by
    one case; the most balanced feasible draw is kept otherwise.
    Cases are numbered 0..k-1 in random order; with `case_pool`, k distinct numbers are drawn from 0..case_pool-1
    instead (base pretraining uses it so that short policies also name the cases only deep ones otherwise have).
    """
    if not 1 <= depth <= MAX_DEPTH:
        raise PolicyError(f"depth must be from 1 to {MAX_DEPTH}, got {depth} (the paper uses N = 2, 4, 6; a depth-12 "
                          f"tree already has thousands of conditions)")
    if variant not in ("T", "M"):
        raise PolicyError(f"variant must be 'T' (text) or 'M' (multimodal), got {variant!r}")
    rng = random.Random(rng) if isinstance(rng, int) else rng
    name = name or policy_name(depth, rng, taken)
    raw: list[dict] = []
    leaves: list[str] = []

    def build(cid: str, level: int, inherited: dict, parent_attr: str | None, path: list, pool: list) -> str:
        if level == depth:
            leaves.append(cid)
            return cid
        best = None  # (imbalance, attr, value, subject)
        for _ in range(max_tries):
            choices = [a for a in ATTRIBUTES if a != parent_attr and a not in inherited] or \
                      [a for a in ATTRIBUTES if a != parent_attr]
            attr = rng.choice(choices)
            value = rng.choice(ATTRIBUTES[attr])
            subject = {**(inherited if attr not in inherited else {}), attr: value}
            if not (_feasible(path + [(subject, True)]) and _feasible(path + [(subject, False)])):
                continue
            p_yes = sum(s.has(**subject) for s in pool) / len(pool) if len(pool) >= 20 else 0.5
            imbalance = abs(p_yes - 0.5)
            if best is None or imbalance < best[0]:
                best = (imbalance, attr, value, subject)
            if balance is None or balance[0] <= p_yes <= balance[1]:
                break
        if best is None:
            leaves.append(cid)
            return cid
        _, attr, value, subject = best
        node = {"id": cid, "attribute": attr, "value": value}
        raw.append(node)
        yes_pool = [s for s in pool if s.has(**subject)]
        no_pool = [s for s in pool if not s.has(**subject)]
        node["yes"] = build(cid + ".1", level + 1, subject, attr, path + [(subject, True)], yes_pool)
        node["no"] = build(cid + ".2", level + 1, {}, None, path + [(subject, False)], no_pool)
        return cid

    build("1", 0, {}, None, [], _reference_pool() if balance else [])
    if case_pool is None:
        numbers = list(range(len(leaves)))
        rng.shuffle(numbers)
    elif case_pool < len(leaves):
        raise PolicyError(f"case_pool={case_pool} is smaller than the tree's {len(leaves)} cases; "
                          f"pass at least {len(leaves)} (2^depth always suffices) or None")
    else:
        numbers = rng.sample(range(case_pool), len(leaves))
    case_of = {leaf: f"Case {k}" for leaf, k in zip(leaves, numbers)}
    for node in raw:
        node["yes"] = case_of.get(node["yes"], node["yes"])
        node["no"] = case_of.get(node["no"], node["no"])
    image_values: list = []
    if variant == "M":
        used = sorted({(n["attribute"], n["value"]) for n in raw})
        image_values = rng.sample(used, min(num_images, len(used)))
    return Policy.from_dict({"name": name, "depth": depth, "variant": variant,
                             "cases": sorted(case_of.values(), key=lambda c: int(c.split()[1])),
                             "conditions": raw, "image_values": image_values})


def sample_policies(k: int, depth: int, seed: int, variant: str = "T", prefix: str = "") -> list[Policy]:
    """`k` policies with unique names from one seed (`prefix` keeps seed families apart, e.g. 'base')."""
    rng = random.Random(f"{prefix}policies/{seed}/{depth}/{variant}")
    taken: set[str] = set()
    out = []
    for _ in range(k):
        p = sample_policy(depth, rng, variant=variant, taken=taken)
        taken.add(p.name)
        out.append(p)
    return out


def override_policy(policy: Policy, rng: random.Random | int) -> Policy:
    """A Policy Override (paper Table 3): a new random tree of the same depth under the old name."""
    rng = random.Random(rng) if isinstance(rng, int) else rng
    for _ in range(100):
        new = sample_policy(policy.depth, rng, name=policy.name, variant=policy.variant)
        if new.to_dict()["conditions"] != policy.to_dict()["conditions"]:
            return new
    raise PolicyError(f"could not sample an override different from {policy.name}")
