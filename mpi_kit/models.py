"""One loader for every recipe: `load_model("tiny")`, `load_model("qwen2.5-vl-3b")` or `load_model("/my/ckpt")`.

Hub ids and local folders go through the same `AutoProcessor` + `AutoModelForImageTextToText` path; the recipe adds
4-bit NF4 (bitsandbytes, CPU or GPU) and LoRA on the language model only. `backend="unsloth"` swaps in unsloth's
`FastVisionModel`, which needs a CUDA GPU. Heavy imports happen inside the functions, so unsloth can patch first.
"""

import os
import re
import resource
import sys
from pathlib import Path

from .progress import library_bars_off
from .recipes import BACKENDS, RECIPES, TINY_MODEL_DIR, Recipe, RecipeError, as_recipe, get_recipe, recipe_for_model  # noqa: F401

DTYPES = {"fp32": "float32", "bf16": "bfloat16", "fp16": "float16"}
# Module-name pieces that mark the vision side of a VLM (Qwen: `visual`, LLaVA/Idefics: `vision_tower`, ...).
VISION_MODULES = ("visual", "vision_tower", "vision_model", "vision_encoder", "image_encoder",
                  "multi_modal_projector", "mm_projector")
VISION_RE = r"(.*\.)?(" + "|".join(VISION_MODULES) + r")"  # a module path that enters the vision side


class ModelNotFoundError(FileNotFoundError):
    """The model is neither a local checkpoint folder nor loadable by hub id (cache or download)."""


class BackendUnavailableError(RuntimeError):
    """The requested backend cannot run here (no CUDA GPU for unsloth, or unsloth not installed)."""


def resolve_device(device: str | None = "auto") -> str:
    """'auto' -> 'cuda' if a CUDA GPU is visible, else 'cpu'; 'cuda' without a GPU is an error."""
    import torch

    device = device or "auto"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise BackendUnavailableError(f"device={device!r} but no CUDA GPU is visible; use device='cpu' or 'auto'")
    return device


def resolve_precision(precision: str = "auto", device: str | None = "auto", capability=None) -> str:
    """A recipe's precision for the card at hand: an explicit 'fp32'/'bf16'/'fp16' wins; 'auto' is fp32 on a CPU,
    bf16 on CUDA compute capability >= 8 (Ampere and newer: bf16 tensor cores) and fp16 below (T4 7.5, V100 7.0:
    torch reports bf16 as supported there, but it is emulated). `capability` skips asking the GPU."""
    if precision != "auto":
        return precision
    if capability is None:
        device = resolve_device(device)
        if not device.startswith("cuda"):
            return "fp32"
        import torch

        capability = torch.cuda.get_device_capability(device)
    return "bf16" if tuple(capability) >= (8, 0) else "fp16"


_ANNOUNCED: set = set()


def _announce_precision(device: str, precision: str) -> None:
    """Say once per process and device which precision 'auto' chose, and why."""
    if (device, precision) in _ANNOUNCED:
        return
    _ANNOUNCED.add((device, precision))
    if precision == "fp32":
        print("precision auto -> fp32 (CPU: bf16 and fp16 are far slower there)")
        return
    import torch

    cap = torch.cuda.get_device_capability(device)
    why = ("bf16 tensor cores" if precision == "bf16" else
           "no bf16 tensor cores below 8.0: fp16 with loss scaling (trainer fp16, bitsandbytes compute in fp16)")
    print(f"precision auto -> {precision} ({torch.cuda.get_device_name(device)}, compute capability "
          f"{cap[0]}.{cap[1]}: {why})")


VISION_TOKENS = ("<|image_pad|>", "<|video_pad|>", "<|vision_start|>", "<|vision_end|>")


def vision_token_ids(processor) -> list[int]:
    """Ids of the tokens that stand for images (placeholders and their start/end markers): VM-CPT puts no loss on
    them, and RL never samples them (a completion holding one makes the next forward pass count more image tokens
    than image features: "Image features and image tokens do not match")."""
    tok = getattr(processor, "tokenizer", processor)
    vocab = tok.get_vocab()
    return [vocab[t] for t in VISION_TOKENS if t in vocab]


