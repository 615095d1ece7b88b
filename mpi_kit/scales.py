"""How big each notebook runs: a *tutorial* scale that fits a free Colab T4, the paper's scale, and `tiny`'s.

Every notebook has `SCALE = "tutorial"` next to `RECIPE` and reads its sizes from
`notebook_scale(<notebook>, SCALE, recipe)`: on the tiny recipe (a CPU) that is the notebook's "tiny" entry, a few
steps each, whatever SCALE says; on a GPU recipe, SCALE's. "paper" is the paper's data (10 policies x
2,000 scenes, paper §5.1) and each recipe's full schedule: hours to days on a T4. `estimate_notebook` adds up the
estimated wall time of a notebook's stages and generations (`mpi_kit.timing`): an estimate, not a measurement.
"""
from __future__ import annotations

import copy
import functools

from .tasks import get_task

SCALES = ("tutorial", "paper")
# Unsloth's Colab notebooks train LoRA at 2e-4; the tutorial runs use it for their few dozen steps (the recipes'
# 1e-4 is for full epochs). Effective batch 4 (accumulation 1): a short run takes more, smaller steps.
_SHORT = lambda s: {f"{s}.per_device_train_batch_size": 4, f"{s}.gradient_accumulation_steps": 1,  # noqa: E731
                    f"{s}.learning_rate": 2e-4}
_PAPER_DATA = dict(num_policies=10, num_scenes=2000)

NOTEBOOK_SCALES = {
    "00_quickstart": {
        "tiny": dict(depths=(2,), num_policies=2, num_scenes=20, cpt_steps=2, sft_steps=6, rl_steps=1, eval_limit=4,
                     max_new_tokens=48),
        "tutorial": dict(depths=(2,), num_policies=2, num_scenes=40, cpt_steps=8, sft_steps=12, rl_steps=4,
                         eval_limit=8),
        "paper": dict(depths=(2, 4, 6), **_PAPER_DATA, cpt_steps=None, sft_steps=None, rl_steps=None,
                      eval_limit=None)},
    "03_in_context": {
        "tiny": dict(num_policies=2, num_scenes=20, limit=6, max_new_tokens=None),  # None: each N's CoT budget
        "tutorial": dict(num_policies=2, num_scenes=40, limit=16, max_new_tokens=256),
        "paper": dict(**_PAPER_DATA, limit=None, max_new_tokens=512)},
    "04_vm_cpt": {
        "tiny": dict(num_policies=1, num_scenes=20, depth=2, steps=24,
                     overrides={"vm_cpt.per_device_train_batch_size": 4, "vm_cpt.learning_rate": 5e-4}),
        "tutorial": dict(num_policies=1, num_scenes=20, depth=2, steps=24, overrides=_SHORT("vm_cpt")),
        "paper": dict(**_PAPER_DATA, depth=2, steps=None, overrides={})},
    "05_sft": {
        "tiny": dict(num_policies=2, num_scenes=20, depth=2, steps=24, max_new_tokens=96,
                     overrides={f"{s}.{k}": v for s in ("sft_cot", "sft_direct")
                                for k, v in (("per_device_train_batch_size", 4), ("learning_rate", 1e-3))}),
        "tutorial": dict(num_policies=2, num_scenes=20, depth=2, steps=24, max_new_tokens=96,
                         overrides={**_SHORT("sft_cot"), **_SHORT("sft_direct")}),
        "paper": dict(**_PAPER_DATA, depth=2, steps=None, max_new_tokens=512, overrides={})},
    "06_policy_rollout": {
        # tiny: an N = 2 CoT is ~48 tokens, and the tiny model's CoT falls apart when sampled at temperature 1.0
        "tiny": dict(num_policies=2, num_scenes=40, depth=2, steps=dict(cpt=6, sft=20, rl=3),
                     sft={"sft_cot.per_device_train_batch_size": 4, "sft_cot.learning_rate": 1e-3},
                     rl={"grpo.max_completion_length": 64, "grpo.temperature": 0.7}, eval_limit=16, max_new_tokens=64),
        "tutorial": dict(num_policies=2, num_scenes=40, depth=2, steps=dict(cpt=16, sft=24, rl=6),
                         sft=_SHORT("sft_cot"), rl={"grpo.max_completion_length": 128}, eval_limit=16,
                         max_new_tokens=128),
        "paper": dict(**_PAPER_DATA, depth=4, steps=dict(cpt=None, sft=None, rl=None), sft={}, rl={},
                      eval_limit=None, max_new_tokens=512)},
    "07_evaluate": {
        "tiny": dict(depth=2, num_policies=2, num_scenes=20, sft_steps=6, eval_limit=4, limit=4, max_new_tokens=48,
                     pipeline_max_new_tokens=48, n_perception=8),
        "tutorial": dict(depth=2, num_policies=2, num_scenes=40, sft_steps=24, eval_limit=8, limit=16,
                         max_new_tokens=24 + 24 * 2 + 64, pipeline_max_new_tokens=None, n_perception=16),
        "paper": dict(depth=4, **_PAPER_DATA, sft_steps=None, eval_limit=None, limit=None,
                      max_new_tokens=24 + 24 * 4 + 256, pipeline_max_new_tokens=None, n_perception=200)},
    "09_your_policy": {  # "tiny": the built-in model on a CPU, picked by notebook_scale for the tiny recipe
        "tiny": dict(num_scenes=200, steps=60, limit=40, max_new_tokens=80,
                     overrides={"distill.max_completion_length": 80}),
        "tutorial": dict(num_scenes=200, steps=60, limit=40, max_new_tokens=160,
                         overrides={"distill.learning_rate": 2e-4, "distill.max_completion_length": 160}),
        "paper": dict(num_scenes=2000, steps=None, limit=None, max_new_tokens=512, overrides={})},
    "08_tool_policies": {
        "tiny": dict(num_instances=120, methods=("TriMPI w/ PoRo-GRPO",), steps=dict(cpt=1, sft=4, rl=1), eval_limit=3,
                     overrides={"vm_cpt.per_device_train_batch_size": 1, "sft_cot.per_device_train_batch_size": 4,
                                "sft_cot.learning_rate": 1e-3, "grpo.per_device_train_batch_size": 4,
                                "grpo.num_generations": 2}, forgetting=False),
        "tutorial": dict(num_instances=120, methods=("In-Context", "CoT SFT", "TriMPI w/ PoRo-GRPO"),
                         steps=dict(cpt=8, sft=12, rl=4), eval_limit=16,
                         overrides={"grpo.max_completion_length": 200}, forgetting=True),
        "paper": dict(num_instances=560, methods=("In-Context", "CoT SFT", "CoT SFT + GRPO", "TriMPI w/ PoRo-GRPO"),
                      steps=dict(cpt=None, sft=None, rl=None), eval_limit=None, overrides={}, forgetting=True)},
}
GPU_NOTEBOOKS = tuple(NOTEBOOK_SCALES)


