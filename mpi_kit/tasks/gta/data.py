"""GTAPolicy instances and datasets: single-turn "next tool call" tasks (paper §3.2, App. C.2.2).

An instance is images + a synthesized user profile + a query + the interaction history (earlier calls and what
they returned) + the instruction; its answer is one JSON tool call whose version follows the policy's rules.
Two sources: `load_gta` turns every tool-call step of the real GTA benchmark (`dataset.json` + `image/`) into
one instance; `generate_instances` builds them offline over our rendered scenes, covering every rule and every
tool, deterministically from a seed. `build_gta_datasets` writes the same kinds as `data.build_datasets`
(qa/cot/vmcpt/rl/eval with no_policy/in_context/override), so the VM-CPT, SFT and RL stages run on them as-is.
"""
from __future__ import annotations

import json
import math
import random
import reprlib
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import datasets
from PIL import Image, ImageDraw

from ...data import FEATURES, KINDS, DataError, _png, assistant, policy_parts, user_prompt, writable_dir
from ...folders import claim, finish_manifest, lock, start_manifest, write_json
from ...progress import library_bars_off
from .policy import (BASE_POLICY, DEFAULT_OVERRIDE, GTAPolicy, PolicyError, UserProfile, _cond_text, rule_leaves,
                     sample_profile, tool_type)
from ..clevr.scenes import CLEVR_SIZE, RADIUS, Scene, sample_scene, scene_image

INSTRUCTION = ("Following Policy: {name}, determine the appropriate tool to use at the current step and respond "
               'with one JSON tool call {{"name": ..., "arguments": {{...}}}}.')
OVERRIDE_INTRO = "Suppose some Tool Calling Rules of Policy: {name} have been updated as follows:\n"
# a GTAPolicy row: the shared columns but ClevrPolicy's own (depth, variant, case); the gold call, its tool type, the
# user profile and where the instance came from instead ("path" holds the rules the gold call follows)
GTA_FEATURES = datasets.Features({**{k: v for k, v in FEATURES.items() if k not in ("depth", "variant", "case")},
                                  "answer": datasets.Value("string"), "tool": datasets.Value("string"),
                                  "profile": datasets.Value("string"), "source": datasets.Value("string")})


@dataclass
class Step:
    """One earlier call in the interaction history: tool type (versioned when rendered), arguments, result."""
    tool: str
    arguments: dict
    result: str
    context: dict = field(default_factory=dict)


@dataclass
class Instance:
    """One next-tool-call task. `tool` is the tool *type* of the answer; its version comes from the policy for
    `profile` (and `context`, e.g. {"math_image": True}), so the same instance has another answer under an
    override. `images` are PIL images named `image_names` in the text; `tips` and `why` feed the reverse CoT."""
    id: str
    query: str
    profile: UserProfile
    image_names: list[str]
    images: list
    tool: str
    arguments: dict
    history: list[Step] = field(default_factory=list)
    context: dict = field(default_factory=dict)
    tips: list[str] = field(default_factory=list)
    why: str = ""
    group: str = ""  # instances of one query share a group (never split across train and test)
    source: str = "generated"

    def answer(self, policy: GTAPolicy = BASE_POLICY) -> dict:
        return {"name": policy.resolve(self.tool, self.profile, self.context)[0], "arguments": dict(self.arguments)}

    def prompt_text(self, policy: GTAPolicy = BASE_POLICY) -> str:
        """Everything the user turn says after the images: names, profile, query, history, instruction."""
        lines = ["Images: " + ", ".join(f"{n} (image {i + 1} above)" for i, n in enumerate(self.image_names)),
                 f"User profile: {self.profile.text()}", f"Query: {self.query}", "Interaction history:"]
        for k, s in enumerate(self.history, 1):
            call = {"name": policy.resolve(s.tool, self.profile, s.context)[0], "arguments": s.arguments}
            lines.append(f"{k}. {json.dumps(call)} returned: {s.result}")
        if not self.history:
            lines.append("(no tool called yet)")
        lines.append(INSTRUCTION.format(name=policy.name))
        return "\n".join(lines)

    def cot(self, policy: GTAPolicy = BASE_POLICY) -> str:
        """Reverse CoT: a rationale written for the known answer, citing the rules, then the JSON call."""
        name, rule, branch = policy.decide(self.tool, self.profile, self.context)
        steps = [self.why] if self.why else []
        if rule is None:
            steps.append(f"{self.tool} has one version.")
        else:
            conds = [_cond_text(c) for c in rule.when] + [_cond_text(c) for c in rule.then[branch][0]]
            if not rule.then[branch][0] and branch > 0:
                conds += [f"not ({_cond_text(c)})" for c in rule.then[branch - 1][0]]
            steps.append(f"Rule {rule.id}: {' and '.join(conds)}, so {name}.")
        return "<think>" + " ".join(steps) + "</think>" + json.dumps(self.answer(policy))

    def cited_rules(self, policy: GTAPolicy = BASE_POLICY) -> list[str]:
        """The rules the answer follows: the one deciding the version, the tips of the step, Tip.3 for image names."""
        rid = policy.resolve(self.tool, self.profile, self.context)[1]
        return ([rid] if rid else []) + list(self.tips) + (["Tip.3"] if "image" in self.arguments else [])


