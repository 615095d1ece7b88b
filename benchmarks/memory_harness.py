"""Measuring what `mpi_kit.memory` predicts: one synthetic step of a stage (`run_stage`) under `measure_peak`.

`measure_peak()` measures the planner's quantity: `torch.cuda.max_memory_allocated` on a GPU; on a CPU, the bytes of
live tensors at entry plus the highest running total of the allocator's allocations and frees inside the block, as
recorded by `torch.profiler` (profile_memory=True): an allocator-level number, not process RSS. Used by
tests/test_memory.py (CPU) and bench_gpu.py (a real card).
"""
from __future__ import annotations

import gc

from mpi_kit.memory import GIB, Workload


def synthetic_inputs(config, batch: int, tokens: int, n_image_tokens: int, seed: int = 0) -> dict:
    """A batch shaped like the kit's rows: one image (n_image_tokens placeholders, grid 1 x merge x n*merge) then
    random text, `tokens` in all; what a stage step sees, without a tokenizer."""
    import torch

    g = torch.Generator().manual_seed(seed)
    v, merge = config.vision_config, config.vision_config.spatial_merge_size
    special = {config.image_token_id, config.video_token_id, config.vision_start_token_id, config.vision_end_token_id}
    vocab = config.get_text_config().vocab_size
    ids = torch.randint(0, min(vocab, 1000), (batch, tokens), generator=g)
    ids[torch.isin(ids, torch.tensor(sorted(special)))] = 0
    ids[:, 0] = config.vision_start_token_id
    ids[:, 1:1 + n_image_tokens] = config.image_token_id
    ids[:, 1 + n_image_tokens] = config.vision_end_token_id
    grid = torch.tensor([[1, merge, n_image_tokens * merge]] * batch)
    patch_dim = getattr(v, "in_chans", getattr(v, "in_channels", 3)) * v.temporal_patch_size * v.patch_size ** 2
    pixels = torch.randn(int(grid.prod(-1).sum()), patch_dim, generator=g)
    mm = (ids == config.image_token_id).long()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "pixel_values": pixels, "image_grid_thw": grid,
            "mm_token_type_ids": mm}


def run_stage(model, stage: str, micro_batch: int, workload: Workload, generation_batch: int | None = None,
              fast: bool = False):
    """One step of a stage on synthetic inputs, the way the trainers run it: VM-CPT / SFT forward with labels,
    backward, AdamW step; RL update the same with log-probs of the completion only (TRL's selective log-softmax);
    RL generation `generate` of the group's completions (fast: the shared-prefill path)."""
    import torch

    dev = next(p for p in model.parameters()).device
    cfg = model.config
    dtype = next(p for p in model.parameters() if p.is_floating_point()).dtype
    if stage == "rl_generation":
        n = generation_batch or micro_batch
        G = 2 * workload.G if workload.policy_rollout else workload.G
        prompts = max(1, n // G)
        halves = [(n, workload.sequence(stage))]
        if workload.policy_rollout:
            halves = [(n // 2, workload.sequence(stage)), (n // 2, workload.sequence(stage) + workload.policy_tokens)]
        from mpi_kit.rollout import shared_prefill_generate
        model.eval()
        for seqs, prompt in halves:
            x = synthetic_inputs(cfg, prompts, prompt, workload.image_tokens)
            rep = seqs // prompts
            x = {"input_ids": x["input_ids"].repeat_interleave(rep, 0), "attention_mask":
                 x["attention_mask"].repeat_interleave(rep, 0), "mm_token_type_ids":
                 x["mm_token_type_ids"].repeat_interleave(rep, 0), "pixel_values": x["pixel_values"].repeat(rep, 1),
                 "image_grid_thw": x["image_grid_thw"].repeat_interleave(rep, 0)}
            if rep > 1 and prompts > 1:  # pixel rows follow the image rows: image k's patches for copy j
                per = x["pixel_values"].shape[0] // (rep * prompts)
                chunks = x["pixel_values"][:per * prompts].split(per)
                x["pixel_values"] = torch.cat([c for c in chunks for _ in range(rep)])
            x = {k: v.to(dev) for k, v in x.items()}
            kw = dict(max_new_tokens=workload.completion_tokens, min_new_tokens=workload.completion_tokens,
                      do_sample=True, pad_token_id=0)
            with torch.no_grad():
                if fast:
                    shared_prefill_generate(model, **x, **kw)
                else:
                    model.generate(**x, **kw)
        return
    model.train()
    x = {k: v.to(dev) for k, v in synthetic_inputs(cfg, micro_batch, workload.sequence(stage),
                                                   workload.image_tokens).items()}
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    if stage == "rl_update":
        from trl.trainer.utils import selective_log_softmax

        C = workload.completion_tokens
        logits = model(**x, logits_to_keep=C + 1).logits[:, :-1]
        logps = selective_log_softmax(logits, x["input_ids"][:, -C:])
        loss = -(logps * torch.randn_like(logps)).mean()
    else:
        loss = model(**x, labels=x["input_ids"].masked_fill(x["mm_token_type_ids"] > 0, -100)).loss
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    del opt, loss
    return dtype


def _live_tensor_bytes() -> int:
    """Bytes of every live CPU tensor's storage (each storage once): what the allocator holds at this moment."""
    import torch

    seen, total = set(), 0
    for o in gc.get_objects():
        try:
            if isinstance(o, torch.Tensor) and o.device.type == "cpu" and not o.is_meta:
                st = o.untyped_storage()
                if st.data_ptr() not in seen:
                    seen.add(st.data_ptr())
                    total += st.nbytes()
        except Exception:  # noqa: BLE001 - tensor subclasses without storage
            continue
    return total


class measure_peak:
    """`with measure_peak() as m: ...; m.gib` - peak allocated memory of the block (see the module docstring)."""

    def __enter__(self):
        import torch

        self.cuda = torch.cuda.is_available() and torch.cuda.is_initialized()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            gc.collect()
            self.base = _live_tensor_bytes()
            self.prof = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True)
            self.prof.__enter__()
        return self

    def __exit__(self, *exc):
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.bytes = torch.cuda.max_memory_allocated()
        else:
            self.prof.__exit__(*exc)
            events = []

            def walk(n):
                if n.tag == torch._C._profiler._EventType.Allocation and n.extra_fields.device.type == "cpu":
                    events.append((n.start_time_ns, n.extra_fields.alloc_size))
                for c in n.children:
                    walk(c)

            for root in self.prof.profiler.kineto_results.experimental_event_tree():
                walk(root)
            cur = peak = 0
            for _, size in sorted(events, key=lambda e: e[0]):
                cur += size
                peak = max(peak, cur)
            self.bytes = self.base + peak
        self.gib = self.bytes / GIB


