"""ClevrPolicy datasets: K policies x M scenes, split by scene, in the kit's five kinds (`mpi_kit.data.KINDS`):
  qa     non-CoT QA: query names the policy, answer `\\boxed{Case k}`        (Direct SFT, RL)
  cot    CoT: `<think>...</think>\\boxed{Case k}`, no policy in the prompt  (CoT SFT)
  vmcpt  policy (text + policy images) + scene image + query + CoT         (VM-CPT)
  rl     no-policy prompt, with the policy in a separate column            (GRPO / PolicyRollout)
  eval   held-out scenes: no_policy, in_context and override splits        (evaluation)
qa and rl hold every training pair; cot and vmcpt hold the CoT subset (`cot_share` of the pairs, with a gold CoT
from the tree path or a forward CoT the base model wrote; `PAPER_REGIME` is the paper's choice).
"""
from __future__ import annotations

import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import datasets
from tqdm.auto import tqdm

from ...data import (COT_KINDS, FEATURES, KINDS, DataError, _png, assistant, policy_parts, user_prompt,
                     writable_dir)
from ...folders import MANIFEST, claim, finish_manifest, lock, read_json, start_manifest, write_json
from ...progress import library_bars_off
from .policy import Policy, override_policy, sample_policies
from .scenes import Scene, load_clevr_scenes, sample_scenes, scene_image

COT_SOURCES = ("gold", "forward")


# The paper's ClevrPolicy-T data (App. D.1, Table 7): about 1 CoT in 8 training pairs, written by the base model
# with the policy in context and kept when right. DataConfig's defaults keep every pair with a gold CoT; the
# pipeline and the demo opt in with DataConfig(**PAPER_REGIME, ...).
PAPER_REGIME = {"cot_share": 0.125, "cot_source": "forward"}


BUILD = "clevr-data"  # the manifest's name for what build_datasets writes (`mpi_kit.folders`)


MAX_SCENES = 100_000  # a bound with a message: rows are built in memory (the paper uses 2,000 scenes)


QUERY = "According to Policy: {name}, what should be the response for the given image?"


OVERRIDE_INTRO = "Suppose we have an updated Policy: {name} as follows:\n"


OVERRIDE_QUERY = "According to the updated Policy: {name}, what should be the response for the given image?"


def query_text(policy_name: str) -> str:
    return QUERY.format(name=policy_name)


def answer_text(case: str) -> str:
    return "\\boxed{" + case + "}"


