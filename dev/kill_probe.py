"""Fault probe: does resuming after SIGKILL at random moments reproduce an uninterrupted run exactly?

Three `mpi-kit` commands, each run as a subprocess on a small random model (tests/conftest.py's SMALL dims):

    rl        GRPO with --policy-rollout from a briefly CoT-SFT'd copy of the small model (so rewards vary and the
              weights move): 60 steps, each one prompt with 2G = 4 rollouts, over 10 training prompts: six epochs, so
              resumes land inside the first epoch and after epoch boundaries. Compared: sha256 of the final
              model.safetensors, the loss list and steps in summary.json (steps == max_steps), and the rollout log
              completions/*.parquet (same files, same rows, timing columns left out).
    data      a ClevrPolicy build; compared: the sha256 of every file (.mpi.lock and .write-test-* left out; the
              manifest .mpi_manifest.json included).
    pipeline  In-Context, CoT SFT and CoT SFT + GRPO at N = 2; compared: results.json's method entries (wall-clock
              keys left out, stage folders named relative to the run) and the sha256 of every stage's weights.

For each command the probe runs it once uninterrupted into folder A, recording its wall time W and the moment its
run-folder lock first appears (imports and argument checks done: real work starts). Then, per trial, into a fresh
folder B: start the same command, SIGKILL its process group at a moment drawn uniformly (seeded) from the work
still ahead (from the lock moment to W; a command that keeps its progress across restarts, rl and pipeline, has
the work done by earlier attempts taken off), restart, repeat K times, then let it finish and compare A with B.
A restart that exits with an error is reported with its message. Names that one folder has and the other lacks
(a stale lock file, a temporary file) are listed as leftovers, beside the comparison.

    OMP_NUM_THREADS=1 .venv/bin/python dev/kill_probe.py --trials 3 --json dev/results/kill_probe_<date>.json

The code probed is a snapshot of the committed HEAD's mpi_kit/ (and tests/conftest.py), put on PYTHONPATH, so
edits others make in the shared working tree during the run cannot change it mid-way; --worktree probes the working
tree as it is instead. The JSON names the commit. Working folders go under /tmp (kept with --keep, or when something
differed); commands run one at a time, each with OMP_NUM_THREADS=1.
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import math
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
VENV_PY = REPO / ".venv" / "bin" / "python"
PYTHON = str(VENV_PY if VENV_PY.exists() else Path(sys.executable))
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
LOCK = ".mpi.lock"
IGNORED_FILES = re.compile(r"^(\.mpi\.lock|\.write-test-.*)$")
TIMING_COLUMN = re.compile(r"time|second|duration|elapsed|_s$")
WALL_CLOCK_KEYS = {"seconds", "seconds_this_run", "seconds_all_runs", "data_seconds", "steps_per_second", "report"}
POLL_S = 0.01


# ------------------------------------------------------------------------------------------------ running

def mpi_kit(*args: str) -> list[str]:
    return [PYTHON, "-m", "mpi_kit", *args]


def start(argv: list[str], log: Path) -> subprocess.Popen:
    """The command in its own process group (so a kill reaches anything it started), output to `log`."""
    with open(log, "w") as f:
        return subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env=ENV, cwd=tempfile.gettempdir(),
                                start_new_session=True)


def tail(log: Path, lines: int = 4) -> str:
    """The last non-empty lines a command printed (progress bars' carriage returns as line ends)."""
    text = log.read_text(errors="replace").replace("\r", "\n")
    return " | ".join([line.strip() for line in text.splitlines() if line.strip()][-lines:])


def run_timed(argv: list[str], lock: Path, log: Path) -> dict:
    """Run to the end; the wall time and when `lock` first appeared (None: never seen)."""
    t0 = time.monotonic()
    proc = start(argv, log)
    locked = None
    while proc.poll() is None:
        if locked is None and lock.exists():
            locked = time.monotonic() - t0
        time.sleep(POLL_S)
    return {"rc": proc.returncode, "wall_s": round(time.monotonic() - t0, 2),
            "lock_s": None if locked is None else round(locked, 2)}


def newest_file(folder: Path) -> str | None:
    """The most recently modified file under `folder` (a hint of what a killed command was writing)."""
    newest, when = None, -math.inf
    for p in folder.rglob("*"):
        try:
            if p.is_file() and p.stat().st_mtime > when:
                newest, when = p, p.stat().st_mtime
        except FileNotFoundError:
            continue
    return None if newest is None else newest.relative_to(folder).as_posix()


def run_with_kill(argv: list[str], kill_at: float | None, out: Path, log: Path) -> dict:
    """Run, and SIGKILL the process group at `kill_at` seconds if it is still running (None: let it finish)."""
    t0 = time.monotonic()
    proc = start(argv, log)
    try:
        proc.wait(timeout=kill_at)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        return {"kill_at_s": round(kill_at, 2), "landed": True, "rc": proc.returncode,
                "writing": newest_file(out)}
    attempt = {"kill_at_s": None if kill_at is None else round(kill_at, 2), "landed": False, "rc": proc.returncode,
               "wall_s": round(time.monotonic() - t0, 2)}
    if proc.returncode != 0:
        attempt["error"] = tail(log)
    return attempt


# ------------------------------------------------------------------------------------------------ comparing

def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def files(folder: Path) -> dict[str, Path]:
    return {p.relative_to(folder).as_posix(): p for p in sorted(folder.rglob("*")) if p.is_file()}


def name_diff(a: Path, b: Path) -> list[str]:
    """Files one folder has and the other lacks (every name, the lock file included)."""
    fa, fb = set(files(a)), set(files(b))
    return [f"only in B: {n}" for n in sorted(fb - fa)] + [f"only in A: {n}" for n in sorted(fa - fb)]


def tree_diff(a: Path, b: Path) -> list[str]:
    """Every file's sha256, lock and write-probe files left out."""
    fa = {k: v for k, v in files(a).items() if not IGNORED_FILES.match(Path(k).name)}
    fb = {k: v for k, v in files(b).items() if not IGNORED_FILES.match(Path(k).name)}
    diffs = [f"only in B: {n}" for n in sorted(set(fb) - set(fa))]
    diffs += [f"only in A: {n}" for n in sorted(set(fa) - set(fb))]
    diffs += [f"sha256 differs: {n}" for n in sorted(set(fa) & set(fb)) if sha256(fa[n]) != sha256(fb[n])]
    return diffs


def plain(x):
    """A parquet cell as plain Python (numpy arrays to lists, NaN to a marker), so == compares content exactly."""
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        x = x.tolist()
    if isinstance(x, (list, tuple)):
        return [plain(v) for v in x]
    if isinstance(x, dict):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, float) and math.isnan(x):
        return "NaN"
    return x