def locate_model(model: str, local_files_only: bool | None = None) -> str:
    """A loadable name for `model`: an existing checkpoint folder, or a hub id whose config loads (from the cache,
    or downloaded unless offline). Anything else raises ModelNotFoundError saying what to do."""
    from transformers import AutoConfig

    p = Path(model).expanduser()
    if p.is_dir():
        if not (p / "config.json").exists():
            raise ModelNotFoundError(f"{p} is a folder but holds no config.json, so it is not a saved checkpoint "
                                     f"(save one with model.save_pretrained + processor.save_pretrained)")
        return str(p)
    hint = ""
    if p.resolve() == TINY_MODEL_DIR.resolve():
        hint = " The tiny model ships in assets/tiny-vlm; build it with the kit's tiny-model command (mpi_kit.tiny)."
    if model.startswith(("/", ".", "~")) or p.exists():
        raise ModelNotFoundError(f"model folder {model!r} does not exist.{hint}")
    offline = local_files_only if local_files_only is not None else _hub_offline()
    try:
        AutoConfig.from_pretrained(model, local_files_only=offline)
    except (OSError, ValueError) as e:
        reason = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
        where = "the Hugging Face cache" + ("" if offline else ", and fetching it from the hub failed")
        raise ModelNotFoundError(
            f"cannot load model {model!r}: it is not a local folder and is not in {where} ({reason}). "
            f"Pass a local checkpoint folder (e.g. recipe 'tiny'), or download it first where there is network "
            f"(`hf download {model}`) and load it by id or folder.{hint}") from None
    return model


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def lora_target_modules(model) -> str:
    """peft `target_modules` regex for every linear layer of the language model: the leaf names of `nn.Linear`
    modules outside the vision tower (e.g. q/k/v/o_proj, gate/up/down_proj), never `lm_head`, never under `visual`.
    A regex, not a name list: Qwen's vision blocks reuse names like `gate_proj`, and peft matches list names as
    suffixes anywhere in the model."""
    import torch

    vision = re.compile(VISION_RE + r"(\.|$)")
    leaves = set()
    for name, module in model.named_modules():
        name = name.removesuffix(".base_layer")  # already LoRA-wrapped: the layer's own name
        leaf = name.rsplit(".", 1)[-1]
        if (isinstance(module, torch.nn.Linear) and not vision.match(name) and leaf != "lm_head"
                and "lora_" not in name):
            leaves.add(leaf)
    if not leaves:
        raise ValueError(f"{type(model).__name__} has no linear layers outside its vision tower to put LoRA on")
    return r"^(?!" + VISION_RE + r"\.).*\.(" + "|".join(sorted(leaves)) + r")$"


def count_parameters(model) -> dict:
    """{'total', 'trainable', 'trainable_pct', 'vision', 'language'}: the vision side is every parameter under a
    vision module (`VISION_MODULES`), the language side the rest (tied embeddings once). 4-bit weights count as the
    values they hold, not packed bytes."""
    total = trainable = vision = 0
    for name, p in model.named_parameters():
        n = p.numel()
        if type(p).__name__ == "Params4bit":  # two 4-bit values per byte of storage
            n *= 2 * getattr(getattr(p, "quant_storage", None), "itemsize", 1)
        total += n
        trainable += n if p.requires_grad else 0
        vision += n if re.match(VISION_RE + r"\.", name) else 0
    return {"total": total, "trainable": trainable, "trainable_pct": round(100.0 * trainable / max(total, 1), 4),
            "vision": vision, "language": total - vision}


def peak_memory() -> float:
    """Peak memory in GiB: CUDA max allocated (torch.cuda.max_memory_allocated) when a GPU is in use, else this
    process's peak RSS (ru_maxrss; never resets, so measure in a fresh process for a clean number)."""
    import torch

    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return torch.cuda.max_memory_allocated() / 2**30
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**30 if sys.platform == "darwin" else rss / 2**20  # bytes on macOS, KiB on Linux


def apply_pixel_caps(processor, recipe: Recipe):
    """Set the recipe's min/max pixels on the processor's image processor (the constructor-time way; per-call
    min_pixels/max_pixels are deprecated)."""
    ip = getattr(processor, "image_processor", None)
    if ip is not None and getattr(ip, "size", None) is not None and "longest_edge" in ip.size:
        ip.size = {"shortest_edge": recipe.min_pixels, "longest_edge": recipe.max_pixels}
    return processor


def load_model(recipe: "Recipe | str | Path" = "tiny", /, backend: str | None = None, lora: bool | None = None,
               device: str | None = None, *, local_files_only: bool | None = None, **overrides):
    """Load (model, processor) for a recipe, recipe name, hub id or local folder.

    backend: None = the recipe's (`hf` unless set), or 'hf' / 'unsloth' (CUDA GPU only).
    lora: None = the recipe's `lora.enabled`, True/False forces it (False on an nf4 recipe = 4-bit inference).
    device: None = the recipe's ('auto': CUDA if visible). Overrides are `get_recipe` overrides, e.g.
    `load_model(path, quantization="nf4", lora=True)` or `load_model("qwen2.5-vl-3b", model="/my/download")`.
    The resolved recipe rides along as `model.mpi_recipe`, for a reader to look at (stages record the recipe they
    were given, not this).
    """
    if lora is not None:
        overrides = {**overrides, "lora.enabled": True} if lora else overrides
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
        overrides = {**overrides, "backend": backend}
    recipe = as_recipe(recipe, **overrides)
    if recipe.precision == "auto":  # resolved for the card at hand; the model's recipe keeps the choice
        import torch

        if recipe.backend == "hf" or torch.cuda.is_available():  # unsloth without a GPU: its own error below
            where = resolve_device(device or recipe.device)
            recipe = as_recipe(recipe, precision=resolve_precision("auto", where))
            _announce_precision(where, recipe.precision)
    use_lora = recipe.lora.enabled if lora is None else bool(lora)
    with library_bars_off():  # no "Loading weights" bar (a download's bar still shows)
        if recipe.backend == "unsloth":
            m, processor = _load_unsloth(recipe, device or recipe.device, use_lora, local_files_only)
        else:
            m, processor = _load_hf(recipe, resolve_device(device or recipe.device), use_lora, local_files_only)
    m.mpi_recipe = recipe
    return m, apply_pixel_caps(processor, recipe)