# ----------------------------------------------------------------------------------------------- generator

POSITIONS = {"top left": "lt", "top middle": "mt", "top right": "rt", "middle left": "lm", "center": "mm",
             "middle right": "rm", "bottom left": "lb", "bottom middle": "mb", "bottom right": "rb"}
STYLES = ["a watercolor painting", "a pencil sketch", "a Van Gogh painting", "pixel art", "a snowy winter scene"]
PICTURES = [("a castle built from {shape}s", "castle, {shape}s"), ("a {color} {shape} floating in space",
            "{color} {shape}, space"), ("a city skyline made of {shape}s", "city skyline, {shape}s")]
FACTS = {"cube": "how many faces a cube has", "sphere": "formula for the volume of a sphere",
         "cylinder": "formula for the surface area of a cylinder"}
IDEAS = {"cube": "fun craft ideas with cubes", "sphere": "games to play with small balls",
         "cylinder": "creative uses for cylinder containers"}


def _bbox(o) -> str:
    """The object's box in the 480x320 frame the tools see, '(x1, y1, x2, y2)'."""
    W, H = CLEVR_SIZE
    r = RADIUS[o.size] * H
    return f"({round(o.x * W - r)}, {round(o.y * H - r)}, {round(o.x * W + r)}, {round(o.y * H + r)})"


def _label(image: Image.Image, text: str) -> Image.Image:
    """The scene with a white card carrying `text` (a sign for OCR, an equation for MathOCR)."""
    img = image.copy()
    d = ImageDraw.Draw(img)
    w = max(len(text) * 6 + 6, 24)
    d.rectangle([2, 2, min(img.width - 2, w), 16], fill=(255, 255, 255), outline=(0, 0, 0))
    d.text((5, 4), text, fill=(0, 0, 0))
    return img


def _unique(scene: Scene):
    """An object whose (size, color, shape) no other object shares, so a description names exactly it."""
    keys = [(o.size, o.color, o.shape) for o in scene.objects]
    return next((o for o, k in zip(scene.objects, keys) if keys.count(k) == 1), scene.objects[0])


