"""ClevrPolicy's evaluations, as tidy rows (one dict per measurement) that notebooks and the CLI share:

- scoring: each completion's boxed case against the gold one, the condition IDs it cites, and where a wrong chain
  of thought first broke (`score_rows`, `summarize`, `error_parts`); `accuracy`, a quick check on any rows;
- branching error: how far the condition IDs a model's reasoning cites are from the gold paths' (paper §5.6);
- Policy Referral: a judge scores how accurately the reasoning cites the policy, 0-10 (paper used an LLM judge;
  `RuleJudge` checks each cited condition against the policy deterministically);
- general abilities (`general_abilities`: perception, and following a policy in context at each N with per-step
  CoT accuracy; the tiny model's card) and forgetting: those abilities before and after internalization.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Protocol

from ...generation import answer, generate_completions
from ...rewards import completion_text
from ...stats import wilson_interval, wilson_percent
from .policy import Policy
from .rewards import parse_answer

_CITED = re.compile(r"Condition (\d+(?:\.\d+)*)")


_STEP = re.compile(r"Condition (\d+(?:\.\d+)*): (.*?\?) (Yes|No), (?:go to Condition (\d+(?:\.\d+)*)|the response is "
                   r"(Case \d+))\.")


def score_rows(rows, completions: list[str], method: str = "", setting: str = "no_policy") -> list[dict]:
    """One tidy row per example: gold, parsed answer, correct, cited condition IDs, and where a wrong chain of
    thought first broke against the gold one (`abilities.breaks_at`; None when right)."""
    from .abilities import breaks_at

    out = []
    for r, c in zip(rows, completions):
        parsed = parse_answer(c)
        ok = parsed == r["case"]
        gold_cot = completion_text(r["completion"]) if "completion" in r else ""
        out.append({"method": method, "setting": setting, "id": r.get("id"), "depth": r["depth"],
                    "variant": r["variant"],
                    "policy": r["policy_name"], "scene_id": r["scene_id"], "gold": r["case"],
                    "gold_path": list(r["path"]), "parsed": parsed, "correct": ok,
                    "breaks_at": None if ok or not gold_cot else breaks_at(c, gold_cot) or "other",
                    "cited": cited_conditions(c), "completion": c})
    return out


ERROR_PARTS = ("question", "yes_no", "go_to", "case", "other")


def error_parts(rows: list[dict]) -> dict[str, int]:
    """How many wrong answers broke first at each part of the chain (ERROR_PARTS), over `rows` from `score_rows`:
    'question' means the policy was not recalled, 'yes_no' that the scene was misread, 'go_to' / 'case' that the
    tree's structure was not recalled; zero parts left out."""
    counts = {p: sum(r.get("breaks_at") == p for r in rows if not r["correct"]) for p in ERROR_PARTS}
    return {p: k for p, k in counts.items() if k}


def summarize(rows: list[dict]) -> list[dict]:
    """Accuracy (%) per (method, setting, depth, variant), with its n and 95% Wilson interval (%)."""
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["method"], r["setting"], r["depth"], r["variant"]), []).append(r["correct"])
    return [{"method": m, "setting": s, "depth": d, "variant": v, "n": len(ok),
             "accuracy": round(100 * sum(ok) / len(ok), 2),
             "interval_95": wilson_percent(sum(map(bool, ok)), len(ok))}
            for (m, s, d, v), ok in groups.items()]


def accuracy(model, processor, rows, max_new_tokens: int = 128) -> dict:
    """Exact-match accuracy of the boxed answer (paper Eq. 4) on any ClevrPolicy rows (notebook 05: the cot test
    split), as a fraction with n and its 95% Wilson interval, the completions, and the majority-case share (what
    always answering the commonest case would score)."""
    texts = answer(model, processor, rows, max_new_tokens)
    gold = [rows[i]["case"] for i in range(len(rows))]
    hits = [r["correct"] for r in score_rows(rows, texts)]  # scored as every ClevrPolicy evaluation scores
    majority = Counter(gold).most_common(1)[0][1] / max(len(gold), 1)
    return {"accuracy": sum(hits) / max(len(hits), 1), "n": len(hits),
            "interval_95": wilson_interval(sum(hits), len(hits)), "majority": majority, "completions": texts}


def cited_conditions(text: str) -> list[str]:
    """Condition IDs a reasoning cites, in order, each section counted once per visit ("Condition 1.2: ...")."""
    return [m.group(1) for m in re.finditer(r"Condition (\d+(?:\.\d+)*):", text or "")]


def citation_distribution(paths: list[list[str]]) -> dict[str, float]:
    """Share (%) of all citations that go to each condition ID."""
    counts = Counter(c for p in paths for c in p)
    total = sum(counts.values())
    return {k: 100 * v / total for k, v in counts.items()} if total else {}


def branching_error(rows: list[dict]) -> float:
    """Distance between the distribution of condition IDs the model cites and the gold CoTs' (paper §5.6):
    the total variation distance in percent, 0 (same branching) to 100 (disjoint). Our definition: the paper's
    "average absolute difference" does not give its normalisation, so numbers compare by ordering, not value."""
    model = citation_distribution([r["cited"] for r in rows])
    gold = citation_distribution([r["gold_path"] for r in rows])
    if not model or not gold:  # no citations at all on one side: nothing in common
        return 0.0 if model == gold else 100.0
    keys = set(model) | set(gold)
    return round(sum(abs(model.get(k, 0.0) - gold.get(k, 0.0)) for k in keys) / 2, 2)