def _load_hf(recipe: Recipe, device: str, use_lora: bool, local_files_only: bool | None):
    import torch
    from transformers import AutoModelForImageTextToText, AutoProcessor, BitsAndBytesConfig

    path = locate_model(recipe.model, local_files_only)
    offline = local_files_only if local_files_only is not None else _hub_offline()
    dtype = getattr(torch, DTYPES[recipe.precision])
    kw = {"dtype": dtype, "local_files_only": offline}
    if recipe.quantization == "nf4":
        kw["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype, llm_int8_skip_modules=[VISION_RE, "lm_head"])
        kw["device_map"] = {"": device}
    processor = AutoProcessor.from_pretrained(path, local_files_only=offline)
    m = AutoModelForImageTextToText.from_pretrained(path, **kw)
    if recipe.quantization == "none":
        m = m.to(device)
    else:
        from .compat import disable_cpu_weight_packing

        disable_cpu_weight_packing(m)  # else an AVX512-BF16 CPU repacks 4-bit weights on the first generate()
    if not use_lora:
        return m, processor
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    # nf4: freeze the base, enable input grads (+ checkpointing if asked). Note peft also upcasts every non-4-bit
    # fp16/bf16 weight (vision tower, embeddings, norms) to fp32: ~+2 GB on a 3B model, still fine on 16 GB.
    if recipe.quantization == "nf4":
        m = prepare_model_for_kbit_training(m, use_gradient_checkpointing=recipe.gradient_checkpointing,
                                            gradient_checkpointing_kwargs={"use_reentrant": False})
    elif recipe.gradient_checkpointing:
        m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        m.enable_input_require_grads()
    torch.manual_seed(recipe.seed)
    cfg = LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                     target_modules=recipe.lora.target_modules or lora_target_modules(m), task_type="CAUSAL_LM")
    return get_peft_model(m, cfg), processor


def require_backend(backend: str = "hf", device: str | None = "auto") -> None:
    """Raise BackendUnavailableError unless `backend` can run on `device` here: 'hf' always can; 'unsloth' needs a
    CUDA GPU and the unsloth package, and is imported here, before the stage imports trl/peft (unsloth patches them
    when it is imported first). Stages call this before touching their data or output folder."""
    if backend == "hf":
        return
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    import importlib.util

    import torch

    if not torch.cuda.is_available() or (device or "auto") == "cpu":
        raise BackendUnavailableError(
            "backend='unsloth' needs a CUDA GPU: unsloth's vision models (FastVisionModel) are GPU-only, and on a CPU "
            "unsloth raises 'vision / audio models are not supported on the CPU backend'. "
            + ("No CUDA GPU is visible here (torch.cuda.is_available() is False). " if not torch.cuda.is_available()
               else "device='cpu' was asked for. ")
            + "Use backend='hf': it loads the same checkpoint, 4-bit NF4 and LoRA included, on the CPU.")
    if importlib.util.find_spec("unsloth") is None:
        raise BackendUnavailableError("backend='unsloth' needs the unsloth package: `pip install '.[unsloth]'` "
                                      "(pinned to versions that match this kit's torch/transformers/trl), or use "
                                      "backend='hf'.")
    import unsloth  # noqa: F401  (patches transformers/trl/peft; a no-op when already imported)


def unsloth_mode(model, training: bool, backend: str = "hf"):
    """unsloth's switch between training and fast generation (`FastVisionModel.for_training/for_inference`);
    a no-op unless `backend` (the recipe's that loaded the model) is 'unsloth'."""
    if backend != "unsloth":
        return model
    from unsloth import FastVisionModel

    (FastVisionModel.for_training if training else FastVisionModel.for_inference)(model)
    return model


def _load_unsloth(recipe: Recipe, device: str | None, use_lora: bool, local_files_only: bool | None):
    import torch

    require_backend("unsloth", device)
    from unsloth import FastVisionModel

    path = locate_model(recipe.model, local_files_only)
    m, processor = FastVisionModel.from_pretrained(
        path, load_in_4bit=recipe.quantization == "nf4", dtype=getattr(torch, DTYPES[recipe.precision]),
        use_gradient_checkpointing="unsloth" if recipe.gradient_checkpointing else False)
    if use_lora:
        m = FastVisionModel.get_peft_model(
            m, finetune_vision_layers=False, finetune_language_layers=True, finetune_attention_modules=True,
            finetune_mlp_modules=True, r=recipe.lora.r, lora_alpha=recipe.lora.alpha,
            lora_dropout=recipe.lora.dropout, bias="none", random_state=recipe.seed)
    return m, processor