def _task(kind: str, rng: random.Random, scenes: list[Scene], images: list) -> dict:
    """One task of `kind`: the tool type, its arguments, the query, history, context, tips, the why of the step."""
    s, img1 = scenes[0], "image/image_1.jpg"
    o = _unique(s)
    desc = f"{o.size} {o.color} {o.shape}"
    t = dict(tool=None, arguments={}, query="", history=[], context={}, tips=[], why="", images=images[:1])
    if kind == "describe":
        t.update(tool="ImageDescription", arguments={"image": img1}, query=rng.choice(
            ["What is in this picture?", "Describe the scene for me.", "What objects can you see here?"]),
            why="To answer, the image has to be described first.")
    elif kind == "describe_multi":
        n = len(images)
        t.update(tool="ImageDescription", arguments={"image": img1}, images=images, tips=["Tip.1"],
                 query=rng.choice(["Which of these images has the most spheres?", "Which picture has more metal "
                                   "objects?", "Do these pictures show the same objects?"]),
                 why=f"Rule Tip.1: with {n} images, each is described first, starting with {img1}.")
    elif kind == "ocr":
        word = rng.choice(["SALE 20%", "EXIT", "OPEN 9-5", "TOYS", "CAFE", "PARK"])
        t.update(tool="OCR", arguments={"image": img1}, images=[_label(images[0], word)],
                 query=rng.choice(["What does the sign in the image say?", "Read the text on the card for me."]),
                 why="The answer is the text on the card, so the text has to be recognized.")
    elif kind in ("math_ocr", "solver"):
        a, x, b = rng.randint(2, 9), rng.randint(1, 9), rng.randint(1, 20)
        eq = f"{a}x + {b} = {a * x + b}"
        t.update(images=[_label(images[0], eq)], context={"math_image": True},
                 query=rng.choice(["Solve the equation in the image.", "What is x in the equation on the card?"]))
        if kind == "math_ocr":
            t.update(tool="OCR", arguments={"image": img1},
                     why="The card shows an equation, which has to be read before solving it.")
        else:
            code = ("from sympy import symbols, Eq, solve\ndef solution():\n    x = symbols('x')\n"
                    f"    return solve(Eq({a}*x + {b}, {a * x + b}), x)")
            t.update(tool="Solver", arguments={"command": code},
                     history=[Step("OCR", {"image": img1}, eq.replace(" ", ""), {"math_image": True})],
                     why="MathOCR has read the equation; now it has to be solved.")
    elif kind == "calculator":
        p, q = rng.randint(2, 9), rng.randint(2, 9)
        nc, ns = s.count(shape="cube"), s.count(shape="sphere")
        t.update(tool="Calculator", arguments={"expression": f"{nc} * {p} + {ns} * {q}"},
                 query=f"Each cube costs {p} dollars and each sphere {q} dollars. What do all the cubes and spheres "
                       f"in the picture cost together?",
                 history=[Step("CountGivenObject", {"image": img1, "text": "cube"}, str(nc)),
                          Step("CountGivenObject", {"image": img1, "text": "sphere"}, str(ns))],
                 why=f"The counts are known ({nc} cubes, {ns} spheres); what is left is arithmetic.")
    elif kind == "count":
        attr, value = rng.choice([("color", o.color), ("shape", o.shape), ("material", o.material)])
        what = f"{value} objects" if attr != "shape" else f"{value}s"
        t.update(tool="CountGivenObject", arguments={"image": img1, "text": what},
                 query=f"How many {what} are in the picture?", why=f"The question asks for a count of {what}.")
    elif kind == "search":
        open_ended = rng.random() < 0.5
        topic = (IDEAS if open_ended else FACTS)[o.shape]
        t.update(tool="GoogleSearch", arguments={"query": topic, "k": 4 if open_ended else 1}, tips=["Tip.4"],
                 query=(f"I like the {o.shape} in this picture. " + (f"Can you find me some {topic}?" if open_ended
                        else f"Can you look up the {topic}?")),
                 why=f"This needs the web. Rule Tip.4: the question is "
                     f"{'open-ended, so k=4' if open_ended else 'factual, so k=1'}.")
    elif kind in ("locate", "region", "drawbox"):
        attr = rng.choice(["material", "color"])
        box = _bbox(o)
        located = Step("TextToBbox", {"image": img1, "text": desc}, f"{box}, score {rng.randint(80, 99)}")
        if kind == "locate":
            t.update(tool="TextToBbox", arguments={"image": img1, "text": desc, "top1": True}, tips=["Tip.2"],
                     query=f"What {attr} is the {desc}?",
                     why=f"Rule Tip.2: the {desc} has to be located before its region is described.")
        elif kind == "region":
            t.update(tool="RegionAttributeDescription", arguments={"image": img1, "bbox": box, "attribute": attr},
                     tips=["Tip.2"], query=f"What {attr} is the {desc}?", history=[located],
                     why=f"Rule Tip.2: TextToBbox has located the {desc} at {box}; now its {attr} is described.")
        else:
            t.update(tool="DrawBox", arguments={"image": img1, "bbox": box, "annotation": desc}, history=[located],
                     query=f"Draw a box around the {desc} and label it.",
                     why=f"TextToBbox has located the {desc} at {box}; now the box is drawn.")
    elif kind == "addtext":
        where, color = rng.choice(list(POSITIONS)), rng.choice(["blue", "green", "yellow", "white", "black"])
        text = f"{o.shape.capitalize()}s: {s.count(shape=o.shape)}"
        t.update(tool="AddText", arguments={"image": img1, "text": text, "position": POSITIONS[where], "color": color},
                 query=f"Write '{text}' in {color} at the {where} of the picture.",
                 why=f"The user wants text added at the {where} ({POSITIONS[where]}) in {color}.")
    elif kind == "plot":
        counts = {sh: s.count(shape=sh) for sh in ("cube", "sphere", "cylinder")}
        code = ("import matplotlib.pyplot as plt\ndef solution():\n    fig = plt.figure()\n"
                f"    plt.bar({list(counts)}, {list(counts.values())})\n    return fig")
        t.update(tool="Plot", arguments={"command": code}, query="Make a bar chart of how many cubes, spheres and "
                 "cylinders are in the picture.",
                 history=[Step("CountGivenObject", {"image": img1, "text": f"{sh}s"}, str(n))
                          for sh, n in counts.items()],
                 why="Every shape has been counted; now the chart is drawn.")
    elif kind == "text_to_image":
        q, kw = rng.choice(PICTURES)
        q, kw = q.format(shape=o.shape, color=o.color), kw.format(shape=o.shape, color=o.color)
        t.update(tool="TextToImage", arguments={"keywords": kw}, query=f"Generate a picture of {q}.",
                 why="The user wants a new image generated.")
    elif kind == "stylize":
        style = rng.choice(STYLES)
        t.update(tool="ImageStylization", arguments={"image": img1, "instruction": f"turn it into {style}"},
                 query=f"Make this picture look like {style}.", why="The user wants the picture restyled.")
    else:
        raise DataError(f"unknown task kind {kind!r}; kinds: {', '.join(INSTANCE_TYPES)}")
    return t


