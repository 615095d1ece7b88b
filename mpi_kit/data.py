"""The kit's datasets: the folders every task writes and every stage reads, saved as Hugging Face `datasets`.

The contract (the task base, `mpi_kit.tasks.base`, says what it means): five kinds (`KINDS`) in TRL's
conversational prompt/completion format with an `images` column, so the same rows feed SFTTrainer, GRPOTrainer
and the evaluations; the columns of `FEATURES`; chat messages built by `user_prompt`, `with_policy`, `assistant`.
Loading back (`load_kit_data`), picking rows (`spread`) and checking them (`require_columns`) are here too.
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import datasets

KINDS = ("qa", "cot", "vmcpt", "rl", "eval")


COT_KINDS = ("cot", "vmcpt")  # the datasets whose training rows are the CoT subset


_PART = {"type": datasets.Value("string"), "text": datasets.Value("string")}


_MESSAGES = datasets.List({"role": datasets.Value("string"), "content": datasets.List(_PART)})


FEATURES = datasets.Features({
    "id": datasets.Value("string"),
    "policy_name": datasets.Value("string"),
    "scene_id": datasets.Value("string"),
    "depth": datasets.Value("int32"),
    "variant": datasets.Value("string"),
    "case": datasets.Value("string"),
    "path": datasets.List(datasets.Value("string")),
    "prompt": _MESSAGES,
    "completion": _MESSAGES,
    "images": datasets.List(datasets.Image()),
    "policy": datasets.List(_PART),              # the policy document as content parts (rl, vmcpt, eval)
    "policy_images": datasets.List(datasets.Image()),
})


class DataError(ValueError):
    """Bad data-building arguments or a dataset that lacks what a stage needs."""


def policy_parts(policy) -> tuple[list[dict], list]:
    """The policy document (any task's policy: its `render()` gives text and images) as chat content parts plus
    its images (in order)."""
    parts, images = [], []
    for p in policy.render():
        if isinstance(p, str):
            parts.append({"type": "text", "text": p})
        else:
            parts.append({"type": "image", "text": None})
            images.append(p)
    return parts, images


def user_prompt(query: str, policy: list[dict] | None = None, intro: str | None = None,
                n_images: int = 1) -> list[dict]:
    """A one-turn conversational prompt: [intro] [policy parts] scene image(s), query."""
    content = ([{"type": "text", "text": intro}] if intro else []) + list(policy or [])
    if policy:
        content.append({"type": "text", "text": "\n"})
    content += [{"type": "image", "text": None} for _ in range(n_images)] + [{"type": "text", "text": query}]
    return [{"role": "user", "content": content}]


def with_policy(prompt: list[dict], policy: list[dict], policy_images: list | None = None) -> list[dict]:
    """(Q, I) -> (P, Q, I): the policy parts in front of a no-policy prompt's user content. Dataset rows keep their
    images in a column (policy_images None); a prompt TRL has prepared carries them in its parts, so PolicyRollout
    passes the row's `policy_images` and each image part of the policy gets its image."""
    first = prompt[0]
    content = first["content"] if isinstance(first["content"], list) else [{"type": "text", "text": first["content"]}]
    if policy_images is not None:
        images = iter(policy_images)
        policy = [{"type": "image", "image": next(images)} if p.get("type") == "image"
                  else {"type": "text", "text": p.get("text") or ""} for p in policy]
    return [{**first, "content": list(policy) + [{"type": "text", "text": "\n"}] + list(content)}] + list(prompt[1:])


def message_text(messages: list[dict]) -> str:
    """The text parts of chat messages, joined (image parts left out)."""
    return "".join(p.get("text") or "" for m in messages for p in m["content"] if p.get("type") == "text")


def assistant(text: str) -> list[dict]:
    return [{"role": "assistant", "content": [{"type": "text", "text": text}]}]


def _png(img) -> dict:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return {"bytes": buf.getvalue(), "path": None}


def writable_dir(out: Path, error: type[Exception] = DataError, hint: str = "pass a folder") -> Path:
    """Create `out` if needed and check it can be written, before any work: `error` says what is wrong. The probe
    file is the process's own, so the ranks of a DDP run can check one folder at once."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise error(f"--out {out} is a file; {hint}")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".write-test-{os.getpid()}"
        probe.write_text("")
        probe.unlink()
    except OSError as e:
        raise error(f"cannot write to --out {out} ({e.strerror or e}); pass a folder you can write to") from None
    return out


def load_kit_data(out: str | Path, kind: str) -> datasets.DatasetDict:
    """Reload one dataset kind written by build_datasets."""
    if kind not in KINDS:
        raise DataError(f"unknown dataset kind {kind!r}; choose from {', '.join(KINDS)}")
    path = Path(out) / kind
    if not path.exists():
        raise DataError(f"no {kind} dataset at {path}; build it with `mpi-kit data --out {out} --kinds {kind}`")
    try:
        dd = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise DataError(f"{path} is not a saved dataset ({e}); rebuild it with `mpi-kit data --out {out}`") from None
    if not isinstance(dd, datasets.DatasetDict):
        raise DataError(f"{path} holds one split, not the kit's splits (train/test/...); save a DatasetDict")
    return KitData(dd, path)


class KitData(datasets.DatasetDict):
    """A DatasetDict whose missing split is a DataError naming the splits it has."""

    def __init__(self, dd, path=None):
        super().__init__(dd)
        self._path = path

    def __getitem__(self, split):
        if isinstance(split, str) and split not in self:
            raise DataError(f"{self._path or 'the dataset'} has no {split!r} split (it has "
                            f"{', '.join(self) or 'none'}); rebuild it with `mpi-kit data`")
        return super().__getitem__(split)


def spread(ds, limit: int | None):
    """`limit` rows of `ds` (all of it when limit is None or larger) covering every policy and as many distinct
    scenes as it can. Eval splits hold every test scene once per policy, so evenly spaced rows would show each scene
    to several policies; here policy i takes scene i, i + P, ... first, so errors on one scene count once."""
    if limit is None or limit >= len(ds):
        return ds
    if not {"policy_name", "scene_id"} <= set(ds.column_names):
        return ds.select(sorted({i * len(ds) // limit for i in range(limit)}))
    where = {(p, s): i for i, (p, s) in enumerate(zip(ds["policy_name"], ds["scene_id"]))}
    policies = list(dict.fromkeys(ds["policy_name"]))
    scenes = list(dict.fromkeys(ds["scene_id"]))
    chosen: list[int] = []
    for turn in range(len(policies)):  # turn t: the k-th scene goes to policy (k + t) mod P
        rows = [where[key] for k, s in enumerate(scenes)
                if (key := (policies[(k + turn) % len(policies)], s)) in where]
        room = limit - len(chosen)
        if room <= 0:
            break
        chosen += rows if room >= len(rows) else [rows[i * len(rows) // room] for i in range(room)]
    if len(chosen) < limit:  # rows outside the policy x scene grid (a custom dataset): fill evenly
        rest = sorted(set(range(len(ds))) - set(chosen))
        chosen += [rest[i * len(rest) // (limit - len(chosen))] for i in range(limit - len(chosen))]
    return ds.select(sorted(chosen))


def require_columns(ds: datasets.Dataset, columns: list[str], stage: str) -> None:
    """Fail early, naming the missing columns and what the stage needs them for."""
    missing = [c for c in columns if c not in ds.column_names]
    if missing:
        raise DataError(f"{stage}: dataset lacks column(s) {missing}; it has {ds.column_names}. "
                        f"Build it with `mpi-kit data` or rename your columns.")
    if len(ds) == 0:
        raise DataError(f"{stage}: the dataset is empty; build more scenes or check your filters")
    bad = _missing_image(ds) if "images" in columns else None
    if bad is not None:
        raise DataError(f"{stage}: row {bad} has a missing image (None) in its `images` column; every "
                        f"row needs its images (rebuild the data, or drop that row)")


def _missing_image(ds) -> int | None:
    """The first row whose `images` list is null or holds a null, read from Arrow (no image is decoded)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    col = ds.with_format("arrow")[:]["images"] if len(ds) else None
    if col is None or not pa.types.is_list(col.type):
        return None
    flat_null = pc.is_null(pc.list_flatten(col))
    if not col.null_count and not pc.any(flat_null).as_py():
        return None
    parents = pc.list_parent_indices(col).to_pylist()
    bad = [parents[k] for k, n in enumerate(flat_null.to_pylist()) if n]
    rows = [i for i, v in enumerate(pc.is_null(col).to_pylist()) if v]
    return min(bad + rows)


__all__ = ["KINDS", "COT_KINDS", "FEATURES", "DataError", "policy_parts", "user_prompt", "with_policy", "assistant",
           "message_text",
           "writable_dir", "load_kit_data", "spread", "require_columns"]