@dataclass
class DataConfig:
    """What to build. Defaults are a small tiny-recipe set; the paper uses 10 policies x 2,000 scenes."""
    out: str = field(default="runs/data", metadata={"help": "output folder"})
    num_policies: int = field(default=4, metadata={"help": "K policies (paper: 10)"})
    num_scenes: int = field(default=200, metadata={"help": "M scenes shared by all policies (paper: 2,000)"})
    depth: int = field(default=4, metadata={"help": "tree depth N (2, 4 or 6)"})
    variant: str = field(default="T", metadata={"help": "T (text policy) or M (some values as policy images)"})
    test_fraction: float = field(default=0.2, metadata={"help": "share of scenes held out for evaluation"})
    seed: int = field(default=0, metadata={"help": "one seed for policies, scenes, split and overrides"})
    image_size: tuple[int, int] = field(default=(96, 64), metadata={"help": "scene image (width, height)"})
    kinds: tuple[str, ...] = field(default=KINDS, metadata={"help": "which datasets to build"})
    clevr_root: str | None = field(default=None, metadata={"help": "real CLEVR_v1.0 folder (else render)"})
    clevr_split: str = field(default="val", metadata={"help": "CLEVR split to read scenes from"})
    policy_prefix: str = field(default="", metadata={"help": "seed family for policies (pretraining uses 'base')"})
    policy_files: tuple[str, ...] = field(default=(), metadata={
        "help": "your own policies: JSON files in Policy.to_json's format (notebook 09 writes one), used instead of "
                "num_policies sampled ones; each keeps its own depth"})
    cot_share: float = field(default=1.0, metadata={
        "help": "share of each policy's training scenes that get a CoT for CoT SFT and VM-CPT (a seeded choice; "
                "qa and rl keep every pair); the paper: 0.125 (data.PAPER_REGIME)"})
    cot_source: str = field(default="gold", metadata={
        "help": "'gold' (CoT written from the tree path) or 'forward' (the base model answers with the policy in "
                "context, right answers kept: the paper's, data.PAPER_REGIME)"})
    cot_model: str = field(default="tiny", metadata={
        "help": "forward: the base model that writes the CoTs (recipe name, hub id or folder); a generator "
                "passed to build_datasets replaces it, and this names it in the summary"})

    def check(self) -> None:
        if self.num_policies < 1:
            raise DataError(f"num_policies must be >= 1, got {self.num_policies}")
        if self.num_scenes < 2:
            raise DataError(f"num_scenes must be >= 2 (train and test), got {self.num_scenes}")
        if self.num_scenes > MAX_SCENES:
            raise DataError(f"num_scenes must be at most {MAX_SCENES:,} (every row is built in memory; the paper uses "
                            f"2,000), got {self.num_scenes:,}; build several folders with different --seed instead")
        if not 0 < self.test_fraction < 1:
            raise DataError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        unknown = set(self.kinds) - set(KINDS)
        if unknown:
            raise DataError(f"unknown dataset kinds {sorted(unknown)}; choose from {', '.join(KINDS)}")
        if self.variant not in ("T", "M"):
            raise DataError(f"variant must be 'T' or 'M', got {self.variant!r}")
        from .policy import MAX_DEPTH
        if not 1 <= self.depth <= MAX_DEPTH:
            raise DataError(f"depth must be from 1 to {MAX_DEPTH}, got {self.depth} (the paper uses N = 2, 4, 6)")
        if len(self.image_size) != 2 or min(self.image_size) < 32:
            raise DataError(f"image_size must be (width, height) of at least 32 px each, got {tuple(self.image_size)}")
        if not 0 < self.cot_share <= 1:
            raise DataError(f"cot_share must be in (0, 1], got {self.cot_share} (the paper uses about 0.125)")
        if self.cot_source not in COT_SOURCES:
            raise DataError(f"cot_source must be one of {', '.join(COT_SOURCES)}, got {self.cot_source!r}")
        names = [p.name for p in self.own_policies()]
        if len(set(names)) < len(names):
            raise DataError(f"policy_files hold two policies with one name ({', '.join(names)}); give each its own "
                            f"'name'")

    def own_policies(self) -> list[Policy]:
        """The policies of `policy_files`, read and checked (a PolicyError says what is wrong with a file)."""
        return [Policy.from_json(Path(f)) for f in self.policy_files]


def split_scenes(scenes: list[Scene], test_fraction: float, seed: int) -> tuple[list[Scene], list[Scene]]:
    """Hold out whole scenes: no test image is ever seen in training."""
    order = list(range(len(scenes)))
    random.Random(f"split/{seed}").shuffle(order)
    n_test = max(1, round(len(scenes) * test_fraction))
    test = set(order[:n_test])
    return [s for i, s in enumerate(scenes) if i not in test], [s for i, s in enumerate(scenes) if i in test]


def cot_scenes(policies: list[Policy], train: list[Scene], share: float, seed: int) -> dict[str, list[Scene]]:
    """The training scenes of each policy that get a CoT: a seeded `share` of them (at least one), in scene order,
    so share 1 keeps every scene in today's order and the same seed always picks the same pairs."""
    k = max(1, round(share * len(train)))
    chosen = {}
    for p in policies:
        order = list(range(len(train)))
        random.Random(f"cot/{seed}/{p.name}").shuffle(order)
        chosen[p.name] = [train[i] for i in sorted(order[:k])]
    return chosen