INSTANCE_TYPES = ("describe", "describe_multi", "ocr", "math_ocr", "solver", "calculator", "count", "search",
                  "locate", "region", "drawbox", "addtext", "plot", "text_to_image", "stylize")


def _profile_for(tool: str, leaf: tuple | None, rng: random.Random, context: dict) -> UserProfile:
    """A random profile; with `leaf` (rule id, branch), one that the base rules send to that branch."""
    for _ in range(5000):
        p = sample_profile(rng)
        if leaf is None:
            return p
        _, rule, branch = BASE_POLICY.decide(tool, p, context)
        if rule is not None and (rule.id, branch) == leaf:
            return p
    raise DataError(f"could not sample a profile for rule {leaf}")


def generate_instances(n: int, seed: int = 0, image_size=(96, 64), prefix: str = "gen") -> list[Instance]:
    """`n` instances over rendered scenes, deterministic from `seed` (and `prefix`, which names them). Tasks cycle
    through `INSTANCE_TYPES` (all 14 tools); each versioned task cycles through its rules' branches, so n >= ~80
    covers all 24 rules."""
    leaves: dict[str, list] = {}
    for rid, branch, _ in rule_leaves():
        leaves.setdefault(BASE_POLICY.rule(rid).tool, []).append((rid, branch))
    seen: dict[str, int] = {}
    out = []
    for i in range(n):
        rng = random.Random(f"gta/{prefix}/{seed}/{i}")
        kind = INSTANCE_TYPES[i % len(INSTANCE_TYPES)]
        k = rng.randint(2, 3) if kind == "describe_multi" else 1
        scenes = [sample_scene(random.Random(f"gta-scene/{prefix}/{seed}/{i}/{j}"), min_objects=3, max_objects=7)
                  for j in range(k)]
        images = [scene_image(sc, tuple(image_size)) for sc in scenes]
        t = _task(kind, rng, scenes, images)
        ttype = t["tool"]
        tool_leaves = [lf for lf in leaves.get(ttype, [])
                       if (lf[0] == "OCR.4") == bool(t["context"].get("math_image"))]
        leaf = None
        if tool_leaves:
            leaf = tool_leaves[seen.get(kind, 0) % len(tool_leaves)]
            seen[kind] = seen.get(kind, 0) + 1
        profile = _profile_for(ttype, leaf, rng, t["context"])
        names = [f"image/image_{j + 1}.jpg" for j in range(len(t["images"]))]
        out.append(Instance(f"{prefix}{i:05d}", t["query"], profile, names, t["images"], ttype, t["arguments"],
                            t["history"], t["context"], t["tips"], t["why"], group=f"{prefix}{i:05d}"))
    return out


# ------------------------------------------------------------------------------------------- GTA loader

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 80
_clip = _REPR.repr  # a value quoted in an error message: short, even for a huge or deeply nested one
MAX_DEPTH = 20  # how deeply a turn's content may nest lists of parts


def _text(content, where: str, depth: int = 0) -> str:
    """A turn's content as text: a string, {"type", "content"}, or a list of those."""
    if depth > MAX_DEPTH:
        raise DataError(f"{where}: a turn's content nests more than {MAX_DEPTH} levels deep; GTA's content is a "
                        f"string, {{'type': 'text', 'content': ...}} or a list of those")
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        kind, value = content.get("type", "text"), content.get("content", "")
        return str(value) if kind == "text" else f"<{kind}: {value}>"
    if isinstance(content, list):
        return " ".join(_text(c, where, depth + 1) for c in content)
    return "" if content is None else str(content)