def notebook_scale(notebook: str, scale: str = "tutorial", recipe=None) -> dict:
    """The settings a notebook's GPU branch runs with: `notebook_scale("06_policy_rollout", SCALE)["steps"]`.
    Unknown notebooks or scales raise KeyError naming the known ones."""
    name = notebook.removesuffix(".ipynb")
    if name not in NOTEBOOK_SCALES:
        raise KeyError(f"no GPU scale for notebook {notebook!r}; known: {', '.join(NOTEBOOK_SCALES)}")
    if scale not in SCALES:
        raise KeyError(f"SCALE must be one of {SCALES}, got {scale!r}")
    if recipe is not None and getattr(recipe, "name", recipe) == "tiny" and "tiny" in NOTEBOOK_SCALES[name]:
        scale = "tiny"  # the built-in model on a CPU: its own sizes, whatever SCALE says
    return copy.deepcopy(NOTEBOOK_SCALES[name][scale])


# ------------------------------------------------------------------------------------------------ the estimate

@functools.lru_cache(maxsize=None)
def _sizes(task: str, depth: int | None = None) -> dict:
    """Estimated Qwen tokens (`timing.approx_tokens`) of a task's typical texts (`Task.typical_texts`): its policy,
    query and answer, and the mean of its CoTs (and, for GTAPolicy, of its queries)."""
    from .timing import approx_tokens

    texts = get_task(task).typical_texts(**({} if depth is None else {"depth": depth}))
    mean = lambda xs: sum(map(approx_tokens, xs)) // len(xs)  # noqa: E731
    sizes = {k: approx_tokens(v) for k, v in texts.items() if isinstance(v, str)}
    return {**sizes, "cot": mean(texts["cots"]), **({"query": mean(texts["queries"])} if "queries" in texts else {})}

