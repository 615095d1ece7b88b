"""The general abilities a base VLM brings to MPI, as examples that teach them (the tiny model's pretraining,
`scripts/pretrain_tiny.py`) and measure them (`evaluate.general_abilities`, forgetting): perception
(captions, existence, counting on a fresh scene) and following a policy given in context (policy + image + query
-> gold CoT + boxed case). Every example is fully determined by its key: scenes from "PRETRAIN/<task>/..." seeds,
policies from the "base/..." seed family, never the policies the kit later internalizes ("policies/<seed>/...").
"""
from __future__ import annotations

import random
import re
from collections import Counter

from ...data import assistant, policy_parts, user_prompt
from .data import query_text
from .policy import ATTR_ORDER, sample_policy
from .rewards import parse_answer
from .scenes import ATTRIBUTES, Scene, render_scene, sample_scene
from ...tiny import IMAGE_SIZE

EXAMPLE_TYPES = ("describe", "exist", "count", "count_balanced", "policy")
PLURAL = {"cube": "cubes", "sphere": "spheres", "cylinder": "cylinders", "object": "objects"}


def subject_words(subject: dict) -> tuple[str, str]:
    """('small cyan metal', 'cube'): the policy's word order (size, color, material, shape)."""
    adj = " ".join(subject[a] for a in ATTR_ORDER[:3] if a in subject)
    return adj, subject.get("shape", "object")


def random_subject(rng: random.Random, scene: Scene, want_yes: bool | None) -> dict:
    """1-3 attribute values; with want_yes, drawn from an object in the scene (yes) or absent from it (no)."""
    k = rng.choice((1, 1, 2, 2, 3))
    for _ in range(30):
        if want_yes:
            o = rng.choice(scene.objects)
            subject = {a: getattr(o, a) for a in rng.sample(list(ATTRIBUTES), k)}
        else:
            subject = {a: rng.choice(ATTRIBUTES[a]) for a in rng.sample(list(ATTRIBUTES), k)}
        if want_yes is None or scene.has(**subject) == want_yes:
            return subject
    return subject


def describe_answer(scene: Scene) -> str:
    n = len(scene.objects)
    return f"There are {n} objects: {scene.describe()}."


def make_example(task: str, key: str, depth: int | None = None, image_size=IMAGE_SIZE, variant: str = "T",
                 case_pool: int | None = None) -> dict:
    """One prompt/completion example (TRL's conversational format + `images`), fully determined by `key`.

    Tasks: describe (caption left to right), exist (yes/no on 1-3 attribute values), count (0-10),
    count_balanced (a count question whose answer is drawn evenly from 0..7: plain count questions ask about an
    object in the scene, so most answers are 0 or 1 and large counts go untaught), and policy (a fresh policy of
    `depth` and `variant`, -T text or -M with policy images, in the prompt; gold CoT + boxed case as the
    completion; with `case_pool`, its case numbers are drawn from 0..case_pool-1)."""
    if task == "count_balanced":  # the first count example under KEY/w<m> whose answer is the one drawn
        want = random.Random(f"countw/{key}").randint(0, 7)  # the trial's seed name: follow6e/6f's examples
        for m in range(400):
            example = make_example("count", f"{key}/w{m}", image_size=image_size)
            if int(example["answer"]) == want:
                break
        return example  # after 400 misses (rare, large counts): the last one tried
    rng = random.Random(f"PRETRAIN/{task}/{depth}/{key}")
    scene = sample_scene(rng, scene_id=f"pt-{task}-{key}")
    image = render_scene(scene, image_size)
    if task == "policy":
        seed = f"base/{key}/{depth}" + ("" if variant == "T" else f"/{variant}")
        policy = sample_policy(depth, random.Random(seed), variant=variant, case_pool=case_pool)
        parts, pimgs = policy_parts(policy)
        return {"prompt": user_prompt(query_text(policy.name), parts),
                "completion": assistant(policy.gold_cot(scene)), "images": pimgs + [image],
                "task": f"policy{depth}{'' if variant == 'T' else variant}", "answer": policy.evaluate(scene)[0],
                "scene": scene}
    subject = None  # exist / count: the attribute values the question names
    if task == "describe":
        q, a = "Describe the image.", describe_answer(scene)
    else:
        subject = random_subject(rng, scene, rng.random() < 0.5 if task == "exist" else rng.random() < 0.8)
        adj, noun = subject_words(subject)
        if task == "exist":
            phrase = f"{adj} {noun}".strip()
            q = f"Is there {'an' if phrase[0] in 'aeiou' else 'a'} {phrase} in the image?"
            a = "Yes" if scene.has(**subject) else "No"
        elif task == "count":
            q = f"How many {(adj + ' ') if adj else ''}{PLURAL[noun]} are in the image?"
            a = str(scene.count(**subject))
        else:
            raise ValueError(f"unknown task {task!r}; tasks: {', '.join(EXAMPLE_TYPES)}")
    return {"prompt": [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": q}]}],
            "completion": assistant(a), "images": [image], "task": task, "answer": a, "scene": scene,
            "subject": subject}


# ------------------------------------------------------------------------------------ scoring what was made

def majority_share(examples: list[dict]) -> float:
    """Accuracy of always giving the most common gold answer: the floor a model must beat to show it sees."""
    return Counter(e["answer"] for e in examples).most_common(1)[0][1] / len(examples)


COT_STEP = re.compile(r"Condition ([\d.]+): (Is there [^?(]*?)(?: \(that is, [^)]*\))?\? (Yes|No), "
                      r"(?:go to Condition ([\d.]+)|the response is (Case \d+))\.")
STEP_PARTS = ("question", "yes_no", "go_to", "case")


def cot_steps(output: str, gold: str) -> dict[str, list[int]]:
    """Where in-context following breaks, step by step: for each gold CoT step the model reached (same condition
    id), was the question copied, the yes/no right, the go-to id or the case id right? Counting stops at the first
    wrong part, since what follows it answers another condition. Returns {part: [right, reached]}."""
    out = {k: [0, 0] for k in STEP_PARTS}
    for g, o in zip(COT_STEP.findall(gold), COT_STEP.findall(output)):
        if g[0] != o[0]:
            break
        checks = [("question", g[1] == o[1]), ("yes_no", g[2] == o[2])]
        checks.append(("go_to", g[3] == o[3]) if g[3] else ("case", g[4] == o[4]))
        for part, ok in checks:
            out[part][0] += ok
            out[part][1] += 1
            if not ok:
                return out
    return out


def breaks_at(output: str, gold: str) -> str | None:
    """Where a chain of thought first goes wrong against the gold one: a STEP_PARTS name ('question': a condition
    of the policy not recalled; 'yes_no': the scene misread; 'go_to' / 'case': the tree's structure not recalled),
    'other' (every step reached was right, yet the answer is not: a chain cut short or a wrong boxed answer), or
    None when the output reached every gold step and got each one right."""
    steps = cot_steps(output, gold)
    wrong = next((p for p in STEP_PARTS if steps[p][0] < steps[p][1]), None)
    if wrong:
        return wrong
    reached = sum(steps[p][1] for p in ("go_to", "case"))
    return None if reached == len(COT_STEP.findall(gold)) and parse_answer(output) == parse_answer(gold) else "other"


__all__ = ["EXAMPLE_TYPES",
           "PLURAL", "STEP_PARTS", "make_example", "subject_words", "random_subject", "describe_answer",
           "majority_share", "cot_steps", "breaks_at"]
