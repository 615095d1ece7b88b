"""Your own policy's datasets: rows of (image, query, optional answer) in a JSONL file and a policy document (a
text file, optional images) in the kit's dataset kinds (`mpi_kit.data.KINDS`; the contract is `tasks/base.py`'s):

    {"image": "images/0001.png", "query": "Which case applies to this image?", "answer": "Case 2"}

- rl (train): every row without an answer and the answered rows not held out, the policy in its own columns: what
  policy distillation (`mpi-kit distill`) trains on; it needs no answers;
- eval (no_policy, in_context): the held-out answered rows, with no policy in the prompt and with it, so a model
  is scored where answers exist (`mpi-kit evaluate`).
Image paths are relative to the JSONL file's folder. Every row is read and every image opened before anything is
written, so a bad row is named (its line) before any model loads.
"""
from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets

from ...data import FEATURES, DataError, _png, assistant, user_prompt, writable_dir
from ...folders import claim, finish_manifest, lock, start_manifest, write_json
from ...progress import library_bars_off

BUILD = "custom-data"  # the manifest's name for what build_custom_datasets writes (`mpi_kit.folders`)
KINDS = ("rl", "eval")  # no CoT data: nothing here has a chain of thought to imitate


@dataclass
class CustomDataConfig:
    """Your rows and your policy, and how many answered rows to hold out for evaluation."""
    out: str = field(default="runs/custom", metadata={"help": "output folder"})
    rows: str = field(default="", metadata={
        "help": "JSONL file, one row per line: {\"image\": path (relative to the file's folder), \"query\": text, "
                "\"answer\": text (optional: rows without one are distilled on, never scored)}"})
    policy: str = field(default="", metadata={"help": "the policy document: a text file"})
    policy_images: tuple[str, ...] = field(default=(), metadata={
        "help": "images the policy shows, in order after its text (paths)"})
    test_fraction: float = field(default=0.2, metadata={"help": "share of the answered rows held out to evaluate"})
    seed: int = field(default=0, metadata={"help": "seed of the held-out split"})
    image_size: tuple[int, ...] = field(default=(0, 0), metadata={
        "help": "(width, height) every image is resized to; 0 0 keeps each image's own size"})

    def check(self) -> None:
        if not self.rows:
            raise DataError("no rows: pass --rows FILE.jsonl, one {\"image\", \"query\", \"answer\"} object per line")
        if not self.policy:
            raise DataError("no policy: pass --policy FILE.txt, the policy document the model is to internalize")
        for what, path in (("rows", self.rows), ("policy", self.policy), *(("policy image", p)
                                                                          for p in self.policy_images)):
            if not Path(path).is_file():
                raise DataError(f"no {what} file at {path}; pass the path of an existing file")
        if not Path(self.policy).read_text(errors="replace").strip():
            raise DataError(f"the policy at {self.policy} is empty; write the policy's text into it")
        if not 0 < self.test_fraction < 1:
            raise DataError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if len(self.image_size) != 2 or (any(self.image_size) and min(self.image_size) < 32):
            raise DataError(f"image_size must be (width, height) of at least 32 px each, or 0 0 to keep the images' "
                            f"own sizes; got {tuple(self.image_size)}")


def _image(path: Path, size, what: str):
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            img = img.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{what}: no image at {path}; image paths are relative to the rows file's folder") from None
    except (UnidentifiedImageError, OSError) as e:
        raise DataError(f"{what}: {path} is not an image PIL can read ({e})") from None
    return img.resize(tuple(size)) if any(size) else img


def read_rows(cfg: CustomDataConfig) -> list[dict]:
    """The JSONL rows, each checked (a query, an image that opens, an answer that is text when given), with their
    images loaded: a DataError names the first bad line."""
    path = Path(cfg.rows)
    rows = []
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        what = f"{path} line {n}"
        try:
            r = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{what} is not JSON ({e.msg}); write one object per line") from None
        if not isinstance(r, dict):
            raise DataError(f"{what} is a JSON {type(r).__name__}, not an object like {{\"image\": ..., "
                            f"\"query\": ..., \"answer\": ...}}")
        query, answer, image = r.get("query"), r.get("answer"), r.get("image")
        if not isinstance(query, str) or not query.strip():
            raise DataError(f"{what} has no query; every row needs \"query\": the question asked about its image")
        if answer is not None and (not isinstance(answer, str) or not answer.strip()):
            raise DataError(f"{what}: \"answer\" must be non-empty text when given (leave it out for a row you "
                            f"have no answer for), got {answer!r}")
        if not isinstance(image, str) or not image.strip():
            raise DataError(f"{what} has no image; every row needs \"image\": a path relative to {path.parent}")
        rows.append({"id": f"row{n}", "query": query.strip(), "answer": answer.strip() if answer else None,
                     "image": _image(path.parent / image, cfg.image_size, what), "path": path.parent / image})
    if not rows:
        raise DataError(f"{path} holds no rows; write one JSON object per line")
    return rows


