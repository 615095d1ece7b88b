"""The small recorded RL run shipped in assets/rollouts, which the inspector opens with no model and no GPU: how it
is recorded (`record_demo_run`: data, a short CoT SFT, a few PoRo-GRPO steps) and packed (`pack_run`: the rollout
log, the summaries and the scenes and policies it used, without weights and with no absolute path)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from .folders import StateError, claim, finish_manifest, lock, start_manifest, write_json
from .recipes import ASSETS_DIR
from .rollout_log import find_data_dir, load_rollouts, run_summary

ASSET_RUN = ASSETS_DIR / "rollouts"  # the recorded run shipped with the kit (recipes.ASSETS_DIR: checkout or wheel)
CHECKOUT = ASSET_RUN.parent.parent


def portable(value):
    """`value` (a summary, recursively) with every absolute path made shareable: relative to the checkout or the
    working folder when inside one, else only its last part. A recorded run then names no one's home folder."""
    if isinstance(value, dict):
        return {k: portable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [portable(v) for v in value]
    if not isinstance(value, str) or not Path(value).is_absolute():
        return value
    p = Path(value).resolve()
    for root in (CHECKOUT.resolve(), Path.cwd().resolve()):
        if p.is_relative_to(root):
            return p.relative_to(root).as_posix() or "."
    return p.name


def pack_run(run_dir, dest, data_dir=None, extra: dict | None = None) -> Path:
    """Copy what the inspector needs from a run (rollout log, summary.json, and the data folder's scenes.jsonl,
    summary.json and policies) into `dest`, without model weights or checkpoints: a run to share or ship.
    Absolute paths in the summaries are made relative (`portable`)."""
    run_dir, dest = Path(run_dir), Path(dest)
    src_data = find_data_dir(run_dir, data_dir)
    if dest.exists() and not dest.is_dir():
        raise StateError(f"{dest} is a file; pass a folder for the recorded run")
    if dest.resolve() == run_dir.resolve():
        raise StateError(f"cannot pack {run_dir} into itself; pass another folder to record into")
    with lock(dest, "a recorded run"):
        claim(dest, RECORDED, legacy=_legacy_recording)  # only an earlier recording's own files are replaced
        start_manifest(dest, RECORDED, ENTRIES)
        _pack(run_dir, dest, src_data, extra)
        finish_manifest(dest, RECORDED, ENTRIES)
    return dest


RECORDED = "recorded-run"  # the manifest's name for a packed run (`mpi_kit.folders`)
ENTRIES = ("completions", "data", "summary.json")


def _legacy_recording(dest: Path) -> list[str] | None:
    """A recording packed before manifests existed: its summary.json says how it was recorded."""
    try:
        return list(ENTRIES) if "recorded_with" in json.loads((dest / "summary.json").read_text()) else None
    except (OSError, ValueError, TypeError):
        return None


def _pack(run_dir: Path, dest: Path, src_data, extra: dict | None) -> None:
    shutil.copytree(run_dir / "completions", dest / "completions")
    summary = run_summary(run_dir)
    if src_data is not None:
        used = set(load_rollouts(run_dir)["scene_id"])
        (dest / "data").mkdir(parents=True)
        lines = [l for l in (src_data / "scenes.jsonl").read_text().splitlines()
                 if l.strip() and json.loads(l)["scene_id"] in used]
        (dest / "data" / "scenes.jsonl").write_text("\n".join(lines) + "\n")
        shutil.copytree(src_data / "policies", dest / "data" / "policies")
        if (src_data / "summary.json").exists():
            data_summary = portable(json.loads((src_data / "summary.json").read_text()))
            (dest / "data" / "summary.json").write_text(json.dumps(data_summary, indent=1) + "\n")
        summary["data"] = "data"
    summary.update(extra or {})
    write_json(dest / "summary.json", portable(summary))


# N = 4 and a short, gentle CoT SFT: the model half-knows its policies with none in the prompt and still reads them
# in context, the regime where PolicyRollout rescues groups (a long SFT unlearns reading: dev/LOG.md, 2026-12-02)
DEMO = dict(num_policies=4, num_scenes=40, depth=4, sft_steps=100, sft_learning_rate=1e-4, rl_steps=8, G=4,
            prompts_per_step=2, rl_limit=8, max_completion_length=120, temperature=0.7, seed=0)


def record_demo_run(dest=ASSET_RUN, work="runs/record-rollouts", recipe="tiny", **kw) -> Path:
    """Re-record the shipped rollout log: ClevrPolicy data (N = 4), a short CoT SFT so that completions are well
    formed and rewards vary (sampled at temperature 0.7: the tiny model's CoT falls apart at 1.0), then a few
    PoRo-GRPO steps on `rl_limit` prompts (so the step slider sees each prompt again); packed into `dest` (a few
    hundred KB) with the settings in its summary.json ("recorded_with"). Minutes on 2 CPU cores; a finished SFT in
    `work` is reused. The settings are `DEMO` (overridable here)."""
    from .tasks import get_task
    from .recipes import get_recipe
    from .rl import run_rl
    from .sft import run_sft
    from .training import tiny_or_random

    o = {**DEMO, **kw}
    if Path(dest).exists() and not Path(dest).is_dir():
        raise StateError(f"{dest} is a file; pass a folder for the recorded run")
    claim(dest, RECORDED, legacy=_legacy_recording, remove=False)  # a folder of other files: refused before any work
    work = Path(work)
    rec = get_recipe(recipe, seed=o["seed"]) if isinstance(recipe, str) else recipe
    data = work / "data"
    clevr = get_task("clevr")
    clevr.build(clevr.data_settings()(out=str(data), num_policies=o["num_policies"], num_scenes=o["num_scenes"],
                                      depth=o["depth"], seed=o["seed"], image_size=tuple(rec.render_size),
                                      kinds=("cot", "rl")), progress=False)
    rec = tiny_or_random(rec, data, work / "base")
    sft = run_sft(rec, data, work / "sft_cot", "cot", max_steps=o["sft_steps"],
                  **{"sft_cot.learning_rate": o["sft_learning_rate"]})
    rl = {"grpo.max_completion_length": o["max_completion_length"], "grpo.temperature": o["temperature"],
          "grpo.per_device_train_batch_size": 2 * o["G"] * o["prompts_per_step"]}
    run_rl(rec, data, work / "poro_grpo", "grpo", True, init=str(work / "sft_cot"), max_steps=o["rl_steps"],
           num_generations=o["G"], limit=o["rl_limit"], **rl)
    extra = {"recorded_with": {**o, "model": rec.model, "sft_final_loss": sft["final_loss"],
                               "how": "mpi_kit.inspector.record_demo_run (mpi-kit inspect DIR --record)"}}
    return pack_run(work / "poro_grpo", dest, data, extra)