def make_rows(policy: Policy, scene: Scene, image: dict, kind: str, policy_doc: tuple[list, list],
              override: tuple[Policy, list, list] | None = None, cot: str | None = None) -> dict:
    """One dataset row for (policy, scene) of the given kind; `image` is the encoded scene image. `cot`, if given,
    is the completion of a cot or vmcpt row (a forward CoT) in place of the gold CoT from the tree path."""
    parts, pimgs = policy_doc
    case, path = policy.evaluate(scene)
    if cot is not None and kind not in COT_KINDS:
        raise DataError(f"a CoT completion is for {' or '.join(COT_KINDS)} rows, not {kind!r}")
    query = query_text(policy.name)
    row = {"id": f"{policy.name}/{scene.scene_id}", "policy_name": policy.name, "scene_id": scene.scene_id,
           "depth": policy.depth, "variant": policy.variant, "case": case, "path": path,
           "images": [image], "policy": [], "policy_images": []}
    if kind == "qa":
        row.update(prompt=user_prompt(query), completion=assistant(answer_text(case)))
    elif kind == "cot":
        row.update(prompt=user_prompt(query), completion=assistant(cot or policy.gold_cot(scene)))
    elif kind == "vmcpt":
        row.update(prompt=user_prompt(query, parts), completion=assistant(cot or policy.gold_cot(scene)),
                   images=pimgs + [image], policy=parts, policy_images=pimgs)
    elif kind == "rl":
        row.update(prompt=user_prompt(query), completion=assistant(answer_text(case)), policy=parts,
                   policy_images=pimgs)
    elif kind == "in_context":
        row.update(prompt=user_prompt(query, parts), completion=assistant(policy.gold_cot(scene)),
                   images=pimgs + [image], policy=parts, policy_images=pimgs)
    elif kind == "override":
        new, nparts, nimgs = override
        case, path = new.evaluate(scene)
        row.update(case=case, path=path,
                   prompt=user_prompt(OVERRIDE_QUERY.format(name=new.name), nparts,
                                      intro=OVERRIDE_INTRO.format(name=new.name)),
                   completion=assistant(new.gold_cot(scene)), images=nimgs + [image], policy=nparts,
                   policy_images=nimgs)
    else:
        raise DataError(f"unknown row kind {kind!r}")
    return row


def _dataset(rows: list[dict]) -> datasets.Dataset:
    return datasets.Dataset.from_list(rows, features=FEATURES)


def build_datasets(cfg: DataConfig | None = None, progress: bool = True, generate=None, **kw) -> dict:
    """Build policies, scenes and every requested dataset kind into `cfg.out`; return the JSON summary.

    Deterministic: the same config gives byte-identical folders (forward CoTs: as deterministic as the generator).
    Policies and scenes are saved as JSON beside the datasets so that evaluation can re-walk the trees.
    `generate` writes forward CoTs (`forward_cot.py`: e.g. `model_generator(model, processor)`); None loads
    `cfg.cot_model` when a forward build needs it."""
    cfg = cfg or DataConfig(**kw)
    if kw and cfg is not None and not isinstance(cfg, DataConfig):
        raise DataError("pass a DataConfig or keyword arguments")
    cfg.check()
    t0 = time.time()
    out = Path(cfg.out)
    writable_dir(out)
    config = {**{k: v for k, v in asdict(cfg).items() if k not in ("out", "policy_files")},
              "image_size": list(cfg.image_size), "kinds": list(cfg.kinds)}
    if cfg.policy_files:  # their content, not their paths: an edited policy is a new build
        config["own_policies"] = [p.to_dict() for p in cfg.own_policies()]
    entries = ("summary.json", "scenes.jsonl", "policies", "overrides", *cfg.kinds)  # what this build writes
    with lock(out, "a data build"):
        previous = out / "summary.json"
        if previous.exists():
            saved = read_json(previous, f"Delete {previous} and rerun to rebuild the data there.")
            if saved.get("config") == config:  # built before with these settings: nothing to redo
                if "files" not in (read_json(out / MANIFEST) if (out / MANIFEST).exists() else {}):
                    finish_manifest(out, BUILD, entries)  # killed between the summary and its manifest
                return {**saved, "seconds": 0.0, "reused": True}
        # another build lived here: only what it wrote is removed, and a folder of other files is refused
        claim(out, BUILD, legacy=_legacy_build)
        start_manifest(out, BUILD, entries)
        summary = _build(cfg, out, config, progress, t0, generate)
        finish_manifest(out, BUILD, entries)
    return summary


