"""The hidden cases behind `check`: for each exercise, inputs, the answer the kit's own code gives, and hints.

Expected answers come from the implementation the kit trains and evaluates with (`Policy.evaluate`, the VM-CPT
collator, `mpi_kit.rewards`, `mpi_kit.advantages`, `mpi_kit.stats`), so an exercise that passes has rebuilt the
real thing. A hint explains a case's lesson; `diagnose` recognises a common wrong answer and names the mistake.
"""
from __future__ import annotations

import functools
import math
import random
from dataclasses import dataclass, field
from typing import Callable


@dataclass
class Case:
    """One hidden input: the call's arguments, the kit's answer, how a message quotes the input, and its lesson."""
    args: tuple
    expected: object
    shown: str
    hint: str = ""
    kwargs: dict = field(default_factory=dict)


@dataclass
class Exercise:
    """An exercise: where it is taught, its hidden cases, the general hint, how answers are compared, and a
    `diagnose(case, got)` that names a known mistake (or returns None)."""
    name: str
    notebook: str
    cases: Callable[[], list[Case]]
    hint: str
    same: Callable[[object, object], bool]
    diagnose: Callable[[Case, object], str | None] = lambda case, got: None


# ------------------------------------------------------------------------------------------------ comparing

def as_list(value) -> list:
    """A list from a list, tuple, tensor or array (`.tolist()`), so learners may return any of them."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise TypeError(f"expected a list, got {type(value).__name__}")
    return list(value)


def same_ints(got, expected) -> bool:
    got = as_list(got)
    return len(got) == len(expected) and all(g == e for g, e in zip(got, expected))


def close(got, expected, tol: float = 1e-6) -> bool:
    """Numbers (or lists of numbers) equal within `tol`, absolute or relative; NaN never matches."""
    if isinstance(expected, (list, tuple)):
        got = as_list(got)
        return len(got) == len(expected) and all(close(g, e, tol) for g, e in zip(got, expected))
    if isinstance(got, (list, tuple)) or isinstance(got, str) or got is None:
        return False
    return math.isclose(float(got), expected, rel_tol=tol, abs_tol=tol)


# ------------------------------------------------------------------------------------------------ walk_policy

def _walk(policy, scene, swap: bool = False) -> tuple[str, list[str]]:
    """(case, [(condition id, answer)]) walking the tree; `swap` takes the wrong edge at every condition."""
    node, steps = policy.root, []
    while node in policy.conditions:
        c = policy.conditions[node]
        yes = scene.has(**c.subject) != swap
        steps.append((node, yes))
        node = c.yes if yes else c.no
    return node, steps


@functools.lru_cache(maxsize=None)
def walk_policy_cases() -> list[Case]:
    """Policies of depth 1 to 4, each with scenes that reach different cases, so every branch gets walked."""
    from ..tasks.clevr.policy import sample_policy
    from ..tasks.clevr.scenes import sample_scenes

    scenes = sample_scenes(150, seed=36, prefix="exercise")
    cases = []
    for depth, seed in ((1, 1), (2, 2), (3, 3), (4, 4)):
        policy = sample_policy(depth, seed)
        reached: dict[str, object] = {}
        for scene in scenes:
            reached.setdefault(policy.evaluate(scene)[0], scene)
        for case, scene in list(reached.items())[:4]:
            _, steps = _walk(policy, scene)
            route = " -> ".join(f"Condition {cid} ({'yes' if yes else 'no'})" for cid, yes in steps) + f" -> {case}"
            cases.append(Case((policy, scene), policy.evaluate(scene)[0],
                              f"policy {policy.name} (depth {policy.depth}) on scene {scene.scene_id}: "
                              f"{scene.describe()}", f"the right walk is {route}"))
    return cases


def diagnose_walk(case: Case, got) -> str | None:
    policy, scene = case.args
    if isinstance(got, tuple):
        return "Return the case alone (a string like \"Case 3\"), not a tuple."
    if got in policy.conditions:
        return (f"{got!r} is a condition id, not a case: keep walking while the node is in policy.conditions "
                f"(a `while` loop, not a fixed number of steps).")
    if got == _walk(policy, scene, swap=True)[0]:
        return "Your walk took the `no` edge where the condition holds and `yes` where it does not: swap them."
    return None


# ------------------------------------------------------------------------------------------------ vmcpt_labels

# The tiny model's ids (mpi_kit.models.vision_token_ids order: image pad, video pad, vision start, vision end),
# its <|im_start|>/<|im_end|> and pad; and Qwen2.5-VL's, whose pad is not 0.
TINY = {"visual": [5, 6, 3, 4], "start": 1, "end": 2, "pad": 0}
QWEN = {"visual": [151655, 151656, 151652, 151653], "start": 151644, "end": 151645, "pad": 151643}


def _image(ids: dict, pads: int) -> list[int]:
    img, _, vs, ve = ids["visual"]
    return [vs] + [img] * pads + [ve]


class _Tokenized:
    """A processor stand-in that hands the kit's VMCPTCollator one already tokenized row, so the expected labels
    come from the collator VM-CPT trains with."""

    def __init__(self, input_ids, attention_mask, visual_ids):
        from ..models import VISION_TOKENS

        self.row = {"input_ids": [input_ids], "attention_mask": [attention_mask]}
        self.vocab = dict(zip(VISION_TOKENS, visual_ids))
        self.tokenizer = self

    def get_vocab(self) -> dict:
        return self.vocab

    def apply_chat_template(self, messages, tokenize=False) -> str:
        return ""

    def __call__(self, **kwargs) -> dict:
        import torch

        return {k: torch.tensor(v) for k, v in self.row.items()}


def kit_vmcpt_labels(input_ids, attention_mask, visual_ids) -> list[int]:
    from ..cpt import VMCPTCollator

    collator = VMCPTCollator(_Tokenized(input_ids, attention_mask, visual_ids))
    return collator([{"prompt": [], "completion": [], "images": []}])["labels"][0].tolist()


@functools.lru_cache(maxsize=None)
def vmcpt_labels_cases() -> list[Case]:
    t, q = TINY, QWEN
    text = [t["start"], 91, 278, 88, 205, t["end"]]
    rows = [
        (text, [1] * 6, t, "text only: every token carries loss"),
        ([t["start"], 91, 278] + _image(t, 4) + [88, 205, t["end"]], [1] * 12, t,
         "an image: its pads and the vision start/end markers around them are all -100"),
        ([t["start"], 301] + _image(t, 2) + [295, 271] + _image(t, 3) + [368, t["end"], t["pad"], t["pad"]],
         [1] * 15 + [0, 0], t, "a policy image, a scene image and right padding (attention_mask 0)"),
        ([q["start"], 14374, 25, 444] + _image(q, 3) + [3838, 374, q["end"], q["pad"], q["pad"], q["pad"]],
         [1] * 12 + [0] * 3, q, "Qwen2.5-VL's ids: its pad id is not 0, so find padding by the attention mask"),
        (text + [t["pad"]] * 4, [1] * 6 + [0] * 4, t, "a short row padded to the batch's longest"),
    ]
    return [Case((ids, mask, ids_of["visual"]), kit_vmcpt_labels(ids, mask, ids_of["visual"]),
                 f"input_ids={ids}, attention_mask={mask}, visual_ids={ids_of['visual']}", lesson)
            for ids, mask, ids_of, lesson in rows]


def diagnose_vmcpt(case: Case, got) -> str | None:
    ids, mask, visual = case.args
    got = as_list(got)
    if len(got) != len(ids):
        return (f"Return one label per input id ({len(ids)} here, got {len(got)}): mark masked positions -100, "
                f"do not drop them.")
    if got == [-100 if i in visual else i for i in ids]:
        return "Padding still carries loss: every position whose attention_mask is 0 gets -100."
    if got == [i if m else -100 for i, m in zip(ids, mask)]:
        return "The visual tokens carry loss: every id in visual_ids (image pads, vision start/end) gets -100."
    if got == [-100 if (i == visual[0] or not m) else i for i, m in zip(ids, mask)]:
        return "Only the image pads are masked: the vision start/end markers are visual tokens too."
    return None


# ------------------------------------------------------------------------------------------------ completion_labels

def trl_completion_labels(prompt_ids, completion_ids, pad_to) -> list[int]:
    """The labels TRL's vision-language collator gives one prompt/completion row (completion_only_loss=True, the
    row flushed left and right-padded): labels = ids, then -100 where attention_mask or completion_mask is 0."""
    pad = pad_to - len(prompt_ids) - len(completion_ids)
    input_ids = list(prompt_ids) + list(completion_ids) + [0] * pad
    attention_mask = [1] * (len(prompt_ids) + len(completion_ids)) + [0] * pad
    completion_mask = [0] * len(prompt_ids) + [1] * len(completion_ids) + [0] * pad
    return [-100 if not a or not c else i for i, a, c in zip(input_ids, attention_mask, completion_mask)]


@functools.lru_cache(maxsize=None)
def completion_labels_cases() -> list[Case]:
    t = TINY
    prompt = [t["start"], 91] + _image(t, 3) + [278, 88, t["end"]]
    answer = [t["start"], 99, 605, 1204, 33, t["end"]]
    rows = [
        ([t["start"], 91, 278, t["end"]], [t["start"], 301, t["end"]], 7, "no padding: the prompt is -100, the "
         "completion keeps its ids"),
        (prompt, answer, len(prompt) + len(answer) + 3, "a prompt with an image, padded by 3 to the batch's longest"),
        ([t["start"], 91, 278, t["end"]], [t["start"], 91, 278, t["end"]], 10,
         "the completion repeats the prompt's ids: mask by position, not by id"),
        ([7] * 20, [8, 9], 30, "a long prompt, a two-token completion, much padding"),
    ]
    return [Case((p, c, n), trl_completion_labels(p, c, n), f"prompt_ids={p}, completion_ids={c}, pad_to={n}",
                 lesson) for p, c, n, lesson in rows]


def diagnose_completion(case: Case, got) -> str | None:
    prompt, completion, pad_to = case.args
    got = as_list(got)
    padding = [-100] * (pad_to - len(prompt) - len(completion))
    if len(got) != pad_to:
        return f"Return pad_to = {pad_to} labels, one per position of the padded sequence; got {len(got)}."
    if got == list(prompt) + list(completion) + padding:
        return ("The prompt carries loss: that is full-sequence SFT. With completion_only_loss the prompt (query "
                "and image tokens) is -100, so the model learns to answer, not to write questions.")
    if got[:-1] == case.expected[1:] or got[1:] == case.expected[:-1]:
        return "Your labels are shifted by one position: keep each label under its own token; the model shifts."
    if got[:len(prompt) + len(completion)] == case.expected[:len(prompt) + len(completion)]:
        return "The padding at the end must be -100 too."
    return None


# ------------------------------------------------------------------------------------------------ rewards

def _conversation(text: str) -> list[dict]:
    return [{"role": "assistant", "content": text}]


THINK = "<think>Condition 1: Is there a cyan object in the image? Yes, the response is Case 2.</think>"


@functools.lru_cache(maxsize=None)
def format_reward_cases() -> list[Case]:
    from ..tasks.clevr.rewards import format_reward

    texts = [
        (THINK + "\\boxed{Case 2}", "the well-formed completion"),
        (THINK + "\\boxed{Case 2} I hope this helps.", "anything after the box breaks the format"),
        ("\\boxed{Case 2}", "no <think>...</think> before the box"),
        (THINK + "Case 2", "the answer must be in \\boxed{...}"),
        ("  " + THINK + "\n\\boxed{Case 2}\n", "spaces and newlines around the parts are fine"),
        ("<think>first<think>second</think>\\boxed{Case 2}", "a second <think> inside the reasoning"),
        (THINK + "\\boxed{Case {2}}", "no braces inside the box"),
        ("<think>reasoning that never closes \\boxed{Case 2}", "the <think> is never closed"),
        ("Let me see. " + THINK + "\\boxed{Case 2}", "text before <think>"),
        (THINK + "\\boxed{Case 1}\\boxed{Case 2}", "one box, not two"),
    ]
    cases = [Case(([_conversation(text)],), format_reward([_conversation(text)]), f"completions=[{text!r}]", lesson)
             for text, lesson in texts]
    batch = [_conversation(THINK + "\\boxed{Case 0}"), _conversation("\\boxed{Case 0}"),
             _conversation(THINK + " \\boxed{Case 3} ")]
    cases.append(Case((batch,), format_reward(batch), f"completions={[b[0]['content'] for b in batch]!r}",
                      "three completions in one call: one reward each, in order"))
    return cases


@functools.lru_cache(maxsize=None)
def accuracy_reward_cases() -> list[Case]:
    from ..tasks.clevr.rewards import accuracy_reward

    rows = [
        (THINK + "\\boxed{Case 2}", "Case 2", "the right answer"),
        (THINK + "\\boxed{Case 3}", "Case 2", "the boxed answer is Case 3, the gold case is Case 2"),
        ("\\boxed{Case 2}", "Case 2", "accuracy ignores the format: no <think> is fine"),
        ("<think>maybe \\boxed{Case 1}</think>\\boxed{Case 2}", "Case 2", "the LAST box counts"),
        ("<think>\\boxed{Case 2}? no.</think>\\boxed{Case 1}", "Case 2", "the LAST box counts"),
        ("\\boxed{ Case 2 }", "Case 2", "spaces inside the box are stripped"),
        ("\\boxed{Case 12}", "Case 1", "an exact match, not 'contains'"),
        ("The answer is Case 2.", "Case 2", "no box, no reward"),
        ("\\boxed{case 2}", "Case 2", "an exact match: 'case 2' is not 'Case 2'"),
    ]
    cases = [Case(([_conversation(text)],), accuracy_reward([_conversation(text)], case=[gold]),
                  f"completions=[{text!r}], case=[{gold!r}]", lesson, {"case": [gold]}) for text, gold, lesson in rows]
    texts, golds = ["\\boxed{Case 1}", "\\boxed{Case 1}", "\\boxed{Case 0}"], ["Case 1", "Case 2", "Case 0"]
    batch = [_conversation(x) for x in texts]
    cases.append(Case((batch,), accuracy_reward(batch, case=golds), f"completions={texts!r}, case={golds!r}",
                      "three completions, each with its own gold case[i]", {"case": golds}))
    return cases


def diagnose_reward(case: Case, got) -> str | None:
    if isinstance(got, (int, float)):
        return "Return a list with one reward per completion, not a single number."
    got = as_list(got)
    if len(got) != len(case.expected):
        return f"Return one reward per completion: {len(case.expected)} here, got {len(got)}."
    return None


# ------------------------------------------------------------------------------------------------ pooled_advantage

def _population_std_advantages(rewards, G) -> list[float]:
    out = []
    for s in range(0, len(rewards), 2 * G):
        group = rewards[s:s + 2 * G]
        mean = sum(group) / len(group)
        std = math.sqrt(sum((r - mean) ** 2 for r in group) / len(group))
        out += [(r - mean) / (std + 1e-4) for r in group]
    return out


@functools.lru_cache(maxsize=None)
def pooled_advantage_cases() -> list[Case]:
    from ..advantages import poro_advantages

    rows = [
        ([0.0, 0.0, 1.0, 1.0], 2, "one group: two no-policy failures, two policy-aware successes"),
        ([0.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0], 4,
         "the no-policy half failed everywhere: pooled, its failures get a negative advantage"),
        ([1.0, 1.0, 1.0, 1.0], 2, "all rewards equal: all advantages 0 (the 1e-4 keeps it from dividing by 0)"),
        ([0.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0, 1.0], 2, "two prompts: each group of 2G = 4 is normalised alone"),
        ([0.0, 1.0], 1, "G = 1: a group of two"),
        ([0.1, 0.0, 1.0, 1.0, 0.1, 1.0], 3, "weighted rewards (0.1 format + 0.9 accuracy) are not just 0 and 1"),
        ([1.0, 0.1, 0.1, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.1, 0.1, 1.0], 3, "two prompts of 2G = 6"),
    ]
    return [Case((r, G), poro_advantages(r, G).tolist(), f"rewards={r}, G={G}", lesson) for r, G, lesson in rows]


def diagnose_pooled(case: Case, got) -> str | None:
    from ..advantages import group_advantages, per_half_advantages

    rewards, G = case.args
    got = as_list(got)
    if len(got) != len(rewards):
        return f"Return one advantage per reward: {len(rewards)} here, got {len(got)}."
    if close(got, per_half_advantages(rewards, G).tolist(), 1e-3):
        return ("You normalised each half of G on its own. PolicyRollout pools both halves: the mean and std are "
                "taken over all 2G rewards of the group, so the policy-aware successes lift the baseline.")
    if close(got, _population_std_advantages(rewards, G), 1e-3):
        return "Use the sample std (ddof=1: divide by 2G - 1), as TRL does, not the population std (ddof=0)."
    if len(rewards) > 2 * G and close(got, group_advantages(rewards, len(rewards)).tolist(), 1e-3):
        return "You pooled the whole batch: each prompt's 2G consecutive rewards are one group, normalised alone."
    if any(isinstance(g, float) and not math.isfinite(g) for g in got):
        return "A group of equal rewards has std 0: add 1e-4 to the std before dividing."
    return None


# ------------------------------------------------------------------------------------------------ wilson_interval

@functools.lru_cache(maxsize=None)
def wilson_interval_cases() -> list[Case]:
    from ..stats import wilson_interval

    rows = [(12, 24, "half right"), (0, 24, "none right: the interval still has width"),
            (24, 24, "all right"), (3, 10, "a small sample"), (1, 1000, "a rare success"),
            (0, 0, "n = 0: nothing is known, (0.0, 1.0)"), (97, 100, "near 100%")]
    return [Case((k, n), list(wilson_interval(k, n)), f"k={k}, n={n}", lesson) for k, n, lesson in rows]


def diagnose_wilson(case: Case, got) -> str | None:
    k, n = case.args
    got = as_list(got)
    if len(got) != 2:
        return "Return two numbers, (low, high)."
    if any(g > 1.5 for g in got):
        return "Return fractions in [0, 1], not percentages."
    if n == 0:
        return None  # the case's own lesson says it
    p = k / n
    wald = 1.96 * math.sqrt(p * (1 - p) / n)
    if close(got, [p - wald, p + wald], 1e-4) or close(got, [max(0.0, p - wald), min(1.0, p + wald)], 1e-4):
        return ("That is the normal (Wald) interval p +- 1.96 SE: it collapses to a point at 0% or 100%. Wilson "
                "recentres it: centre = (p + z^2/2n) / (1 + z^2/n).")
    return None


# ------------------------------------------------------------------------------------------------ mcnemar_exact

def _paired(only_a: int, only_b: int, both: int, neither: int, seed: int) -> tuple[list[bool], list[bool]]:
    """Paired outcomes with the given table, rows in a shuffled order."""
    rows = [(True, False)] * only_a + [(False, True)] * only_b + [(True, True)] * both + [(False, False)] * neither
    random.Random(seed).shuffle(rows)
    return [a for a, _ in rows], [b for _, b in rows]


def _bits(xs: list[bool]) -> str:
    return "".join("1" if x else "0" for x in xs)


@functools.lru_cache(maxsize=None)
def mcnemar_exact_cases() -> list[Case]:
    from ..stats import mcnemar_exact

    tables = [((0, 6, 3, 1), "B alone right 6 times, A never"), ((2, 9, 10, 3), "a lopsided table"),
              ((1, 1, 4, 2), "one each way: no evidence"), ((0, 0, 5, 5), "no discordant rows: p = 1"),
              ((5, 5, 0, 0), "an even split: 2 x the tail exceeds 1, so p is capped at 1"),
              ((7, 3, 20, 10), "A ahead, B behind"), ((25, 15, 30, 30), "a larger table")]
    cases = []
    for i, (table, lesson) in enumerate(tables):
        a, b = _paired(*table, seed=i)
        cases.append(Case((a, b), mcnemar_exact(a, b),
                          f"a={_bits(a)}, b={_bits(b)} (1 = right; right for A only: {table[0]}, for B only: "
                          f"{table[1]}, both: {table[2]}, neither: {table[3]})", lesson))
    return cases


def diagnose_mcnemar(case: Case, got) -> str | None:
    if not isinstance(got, (int, float)):
        return None
    if got > 1:
        return "Cap p at 1: min(1, 2 * tail)."
    if case.expected < 1 and close(got, case.expected / 2, 1e-6):
        return "That is the one-sided tail: the test is two-sided, so double it (and cap at 1)."
    return None


# ------------------------------------------------------------------------------------------------ the registry

EXERCISES: dict[str, Exercise] = {e.name: e for e in (
    Exercise("walk_policy", "01_policies", walk_policy_cases,
             "Start at policy.root; while the node is a condition id (in policy.conditions), go to condition.yes "
             "if holds(condition, scene) else condition.no; the node you stop at is the case.",
             lambda got, exp: got == exp, diagnose_walk),
    Exercise("vmcpt_labels", "04_vm_cpt", vmcpt_labels_cases,
             "labels[i] = input_ids[i], except -100 where input_ids[i] is in visual_ids or attention_mask[i] is 0.",
             same_ints, diagnose_vmcpt),
    Exercise("completion_labels", "05_sft", completion_labels_cases,
             "[-100] * len(prompt_ids) + completion_ids + [-100] * (pad_to - len(prompt_ids) - len(completion_ids)).",
             same_ints, diagnose_completion),
    Exercise("format_reward", "06_policy_rollout", format_reward_cases,
             "Strip the text; it must start with <think>, hold one </think> with no <think> before it, and after "
             "it (stripped) be exactly \\boxed{...} with no { or } inside.",
             close, diagnose_reward),
    Exercise("accuracy_reward", "06_policy_rollout", accuracy_reward_cases,
             "Find the last \\boxed{...} in the text, strip its content and compare it with case[i] using ==.",
             close, diagnose_reward),
    Exercise("pooled_advantage", "06_policy_rollout", pooled_advantage_cases,
             "For each group of 2G rewards, pool both halves (no-policy and policy-aware) and compute (r - mean) / "
             "(std + 1e-4) with the sample std (ddof=1, divide by 2G - 1).",
             functools.partial(close, tol=1e-3), diagnose_pooled),
    Exercise("wilson_interval", "07_evaluate", wilson_interval_cases,
             "p = k/n; centre = (p + z^2/2n) / (1 + z^2/n); half = z * sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n); "
             "return (max(0, centre - half), min(1, centre + half)); when n is 0, return (0.0, 1.0).",
             close, diagnose_wilson),
    Exercise("mcnemar_exact", "07_evaluate", mcnemar_exact_cases,
             "Count only_a = rows right for A only and only_b = rows right for B only, n = only_a + only_b; p = "
             "min(1, 2 * sum(comb(n, i) for i in range(min(only_a, only_b) + 1)) / 2 ** n), and 1.0 when n = 0.",
             close, diagnose_mcnemar),
)}
