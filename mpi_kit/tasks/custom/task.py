"""Your own policy as a task: answers are free text, read from the completion's last `\\boxed{...}` (else its last
line after any reasoning) and compared with the gold answer, case and spaces aside. Its methods are the ones that
need no chain-of-thought data: In-Context and Policy Distillation."""
from __future__ import annotations

from pathlib import Path

from ...rewards import after_think, completion_text, last_boxed, one_gold_each
from ...stats import wilson_percent
from ..base import Row, Task


def read_answer(completion) -> str | None:
    """The answer a completion gives: the content of its last `\\boxed{...}`, else its last non-empty line (after
    `</think>` when it reasons first); None when it says nothing."""
    boxed = last_boxed(completion)
    if boxed is not None:
        return boxed or None
    text = completion_text(completion)
    rest = after_think(text)
    lines = [line.strip() for line in (text if rest is None else rest).splitlines() if line.strip()]
    return lines[-1] if lines else None


def same_answer(answer: str | None, gold: str) -> bool:
    return answer is not None and " ".join(answer.split()).casefold() == " ".join(str(gold).split()).casefold()


def custom_format_reward(completions, **kwargs) -> list[float]:
    """1 when a completion gives an answer at all (`read_answer`), else 0."""
    return [float(read_answer(c) is not None) for c in completions]


def custom_accuracy_reward(completions, case=None, **kwargs) -> list[float]:
    """1 when the completion's answer is the gold one (`case`), else 0; rows without an answer score 0."""
    completions, golds = one_gold_each("custom_accuracy_reward", completions, case, "case", "answers")
    return [float(bool(g) and same_answer(read_answer(c), g)) for c, g in zip(completions, golds)]


class CustomPolicyTask(Task):
    name = "custom"
    title = "Your policy"
    methods = ("In-Context", "Policy Distillation")
    gold_column = "case"
    reward_funcs = (custom_format_reward, custom_accuracy_reward)
    data_command = "custom-data"
    data_help = "build datasets from your own policy (a text file) and rows (image, query, optional answer) in JSONL"
    data_files = "summary.json, policy.txt"
    summary_keys = ("rows", "datasets", "seconds")

    def data_settings(self) -> type:
        from .data import CustomDataConfig

        return CustomDataConfig

    def build(self, settings, progress: bool = False) -> dict:
        from .data import build_custom_datasets

        return build_custom_datasets(settings, progress=progress)

    def rows(self, cfg) -> list[Row]:
        return [Row("CUSTOM")]

    def build_data(self, cfg, row: Row, data_dir: Path, recipe) -> None:
        from ...data import DataError

        raise DataError(f"a pipeline cannot make your rows and policy: build them with `mpi-kit custom-data --rows "
                        f"FILE.jsonl --policy FILE.txt --out {data_dir}`, then run the comparison again")

    def completion_budget(self, cfg, data_dir: Path) -> int:
        return cfg.max_new_tokens or 256

    def policy_texts(self, data_dir: Path) -> list[str]:
        return [(Path(data_dir) / "policy.txt").read_text()]

    def parse(self, completion) -> str | None:
        return read_answer(completion)

    def is_correct(self, answer: str | None, gold) -> bool:
        return same_answer(answer, gold)

    def score_rows(self, rows, completions, method: str = "", setting: str = "no_policy") -> list[dict]:
        out = []
        for r, c in zip(rows, completions):
            answer = read_answer(c)
            out.append({"method": method, "setting": setting, "id": r["id"], "gold": r["case"], "parsed": answer,
                        "correct": same_answer(answer, r["case"]), "completion": c})
        return out

    def summarize(self, rows: list[dict]) -> list[dict]:
        """Accuracy (%) per (method, setting), with its n and 95% Wilson interval (%)."""
        groups: dict = {}
        for r in rows:
            groups.setdefault((r["method"], r["setting"]), []).append(r["correct"])
        return [{"method": m, "setting": s, "n": len(ok), "accuracy": round(100 * sum(ok) / len(ok), 2),
                 "interval_95": wilson_percent(sum(map(bool, ok)), len(ok))} for (m, s), ok in groups.items()]

    def evaluate(self, method: str, model, processor, data_dir: Path, cfg) -> dict:
        setting = "in_context" if method == "In-Context" else "no_policy"
        rows = self.evaluate_accuracy(model, processor, data_dir, setting, method, cfg.eval_limit,
                                      self.completion_budget(cfg, data_dir))
        s = self.summarize(rows)[0]
        return {"accuracy": s["accuracy"], "n": s["n"], "interval_95": s["interval_95"],
                "rows": [{"id": r["id"], "correct": bool(r["correct"])} for r in rows]}

    def table(self, results: dict) -> str:
        lines = [f"{'method':<32}{'accuracy (%)':>14}  95% interval   n"]
        for key, r in results["methods"].items():
            lo, hi = r["interval_95"]
            lines.append(f"{r['method']:<32}{r['accuracy']:>14.1f}  [{lo:4.1f}-{hi:4.1f}]  {r['n']}")
        return "\n".join(lines)

    def report(self, out: Path, results: dict) -> Path:
        import html

        from ...report import write_page

        return write_page(Path(out) / "report.html", [f"<h1>mpi-kit: your policy</h1><pre>"
                                                      f"{html.escape(self.table(results))}</pre>"], "Your policy")