def _build(cfg: DataConfig, out: Path, config: dict, progress: bool, t0: float, generate=None) -> dict:
    """Write policies, scenes and the datasets into `out` (already claimed), summary.json last."""
    policies = cfg.own_policies() or sample_policies(cfg.num_policies, cfg.depth, cfg.seed, cfg.variant,
                                                     prefix=cfg.policy_prefix)
    if cfg.clevr_root:
        scenes = load_clevr_scenes(cfg.clevr_root, cfg.clevr_split, limit=cfg.num_scenes)
        if len(scenes) < 2:
            raise DataError(f"{cfg.clevr_root} gave {len(scenes)} scenes; need at least 2")
        if len(scenes) < cfg.num_scenes:
            raise DataError(f"{cfg.clevr_root} has only {len(scenes)} {cfg.clevr_split} scenes but num_scenes is "
                            f"{cfg.num_scenes}; pass --num-scenes {len(scenes)} or fewer")
    else:
        scenes = sample_scenes(cfg.num_scenes, cfg.seed, progress=progress)
    train, test = split_scenes(scenes, cfg.test_fraction, cfg.seed)
    images = {s.scene_id: _png(scene_image(s, tuple(cfg.image_size)))
              for s in tqdm(scenes, desc="render scenes", disable=not progress)}
    docs = {p.name: policy_parts(p) for p in policies}
    overrides = {p.name: override_policy(p, random.Random(f"override/{cfg.seed}/{p.name}")) for p in policies}
    odocs = {n: (o, *policy_parts(o)) for n, o in overrides.items()}

    (out / "policies").mkdir(exist_ok=True)
    (out / "overrides").mkdir(exist_ok=True)
    for p in policies:
        p.to_json(out / "policies" / f"{p.name}.json")
        overrides[p.name].to_json(out / "overrides" / f"{p.name}.json")
    with open(out / "scenes.jsonl", "w") as f:
        test_ids = {s.scene_id for s in test}
        for s in scenes:
            f.write(json.dumps({**s.to_dict(), "split": "test" if s.scene_id in test_ids else "train"}) + "\n")

    cot_pairs, cot = _cot_subset(cfg, policies, train, images, docs, progress, generate)

    def every(scenes_):
        return [(p, s, None) for p in policies for s in scenes_]

    plan = {"qa": {"train": ("qa", every(train)), "test": ("qa", every(test))},
            "cot": {"train": ("cot", cot_pairs), "test": ("cot", every(test))},
            "vmcpt": {"train": ("vmcpt", cot_pairs)},
            "rl": {"train": ("rl", every(train))},
            "eval": {"no_policy": ("cot", every(test)), "in_context": ("in_context", every(test)),
                     "override": ("override", every(test))}}
    summary = {"task": "clevr", "config": config,
               "policies": [p.name for p in policies], "num_scenes": {"train": len(train), "test": len(test)},
               "cot": cot, "datasets": {}}
    total = sum(len(pairs) for k in cfg.kinds for _, pairs in plan[k].values())
    bar = tqdm(total=total, desc="build rows", disable=not progress)
    for kind in cfg.kinds:
        splits = {}
        for split, (row_kind, pairs) in plan[kind].items():
            rows = [make_rows(p, s, images[s.scene_id], row_kind, docs[p.name], odocs[p.name], cot=text)
                    for p, s, text in pairs]
            bar.update(len(pairs))
            splits[split] = _dataset(rows)
        dd = datasets.DatasetDict(splits)
        with library_bars_off():  # no "Saving the dataset" bar per kind: the build shows its own progress
            dd.save_to_disk(str(out / kind))
        summary["datasets"][kind] = {k: len(v) for k, v in dd.items()}
    bar.close()
    summary["cases"] = {}
    for p in policies:
        counts: dict[str, int] = {}
        for s in scenes:
            c = p.evaluate(s)[0]
            counts[c] = counts.get(c, 0) + 1
        summary["cases"][p.name] = {"num_cases": len(p.cases), "cases_seen": len(counts),
                                    "majority_share": round(max(counts.values()) / len(scenes), 4),
                                    "policy_chars": len(p.text())}
    summary["seconds"] = round(time.time() - t0, 2)
    on_disk = {k: v for k, v in summary.items() if k != "seconds"}  # timings vary: the file holds the same bytes
    on_disk["cot"] = {k: v for k, v in cot.items() if k != "seconds"}
    write_json(out / "summary.json", on_disk)  # last: the build is whole
    return summary


