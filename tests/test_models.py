"""The real-checkpoint path, offline: small Qwen2.5-VL and Qwen3-VL checkpoints built here (random weights, a
WordLevel tokenizer, a patch-8 image processor) load through `load_model` exactly as a hub download would,
including the consumer-GPU recipes' 4-bit NF4 + LoRA on the CPU. Recipes and error messages are checked too."""

import json

import pytest
import torch
from PIL import Image

from mpi_kit.models import (BackendUnavailableError, ModelNotFoundError, as_recipe, count_parameters, load_model,
                            lora_target_modules, peak_memory)
from mpi_kit.recipes import RECIPES, TINY_MODEL_DIR, Recipe, RecipeError, get_recipe

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>",
           "<|video_pad|>"]
WORDS = "<unk> is there a red blue cube sphere yes no ? user assistant".split()
PROMPT = "<|vision_start|><|image_pad|><|vision_end|> is there a red cube ?"
ARCHS = {"qwen2_5_vl": "qwen2.5-vl-3b", "qwen3_vl": "qwen3-vl-4b"}  # small config -> the recipe it stands in for


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS + SPECIAL)}, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    t.add_special_tokens(SPECIAL)
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="<unk>", eos_token="<|im_end|>",
                                   pad_token="<|endoftext|>")


def _build(arch: str, out) -> None:
    """Save a ~0.15M-parameter checkpoint of the real architecture: LM 2x64, ViT 2x32, patch 8, merge 2."""
    from transformers import (Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor,
                              Qwen2VLImageProcessor, Qwen3VLConfig, Qwen3VLForConditionalGeneration, Qwen3VLProcessor)
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    from transformers.models.qwen3_vl.video_processing_qwen3_vl import Qwen3VLVideoProcessor

    tok = _tokenizer()
    ids = dict(image_token_id=tok.convert_tokens_to_ids("<|image_pad|>"),
               video_token_id=tok.convert_tokens_to_ids("<|video_pad|>"),
               vision_start_token_id=tok.convert_tokens_to_ids("<|vision_start|>"),
               vision_end_token_id=tok.convert_tokens_to_ids("<|vision_end|>"))
    rope = {"rope_type": "default", "rope_theta": 1e4, "mrope_section": [2, 3, 3]}  # sums to head_dim / 2
    text = dict(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=16, max_position_embeddings=512, rope_parameters=rope,
                pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=None)
    vision = dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64, patch_size=8,
                  spatial_merge_size=2, temporal_patch_size=2)
    image_proc = Qwen2VLImageProcessor(patch_size=8, merge_size=2, temporal_patch_size=2, min_pixels=32 * 32,
                                       max_pixels=128 * 128)
    torch.manual_seed(0)
    if arch == "qwen2_5_vl":
        cfg = Qwen2_5_VLConfig(text_config=text, vision_config=dict(vision, window_size=32, fullatt_block_indexes=[1]),
                               **ids)
        model = Qwen2_5_VLForConditionalGeneration(cfg)
        proc = Qwen2_5_VLProcessor(image_processor=image_proc, tokenizer=tok,
                                   video_processor=Qwen2VLVideoProcessor(patch_size=8))
    else:
        cfg = Qwen3VLConfig(text_config=dict(text, rope_parameters=dict(rope, mrope_interleaved=True)),
                            vision_config=dict(vision, num_position_embeddings=64, deepstack_visual_indexes=[0]),
                            **ids)
        model = Qwen3VLForConditionalGeneration(cfg)
        proc = Qwen3VLProcessor(image_processor=image_proc, tokenizer=tok,
                                video_processor=Qwen3VLVideoProcessor(patch_size=8))
    model.save_pretrained(out)
    proc.save_pretrained(out)


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("ckpt")
    for arch in ARCHS:
        _build(arch, root / arch)
    return {arch: str(root / arch) for arch in ARCHS}


@pytest.fixture(scope="session")
def qlora(checkpoints):
    """Each consumer recipe (NF4 + LoRA + checkpointing) pointed at the small checkpoint of its architecture;
    fp32 compute instead of bf16 only because bf16 is ~15x slower on a CPU."""
    return {arch: load_model(ARCHS[arch], model=path, precision="fp32") for arch, path in checkpoints.items()}


