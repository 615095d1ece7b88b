"""benchmarks/bench_gpu.py at reduced size on the CPU: it runs and reports every figure the issue asks for."""
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_bench_gpu_reduced(tmp_path):
    out = tmp_path / "res.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "BENCH_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    r = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_gpu.py"), "--reduced", "--work",
                        str(tmp_path / "w"), "--json", str(out)], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["mode"] == "reduced" and res["device"] == "cpu"
    d = res["decode"]
    assert d["greedy_tokens_equal"] is True and d["plain_ms"] > 0 and d["ours_ms"] > 0
    assert [m["stage"] for m in res["memory"]] == ["vm_cpt", "sft", "rl_generation", "rl_update"]
    for m in res["memory"]:
        assert m["measured_gib"] > 0 and 0.8 <= m["ratio"] <= 1.2, m
    rl = res["rl_step"]
    assert rl["grpo_step_s"] > 0 and rl["poro_step_s"] > 0 and rl["completions_per_step"] == 2 * rl["G"]
    assert "pred/meas" in r.stdout and "PoRo G+G" in r.stdout