def _digest(cfg: CustomDataConfig, rows: list[dict]) -> str:
    """What the build depends on, by content: the rows file, every row's image, the policy and its images (an edit
    to any of them is a new build)."""
    h = hashlib.sha256()
    for p in (cfg.rows, *(r["path"] for r in rows), cfg.policy, *cfg.policy_images):
        h.update(Path(p).read_bytes())
    return h.hexdigest()[:16]


def build_custom_datasets(cfg: CustomDataConfig | None = None, progress: bool = False, **kw) -> dict:
    """Build the rl and eval datasets of your rows and policy into `cfg.out`; returns the JSON summary. Every row
    is checked before anything is written. Deterministic: the same files and seed give the same datasets."""
    cfg = cfg or CustomDataConfig(**kw)
    cfg.check()
    rows = read_rows(cfg)
    policy_imgs = [_image(Path(p), cfg.image_size, f"policy image {p}") for p in cfg.policy_images]
    t0 = time.time()
    out = writable_dir(Path(cfg.out))
    config = {**asdict(cfg), "image_size": list(cfg.image_size), "policy_images": list(cfg.policy_images),
              "content": _digest(cfg, rows)}
    config.pop("out")
    entries = ("summary.json", "policy.txt", *KINDS)
    with lock(out, "a data build"):
        if (out / "summary.json").exists():
            saved = json.loads((out / "summary.json").read_text())
            if saved.get("task") == "custom" and saved.get("config") == config:
                return {**saved, "seconds": 0.0, "reused": True}
        claim(out, BUILD)  # only an earlier custom build's own files are replaced; other files are refused
        start_manifest(out, BUILD, entries)
        summary = _build(cfg, rows, policy_imgs, out, config, progress)
        finish_manifest(out, BUILD, entries)
    summary["seconds"] = round(time.time() - t0, 2)
    return summary


def _build(cfg: CustomDataConfig, rows: list[dict], policy_imgs: list, out: Path, config: dict,
           progress: bool) -> dict:
    text = Path(cfg.policy).read_text(errors="replace")
    parts = [{"type": "text", "text": text}] + [{"type": "image", "text": None} for _ in policy_imgs]
    pimgs = [_png(i) for i in policy_imgs]
    answered = [r for r in rows if r["answer"] is not None]
    held = sorted(random.Random(f"custom/{cfg.seed}").sample(range(len(answered)),
                                                             round(len(answered) * cfg.test_fraction)))
    test = [answered[i] for i in held]
    test_ids = {r["id"] for r in test}
    train = [r for r in rows if r["id"] not in test_ids]

    def row(r, policy: bool) -> dict:
        return {"id": r["id"], "policy_name": "custom", "scene_id": r["id"], "depth": 0, "variant": "T",
                "case": r["answer"] or "", "path": [],
                "prompt": user_prompt(r["query"], parts if policy else None),
                "completion": assistant(r["answer"] or ""), "images": pimgs * policy + [_png(r["image"])],
                "policy": parts, "policy_images": pimgs}

    plan = {"rl": {"train": [row(r, False) for r in train]},
            "eval": {"no_policy": [row(r, False) for r in test], "in_context": [row(r, True) for r in test]}}
    (out / "policy.txt").write_text(text)
    summary = {"task": "custom", "config": config, "datasets": {},
               "rows": {"total": len(rows), "answered": len(answered), "train": len(train), "test": len(test)}}
    for kind, splits in plan.items():
        dd = datasets.DatasetDict({k: datasets.Dataset.from_list(v, features=FEATURES) for k, v in splits.items()})
        with library_bars_off():  # no "Saving the dataset" bar per kind: the build shows its own progress
            dd.save_to_disk(str(out / kind))
        summary["datasets"][kind] = {k: len(v) for k, v in dd.items()}
    write_json(out / "summary.json", summary)  # last: the build is whole
    return summary