def _read_json(path: Path):
    """The parsed dataset.json; a DataError saying why when it cannot be read or is not JSON."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:  # a folder, no permission
        raise DataError(f"cannot read {path} ({e.strerror or e}); pass the folder holding GTA's dataset.json "
                        f"file, or that file") from None
    except (ValueError, RecursionError) as e:  # bad or truncated JSON, not UTF-8 text, nested too deeply
        raise DataError(f"{path} is not valid JSON ({type(e).__name__}: {str(e)[:200]}); download and unzip "
                        f"gta_dataset.zip again") from None


def _image(p: Path, where: str, image_size, missing_images: str) -> Image.Image:
    """The image at `p` shrunk to fit `image_size` (grey when missing and missing_images='blank')."""
    if p.is_dir():
        raise DataError(f"{where}: image {p} is a folder, not an image file; a file's 'path' names one image, "
                        f"e.g. image/image_1.jpg")
    if not p.exists():
        if missing_images != "blank":
            raise DataError(f"{where}: image {p} is missing; unzip the GTA images next to dataset.json "
                            f"or pass missing_images='blank'")
        return Image.new("RGB", tuple(image_size), (128, 128, 128))
    try:
        with Image.open(p) as im:
            img = im.convert("RGB")
    except (OSError, ValueError, Image.DecompressionBombError) as e:  # not an image, truncated, unreadable
        raise DataError(f"{where}: {p} is not a readable image ({e}); replace it with the file from "
                        f"gta_dataset.zip") from None
    img.thumbnail(tuple(image_size))
    return img


def _arguments(fn: dict, where: str) -> dict:
    """A call's arguments, a JSON object (or its JSON text) of strings, numbers, booleans and nulls, as in GTA."""
    name, args = fn["name"], fn.get("arguments")
    if args is None or args == "":
        return {}
    if isinstance(args, str):
        try:
            args = json.loads(args)
        except (ValueError, RecursionError):
            raise DataError(f"{where}: arguments of {name} are not JSON: {_clip(args)}") from None
    if not isinstance(args, dict):
        raise DataError(f"{where}: arguments of {name} must be a JSON object like {{\"image\": "
                        f"\"image/image_1.jpg\"}}, got {type(args).__name__} {_clip(args)}")
    for k, v in args.items():
        if v is not None and not isinstance(v, (str, int, float)):
            raise DataError(f"{where}: argument {k!r} of {name} must be a string, number, boolean or null, got "
                            f"{type(v).__name__} {_clip(v)}")
        if isinstance(v, float) and not math.isfinite(v):
            raise DataError(f"{where}: argument {k!r} of {name} must be a finite number, got {v}")
    return dict(args)


def _list(item: dict, key: str, where: str, what: str) -> list:
    """item[key], which must be there and be a list of `what`."""
    if key not in item:
        raise DataError(f"{where}: missing '{key}' ({what})")
    if not isinstance(item[key], list):
        raise DataError(f"{where}: '{key}' must be a list ({what}), got {type(item[key]).__name__}")
    return item[key]