def frame_diff(a: Path, b: Path) -> str | None:
    """What differs between two rollout-log files read with pandas (timing columns left out), or None."""
    import pandas as pd

    da, db = pd.read_parquet(a), pd.read_parquet(b)
    if list(da.columns) != list(db.columns):
        return f"columns {list(da.columns)} in A, {list(db.columns)} in B"
    if len(da) != len(db):
        return f"{len(da)} rows in A, {len(db)} in B"
    cols = [c for c in da.columns if not TIMING_COLUMN.search(c)]
    bad = [c for c in cols if plain(da[c].tolist()) != plain(db[c].tolist())]
    return f"columns {bad} differ" if bad else None


def parquet_diff(a: Path, b: Path) -> list[str]:
    """The rollout logs: the same files, each with the same rows (the first differing file is named)."""
    fa, fb = sorted(p.name for p in a.glob("*.parquet")), sorted(p.name for p in b.glob("*.parquet"))
    if fa != fb:
        return [f"rollout log files: {len(fa)} in A, {len(fb)} in B "
                f"(only in A: {sorted(set(fa) - set(fb))[:3]}, only in B: {sorted(set(fb) - set(fa))[:3]})"]
    diffs = [(name, d) for name in fa if (d := frame_diff(a / name, b / name))]
    if not diffs:
        return []
    return [f"rollout log: {len(diffs)} of {len(fa)} files differ, from {diffs[0][0]} ({diffs[0][1]})"]