class _Sum:
    """Accumulates (what, seconds) parts of a notebook's estimate."""

    def __init__(self, recipe, gpu, precision):
        from .memory import TEMPLATE_TOKENS, image_tokens
        from .timing import Cost, card

        self.recipe, self.card, self.cost = recipe, card(gpu), Cost.of(recipe)
        self.precision = precision or recipe.precision
        self.img, self.tmpl = image_tokens(recipe), TEMPLATE_TOKENS
        self.parts: list[tuple[str, float]] = []

    def train(self, what, stage, rows, steps, tokens, overrides=None, **kw):
        """`steps` optimizer steps, or None: the recipe's epochs over `rows` training rows."""
        import math

        from .memory import plan
        from .models import as_recipe
        from .timing import estimate_stage

        r = as_recipe(self.recipe, **(overrides or {}))
        st = getattr(r, stage)
        eff = st.per_device_train_batch_size * st.gradient_accumulation_steps
        mb, acc = st.per_device_train_batch_size, st.gradient_accumulation_steps
        if r.memory_budget_gib:  # the micro-batch the planner would choose (same effective batch)
            ps = {"vm_cpt": "vm_cpt", "sft_cot": "sft", "sft_direct": "sft"}.get(stage, "rl_update")
            sp = plan(r, policy_tokens=max(1, kw.get("policy_tokens", 1)), stages=(ps,),
                      completion_tokens=kw.get("completion_tokens") or (tokens - self.img - self.tmpl)).stages[ps]
            mb, acc = sp.micro_batch, sp.accumulation
        if steps is None:
            per = rows * (st.num_generations if stage in ("grpo", "dapo") else 1)
            steps = math.ceil(math.ceil(per / eff) * st.num_train_epochs)
        e = estimate_stage(r, stage, steps, tokens=tokens, gpu=self.card, precision=self.precision, micro_batch=mb,
                           accumulation=acc, image_tokens=self.img, **kw)
        self.parts.append((f"{what}: {steps} steps", e.seconds))

    def generate(self, what, n, prompt, new, batch_size=8):
        from .timing import generation_seconds, resolve_card_precision

        prec = resolve_card_precision(self.precision, self.card)
        self.parts.append((f"{what}: {n} x {new} new tokens",
                           generation_seconds(self.cost, self.card, prec, n, prompt, new, self.img, batch_size)))


def _rows(num_policies, num_scenes, test_fraction=0.2):
    test = max(1, round(num_scenes * test_fraction))
    return num_policies * (num_scenes - test), num_policies * test  # train rows, held-out questions per setting


def _limit(limit, n):
    return n if limit is None else min(limit, n)