def load_gta(root: str | Path, seed: int = 0, image_size=(480, 320), missing_images: str = "error") -> list[Instance]:
    """Every tool-call step of the GTA benchmark as one instance (paper: 557 steps from 229 queries).

    `root` is the unzipped `gta_dataset` folder (`dataset.json` + `image/`) or the json file. Each query is
    {"tools": [...], "files": [{"type": "image", "path": "image/image_1.jpg"}, ...], "dialogs": [user,
    assistant{"tool_calls": [{"function": {"name", "arguments"}}]}, tool{"name", "content"}, ..., assistant],
    "gt_answer": ...}. A user profile is synthesized per query (seeded by its id); GTA's unversioned tool names
    get the version the rules give that user. Images are shrunk to fit `image_size`; `missing_images="blank"`
    puts a grey image where a file is missing instead of failing. Anything malformed is a DataError naming the
    query and what is wrong."""
    root = Path(root)
    path = root if root.suffix == ".json" else root / "dataset.json"
    if not path.exists():
        raise DataError(f"no GTA dataset at {path}; download gta_dataset.zip from the GTA release "
                        f"(github.com/open-compass/GTA) and unzip it, then pass the folder holding dataset.json")
    data = _read_json(path)
    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else None
    if items is None:
        raise DataError(f"{path}: expected an object of queries keyed by id (GTA's format), got {type(data).__name__}")
    out = []
    for qid, item in items:
        where = f"{path.name}, query {qid}"
        if not isinstance(item, dict):
            raise DataError(f"{where}: must be an object with 'files' and 'dialogs', got {type(item).__name__} "
                            f"{_clip(item)}")
        dialogs = _list(item, "dialogs", where, "a list of user/assistant/tool turns")
        files = _list(item, "files", where, "the query's images, [{'type': 'image', 'path': ...}]")
        names, images = [], []
        for f in files:
            if not isinstance(f, dict) or "path" not in f:
                raise DataError(f"{where}: a file entry without 'path': {_clip(f)}")
            if f.get("type", "image") != "image":
                continue
            if not isinstance(f["path"], str) or not f["path"]:
                raise DataError(f"{where}: a file path must be a non-empty string like 'image/image_1.jpg', got "
                                f"{_clip(f['path'])}")
            names.append(f["path"])
            images.append(_image(path.parent / f["path"], where, image_size, missing_images))
        for d in dialogs:
            if not isinstance(d, dict):
                raise DataError(f"{where}: a dialog turn is not an object: {_clip(d)}")
        users = [d for d in dialogs if d.get("role") == "user"]
        if not users:
            raise DataError(f"{where}: the dialogs have no user turn holding the query")
        query = _text(users[0].get("content"), where)
        profile = sample_profile(random.Random(f"gta-profile/{seed}/{qid}"))
        history: list[Step] = []
        pending: list[Step] = []
        step = 0
        for d in dialogs:
            calls = d.get("tool_calls")
            if d.get("role") == "assistant" and calls:
                if not isinstance(calls, list):
                    raise DataError(f"{where}: 'tool_calls' must be a list of {{'function': {{'name': ..., "
                                    f"'arguments': {{...}}}}}}, got {type(calls).__name__} {_clip(calls)}")
                for call in calls:
                    fn = call.get("function", call) if isinstance(call, dict) else None
                    if not isinstance(fn, dict) or "name" not in fn:
                        raise DataError(f"{where}: a tool call without function.name: {_clip(call)}")
                    if not isinstance(fn["name"], str):
                        raise DataError(f"{where}: a tool name must be a string, got {_clip(fn['name'])}")
                    try:
                        ttype = tool_type(fn["name"].split("_v")[0])
                    except PolicyError as e:
                        raise DataError(f"{where}: {e}") from None
                    args = _arguments(fn, where)
                    context = {"math_image": True} if ttype == "MathOCR" else {}
                    ttype = "OCR" if ttype == "MathOCR" else ttype
                    out.append(Instance(f"gta{qid}/{step}", query, profile, names, images, ttype, dict(args),
                                        list(history), context, group=f"gta{qid}", source="gta",
                                        why=f"Step {step + 1} of the plan calls {fn['name']}."))
                    pending.append(Step(ttype, dict(args), "", context))
                    step += 1
            elif d.get("role") == "tool":
                result = _text(d.get("content"), where)
                if pending:
                    s = pending.pop(0)
                    s.result = result
                    history.append(s)
        history.extend(pending)
    if not out:
        raise DataError(f"{path}: no tool calls found in any dialog")
    return out


# ------------------------------------------------------------------------------------------- datasets