def _batch(processor, size=(96, 64)):
    image = Image.new("RGB", size, (200, 30, 30))
    return processor(text=[PROMPT], images=[image], return_tensors="pt")


# ---------------------------------------------------------------- recipes

@pytest.mark.parametrize("name", list(RECIPES))
def test_recipes_validate_and_round_trip_json(name):
    r = get_recipe(name)
    assert r.name == name
    assert Recipe.from_json(r.to_json()) == r == Recipe.from_dict(json.loads(json.dumps(r.to_dict())))
    assert r.grpo.trl_kwargs()["loss_type"] == "grpo" and "dynamic_sampling_retries" not in r.dapo.trl_kwargs()


def test_recipe_contents():
    tiny = get_recipe("tiny")
    assert tiny.model == str(TINY_MODEL_DIR) and TINY_MODEL_DIR.parts[-2:] == ("assets", "tiny-vlm")
    assert (tiny.device, tiny.precision, tiny.quantization, tiny.lora.enabled) == ("cpu", "fp32", "none", False)
    for name, hub in [("qwen2.5-vl-3b", "Qwen/Qwen2.5-VL-3B-Instruct"),
                      ("qwen2.5-vl-7b", "Qwen/Qwen2.5-VL-7B-Instruct"),
                      ("qwen3-vl-4b", "Qwen/Qwen3-VL-4B-Instruct")]:
        r = get_recipe(name)
        assert (r.model, r.quantization, r.lora.enabled, r.lora.target_modules) == (hub, "nf4", True, None)
        assert (r.grpo.epsilon, r.grpo.epsilon_high, r.grpo.beta) == (0.2, 0.3, 0.01)  # paper App. B
        d = r.dapo
        assert (d.epsilon, d.epsilon_high, d.beta, d.dynamic_sampling_retries) == (0.2, 0.28, 0, 20)
        assert r.sft_cot.learning_rate == 1e-4 and 1e-5 <= r.grpo.learning_rate <= 5e-5  # LoRA-scaled RL lr
        assert as_recipe(hub).name == name  # a hub id finds its recipe
    r = get_recipe("tiny", lora={"r": 4}, **{"grpo.learning_rate": 5e-6, "precision": "bf16"})
    assert (r.lora.r, r.grpo.learning_rate, r.precision) == (4, 5e-6, "bf16")
    assert get_recipe("tiny", quantization="nf4", lora={"enabled": True}).quantization == "nf4"  # QLoRA on CPU: ok


@pytest.mark.parametrize("call, match", [
    (lambda: get_recipe("qwen2.5-vl-3", ), r"unknown recipe 'qwen2.5-vl-3'\. Did you mean 'qwen2.5-vl-3b'"),
    (lambda: get_recipe("tiny", lr=1e-4), r"lr: unknown override"),
    (lambda: get_recipe("tiny", **{"grpo.learning_rat": 1e-4}), r"grpo.learning_rat: unknown override.*learning_rate"),
    (lambda: get_recipe("tiny", **{"sft_cot.learning_rate": -1e-4}), r"sft_cot.learning_rate: must be a finite"),
    (lambda: get_recipe("tiny", quantization="nf4"), r"'nf4' needs lora.enabled=True"),
    (lambda: get_recipe("tiny", precision="fp64"), r"precision: must be one of"),
    (lambda: get_recipe("tiny", grpo={"epsilon_high": 0.1}), r"epsilon_high: must be >= epsilon"),
    (lambda: get_recipe("tiny", lora={"target_modules": "all-linear"}), r"wraps the vision tower"),
    (lambda: Recipe.from_dict({"name": "x", "lora": {"r": "8"}}), r"recipe 'x': lora.r: expected int, got '8'"),
    (lambda: Recipe.from_dict({"modle": "x"}), r"modle: unknown field.*Did you mean 'model'"),
    (lambda: Recipe.from_json('{"name": '), r"recipe JSON is malformed"),
    (lambda: get_recipe("tiny", backend="vllm"), r"backend: must be one of \('hf', 'unsloth'\).*got 'vllm'"),
    (lambda: Recipe.from_dict({"backend": "unslot"}), r"backend: must be one of.*Did you mean 'unsloth'"),
])
def test_recipe_errors_are_clear(call, match):
    with pytest.raises(RecipeError, match=match):
        call()


# ---------------------------------------------------------------- loading

