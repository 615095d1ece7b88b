"""Recipes: one dataclass names everything a TriMPI run needs to know about its model.

A recipe is the model (hub id or local path), image size caps, precision, quantization, LoRA settings and the
hyperparameters of each stage (VM-CPT, CoT/Direct SFT, GRPO/DAPO, policy distillation). Stage fields use TRL's
argument names, so `recipe.sft_cot.trl_kwargs()` feeds `SFTConfig(**...)` directly. `get_recipe("qwen2.5-vl-3b",
lr=...)` starts from a named recipe; `Recipe.from_dict` / `to_dict` round-trip JSON with the same validation.

Paper numbers (Table 5, App. B) are for full fine-tuning on 8x H100. The consumer-GPU recipes train one LoRA
adapter through all three stages (paper: full FT for VM-CPT and RL, LoRA r=8 for SFT), so their learning rates
are scaled up where the paper trained all weights; each field's help text says by how much and why.
"""

import copy
import dataclasses
import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
# What the kit ships (the tiny model, the recorded rollout run): <repo>/assets in a checkout; after `pip install` from
# a wheel, mpi_kit/assets, where pyproject.toml maps the same folder (package-dir), so notebooks find it either way.
ASSETS_DIR = next((p for p in (PACKAGE_DIR / "assets", REPO_ROOT / "assets") if p.is_dir()), REPO_ROOT / "assets")
TINY_MODEL_DIR = ASSETS_DIR / "tiny-vlm"  # the shipped tiny base model

PRECISIONS = ("fp32", "bf16", "fp16", "auto")
QUANTIZATIONS = ("none", "nf4")
DEVICES = ("auto", "cpu", "cuda")
BACKENDS = ("hf", "unsloth")


class RecipeError(ValueError):
    """A recipe name, field or value that does not make sense; the message says which and what is allowed."""


def _check(ok: bool, msg: str) -> None:
    if not ok:
        raise RecipeError(msg)


def _suggest(name: str, options) -> str:
    close = difflib.get_close_matches(name, list(options), n=1)
    return f" Did you mean {close[0]!r}?" if close else ""