@dataclass
class GTADataConfig:
    """What to build: generated instances (default) or the real GTA benchmark (`gta_root`)."""
    out: str = field(default="runs/gta", metadata={"help": "output folder"})
    gta_root: str | None = field(default=None, metadata={"help": "GTA folder with dataset.json (else generate)"})
    num_instances: int = field(default=200, metadata={"help": "generated instances (paper: 557 from GTA)"})
    test_fraction: float = field(default=0.2, metadata={"help": "share held out (paper: 106 of 557)"})
    seed: int = field(default=0, metadata={"help": "one seed for profiles, scenes, split"})
    image_size: tuple[int, int] = field(default=(96, 64), metadata={"help": "image (width, height)"})
    kinds: tuple[str, ...] = field(default=KINDS, metadata={"help": "which datasets to build"})
    override: str = field(default="", metadata={"help": "override as JSON {rule id: new targets}; empty: "
                                                        "OCR.1, OCR.2, CountGivenObject.3, ImageStylization.2"})

    def check(self) -> None:
        if not 0 < self.test_fraction < 1:
            raise DataError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if self.gta_root is None and self.num_instances < 2:
            raise DataError(f"num_instances must be >= 2 (train and test), got {self.num_instances}")
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise DataError(f"unknown dataset kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
        if len(self.image_size) != 2 or min(self.image_size) < 32:
            raise DataError(f"image_size must be (width, height) of at least 32 px each, got {tuple(self.image_size)}")


def make_row(inst: Instance, kind: str, policy: GTAPolicy, doc: tuple[list, list], images: list) -> dict:
    """One dataset row of `kind` (qa, cot, vmcpt, rl, in_context, override) in data.py's format."""
    parts, _ = doc
    answer = inst.answer(policy)
    row = {"id": inst.id, "policy_name": policy.name, "scene_id": inst.id, "path": inst.cited_rules(policy),
           "images": images, "policy": [],
           "policy_images": [], "answer": json.dumps(answer), "tool": inst.tool,
           "profile": json.dumps(inst.profile.to_dict()), "source": inst.source}
    text, n = inst.prompt_text(policy), len(images)
    if kind == "qa":
        row.update(prompt=user_prompt(text, n_images=n), completion=assistant(json.dumps(answer)))
    elif kind == "cot":
        row.update(prompt=user_prompt(text, n_images=n), completion=assistant(inst.cot(policy)))
    elif kind in ("vmcpt", "in_context"):
        row.update(prompt=user_prompt(text, parts, n_images=n), completion=assistant(inst.cot(policy)), policy=parts)
    elif kind == "rl":
        row.update(prompt=user_prompt(text, n_images=n), completion=assistant(json.dumps(answer)), policy=parts)
    elif kind == "override":
        block = [{"type": "text", "text": policy.override_block()}]
        row.update(prompt=user_prompt(text, block, OVERRIDE_INTRO.format(name=policy.name), n_images=n),
                   completion=assistant(inst.cot(policy)), policy=block)
    else:
        raise DataError(f"unknown row kind {kind!r}")
    return row


def override_instances(instances: list[Instance], updated: GTAPolicy, seed: int = 0) -> list[Instance]:
    """The instances whose tool has an overridden rule, each given a new profile (seeded by its id) for which the
    override changes the answer: the Policy Override test, where the old version is now wrong."""
    tools = {updated.rule(rid).tool for rid in updated.overrides}
    out = []
    for inst in instances:
        if inst.tool not in tools:
            continue
        rng = random.Random(f"gta-override/{seed}/{inst.id}")
        for _ in range(2000):
            p = sample_profile(rng)
            if updated.resolve(inst.tool, p, inst.context)[0] != BASE_POLICY.resolve(inst.tool, p, inst.context)[0]:
                out.append(replace(inst, profile=p))
                break
    return out


def split_groups(instances: list[Instance], test_fraction: float, seed: int) -> tuple[list, list]:
    """Hold out whole groups (all steps of a GTA query), so no test query is seen in training."""
    groups = sorted({i.group for i in instances})
    random.Random(f"gta-split/{seed}").shuffle(groups)
    test = set(groups[:max(1, round(len(groups) * test_fraction))])
    return [i for i in instances if i.group not in test], [i for i in instances if i.group in test]


def build_gta_datasets(cfg: GTADataConfig | None = None, progress: bool = False, **kw) -> dict:
    """Build GTAPolicy datasets into `cfg.out` (same kinds and columns as `data.build_datasets`, plus `answer`,
    `tool`, `profile`, `source`); returns the JSON summary. The override split holds instances of overridden
    tools, re-profiled so that the override changes their answer (`override_instances`); for generated data they
    are fresh ones, never seen in training. Deterministic: the same config gives the same files."""
    cfg = cfg or GTADataConfig(**kw)
    cfg.check()
    t0 = time.time()
    out = writable_dir(Path(cfg.out))
    with lock(out, "a data build"):
        claim(out, BUILD, legacy=_legacy_build)  # only an earlier GTA build's own files are replaced
        entries = ("summary.json", "policy.json", "policy.txt", "instances.jsonl", *cfg.kinds)
        start_manifest(out, BUILD, entries)
        summary = _build(cfg, out, t0, progress)
        finish_manifest(out, BUILD, entries)
    return summary


BUILD = "gta-data"  # the manifest's name for what build_gta_datasets writes (`mpi_kit.folders`)


def _legacy_build(out: Path) -> list[str] | None:
    """What a GTAPolicy build of a kit without manifests wrote into `out`, when its summary.json says it was one."""
    try:
        saved = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(saved, dict) and saved.get("task") == "gta" and "datasets" in saved):
        return None
    return ["summary.json", "policy.json", "policy.txt", "instances.jsonl", *saved["datasets"]]


