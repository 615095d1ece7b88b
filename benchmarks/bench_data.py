"""Data benchmarks (not a test): scenes rendered per second at 128 px and 480x320, policy sampling, and the
time to build a paper-scale ClevrPolicy-T set (10 policies x 2,000 scenes, N = 6, with gold CoT).

    python benchmarks/bench_data.py [--out /tmp/bench-data] [--image-size 480 320]
"""
import argparse
import shutil
import tempfile
import time

from mpi_kit.tasks.clevr.data import DataConfig, build_datasets
from mpi_kit.tasks.clevr.policy import sample_policy
from mpi_kit.tasks.clevr.scenes import render_scene, sample_scenes


def rate(fn, items) -> float:
    t = time.perf_counter()
    for x in items:
        fn(x)
    return len(items) / (time.perf_counter() - t)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=None, help="where to build the paper-scale set (default: a temp dir)")
    ap.add_argument("--image-size", nargs=2, type=int, default=[480, 320], help="scene image size of that set")
    ap.add_argument("--kinds", nargs="+", default=["qa", "cot"], help="dataset kinds to build")
    args = ap.parse_args()

    scenes = sample_scenes(300, seed=0)
    for size, what in (((192, 128), "128 px high"), ((128, 85), "128 px wide")):
        speed = rate(lambda s: render_scene(s, size), scenes)
        print(f"scenes rendered per second: {speed:7.1f} at {size[0]}x{size[1]} ({what})")
    print(f"scenes rendered per second: {rate(lambda s: render_scene(s, (480, 320)), scenes[:100]):7.1f} at 480x320")
    print(f"N=6 policies sampled per second: {rate(lambda i: sample_policy(6, i), range(20)):.1f}")

    out = args.out or tempfile.mkdtemp(prefix="bench-data-")
    t = time.perf_counter()
    s = build_datasets(DataConfig(out=out, num_policies=10, num_scenes=2000, depth=6, variant="T",
                                  image_size=tuple(args.image_size), kinds=tuple(args.kinds)), progress=False)
    dt = time.perf_counter() - t
    rows = sum(n for kind in s["datasets"].values() for n in kind.values())
    print(f"paper-scale ClevrPolicy-T (10 policies x 2,000 scenes, N=6, kinds {args.kinds}, "
          f"{args.image_size[0]}x{args.image_size[1]}): {dt:.1f} s for {rows} rows (target < 120 s)")
    seen = [c["cases_seen"] for c in s["cases"].values()]
    print(f"outcomes that occur per policy: mean {sum(seen) / len(seen):.1f} (min {min(seen)}, max {max(seen)}); "
          f"paper: 55 at N=6")
    if not args.out:
        shutil.rmtree(out)


if __name__ == "__main__":
    main()
