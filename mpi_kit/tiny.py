"""The tiny base VLM: a few-million-parameter Qwen2.5-VL built from a config, with a tokenizer trained here.

Nothing is downloaded. `build_tiny(texts)` trains a byte-level BPE tokenizer on our own generated text, sizes
the image processor for the tiny scene renders (96x64 px -> 24 image tokens with patch 8, merge 2) and builds a
randomly initialised `Qwen2_5_VLForConditionalGeneration`; `save_tiny` writes a standard checkpoint that loads
back through `AutoProcessor` / `AutoModelForImageTextToText`. `scripts/pretrain_tiny.py` teaches it to see, to
read and to follow a policy in context.
"""
from __future__ import annotations

from pathlib import Path

import torch
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

# Qwen2.5-VL's special tokens (same strings, tiny ids), plus <think> / </think> as ordinary single tokens.
SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>",
                  "<|image_pad|>", "<|video_pad|>"]
THINK_TOKENS = ["<think>", "</think>"]
# Qwen2's pre-tokenizer split (words with their leading space, punctuation runs, newlines), except that a
# number or a dotted condition id (" 1.2.1") stays one piece, so BPE can give each id a single token.
QWEN_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+| ?\p{N}+(?:\.\p{N}+)*| ?[^\s\p{L}\p{N}]+[\r\n]*"
              r"|\s*[\r\n]+|\s+(?!\S)|\s+")

# Default geometry: the scenes are rendered at IMAGE_SIZE; PATCH*MERGE = 16 px per image token.
IMAGE_SIZE = (96, 64)  # (width, height): 6 x 4 = 24 image tokens, one 16x16 px cell each
PATCH, MERGE = 8, 2
MIN_PIXELS = 32 * 32             # small policy crops (-M) get at least 2 x 2 image tokens
MAX_PIXELS = IMAGE_SIZE[0] * IMAGE_SIZE[1]  # larger images (real CLEVR 480x320) shrink to 96x64

TINY_DIMS = dict(vocab_size=2048, hidden=256, layers=4, heads=4, kv_heads=2, mlp=768, max_positions=4096,
                 vit_hidden=128, vit_depth=4, vit_heads=4, vit_mlp=384)


def chat_template() -> str:
    """Qwen2.5-VL's exact chat template, as TRL ships it (so TRL recognises the model as Qwen2.5-VL)."""
    import trl
    return (Path(trl.__file__).parent / "chat_templates" / "qwen2_5_vl.jinja").read_text()


def train_tokenizer(texts, vocab_size: int = TINY_DIMS["vocab_size"]):
    """Byte-level BPE trained on `texts` (Qwen's split rule, Qwen's special tokens), wrapped for transformers.

    Byte-level means any string round-trips, even characters the corpus never showed.
    """
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(THINK_TOKENS), special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in THINK_TOKENS])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None,
        padding_side="left", model_max_length=TINY_DIMS["max_positions"],
        extra_special_tokens={"image_token": "<|image_pad|>", "video_token": "<|video_pad|>",
                              "vision_start_token": "<|vision_start|>", "vision_end_token": "<|vision_end|>"})


def build_processor(tokenizer, image_size: tuple[int, int] = IMAGE_SIZE):
    """A standard Qwen2_5_VLProcessor whose image processor works at the tiny scale (patch 8, merge 2)."""
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessor, Qwen2VLVideoProcessor

    max_pixels = image_size[0] * image_size[1]
    image_processor = Qwen2VLImageProcessor(min_pixels=MIN_PIXELS, max_pixels=max_pixels, patch_size=PATCH,
                                            merge_size=MERGE, temporal_patch_size=2)
    video_processor = Qwen2VLVideoProcessor(min_pixels=MIN_PIXELS, max_pixels=max_pixels, patch_size=PATCH,
                                            merge_size=MERGE, temporal_patch_size=2)
    return Qwen2_5_VLProcessor(image_processor=image_processor, tokenizer=tokenizer,
                               video_processor=video_processor, chat_template=chat_template())


def build_config(tokenizer, dims: dict | None = None):
    """A Qwen2_5_VLConfig at tiny scale: token ids from our tokenizer, every ViT block full attention."""
    from transformers import Qwen2_5_VLConfig

    d = {**TINY_DIMS, **(dims or {})}
    head_dim = d["hidden"] // d["heads"]
    q = head_dim // 2  # mrope_section (temporal, height, width) must sum to head_dim / 2
    mrope = [q - 2 * (q * 3 // 8), q * 3 // 8, q * 3 // 8]
    ids = tokenizer.convert_tokens_to_ids
    text = dict(vocab_size=len(tokenizer), hidden_size=d["hidden"], intermediate_size=d["mlp"],
                num_hidden_layers=d["layers"], num_attention_heads=d["heads"], num_key_value_heads=d["kv_heads"],
                max_position_embeddings=d["max_positions"], rms_norm_eps=1e-6, tie_word_embeddings=True,
                rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": mrope},
                bos_token_id=ids("<|endoftext|>"), eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"))
    vision = dict(depth=d["vit_depth"], hidden_size=d["vit_hidden"], intermediate_size=d["vit_mlp"],
                  num_heads=d["vit_heads"], out_hidden_size=d["hidden"], patch_size=PATCH, spatial_merge_size=MERGE,
                  temporal_patch_size=2, window_size=PATCH * MERGE * 16,
                  fullatt_block_indexes=list(range(d["vit_depth"])))
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True,
                            image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
                            vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"))


def build_tiny(texts, dims: dict | None = None, seed: int = 0):
    """(model, processor): a fresh tiny Qwen2.5-VL with random weights (seeded) and a tokenizer trained on `texts`."""
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    d = {**TINY_DIMS, **(dims or {})}
    tokenizer = train_tokenizer(texts, d["vocab_size"])
    processor = build_processor(tokenizer)
    config = build_config(tokenizer, d)
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(config).float().eval()
    model.generation_config = GenerationConfig(
        bos_token_id=config.text_config.bos_token_id, eos_token_id=[tokenizer.eos_token_id],
        pad_token_id=tokenizer.pad_token_id, do_sample=False, max_new_tokens=256)
    return model, processor


def save_tiny(model, processor, out_dir) -> Path:
    """Write a standard checkpoint (config, safetensors, tokenizer, processor, chat template)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    return out


def load_tiny(path, dtype=torch.float32):
    """(model, processor) from a saved tiny checkpoint through the Auto classes, in eval mode."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    processor.tokenizer.padding_side = "left"
    model = AutoModelForImageTextToText.from_pretrained(path, dtype=dtype).eval()
    return model, processor
