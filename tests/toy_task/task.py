"""ColourPolicy: "Is the image red? Yes: Case 1. No: Case 2." over one-colour images, in the kit's five dataset
kinds (`mpi_kit.data.KINDS`, columns `mpi_kit.data.FEATURES`), with its own settings, rewards, scoring and page."""
from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import datasets
from PIL import Image

from mpi_kit.data import FEATURES, KINDS, DataError, _png, assistant, user_prompt, writable_dir
from mpi_kit.folders import write_json
from mpi_kit.report import write_page
from mpi_kit.stats import wilson_percent
from mpi_kit.tasks.base import Row, Task

COLOURS = {"red": (220, 30, 30), "blue": (30, 60, 220), "green": (30, 180, 60)}
POLICY = "Policy: Colours.\nCondition 1: Is the image red? Yes, the response is Case 1. No, the response is Case 2."
OVERRIDE = "Policy: Colours.\nCondition 1: Is the image red? Yes, the response is Case 2. No, the response is Case 1."
QUERY = "According to Policy: Colours, what should be the response for the given image?"


@dataclass
class ColourDataConfig:
    """What to build: `num_images` one-colour images, a share held out."""
    out: str = field(default="runs/colour", metadata={"help": "output folder"})
    num_images: int = field(default=24, metadata={"help": "images (each one colour)"})
    seed: int = field(default=0, metadata={"help": "seed for the colours and the split"})


def _case(colour: str, override: bool = False) -> str:
    return "Case 1" if (colour == "red") != override else "Case 2"


def _cot(colour: str, override: bool = False) -> str:
    yes = "Yes" if colour == "red" else "No"
    return (f"<think>Condition 1: Is the image red? {yes}, the response is {_case(colour, override)}.</think>"
            f"\\boxed{{{_case(colour, override)}}}")


def build(cfg: ColourDataConfig) -> dict:
    if cfg.num_images < 4:
        raise DataError(f"num_images must be >= 4, got {cfg.num_images}")
    out = writable_dir(Path(cfg.out))
    rng = random.Random(cfg.seed)
    colours = [rng.choice(sorted(COLOURS)) for _ in range(cfg.num_images)]
    test = cfg.num_images // 4
    split = {"train": list(enumerate(colours))[test:], "test": list(enumerate(colours))[:test]}
    policy = [{"type": "text", "text": POLICY}]

    def row(i, colour, kind, override=False):
        text = [{"type": "text", "text": OVERRIDE if override else POLICY}]
        image = _png(Image.new("RGB", (32, 32), COLOURS[colour]))
        prompt = user_prompt(QUERY, text if kind in ("vmcpt", "in_context", "override") else None)
        completion = assistant(_cot(colour, override) if kind != "qa" else f"\\boxed{{{_case(colour)}}}")
        return {"id": f"Colours/{i}", "policy_name": "Colours", "scene_id": str(i), "depth": 1, "variant": "T",
                "case": _case(colour, override), "path": ["1"], "prompt": prompt, "completion": completion,
                "images": [image], "policy": text if kind != "qa" else [], "policy_images": []}

    plan = {"qa": {"train": "qa", "test": "qa"}, "cot": {"train": "cot", "test": "cot"},
            "vmcpt": {"train": "vmcpt"}, "rl": {"train": "rl"},
            "eval": {"no_policy": "cot", "in_context": "in_context", "override": "override"}}
    summary = {"task": "colour", "config": {"num_images": cfg.num_images, "seed": cfg.seed}, "datasets": {},
               "policy": policy}
    for kind in KINDS:
        dd = datasets.DatasetDict({
            name: datasets.Dataset.from_list(
                [row(i, c, rk, rk == "override") for i, c in split["train" if name == "train" else "test"]],
                features=FEATURES)
            for name, rk in plan[kind].items()})
        dd.save_to_disk(str(out / kind))
        summary["datasets"][kind] = {k: len(v) for k, v in dd.items()}
    write_json(out / "summary.json", summary)
    return summary


def colour_format_reward(completions, **kw) -> list[float]:
    return [float("\\boxed{" in (c if isinstance(c, str) else c[-1]["content"])) for c in completions]


def colour_accuracy_reward(completions, case=None, **kw) -> list[float]:
    from mpi_kit.rewards import completion_text, one_gold_each

    completions, golds = one_gold_each("colour_accuracy_reward", completions, case, "case", "cases")
    return [float(completion_text(c).rstrip().endswith("\\boxed{" + g + "}")) for c, g in zip(completions, golds)]


class ColourPolicyTask(Task):
    name = "colour"
    title = "ColourPolicy"
    methods = ("In-Context", "CoT SFT", "CoT SFT + GRPO")
    gold_column = "case"
    reward_funcs = (colour_format_reward, colour_accuracy_reward)
    data_command = "colour-data"
    data_help = "build ColourPolicy datasets (a test's third task)"
    summary_keys = ("datasets",)

    def data_settings(self) -> type:
        return ColourDataConfig

    def build(self, settings, progress: bool = False) -> dict:
        return build(settings)

    def rows(self, cfg) -> list[Row]:
        return [Row("COLOUR")]

    def build_data(self, cfg, row: Row, data_dir: Path, recipe) -> None:
        build(ColourDataConfig(out=str(data_dir), seed=cfg.seed))

    def completion_budget(self, cfg, data_dir: Path) -> int:
        return cfg.max_new_tokens or 40

    def policy_texts(self, data_dir: Path) -> list[str]:
        return [POLICY]

    def parse(self, completion) -> str | None:
        from mpi_kit.rewards import completion_text

        text = completion_text(completion)
        return text[text.rfind("\\boxed{") + 7:].rstrip("} \n") if "\\boxed{" in text else None

    def is_correct(self, answer, gold) -> bool:
        return answer == gold

    def score_rows(self, rows, completions, method: str = "", setting: str = "no_policy") -> list[dict]:
        return [{"method": method, "setting": setting, "id": r["id"], "gold": r["case"],
                 "parsed": self.parse(c), "correct": self.parse(c) == r["case"], "completion": c}
                for r, c in zip(rows, completions)]

    def summarize(self, rows: list[dict]) -> list[dict]:
        hits = sum(r["correct"] for r in rows)
        return [{"method": rows[0]["method"], "n": len(rows), "accuracy": round(100 * hits / len(rows), 2),
                 "interval_95": wilson_percent(hits, len(rows))}]

    def evaluate(self, method: str, model, processor, data_dir: Path, cfg) -> dict:
        setting = "in_context" if method == "In-Context" else "no_policy"
        rows = self.evaluate_accuracy(model, processor, data_dir, setting, method, cfg.eval_limit,
                                      self.completion_budget(cfg, data_dir))
        s = self.summarize(rows)[0]
        return {"accuracy": s["accuracy"], "n": s["n"], "interval_95": s["interval_95"],
                "rows": [{"id": r["id"], "correct": bool(r["correct"])} for r in rows]}

    def table(self, results: dict) -> str:
        return "\n".join(f"{k:<30}{r['accuracy']:6.1f}" for k, r in results["methods"].items())

    def report(self, out: Path, results: dict) -> Path:
        return write_page(Path(out) / "report.html", [f"<pre>{self.table(results)}</pre>"], "ColourPolicy")
