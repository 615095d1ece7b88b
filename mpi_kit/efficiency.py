"""The cost of carrying a policy in every prompt (paper Fig. 6): prompt tokens and prefill time with the policy in
context vs without it, on a data folder's held-out rows. Every task's data has both settings (`Task.efficiency`)."""
from __future__ import annotations

import time

import torch


@torch.no_grad()
def prefill_seconds(model, processor, rows, batch_size: int = 1, repeats: int = 3) -> tuple[float, int]:
    """(median seconds of one prefill forward over a batch of prompts, mean prompt tokens per row)."""
    from trl.data_utils import prepare_multimodal_messages

    rows = list(rows)[:batch_size]
    texts = [processor.apply_chat_template(prepare_multimodal_messages(r["prompt"], images=r["images"]),
                                           add_generation_prompt=True) for r in rows]
    getattr(processor, "tokenizer", processor).padding_side = "left"
    device = next(model.parameters()).device
    batch = processor(text=texts, images=[r["images"] for r in rows], return_tensors="pt", padding=True).to(device)
    times = []
    for _ in range(repeats + 1):  # the first is a warm-up
        t = time.perf_counter()
        model(**batch)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    tokens = int(batch["attention_mask"].sum()) / len(rows)
    return sorted(times[1:])[len(times[1:]) // 2], int(tokens)


def efficiency(model, processor, data_dir, batch_sizes=(1, 8)) -> list[dict]:
    """Prompt tokens and prefill time with the policy in context vs without it (MPI), at each batch size."""
    from .data import load_kit_data

    ev = load_kit_data(data_dir, "eval")
    rows = []
    for bs in batch_sizes:
        t_np, n_np = prefill_seconds(model, processor, ev["no_policy"], bs)
        t_ic, n_ic = prefill_seconds(model, processor, ev["in_context"], bs)
        rows.append({"batch_size": bs,
                     **{k: ev["no_policy"][0][k] for k in ("depth", "variant") if k in ev["no_policy"].column_names},
                     "prompt_tokens_in_context": n_ic, "prompt_tokens_no_policy": n_np,
                     "token_reduction_pct": round(100 * (1 - n_np / n_ic), 1),
                     "prefill_s_in_context": round(t_ic, 4), "prefill_s_no_policy": round(t_np, 4),
                     "prefill_reduction_pct": round(100 * (1 - t_np / t_ic), 1)})
    return rows
