"""The `mpi-kit` command line: the same functions the notebooks call, one subcommand per job.

    mpi-kit data --out runs/data --num-policies 10 --num-scenes 2000 --depth 6
    mpi-kit demo --out runs/demo
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path


def _add_dataclass_args(parser: argparse.ArgumentParser, cls) -> None:
    """One --flag per dataclass field, with the field's help text and default."""
    for f in dataclasses.fields(cls):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        help_ = f.metadata.get("help", "") + f" (default: {default})"
        if isinstance(default, tuple):
            parser.add_argument(flag, nargs="+", default=list(default), help=help_,
                                type=int if default and isinstance(default[0], int) else str)
        elif isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default, help=help_)
        else:
            parser.add_argument(flag, default=default, help=help_,
                                type=type(default) if default is not None else str)


def _dataclass_from_args(cls, args: argparse.Namespace):
    kw = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}
    for k, v in kw.items():
        if isinstance(v, list):
            kw[k] = tuple(v)
    return cls(**kw)


def cmd_data(args) -> int:
    from .data import DataConfig, build_datasets

    summary = build_datasets(_dataclass_from_args(DataConfig, args))
    print(json.dumps({k: summary[k] for k in ("policies", "num_scenes", "datasets", "seconds")}, indent=1))
    print(f"wrote {args.out} (summary.json beside the datasets)")
    return 0


def cmd_demo(args) -> int:
    """The kit's main job on the tiny recipe. For now: policies, data and a report."""
    from .data import DataConfig, build_datasets
    from .report import data_report

    out = Path(args.out)
    build_datasets(DataConfig(out=str(out / "data"), num_policies=4, num_scenes=200, depth=4, seed=args.seed))
    path = data_report(out / "data")
    print(f"report: {path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .data import DataConfig

    parser = argparse.ArgumentParser(prog="mpi-kit", description="Multimodal Policy Internalization kit")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("data", help="build ClevrPolicy policies and datasets")
    _add_dataclass_args(p, DataConfig)
    p.set_defaults(func=cmd_data)
    p = sub.add_parser("demo", help="run the main job on the tiny recipe and write a report")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--seed", type=int, default=0, help="seed (default: 0)")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from .data import DataError
    from .policy import PolicyError
    from .scenes import SceneError

    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except (DataError, PolicyError, SceneError, FileNotFoundError) as e:
        print(f"mpi-kit {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