@pytest.mark.parametrize("arch", list(ARCHS))
def test_local_checkpoint_loads_through_auto_classes(checkpoints, arch):
    model, processor = load_model(checkpoints[arch])
    assert model.config.model_type == arch and model.mpi_recipe.name == "custom"
    assert type(processor).__name__.endswith("Processor") and next(model.parameters()).dtype == torch.float32
    assert processor.image_processor.size["longest_edge"] == model.mpi_recipe.max_pixels  # caps applied
    batch = _batch(processor)
    assert (batch["input_ids"] == processor.image_token_id).sum() == (96 // 16) * (64 // 16)  # 16 px per token
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=3, do_sample=False)
    assert out.shape == (1, batch["input_ids"].shape[1] + 3)
    assert count_parameters(model)["trainable_pct"] == 100.0  # full fine-tune by default


@pytest.mark.parametrize("arch", list(ARCHS))
def test_nf4_qlora_on_cpu_wraps_language_model_only(qlora, arch):
    import bitsandbytes as bnb

    model, processor = qlora[arch]
    assert model.mpi_recipe.quantization == "nf4" and model.mpi_recipe.lora.enabled
    four_bit = [n for n, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
    assert four_bit and all(".language_model." in n for n in four_bit)  # vision tower and lm_head stay full
    lora = {n.split(".lora_A")[0] for n, _ in model.named_modules() if n.endswith("lora_A")}
    assert len(lora) == 2 * 7 and all(".language_model.layers." in n for n in lora)  # q,k,v,o,gate,up,down x 2
    assert not [n for n, _ in model.named_modules() if ".visual." in n and "lora_" in n]
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)  # base frozen
    counts = count_parameters(model)
    assert 0 < counts["trainable"] < counts["total"]

    model.train()
    batch = _batch(processor)
    model(**batch, labels=batch["input_ids"]).loss.backward()
    grads = [n for n, p in model.named_parameters() if p.grad is not None]
    assert grads and all("lora_" in n for n in grads)
    model.zero_grad(set_to_none=True)


def test_lora_target_regex_excludes_vision_names_shared_with_language_model(checkpoints):
    import re

    model, _ = load_model(checkpoints["qwen2_5_vl"])
    pattern = lora_target_modules(model)
    # Qwen2.5-VL's vision MLP reuses gate/up/down_proj: a plain name list would wrap the vision tower too.
    assert "model.visual.blocks.0.mlp.gate_proj" in dict(model.named_modules())
    assert not re.fullmatch(pattern, "model.visual.blocks.0.mlp.gate_proj")
    assert not re.fullmatch(pattern, "model.visual.merger.mlp.0") and not re.fullmatch(pattern, "lm_head")
    assert re.fullmatch(pattern, "model.language_model.layers.1.mlp.gate_proj")

    lora_model, _ = load_model(checkpoints["qwen2_5_vl"], lora=True)  # full precision LoRA
    # r=8 on (in + out) of q 64->64, k/v 64->32, o 64->64, gate/up 64->128, down 128->64, in 2 layers
    assert count_parameters(lora_model)["trainable"] == 2 * 8 * (128 + 96 + 96 + 128 + 192 + 192 + 192)
    assert all("lora_" in n for n, p in lora_model.named_parameters() if p.requires_grad)
    assert lora_target_modules(lora_model) == pattern  # stable on an already-wrapped model


def test_unsloth_backend_says_why_not_on_cpu(checkpoints):
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: unsloth may run here")
    with pytest.raises(BackendUnavailableError, match=r"needs a CUDA GPU.*GPU-only.*backend='hf'"):
        load_model(checkpoints["qwen2_5_vl"], backend="unsloth")
    with pytest.raises(ValueError, match="backend must be"):
        load_model(checkpoints["qwen2_5_vl"], backend="vllm")