def weights_diff(a: Path, b: Path, name: str = "model.safetensors") -> list[str]:
    if not (a / name).exists() or not (b / name).exists():
        return [f"{name} missing in {'A' if not (a / name).exists() else 'B'}"]
    return [] if sha256(a / name) == sha256(b / name) else [f"sha256 differs: {name}"]


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())


def rl_diff(a: Path, b: Path) -> list[str]:
    diffs = weights_diff(a, b)
    sa, sb = read_json(a / "summary.json"), read_json(b / "summary.json")
    for label, s in (("A", sa), ("B", sb)):
        if s["steps"] != s["max_steps"]:
            diffs.append(f"{label}: steps {s['steps']} != max_steps {s['max_steps']}")
    if sa["loss"] != sb["loss"]:
        n = min(len(sa["loss"]), len(sb["loss"]))
        i = next((i for i in range(n) if sa["loss"][i] != sb["loss"][i]), n)
        resumed = Path(sb["resumed_from"]).name if sb.get("resumed_from") else None
        diffs.append(f"loss list differs ({len(sa['loss'])} vs {len(sb['loss'])} entries; from step "
                     f"{sa['loss'][i]['step'] if i < len(sa['loss']) else i + 1}; B last resumed from {resumed})")
    return diffs + parquet_diff(a / "completions", b / "completions")


def data_diff(a: Path, b: Path) -> list[str]:
    return tree_diff(a, b)


def without_wall_clock(entry: dict, root: Path) -> dict:
    """A results.json method entry without its wall-clock keys, stage folders named relative to the run."""
    entry = {k: v for k, v in entry.items() if k not in WALL_CLOCK_KEYS}
    if "train" in entry:
        entry["train"] = {k: v for k, v in entry["train"].items() if k != "seconds"}
    if entry.get("stage_dir"):
        entry["stage_dir"] = Path(entry["stage_dir"]).relative_to(root).as_posix()
    return entry


def pipeline_diff(a: Path, b: Path) -> list[str]:
    ra, rb = read_json(a / "results.json"), read_json(b / "results.json")
    ma, mb = ra["methods"], rb["methods"]
    diffs = [f"method {k!r} only in {'A' if k in ma else 'B'}" for k in sorted(set(ma) ^ set(mb))]
    for key in sorted(set(ma) & set(mb)):
        ea, eb = without_wall_clock(ma[key], a), without_wall_clock(mb[key], b)
        bad = sorted(k for k in set(ea) | set(eb) if ea.get(k) != eb.get(k))
        if bad:
            diffs.append(f"{key}: {bad} differ")
    stages = sorted(p.parent.relative_to(a).as_posix() for p in a.glob("*/*/model.safetensors"))
    for stage in stages:
        diffs += [f"{stage}: {d}" for d in weights_diff(a / stage, b / stage)]
    return diffs


# ------------------------------------------------------------------------------------------------ commands

@dataclass
class Command:
    name: str
    argv: Callable[[Path], list[str]]  # out folder -> argv
    diff: Callable[[Path, Path], list[str]]
    keeps_progress: bool  # a restart continues from what the killed run saved (checkpoints, cached stages)


def commands(small: dict) -> list[Command]:
    rl = ["rl", "--data", small["data"], "--init", small["init"], "--algo", "grpo", "--policy-rollout",
          "--max-steps", "60", "--save-steps", "2", "--num-generations", "2",
          "--set", f"model={small['base']}", "grpo.max_completion_length=64", "grpo.per_device_train_batch_size=4",
          "grpo.learning_rate=0.001"]
    data = ["data", "--num-policies", "4", "--num-scenes", "600", "--depth", "4"]
    pipeline = ["pipeline", "--depths", "2", "--methods", "In-Context", "CoT SFT", "CoT SFT + GRPO",
                "--num-policies", "2", "--num-scenes", "20", "--sft-steps", "40", "--rl-steps", "6",
                "--eval-limit", "8", "--no-forgetting", "--model", small["base"],
                "--set", "sft_cot.learning_rate=0.003"]
    return [Command("rl", lambda out: mpi_kit(*rl, "--out", str(out)), rl_diff, True),
            Command("data", lambda out: mpi_kit(*data, "--out", str(out)), data_diff, False),
            Command("pipeline", lambda out: mpi_kit(*pipeline, "--out", str(out)), pipeline_diff, True)]