def _cot_subset(cfg: DataConfig, policies: list[Policy], train: list[Scene], images: dict, docs: dict,
                progress: bool, generate=None) -> tuple[list[tuple], dict]:
    """The CoT training pairs as (policy, scene, completion or None for the gold CoT) and the summary's record of
    them: how many pairs were asked for a CoT, generated, and kept (forward: right answers only)."""
    record = {"share": cfg.cot_share, "source": cfg.cot_source, "asked": 0, "generated": 0, "kept": 0}
    if not set(cfg.kinds) & set(COT_KINDS):
        return [], record
    chosen = cot_scenes(policies, train, cfg.cot_share, cfg.seed)
    pairs = [(p, s) for p in policies for s in chosen[p.name]]
    record["asked"] = len(pairs)
    if cfg.cot_source == "gold":
        record["generated"] = record["kept"] = len(pairs)
        return [(p, s, None) for p, s in pairs], record
    from .forward_cot import cot_budget, forward_cots, recipe_generator

    t = time.time()
    rows = [make_rows(p, s, images[s.scene_id], "in_context", docs[p.name]) for p, s in pairs]
    budget = cot_budget(cfg.depth)
    texts, counts = forward_cots(rows, generate or recipe_generator(cfg.cot_model), budget, progress=progress)
    record.update(counts, model=cfg.cot_model, max_new_tokens=budget, seconds=round(time.time() - t, 2))
    return [(p, s, text) for (p, s), text in zip(pairs, texts) if text is not None], record


def _legacy_build(out: Path) -> list[str] | None:
    """What a ClevrPolicy build of a kit without manifests wrote into `out`, when its summary.json says it was one."""
    try:
        saved = json.loads((out / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not (isinstance(saved, dict) and saved.get("task", "clevr") == "clevr" and "config" in saved
            and "datasets" in saved):
        return None
    return ["summary.json", "scenes.jsonl", "policies", "overrides", *saved["datasets"]]


def load_policies(out: str | Path, overrides: bool = False) -> dict[str, Policy]:
    folder = Path(out) / ("overrides" if overrides else "policies")
    if not folder.exists():
        raise DataError(f"no policies at {folder}; build data first with `mpi-kit data --out {out}`")
    return {p.name: p for p in (Policy.from_json(f) for f in sorted(folder.glob("*.json")))}


def load_scenes(out: str | Path, split: str | None = None) -> list[Scene]:
    path = Path(out) / "scenes.jsonl"
    if not path.exists():
        raise DataError(f"no scenes at {path}; build data first with `mpi-kit data --out {out}`")
    rows = [json.loads(l) for l in path.read_text().splitlines() if l.strip()]
    return [Scene.from_dict(r) for r in rows if split is None or r["split"] == split]