class _Section:
    """Shared by every recipe dataclass: type-checked fields, `to_dict`, and strict `from_dict`.

    Errors name the field path, e.g. "grpo.learning_rate: must be > 0, got -1.0".
    """

    def __post_init__(self):
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(f.type, type) and issubclass(f.type, _Section):
                if isinstance(v, dict):
                    try:
                        v = f.type.from_dict(v)
                    except RecipeError as e:
                        raise RecipeError(f"{f.name}.{e}") from None
                    setattr(self, f.name, v)
                _check(isinstance(v, f.type), f"{f.name}: expected a dict of settings, got {v!r}")
            elif f.type is float and isinstance(v, int) and not isinstance(v, bool):
                setattr(self, f.name, float(v))
            elif f.type in (int, float, bool, str):
                ok = isinstance(v, f.type) and (f.type is bool or not isinstance(v, bool))
                _check(ok, f"{f.name}: expected {f.type.__name__}, got {v!r}")
        self.validate()

    def validate(self) -> None:
        """Raise RecipeError on a value that cannot work; subclasses add their checks."""

    def to_dict(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists: what JSON gives back

    @classmethod
    def from_dict(cls, d: dict):
        """Build from a (JSON) dict; unknown keys and bad values raise RecipeError."""
        _check(isinstance(d, dict), f"expected a dict (JSON object), got {type(d).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        for k in d:
            _check(k in names, f"{k}: unknown field.{_suggest(k, names)} Fields: {', '.join(sorted(names))}")
        return cls(**copy.deepcopy(d))

    @classmethod
    def help(cls) -> dict[str, str]:
        """Field name -> help text, for notebooks and CLI `--help`."""
        return {f.name: f.metadata.get("help", "") for f in dataclasses.fields(cls)}


@dataclass
class LoraSettings(_Section):
    """LoRA on the language model's linear layers only; the vision tower stays frozen and unwrapped."""

    enabled: bool = field(default=False, metadata={"help": "Train a LoRA adapter (True) or all weights (False)."})
    r: int = field(default=16, metadata={"help": "LoRA rank. The paper's SFT uses r=8; the consumer recipes use 16 "
                                                 "because the same adapter also carries VM-CPT and RL, which the "
                                                 "paper trains with full fine-tuning."})
    alpha: int = field(default=32, metadata={"help": "lora_alpha; the update is scaled by alpha / r (here 2)."})
    dropout: float = field(default=0.05, metadata={"help": "lora_dropout, in [0, 1)."})
    target_modules: str | list[str] | None = field(default=None, metadata={
        "help": "peft target_modules. None = every linear layer of the language model, found on the loaded model "
                "by `mpi_kit.models.lora_target_modules` (never the vision tower, never lm_head). Never use "
                "'all-linear' on a VLM: it wraps the vision tower too."})

    def validate(self):
        _check(self.r >= 1, f"r: must be >= 1, got {self.r}")
        _check(self.alpha > 0, f"alpha: must be > 0, got {self.alpha}")
        _check(0.0 <= self.dropout < 1.0, f"dropout: must be in [0, 1), got {self.dropout}")
        t = self.target_modules
        _check(t is None or isinstance(t, str) or (isinstance(t, list) and all(isinstance(x, str) for x in t)),
               f"target_modules: must be None, a regex string or a list of module names, got {t!r}")
        _check(t != "all-linear", "target_modules: 'all-linear' also wraps the vision tower; leave it None "
                                  "(language-model linear layers) or list the modules")


@dataclass
class StageSettings(_Section):
    """Hyperparameters of one training stage (VM-CPT or SFT). Names are TRL's: `trl_kwargs()` passes through."""

    NOT_TRL = ()
    learning_rate: float = field(default=1e-5, metadata={"help": "Peak learning rate (AdamW), > 0."})
    num_train_epochs: float = field(default=1.0, metadata={"help": "Epochs over the stage's data, > 0."})
    max_steps: int = field(default=-1, metadata={"help": "Optimizer steps; -1 = run num_train_epochs."})
    per_device_train_batch_size: int = field(default=1, metadata={"help": "Sequences per device per micro-step."})
    gradient_accumulation_steps: int = field(default=1, metadata={"help": "Micro-steps per optimizer step."})
    warmup_ratio: float = field(default=0.03, metadata={"help": "Linear warmup fraction of the steps, in [0, 1)."})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay, >= 0."})

    def validate(self):
        lr = self.learning_rate
        _check(lr > 0 and math.isfinite(lr), f"learning_rate: must be a finite number > 0, got {lr}")
        _check(self.num_train_epochs > 0, f"num_train_epochs: must be > 0, got {self.num_train_epochs}")
        _check(self.max_steps == -1 or self.max_steps >= 1, f"max_steps: must be -1 or >= 1, got {self.max_steps}")
        _check(self.per_device_train_batch_size >= 1, "per_device_train_batch_size: must be >= 1")
        _check(self.gradient_accumulation_steps >= 1, "gradient_accumulation_steps: must be >= 1")
        _check(0.0 <= self.warmup_ratio < 1.0, f"warmup_ratio: must be in [0, 1), got {self.warmup_ratio}")
        _check(self.weight_decay >= 0, f"weight_decay: must be >= 0, got {self.weight_decay}")

    def trl_kwargs(self) -> dict:
        """The fields that TRL's SFTConfig / GRPOConfig accept under the same names."""
        return {k: v for k, v in dataclasses.asdict(self).items() if k not in self.NOT_TRL}


@dataclass
class SFTSettings(StageSettings):
    """CoT / Direct SFT: a stage's hyperparameters, and how many of its rows see the policy (policy replay)."""

    NOT_TRL = ("policy_replay", "lora_r")
    lora_r: int = field(default=0, metadata={
        "help": "Train this stage alone as a LoRA adapter of this rank (alpha 2r) on the weights it starts from, "
                "merged into them when it ends, so the next stage fine-tunes every weight again: the paper's CoT SFT "
                "(LoRA r = 8 between full-FT VM-CPT and full-FT RL). 0 = the recipe's `lora` setting. Not a TRL "
                "argument."})
    policy_replay: float = field(default=0.0, metadata={
        "help": "Share of CoT SFT rows shown with the policy in the prompt (the same scene and CoT, from the VM-CPT "
                "rows), in [0, 1). 0 = the paper's CoT SFT, which never shows the policy. A small model trained "
                "only without its policy unlearns reading one, and PolicyRollout's policy-aware half then has "
                "nothing to rescue with; replay keeps the reading at the cost of slower internalization "
                "(docs/results.md, 'Where PolicyRollout does help'). Not a TRL argument; CoT SFT only."})

    def validate(self):
        super().validate()
        _check(0.0 <= self.policy_replay < 1.0, f"policy_replay: must be in [0, 1), got {self.policy_replay}")


@dataclass
class RLSettings(StageSettings):
    """GRPO / DAPO, in TRL GRPOTrainer's names. PolicyRollout doubles the group: G no-policy + G policy-aware."""

    NOT_TRL = ("dynamic_sampling_retries", "dynamic_sampling_work", "fast_rollouts", "rollout_prompts",
               "updates_per_rollout")
    loss_type: str = field(default="grpo", metadata={"help": "TRL loss_type: 'grpo' or 'dapo' (token-level)."})
    epsilon: float = field(default=0.2, metadata={"help": "Lower clip eps_low (paper: 0.2 for GRPO and DAPO)."})
    epsilon_high: float = field(default=0.3, metadata={"help": "Upper clip eps_high (paper: 0.3 GRPO, 0.28 DAPO)."})
    beta: float = field(default=0.01, metadata={"help": "KL coefficient to the reference (paper: 0.01 GRPO, 0 DAPO)."
                                                        " With LoRA the reference is the adapter-off model (free)."})
    num_generations: int = field(default=4, metadata={
        "help": "G, completions per prompt (not in the paper; EasyR1 default 5; 4 suggested for one GPU). "
                "Under PolicyRollout the trainer samples 2G per prompt."})
    max_completion_length: int = field(default=512, metadata={"help": "Max new tokens per completion (not in the "
                                                                      "paper)."})
    temperature: float = field(default=1.0, metadata={"help": "Sampling temperature for rollouts (not in the paper; "
                                                                "EasyR1 default 1.0)."})
    scale_rewards: str = field(default="group", metadata={
        "help": "TRL scale_rewards: 'group' divides each group's advantages by its reward std (GRPO as published), "
                "'none' keeps them in reward units (Dr. GRPO). With a small format reward, 'group' blows a format-"
                "only difference (all answers wrong) up to the size of a right answer, and a small model learns to "
                "write short well-formed wrong CoTs."})
    dynamic_sampling_retries: int = field(default=0, metadata={
        "help": "DAPO dynamic sampling: resample a batch up to this many times to drop all-equal groups (paper: 20 "
                "for DAPO, 0 = off). Not a TRL argument."})
    dynamic_sampling_work: float = field(default=4.0, metadata={
        "help": "Cap on DAPO's regeneration per step, in batches' worth of completion tokens (the first sample is 1): "
                "when a step has regenerated this much it stops, drops the groups still all-equal and logs it. A "
                "reward that is 0 for every completion otherwise regenerates dynamic_sampling_retries whole batches "
                "(one N = 6 step on a CPU ran over 30 minutes). Tokens, not seconds: the same seed gives the same "
                "run."})
    rollout_prompts: int = field(default=0, metadata={
        "help": "Prompts sampled per rollout batch, the same for every arm (GRPO, GRPO-2G, PolicyRollout: equal "
                "prompts, only the group size differs). 0 = off: per_device_train_batch_size counts completions, so "
                "PolicyRollout's 2G group sees half of GRPO's prompts. Not a TRL argument."})
    updates_per_rollout: int = field(default=1, metadata={
        "help": "Optimizer steps per rollout batch (with rollout_prompts > 0): the batch is split into this many "
                "updates, so from the second one on the policy has moved, the importance ratio leaves 1 and the "
                "clip acts (the paper updates 384-prompt rollout batches in several steps). Not a TRL argument."})
    fast_rollouts: bool | str = field(default=False, metadata={
        "help": "How rollouts are generated: True or 'decode' = `mpi_kit.decode`'s loop for small models (one "
                "prefill per prompt group, a preallocated cache, the model's own modules per step; greedy tokens "
                "equal generate's, sampled ones drawn from the same distribution); 'shared' = `mpi_kit.rollout`'s "
                "shared prefill; False or 'generate' = plain `generate` (benchmarks/bench_rollout.py compares them). "
                "Not a TRL argument."})

    def validate(self):
        super().validate()
        _check(self.loss_type in ("grpo", "dapo"), f"loss_type: must be 'grpo' or 'dapo', got {self.loss_type!r}")
        _check(0 < self.epsilon < 1, f"epsilon: must be in (0, 1), got {self.epsilon}")
        _check(self.epsilon_high >= self.epsilon,
               f"epsilon_high: must be >= epsilon ({self.epsilon}), got {self.epsilon_high}")
        _check(self.beta >= 0, f"beta: must be >= 0, got {self.beta}")
        _check(self.num_generations >= 2, "num_generations: must be >= 2 (group advantages need two samples)")
        _check(self.max_completion_length >= 1, "max_completion_length: must be >= 1")
        _check(self.temperature > 0, f"temperature: must be > 0, got {self.temperature}")
        _check(self.scale_rewards in ("group", "batch", "none"),
               f"scale_rewards: must be 'group', 'batch' or 'none', got {self.scale_rewards!r}")
        _check(self.dynamic_sampling_retries >= 0, "dynamic_sampling_retries: must be >= 0")
        _check(self.dynamic_sampling_work > 0, "dynamic_sampling_work: must be > 0 (batches' worth of tokens)")
        _check(self.fast_rollouts in (True, False, "decode", "shared", "generate"),
               f"fast_rollouts: must be true, false, 'decode', 'shared' or 'generate', got {self.fast_rollouts!r}")
        _check(self.rollout_prompts >= 0, f"rollout_prompts: must be >= 0 (0 = off), got {self.rollout_prompts}")
        _check(self.updates_per_rollout >= 1, f"updates_per_rollout: must be >= 1, got {self.updates_per_rollout}")


@dataclass
class DistillSettings(StageSettings):
    """Policy distillation (`mpi_kit.distill`): the model with its policy in context teaches itself without it."""

    NOT_TRL = ("max_completion_length", "temperature")
    max_completion_length: int = field(default=256, metadata={
        "help": "Most new tokens the teacher writes per completion (source 'teacher'); the pipeline raises it to "
                "the task's evaluation budget, so a chain is not cut before its answer. Not a TRL argument."})
    temperature: float = field(default=0.0, metadata={
        "help": "How the teacher writes its completions (source 'teacher'): 0 = greedy, its most likely answer, the "
                "same each time a row comes back; > 0 = sampled at this temperature, so the student sees more of the "
                "teacher's distribution. Not a TRL argument."})

    def validate(self):
        super().validate()
        _check(self.max_completion_length >= 1, "max_completion_length: must be >= 1")
        _check(self.temperature >= 0, f"temperature: must be >= 0 (0 = greedy), got {self.temperature}")


@dataclass
class Recipe(_Section):
    """Everything about the model side of a TriMPI run: what to load, how, and how hard to train each stage."""

    name: str = field(default="custom", metadata={"help": "Recipe name (for logs and run folders)."})
    model: str = field(default=str(TINY_MODEL_DIR), metadata={"help": "Hub id (e.g. Qwen/Qwen2.5-VL-3B-Instruct) "
                                                                       "or a local checkpoint folder."})
    device: str = field(default="auto", metadata={"help": "'auto' (CUDA if visible, else CPU), 'cpu' or 'cuda'."})
    precision: str = field(default="fp32", metadata={
        "help": "Weights / compute dtype: 'fp32', 'bf16', 'fp16' or 'auto' (the GPU recipes; resolved at load time by "
                "`models.resolve_precision`: bf16 on CUDA compute capability >= 8, fp16 on a T4 or V100, whose bf16 "
                "is emulated, fp32 on a CPU). An explicit value always wins. bf16 on a CPU is ~15x slower than fp32."})
    quantization: str = field(default="none", metadata={
        "help": "'none' or 'nf4' (bitsandbytes 4-bit NF4 with double quantization, compute in `precision`; "
                "the vision tower and lm_head stay unquantized). nf4 needs LoRA: 4-bit weights cannot be trained. "
                "Allowed on the CPU too (bitsandbytes >= 0.49 runs NF4 there), e.g. to rehearse QLoRA on `tiny`."})
    backend: str = field(default="hf", metadata={
        "help": "How every stage loads the model: 'hf' (transformers + peft + bitsandbytes; CPU or GPU) or 'unsloth' "
                "(unsloth's FastVisionModel: faster, less memory, CUDA GPU only; install with `pip install "
                "'.[unsloth]'`). CLI: `--backend unsloth`."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for activation memory."})
    min_pixels: int = field(default=56 * 56, metadata={"help": "Image processor floor on H*W (pixels) per image."})
    max_pixels: int = field(default=256 * 28 * 28, metadata={
        "help": "Image processor cap on H*W per image. Image tokens ~ H*W / (patch*merge)^2: "
                "Qwen2.5-VL 28 px per token side, Qwen3-VL 32 px."})
    render_size: list[int] = field(default_factory=lambda: [480, 320], metadata={
        "help": "[width, height] at which scenes are rendered (CLEVR is 480x320)."})
    seed: int = field(default=0, metadata={"help": "Seed for LoRA init and training."})
    memory_budget_gib: float = field(default=0.0, metadata={
        "help": "GPU memory (GiB) the stages may use; > 0 lets the memory planner (`mpi_kit.memory.plan`) choose "
                "each stage's micro-batch and gradient accumulation (same effective batch) and refuse, saying what "
                "would fit, when nothing does. 0 = off: the stage fields are used as written."})
    lora: LoraSettings = field(default_factory=LoraSettings, metadata={"help": "LoRA settings (language model only)."})
    vm_cpt: StageSettings = field(default_factory=StageSettings, metadata={"help": "Stage 1, VM-CPT."})
    sft_cot: SFTSettings = field(default_factory=SFTSettings, metadata={"help": "Stage 2, CoT SFT."})
    sft_direct: SFTSettings = field(default_factory=SFTSettings, metadata={"help": "Baseline Direct SFT."})
    grpo: RLSettings = field(default_factory=RLSettings, metadata={"help": "Stage 3 with GRPO (optionally PoRo)."})
    dapo: RLSettings = field(default_factory=lambda: RLSettings(loss_type="dapo", epsilon_high=0.28, beta=0.0,
                                                                dynamic_sampling_retries=20),
                             metadata={"help": "Stage 3 with DAPO (optionally PoRo)."})
    distill: DistillSettings = field(default_factory=DistillSettings, metadata={
        "help": "Policy distillation, beside TriMPI: no labels, the policy-reading model is the teacher."})

    def __post_init__(self):
        try:
            super().__post_init__()
        except RecipeError as e:
            raise RecipeError(f"recipe {getattr(self, 'name', '?')!r}: {e}") from None

    def validate(self):
        _check(bool(self.model.strip()), "model: must name a hub id or a local folder")
        _check(self.device in DEVICES, f"device: must be one of {DEVICES}, got {self.device!r}")
        _check(self.precision in PRECISIONS, f"precision: must be one of {PRECISIONS}, got {self.precision!r}")
        _check(self.quantization in QUANTIZATIONS,
               f"quantization: must be one of {QUANTIZATIONS}, got {self.quantization!r}")
        _check(self.backend in BACKENDS, f"backend: must be one of {BACKENDS} ('hf': transformers, CPU or GPU; "
                                         f"'unsloth': CUDA GPU only), got {self.backend!r}."
                                         f"{_suggest(self.backend, BACKENDS)}")
        _check(self.quantization == "none" or self.lora.enabled,
               "quantization: 'nf4' needs lora.enabled=True: 4-bit weights are frozen, only an adapter can train "
               "(QLoRA). Enable LoRA or set quantization='none'.")
        _check(self.memory_budget_gib >= 0,
               f"memory_budget_gib: must be >= 0 (0 = no plan), got {self.memory_budget_gib}")
        _check(0 < self.min_pixels <= self.max_pixels,
               f"min_pixels/max_pixels: need 0 < min_pixels <= max_pixels, got {self.min_pixels}, {self.max_pixels}")
        rs = self.render_size
        _check(isinstance(rs, (list, tuple)) and len(rs) == 2 and all(isinstance(x, int) and x > 0 for x in rs),
               f"render_size: must be [width, height] of positive ints, got {rs!r}")
        self.render_size = list(rs)

    def to_json(self, path: str | Path | None = None) -> str:
        """JSON text of the recipe; also written to `path` if given."""
        text = json.dumps(self.to_dict(), indent=2)
        if path is not None:
            Path(path).write_text(text + "\n")
        return text

    @classmethod
    def from_json(cls, text_or_path: str | Path) -> "Recipe":
        """A recipe from JSON text or a .json file, validated like `from_dict`."""
        is_text = str(text_or_path).lstrip().startswith("{")
        text = str(text_or_path) if is_text else Path(text_or_path).read_text()
        try:
            d = json.loads(text)
        except json.JSONDecodeError as e:
            raise RecipeError(f"recipe JSON{'' if is_text else f' in {text_or_path}'} is malformed: {e}") from None
        return cls.from_dict(d)

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        try:
            return super().from_dict(d)
        except RecipeError as e:
            msg = str(e)
            raise RecipeError(msg if msg.startswith("recipe ") else f"recipe: {msg}") from None


def _tiny() -> Recipe:
    """The shipped tiny model on the CPU: fp32, full fine-tune, steps sized by measurement (docs/results.md).

    These are the stage defaults a notebook or a single `mpi-kit` stage uses; the demo runs the paper's stage recipe
    on top of them (`pipeline.PAPER_STAGES`: LoRA CoT SFT, RL whose clip acts). RL samples at temperature 0.7: the
    tiny model's chains fall apart at 1.0.
    """
    small = dict(per_device_train_batch_size=8, gradient_accumulation_steps=1, warmup_ratio=0.0)
    return Recipe(
        name="tiny", model=str(TINY_MODEL_DIR), device="cpu", precision="fp32", quantization="none",
        min_pixels=32 * 32, max_pixels=128 * 128, render_size=[96, 64],
        lora=LoraSettings(enabled=False, r=8, alpha=16, dropout=0.0),
        vm_cpt=StageSettings(learning_rate=3e-4, num_train_epochs=5, max_steps=30, **small),
        sft_cot=SFTSettings(learning_rate=3e-4, num_train_epochs=5, max_steps=480, **small),
        sft_direct=SFTSettings(learning_rate=3e-4, num_train_epochs=5, max_steps=480, **small),
        grpo=RLSettings(learning_rate=1e-5, max_steps=24, per_device_train_batch_size=8, num_generations=4,
                        max_completion_length=48, warmup_ratio=0.0, temperature=0.7, fast_rollouts=True),
        dapo=RLSettings(learning_rate=1e-5, max_steps=24, per_device_train_batch_size=8, num_generations=4,
                        max_completion_length=48, warmup_ratio=0.0, loss_type="dapo", epsilon_high=0.28, beta=0.0,
                        dynamic_sampling_retries=20, temperature=0.7, fast_rollouts=True),
        distill=DistillSettings(learning_rate=3e-4, num_train_epochs=5, max_steps=120, max_completion_length=120,
                                **small),
    )


def _qwen(name: str, model: str, batch: int, accum: int, max_pixels: int, min_pixels: int,
          budget: float = 0.0) -> Recipe:
    """A QLoRA recipe for one consumer GPU, with the paper's Table 5 schedule scaled for a single LoRA adapter.

    Scaling (paper -> here): VM-CPT full FT lr 1e-5 -> LoRA 1e-4 (LoRA needs ~10x the full-FT rate: the paper's
    own LoRA SFT uses 1e-4); SFT is LoRA in the paper, lr 1e-4 kept; RL full FT 1e-6 -> LoRA 2e-5 (the usual
    1e-5..5e-5 for LoRA RL). Effective batch 16 instead of 64-128 (one GPU): more, noisier steps per epoch.
    """
    stage = dict(per_device_train_batch_size=batch, gradient_accumulation_steps=accum, warmup_ratio=0.03)
    rl = dict(learning_rate=2e-5, num_train_epochs=2, per_device_train_batch_size=8, gradient_accumulation_steps=2,
              num_generations=4, max_completion_length=512, temperature=1.0, warmup_ratio=0.0)
    return Recipe(
        name=name, model=model, device="auto", precision="auto", quantization="nf4", gradient_checkpointing=True,
        memory_budget_gib=budget,
        min_pixels=min_pixels, max_pixels=max_pixels, render_size=[480, 320],
        lora=LoraSettings(enabled=True, r=16, alpha=32, dropout=0.05),
        vm_cpt=StageSettings(learning_rate=1e-4, num_train_epochs=5, **stage),
        sft_cot=SFTSettings(learning_rate=1e-4, num_train_epochs=5, **stage),
        sft_direct=SFTSettings(learning_rate=1e-4, num_train_epochs=2, **stage),
        grpo=RLSettings(loss_type="grpo", epsilon=0.2, epsilon_high=0.3, beta=0.01, **rl),
        dapo=RLSettings(loss_type="dapo", epsilon=0.2, epsilon_high=0.28, beta=0.0, dynamic_sampling_retries=20, **rl),
        distill=DistillSettings(learning_rate=1e-4, num_train_epochs=2, max_completion_length=512, **stage),
    )


# Qwen2.5-VL: 28 px per image token (patch 14 x merge 2); a 480x320 CLEVR frame -> 476x336 -> 17x12 = 204 tokens.
# Qwen3-VL: 32 px per token (patch 16 x merge 2); 480x320 -> 15x10 = 150 tokens.
RECIPES = {
    "tiny": _tiny,
    # 16 GB card (T4/4080): NF4 3B ~2.5 GB of weights; micro-batch 1 keeps the long policy prefix of VM-CPT in memory.
    # The memory planner picks its micro-batches for a T4's ~15 GiB (memory_budget_gib).
    "qwen2.5-vl-3b": lambda: _qwen("qwen2.5-vl-3b", "Qwen/Qwen2.5-VL-3B-Instruct", 1, 16, 256 * 28 * 28, 64 * 28 * 28,
                                   budget=15.0),
    # 24 GB card (3090/4090): NF4 7B ~5.5 GB of weights; micro-batch 2.
    "qwen2.5-vl-7b": lambda: _qwen("qwen2.5-vl-7b", "Qwen/Qwen2.5-VL-7B-Instruct", 2, 8, 256 * 28 * 28, 64 * 28 * 28),
    # 16 GB card: NF4 4B ~3 GB of weights.
    "qwen3-vl-4b": lambda: _qwen("qwen3-vl-4b", "Qwen/Qwen3-VL-4B-Instruct", 1, 16, 256 * 32 * 32, 64 * 32 * 32),
}


def _merge(d: dict, overrides: dict, path: str = "") -> dict:
    """Deep-merge overrides into a recipe dict: nested dicts merge, 'stage.field' keys reach into a section."""
    out = copy.deepcopy(d)
    for key, value in overrides.items():
        head, _, rest = key.partition(".")
        _check(head in out, f"{path}{key}: unknown override.{_suggest(head, out)} Fields: {', '.join(sorted(out))}")
        if rest or (isinstance(out[head], dict) and isinstance(value, dict)):
            _check(isinstance(out[head], dict), f"{path}{key}: {head!r} has no sub-fields")
            out[head] = _merge(out[head], {rest: value} if rest else value, f"{path}{head}.")
        else:
            out[head] = value
    return out


def auto_recipe(gpu_memory_gib: float | None = None) -> str:
    """The recipe name for the GPU at hand (Colab's T4, L4, A100): none -> "tiny", < 20 GiB (T4 16 GB) ->
    "qwen2.5-vl-3b", >= 20 GiB (L4, 3090/4090, A100) -> "qwen2.5-vl-7b". Pass the memory to skip detection."""
    if gpu_memory_gib is None:
        import torch

        if not torch.cuda.is_available():
            return "tiny"
        gpu_memory_gib = torch.cuda.get_device_properties(0).total_memory / 2**30
    return "qwen2.5-vl-3b" if gpu_memory_gib < 20 else "qwen2.5-vl-7b"


def get_recipe(name: str, /, **overrides: Any) -> Recipe:
    """A named recipe with overrides: `get_recipe("tiny", precision="bf16", lora={"enabled": True},
    **{"grpo.learning_rate": 5e-6})`; "auto" picks by GPU (`auto_recipe`). Unknown names, fields or bad values
    raise RecipeError."""
    if name == "auto":
        name = auto_recipe()
    if name not in RECIPES:
        raise RecipeError(f"unknown recipe {name!r}.{_suggest(name, RECIPES)} Known recipes: {', '.join(RECIPES)}")
    try:
        merged = _merge(RECIPES[name]().to_dict(), overrides)
    except RecipeError as e:
        raise RecipeError(f"recipe {name!r}: {e}") from None
    return Recipe.from_dict(merged)


def recipe_for_model(model: str) -> Recipe:
    """The recipe whose `model` is this hub id, else a full-fine-tune fp32 recipe (tiny's settings) around it."""
    for make in RECIPES.values():
        r = make()
        if r.model == model:
            return r
    return get_recipe("tiny", name="custom", model=model, device="auto")


def as_recipe(recipe: "Recipe | str | Path" = "tiny", /, **overrides) -> Recipe:
    """The one way to a Recipe: from a Recipe, a recipe name, a hub id or a local folder (then the recipe naming
    that id, if any, else tiny's full-fine-tune fp32 settings around it), with `get_recipe`-style overrides
    ("sft_cot.learning_rate": 1e-4) applied. Stages, the pipeline and the CLI all resolve recipes here."""
    if isinstance(recipe, Recipe):
        return Recipe.from_dict(_merge(recipe.to_dict(), overrides)) if overrides else recipe
    recipe = str(recipe)
    if recipe in RECIPES or recipe == "auto":
        return get_recipe(recipe, **overrides)
    if "/" not in recipe and not Path(recipe).expanduser().exists():  # hub ids are org/name; folders exist
        raise RecipeError(f"unknown recipe {recipe!r}.{_suggest(recipe, RECIPES)} Known recipes: "
                          f"{', '.join(RECIPES)}. "
                          f"A model can also be a local checkpoint folder or a hub id (org/name)")
    base = recipe_for_model(recipe)
    return Recipe.from_dict(_merge(base.to_dict(), overrides)) if overrides else base