def snapshot(dest: Path) -> dict:
    """HEAD's mpi_kit/ and tests/conftest.py in `dest`, first on PYTHONPATH for every command (and this process)."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True).stdout

    commit = git("rev-parse", "HEAD").strip()
    dest.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", commit, "mpi_kit", "tests/conftest.py"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(dest)], input=archive, check=True)
    ENV["PYTHONPATH"] = str(dest)
    sys.path.insert(0, str(dest))
    return {"code": "HEAD snapshot", "commit": commit,
            "worktree_changes_not_probed": git("status", "--porcelain", "--", "mpi_kit").splitlines()}


def load_conftest():
    root = Path(ENV["PYTHONPATH"]) if ENV.get("PYTHONPATH") else REPO
    spec = importlib.util.spec_from_file_location("kill_probe_conftest", root / "tests" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def build_small(root: Path) -> dict:
    """tests/conftest.py's small_rl_setup (rl + vmcpt + cot data, a random SMALL model), plus a short CoT SFT of it
    to start RL from: the random model writes no well-formed answer, so every reward would be 0."""
    import torch

    from mpi_kit.tasks.clevr.data import build_datasets
    from mpi_kit.data import load_kit_data
    from mpi_kit.progress import library_bars_off
    from mpi_kit.tiny import build_tiny, save_tiny

    conftest = load_conftest()
    torch.set_num_threads(1)
    data = root / "data"
    build_datasets(out=str(data), num_policies=2, num_scenes=6, depth=2, kinds=("rl", "vmcpt", "cot"),
                   progress=False)
    texts = conftest.message_text(load_kit_data(data, "vmcpt")["train"]) * 4
    model, processor = build_tiny(texts, dims=conftest.SMALL)
    with library_bars_off():
        base = save_tiny(model, processor, root / "base")
    init = root / "sft"
    sft = mpi_kit("sft", "--data", str(data), "--out", str(init), "--mode", "cot", "--max-steps", "150",
                  "--set", f"model={base}", "sft_cot.learning_rate=0.003")
    done = subprocess.run(sft, env=ENV, cwd=tempfile.gettempdir(), capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"setup: CoT SFT of the small model failed:\n{done.stderr[-2000:]}")
    return {"data": str(data), "base": str(base), "init": str(init)}


# ------------------------------------------------------------------------------------------------ trials

def kill_time(rng: random.Random, skip: float, wall: float, worked: float, keeps_progress: bool) -> float:
    """Uniform over the work still ahead: from the lock moment to the uninterrupted run's end, less the work
    earlier attempts kept (never less than a tenth of the full span)."""
    span = wall - skip
    left = max(span - worked, span / 10) if keeps_progress else span
    return skip + rng.uniform(0, left)


def trial(cmd: Command, a: Path, b: Path, base: dict, rng: random.Random, kills: int) -> dict:
    """Kill B `kills` times (a run that ends before its kill ends the kills), finish it, compare with A."""
    attempts, worked = [], 0.0
    for k in range(kills):
        at = kill_time(rng, base["lock_s"], base["wall_s"], worked, cmd.keeps_progress)
        attempt = run_with_kill(cmd.argv(b), at, b, b.parent / f"{b.name}.attempt{k}.log")
        attempts.append(attempt)
        if not attempt["landed"] and attempt["rc"] == 0:
            break
        if attempt["landed"]:
            worked += at - base["lock_s"]
    if not attempts or attempts[-1]["landed"] or attempts[-1]["rc"] != 0:
        for k in range(2):  # finish; a second try only when the first restart fails
            attempt = run_with_kill(cmd.argv(b), None, b, b.parent / f"{b.name}.finish{k}.log")
            attempts.append(attempt)
            if attempt["rc"] == 0:
                break
    failures = [x["error"] for x in attempts if not x["landed"] and x["rc"] != 0]
    finished = attempts[-1]["rc"] == 0 and not attempts[-1]["landed"]
    diffs = cmd.diff(a, b) if finished else ["did not finish"]
    diffs = [f"restart failed: {e}" for e in failures] + diffs
    return {"kills": sum(x["landed"] for x in attempts), "kills_asked": kills, "attempts": attempts,
            "identical": not diffs, "differences": diffs, "leftovers": name_diff(a, b)}


def probe(cmd: Command, work: Path, trials: int, kills: int, seed: int) -> dict:
    a = work / f"{cmd.name}-A"
    base = run_timed(cmd.argv(a), a / LOCK, work / f"{cmd.name}-A.log")
    result = {"command": ["mpi-kit", *cmd.argv(Path("OUT"))[3:]], "uninterrupted": base, "trials": []}
    if base["rc"] != 0:
        result["error"] = tail(work / f"{cmd.name}-A.log")
        return result
    if base["lock_s"] is None:  # too quick to see: kills are drawn over the whole run
        base["lock_s"] = 0.0
    for t in range(trials):
        rng = random.Random(f"{seed}/{cmd.name}/{t}")
        b = work / f"{cmd.name}-B{t}"
        result["trials"].append({"trial": t, **trial(cmd, a, b, base, rng, kills)})
    return result


# ------------------------------------------------------------------------------------------------ report

def table(results: list[dict]) -> str:
    rows = [("command", "trial", "kills", "identical", "what differed")]
    for r in results:
        if "error" in r:
            rows.append((r["name"], "-", "-", "no", f"uninterrupted run failed: {r['error']}"))
        for t in r["trials"]:
            at = ", ".join(f"{x['kill_at_s']:.1f}" for x in t["attempts"] if x["landed"])
            kills = f"{t['kills']}/{t['kills_asked']}" + (f" (at {at} s)" if at else "")
            rows.append((r["name"], str(t["trial"]), kills, "yes" if t["identical"] else "no",
                         "; ".join(t["differences"]) or "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row[:4], widths)) + "  " + row[4] for row in rows)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trials", type=int, default=3, help="killed-and-resumed runs per command (default: 3)")
    ap.add_argument("--kills", type=int, default=3, help="SIGKILLs per trial before it may finish (default: 3)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill times (default: 0)")
    ap.add_argument("--only", nargs="+", choices=["rl", "data", "pipeline"], help="probe only these commands")
    ap.add_argument("--json", type=Path, help="write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the working folder under /tmp")
    ap.add_argument("--worktree", action="store_true", help="probe the working tree's mpi_kit as it is, not a "
                    "snapshot of HEAD")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    work = Path(tempfile.mkdtemp(prefix="kill_probe-", dir="/tmp"))
    print(f"working folder: {work}", flush=True)
    ENV.pop("PYTHONPATH", None)
    code = {"code": "working tree", "commit": None} if args.worktree else snapshot(work / "src")
    print(f"probing: {code['code']} {code['commit'] or REPO}", flush=True)
    small = build_small(work / "small")
    results = []
    for cmd in commands(small):
        if args.only and cmd.name not in args.only:
            continue
        print(f"{cmd.name}: uninterrupted run, then {args.trials} trial(s) of {args.kills} kill(s)", flush=True)
        results.append({"name": cmd.name, **probe(cmd, work, args.trials, args.kills, args.seed)})
    wall = round(time.monotonic() - t0, 1)
    print(table(results))
    for r in results:
        for t in r["trials"]:
            if t["leftovers"]:
                print(f"leftovers {r['name']} trial {t['trial']}: {'; '.join(t['leftovers'])}")
    identical = all(t["identical"] for r in results for t in r["trials"]) and not any("error" in r for r in results)
    print(f"all identical: {'yes' if identical else 'no'}; wall time {wall} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({
            "probe": "dev/kill_probe.py", "argv": sys.argv[1:], "seed": args.seed, "trials": args.trials,
            "kills_per_trial": args.kills, **code, "omp_num_threads": ENV["OMP_NUM_THREADS"], "wall_s": wall,
            "all_identical": identical, "commands": results}, indent=1) + "\n")
    if args.keep or not identical:
        print(f"kept {work}")
    else:
        shutil.rmtree(work)
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