def _build(cfg: GTADataConfig, out: Path, t0: float, progress: bool) -> dict:
    """Write the policy, the instances and the datasets into `out` (already claimed), summary.json last."""
    try:
        override = json.loads(cfg.override) if cfg.override else DEFAULT_OVERRIDE
    except json.JSONDecodeError as e:
        raise DataError(f"override is not JSON ({e}); write it as {json.dumps(DEFAULT_OVERRIDE)}") from None
    policy, updated = BASE_POLICY, BASE_POLICY.with_override(override)
    instances = (load_gta(cfg.gta_root, cfg.seed, image_size=(480, 320)) if cfg.gta_root
                 else generate_instances(cfg.num_instances, cfg.seed, cfg.image_size))
    train, test = split_groups(instances, cfg.test_fraction, cfg.seed)
    # override test: held-out GTA steps, or fresh generated instances (as many as the test set) re-profiled so that
    # the override decides their answer
    pool = test if cfg.gta_root else generate_instances(6 * len(test), cfg.seed, cfg.image_size, prefix="ovr")
    changed = override_instances(pool, updated, cfg.seed)[:len(test)]
    encoded = {id(img): _png(img) for i in instances + changed for img in i.images}
    docs = policy_parts(policy)
    (out / "policy.json").write_text(json.dumps(updated.to_dict(), indent=1))
    (out / "policy.txt").write_text(policy.text())
    with open(out / "instances.jsonl", "w") as f:
        test_ids = {i.id for i in test}
        for i in instances:
            f.write(json.dumps({"id": i.id, "split": "test" if i.id in test_ids else "train", "query": i.query,
                                "profile": i.profile.to_dict(), "tool": i.tool, "arguments": i.arguments,
                                "context": i.context, "answer": i.answer(policy),
                                "history": [asdict(s) for s in i.history]}) + "\n")
    plan = {"qa": {"train": ("qa", train), "test": ("qa", test)},
            "cot": {"train": ("cot", train), "test": ("cot", test)},
            "vmcpt": {"train": ("vmcpt", train)}, "rl": {"train": ("rl", train)},
            "eval": {"no_policy": ("cot", test), "in_context": ("in_context", test),
                     "override": ("override", changed)}}
    summary = {"task": "gta", "config": {**asdict(cfg), "image_size": list(cfg.image_size), "kinds": list(cfg.kinds)},
               "source": "gta" if cfg.gta_root else "generated", "policy": policy.name,
               "num_instances": {"train": len(train), "test": len(test), "override": len(changed)},
               "policy_chars": len(policy.text()), "override": updated.overrides, "datasets": {}}
    for kind in cfg.kinds:
        splits = {}
        for split, (row_kind, insts) in plan[kind].items():
            pol = updated if row_kind == "override" else policy
            rows = [make_row(i, row_kind, pol, docs, [encoded[id(img)] for img in i.images]) for i in insts]
            splits[split] = datasets.Dataset.from_list(rows, features=GTA_FEATURES)
        dd = datasets.DatasetDict(splits)
        with library_bars_off():  # no "Saving the dataset" bar per kind: the build shows its own progress
            dd.save_to_disk(str(out / kind))
        summary["datasets"][kind] = {k: len(v) for k, v in dd.items()}
    tools: dict[str, int] = {}
    rules: dict[str, int] = {}
    for i in instances:
        tools[i.answer(policy)["name"]] = tools.get(i.answer(policy)["name"], 0) + 1
        for r in i.cited_rules(policy):
            rules[r] = rules.get(r, 0) + 1
    summary["tools"] = dict(sorted(tools.items()))
    summary["rules"] = dict(sorted(rules.items()))
    summary["seconds"] = round(time.time() - t0, 2)
    write_json(out / "summary.json", {k: v for k, v in summary.items() if k != "seconds"})  # last: the build is whole
    return summary


__all__ = ["Instance", "Step", "GTADataConfig", "GTA_FEATURES", "INSTANCE_TYPES", "generate_instances",
           "load_gta",
           "build_gta_datasets", "make_row", "split_groups", "override_instances"]