def test_recipe_backend_is_honoured_by_every_stage_loader(tmp_path):
    """`backend` defaults to 'hf' (also in recipe JSON written before the field existed) and is what load_model,
    stage_recipe and load_stage_model use: on a CPU, an unsloth recipe stops there with the GPU message."""
    from mpi_kit.training import load_stage_model, stage_recipe

    assert all(get_recipe(n).backend == "hf" for n in RECIPES) and Recipe.help()["backend"].startswith("How every")
    old = get_recipe("tiny").to_dict()
    del old["backend"]
    assert Recipe.from_dict(old) == get_recipe("tiny")
    r = get_recipe("qwen2.5-vl-3b", backend="unsloth")
    assert Recipe.from_json(r.to_json()).backend == "unsloth"
    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present: unsloth may run here")
    for call in (lambda: load_model(r), lambda: stage_recipe("tiny", backend="unsloth"),
                 lambda: stage_recipe(r, init=str(tmp_path)), lambda: load_stage_model(r)):
        with pytest.raises(BackendUnavailableError, match=r"needs a CUDA GPU"):
            call()
    assert stage_recipe("tiny").backend == "hf"


def test_unknown_model_gives_clear_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match=r"not a local folder.*Hugging Face cache.*hf download"):
        load_model("no-such-org/no-such-vlm", local_files_only=True)
    with pytest.raises(ModelNotFoundError, match=r"does not exist"):
        load_model(str(tmp_path / "missing"))
    with pytest.raises(ModelNotFoundError, match=r"no config.json"):
        load_model(str(tmp_path))
    with pytest.raises(RecipeError, match=r"unknown override"):
        load_model("tiny", quantisation="nf4")


def test_peak_memory_reports_gib():
    assert 0.05 < peak_memory() < 64


# ---------------------------------------------------------------- 4-bit weights on any CPU

@pytest.fixture
def force_avx512bf16(monkeypatch):
    """Make bitsandbytes believe this CPU has AVX512-BF16, so its inference-time weight packing path is taken
    (it is on such CPUs; on others this forces it): the regression then guards on every machine."""
    import bitsandbytes.nn.modules as bnb_modules

    monkeypatch.setattr(bnb_modules, "has_avx512bf16", lambda: True)


@pytest.mark.parametrize("arch", list(ARCHS))  # Qwen2.5-VL's q/k/v have bias (crashed), Qwen3-VL's not (wrong grads)
def test_nf4_lora_grads_unchanged_by_a_generate_before_training(checkpoints, force_avx512bf16, arch):
    import bitsandbytes as bnb

    def lora_grads(generate_first: bool) -> dict:
        model, processor = load_model(ARCHS[arch], model=checkpoints[arch], precision="fp32")
        layers = [m for m in model.modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert layers
        batch = _batch(processor)
        if generate_first:  # what the kit does: sample rollouts / evaluate, then train the same model
            model.eval()
            with torch.no_grad():
                model.generate(**batch, max_new_tokens=2, do_sample=False)
            assert not any(getattr(m.weight.quant_state, "packing_format_for_cpu", False) for m in layers)
        model.train()
        model(**batch, labels=batch["input_ids"]).loss.backward()
        return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    clean, after = lora_grads(False), lora_grads(True)
    assert clean.keys() == after.keys() and len(clean) == 2 * 7 * 2  # lora_A + lora_B on 7 linears x 2 layers
    assert any(g.abs().sum() > 0 for n, g in clean.items() if ".layers.0.self_attn.q_proj" in n)
    for n in clean:
        assert torch.equal(clean[n], after[n]), n


def test_cpu_weight_packing_is_undone_if_already_made(force_avx512bf16):
    import bitsandbytes as bnb

    from mpi_kit.compat import disable_cpu_weight_packing

    torch.manual_seed(0)
    lin = bnb.nn.Linear4bit(64, 64, bias=True, compute_dtype=torch.float32, quant_type="nf4").to("cpu")
    x = torch.randn(4, 64)
    lin.train()
    before = lin(x)
    lin.eval()
    with torch.no_grad():
        lin(x)
    assert lin.weight.quant_state.packing_format_for_cpu  # the path this guards against was taken
    assert disable_cpu_weight_packing(torch.nn.Sequential(lin)) == 1
    assert not lin.weight.quant_state.packing_format_for_cpu and not lin.support_avx512bf16_for_cpu
    lin.train()
    xg = x.clone().requires_grad_(True)
    out = lin(xg)
    out.sum().backward()  # crashed here before ("a view of a leaf Variable ... in-place operation")
    # bitsandbytes' inverse re-quantizes the double-quantized absmax, so outputs agree to ~1e-3, not bit for bit
    assert torch.allclose(out, before, atol=1e-2) and xg.grad is not None and xg.grad.abs().sum() > 0