class ReferralJudge(Protocol):
    """Scores how accurately a response cites a policy, 0-10 (paper: Claude-4 with the Fig. 9 prompt). Plug in a
    model judge by implementing `__call__(policy, response) -> float`."""

    def __call__(self, policy: Policy, response: str) -> float: ...


class RuleJudge:
    """A deterministic judge: every step "Condition X: <question>? Yes/No, go to ..." is checked against the
    policy (X exists, the question is X's, the next section is the one X names for that answer). Score = 10 x the
    share of correct steps; 0 for a response that cites nothing."""

    def __call__(self, policy: Policy, response: str) -> float:
        steps = _STEP.findall(response or "")
        cited = cited_conditions(response)
        if not cited:
            return 0.0
        images = policy.image_index()
        good = 0
        for cid, question, yes, nxt, case in steps:
            c = policy.conditions.get(cid)
            if c is None:
                continue
            q = policy.question(cid, images)
            target = c.yes if yes == "Yes" else c.no
            if question.split(" (that is")[0].rstrip("?") == q.rstrip("?") and (nxt or case) == target:
                good += 1
        return round(10 * good / max(len(cited), len(steps)), 2)


def referral_scores(rows: list[dict], policies: dict[str, Policy], judge: ReferralJudge | None = None) -> float:
    """Mean referral score over rows (the paper averages 100 responses)."""
    judge = judge or RuleJudge()
    scores = [judge(policies[r["policy"]], r["completion"]) for r in rows]
    return round(sum(scores) / len(scores), 2) if scores else 0.0


def general_abilities(model, processor, n_perception: int = 400, n_policy: int = 200, depths=(2, 4, 6),
                      progress: bool = True) -> dict:
    """Held-out accuracy: existence, counting (exact), captions (exact), in-context policy following at each N,
    each with its n and 95% Wilson interval; and per-step CoT accuracy at each N (`cot_steps`).

    Scenes and policies come from the `eval/` keys, which training never uses. Threads are the caller's."""
    from tqdm.auto import tqdm

    from .abilities import STEP_PARTS, cot_steps, majority_share, make_example

    res: dict = {"n": {}, "interval_95": {}}
    tokens, seconds = 0, 0.0
    jobs = [(t, None, n_perception, 8) for t in ("exist", "count")]
    jobs += [("describe", None, max(1, n_perception // 4), 80)]
    jobs += [("policy", d, n_policy, 48 + 32 * d) for d in depths]
    for task, depth, n, max_new in tqdm(jobs, desc="evaluate", disable=not progress):
        ex = [make_example(task, f"eval/{i}", depth) for i in range(n)]
        st: dict = {}
        outs = generate_completions(model, processor, ex, max_new, batch_size=16 if depth is None else 8, stats=st)
        nt, s = st.get("tokens", 0), st.get("seconds", 0.0)
        tokens, seconds = tokens + nt, seconds + s
        if task == "policy":
            key = f"in_context_N{depth}"
            ok = [parse_answer(o) == e["answer"] for o, e in zip(outs, ex)]  # as the RL reward parses
            steps = {k: [0, 0] for k in STEP_PARTS}
            for o, e in zip(outs, ex):
                for k, (right, reached) in cot_steps(o, e["completion"][0]["content"][0]["text"]).items():
                    steps[k][0] += right
                    steps[k][1] += reached
            res.setdefault("cot_steps", {})[f"N{depth}"] = steps
            res[f"{key}_majority"] = majority_share(ex)
        else:
            key = task
            ok = [o.strip() == e["answer"] for o, e in zip(outs, ex)]
            res[f"{task}_majority"] = majority_share(ex)
        res[key] = sum(ok) / n
        res["n"][key] = n
        res["interval_95"][key] = [round(x, 4) for x in wilson_interval(sum(ok), n)]
    res["perception"] = (res["exist"] + res["count"]) / 2
    res["generation_tokens_per_s"] = tokens / seconds
    return res


def forgetting(before, after, n_perception: int = 40) -> list[dict]:
    """General abilities of `before` and `after` (each a (model, processor) pair), one row per task: existence
    and counting questions on fresh held-out scenes (the tiny model's pretraining tasks, never in the policy
    data) and their mean, `perception`, in %. `change` < 0 is forgetting."""

    res = [general_abilities(m, p, n_perception=n_perception, n_policy=0, depths=(), progress=False)
           for m, p in (before, after)]
    return [{"task": t, "n": n_perception, "before": round(100 * b[t], 2), "after": round(100 * a[t], 2),
             "change": round(100 * (a[t] - b[t]), 2),
             "majority": round(100 * b[f"{t}_majority"], 2) if f"{t}_majority" in b else None}
            for t in ("exist", "count", "perception") for b, a in [res]]


def perception(model, processor, n: int = 40) -> tuple[float, int, list[float]]:
    """A trained model's base abilities on n existence + n counting questions: accuracy (%), its n (2n) and its
    95% interval; what the pipeline records as "perception" for every method (forgetting, paper §5.5)."""

    g = general_abilities(model, processor, n_perception=n, n_policy=0, depths=(), progress=False)
    return round(100 * g["perception"], 2), 2 * n, wilson_percent(round(g["perception"] * 2 * n), 2 * n)