def _pipeline(s: _Sum, depth, num_policies, num_scenes, methods, cpt_steps, sft_steps, rl_steps, eval_limit,
              max_new_tokens=None, perception=True):
    """The stages and evaluations `run_pipeline` runs for these methods at one N (pipeline.py)."""
    t = _sizes("clevr", depth)
    train, test = _rows(num_policies, num_scenes)
    base = s.img + t["query"] + s.tmpl
    new = max_new_tokens or get_task("clevr").cot_budget(depth)
    from .pipeline import DOUBLE_G, method_steps

    done = set()
    rl_new = max(s.recipe.grpo.max_completion_length, new)
    for m in methods:
        for st in method_steps(m):
            if st in done:
                continue
            done.add(st)
            if st == "vm_cpt":
                s.train(f"N={depth} VM-CPT", "vm_cpt", train, cpt_steps, base + t["policy"] + t["cot"],
                        policy_tokens=t["policy"], completion_tokens=t["cot"])
            elif st.endswith("sft"):
                s.train(f"N={depth} {st}", "sft_cot", train, sft_steps, base + t["cot"], completion_tokens=t["cot"])
            else:
                G = s.recipe.grpo.num_generations * (2 if st in DOUBLE_G else 1)  # GRPO-2G: 2G no-policy samples
                s.train(f"N={depth} {st}", "grpo", train, rl_steps, base + rl_new, completion_tokens=rl_new,
                        prompt_tokens=base, policy_tokens=t["policy"], policy_rollout="poro" in st,
                        overrides={"grpo.max_completion_length": rl_new, "grpo.num_generations": G})
        n = _limit(eval_limit, test)
        settings = ["in_context", "override"] + ([] if m == "In-Context" else ["no_policy"])
        for setting in settings:
            s.generate(f"N={depth} {m} eval {setting}", n, base + (t["policy"] if setting != "no_policy" else 0), new)
        if perception:  # evaluate.general_abilities: existence + counting (8 new tokens), captions (80), batch 16
            k = eval_limit or 40
            s.generate(f"N={depth} {m} perception", 2 * k, s.img + 20 + s.tmpl, 8, 16)
            s.generate(f"N={depth} {m} captions", max(1, k // 4), s.img + 20 + s.tmpl, 80, 16)


def estimate_notebook(notebook: str, scale: str = "tutorial", recipe="qwen2.5-vl-3b", gpu: str = "T4",
                      precision: str | None = None) -> list[tuple[str, float]]:
    """(what, estimated seconds) for the GPU work of a notebook at a scale: its training stages and generations
    (model download, loading and data building are not counted). `sum(s for _, s in ...)` is the total."""
    from .models import as_recipe

    name = notebook.removesuffix(".ipynb")
    S = notebook_scale(name, scale)
    s = _Sum(as_recipe(recipe), gpu, precision)
    if name == "00_quickstart":
        from .pipeline import DEMO_METHODS
        for d in S["depths"]:
            _pipeline(s, d, S["num_policies"], S["num_scenes"], DEMO_METHODS, S["cpt_steps"], S["sft_steps"],
                      S["rl_steps"], S["eval_limit"])
    elif name == "03_in_context":
        for d in (2, 4, 6):
            t, (_, test) = _sizes("clevr", d), _rows(S["num_policies"], S["num_scenes"])
            base = s.img + t["query"] + s.tmpl
            n = _limit(S["limit"], test)
            s.generate(f"N={d} in context", n, base + t["policy"], S["max_new_tokens"])
            s.generate(f"N={d} no policy", n, base, S["max_new_tokens"])
    elif name == "04_vm_cpt":
        t, (train, _) = _sizes("clevr", S["depth"]), _rows(S["num_policies"], S["num_scenes"])
        base = s.img + t["query"] + s.tmpl
        s.train("VM-CPT", "vm_cpt", train, S["steps"], base + t["policy"] + t["cot"], S["overrides"],
                policy_tokens=t["policy"], completion_tokens=t["cot"])
        s.generate("recite, before and after", 2 * S["num_policies"], 40, 120, 1)
    elif name == "05_sft":
        t, (train, test) = _sizes("clevr", S["depth"]), _rows(S["num_policies"], S["num_scenes"])
        base = s.img + t["query"] + s.tmpl
        s.train("CoT SFT", "sft_cot", train, S["steps"], base + t["cot"], S["overrides"], completion_tokens=t["cot"])
        s.train("Direct SFT", "sft_direct", train, S["steps"], base + t["answer"], S["overrides"],
                completion_tokens=t["answer"])
        s.generate("accuracy: base, CoT SFT, Direct SFT", 3 * test, base, S["max_new_tokens"])
    elif name == "06_policy_rollout":
        t, (train, test) = _sizes("clevr", S["depth"]), _rows(S["num_policies"], S["num_scenes"])
        base = s.img + t["query"] + s.tmpl
        st, rl = S["steps"], {**S["rl"]}
        new = rl.get("grpo.max_completion_length", s.recipe.grpo.max_completion_length)
        for what, init in (("CoT SFT", ""), ("CoT SFT after VM-CPT", "x")):
            if init:
                s.train("VM-CPT", "vm_cpt", train, st["cpt"], base + t["policy"] + t["cot"],
                        policy_tokens=t["policy"], completion_tokens=t["cot"])
            s.train(what, "sft_cot", train, st["sft"], base + t["cot"], S["sft"], completion_tokens=t["cot"])
            s.train("PoRo-GRPO" if init else "GRPO", "grpo", train, st["rl"], base + new, rl, completion_tokens=new,
                    prompt_tokens=base, policy_tokens=t["policy"], policy_rollout=bool(init))
        s.generate("held-out accuracy, 2 models", 2 * _limit(S["eval_limit"], test), base, S["max_new_tokens"])
    elif name == "07_evaluate":
        d = S["depth"]
        _pipeline(s, d, S["num_policies"], S["num_scenes"], ("In-Context", "CoT SFT"), None, S["sft_steps"], None,
                  S["eval_limit"])
        t, (_, test) = _sizes("clevr", d), _rows(S["num_policies"], S["num_scenes"])
        base = s.img + t["query"] + s.tmpl
        n = _limit(S["limit"], test)
        for setting in ("no_policy", "in_context", "override"):
            s.generate(f"CoT SFT {setting}", n, base + (0 if setting == "no_policy" else t["policy"]),
                       S["max_new_tokens"])
        for who in ("base", "CoT SFT"):
            s.generate(f"forgetting ({who})", 2 * S["n_perception"], s.img + 20 + s.tmpl, 8, 16)
    elif name == "09_your_policy":
        t, (train, test) = _sizes("clevr", 2), _rows(1, S["num_scenes"])
        base = s.img + t["query"] + s.tmpl
        n = _limit(S["limit"], test)
        s.generate("before: in context and no policy", n, base + t["policy"], S["max_new_tokens"])
        s.generate("before: no policy", n, base, S["max_new_tokens"])
        import math

        d = getattr(as_recipe(recipe, **S["overrides"]), "distill")
        steps = S["steps"] or math.ceil(train / d.per_device_train_batch_size * d.num_train_epochs)
        new = min(d.max_completion_length, t["cot"])
        s.generate("distillation: the teacher's answers", steps * d.per_device_train_batch_size, base + t["policy"],
                   new)  # and its forward on them, with the student's forward and backward below
        s.train("distillation: teacher forward, student update", "sft_cot", train, steps, base + t["policy"] + new,
                S["overrides"], completion_tokens=new)
        s.generate("after: no policy and override", 2 * n, base + t["policy"] // 2, S["max_new_tokens"])
    elif name == "08_tool_policies":
        g = _sizes("gta")
        train = round(S["num_instances"] * 0.8)
        test = S["num_instances"] - train
        base = s.img + g["query"] + s.tmpl
        new, st = 200, S["steps"]  # the notebook's generation budget (NEW)
        rl_new = S["overrides"].get("grpo.max_completion_length", s.recipe.grpo.max_completion_length)
        n = _limit(S["eval_limit"], test)
        m = S["methods"]

        def evals(name):  # the pipeline's GTA evaluation: no policy and override, then the policy back in context
            s.generate(name, 2 * n, base, new)
            s.generate(f"{name}, policy in context", n, base + g["policy"], new)

        if "In-Context" in m:
            s.generate("In-Context eval", n, base + g["policy"], new)
        if {"CoT SFT", "CoT SFT + GRPO"} & set(m):
            s.train("CoT SFT", "sft_cot", train, st["sft"], base + g["cot"], completion_tokens=g["cot"])
            evals("CoT SFT eval")
        if "CoT SFT + GRPO" in m:
            s.train("GRPO", "grpo", train, st["rl"], base + rl_new, S["overrides"], completion_tokens=rl_new,
                    prompt_tokens=base)
            evals("GRPO eval")
        if "TriMPI w/ PoRo-GRPO" in m:
            s.train("VM-CPT", "vm_cpt", train, st["cpt"], base + g["policy"] + g["cot"], policy_tokens=g["policy"],
                    completion_tokens=g["cot"])
            s.train("CoT SFT after VM-CPT", "sft_cot", train, st["sft"], base + g["cot"], completion_tokens=g["cot"])
            s.train("PoRo-GRPO", "grpo", train, st["rl"], base + rl_new, S["overrides"], completion_tokens=rl_new,
                    prompt_tokens=base, policy_tokens=g["policy"], policy_rollout=True)
            evals("TriMPI eval")
    return s.parts


def notebook_minutes(scale: str = "tutorial", recipe="qwen2.5-vl-3b", gpu: str = "T4") -> dict[str, float]:
    """Estimated minutes of every GPU notebook at a scale (docs/colab.md's table)."""
    return {nb: round(sum(sec for _, sec in estimate_notebook(nb, scale, recipe, gpu)) / 60, 1)
            for nb in GPU_NOTEBOOKS}


__all__ = ["SCALES", "NOTEBOOK_SCALES", "GPU_NOTEBOOKS", "notebook_scale", "estimate_notebook", "notebook_minutes"]
