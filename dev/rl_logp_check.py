"""Does the RL training forward see the image? Builds the kit's GRPO trainer from an SFT model, makes one batch of
rollouts, and compares TRL's per-token log-probs with the image, with a blank image, and a plain model forward."""
import sys, torch
torch.set_num_threads(1); torch.manual_seed(0)
from mpi_kit.rl import rl_trainer
data, init = sys.argv[1], sys.argv[2]
tr, proc, info = rl_trainer("tiny", data, "/tmp/diag/rl", "grpo", False, init=init, max_steps=1,
                            **{"grpo.max_completion_length": 120})
batch = next(iter(tr.get_train_dataloader()))
tr.model.train()
inp = tr._generate_and_score_completions(batch)
print({k: (tuple(v.shape) if hasattr(v, "shape") else v) for k, v in inp.items() if k != "images"})
ids = torch.cat([inp["prompt_ids"], inp["completion_ids"]], 1)
mask = torch.cat([inp["prompt_mask"], inp["completion_mask"]], 1)
K = inp["completion_ids"].size(1)
kw = {k: inp[k] for k in ("pixel_values", "image_grid_thw", "num_images", "mm_token_type_ids") if k in inp}
with torch.no_grad():
    lp = tr._get_per_token_logps_and_entropies(tr.model, ids, mask, K, batch_size=8, **kw)[0]
    kw0 = dict(kw); kw0["pixel_values"] = torch.zeros_like(kw["pixel_values"])
    lp0 = tr._get_per_token_logps_and_entropies(tr.model, ids, mask, K, batch_size=8, **kw0)[0]
    kw1 = dict(kw); kw1["pixel_values"] = kw["pixel_values"].flip(0)
    lp1 = tr._get_per_token_logps_and_entropies(tr.model, ids, mask, K, batch_size=8, **kw1)[0]
cm = inp["completion_mask"].bool()
print("mean logp (image):", lp[cm].mean().item(), " blank:", lp0[cm].mean().item(), " shuffled:", lp1[cm].mean().item())
print("per-seq sum logp image :", (lp * cm).sum(1).tolist())
print("per-seq sum logp blank :", (lp0 * cm).sum(1).tolist())
print("rewards/adv:", inp.get("advantages"))
print(proc.batch_decode(inp["completion_ids"][:2], skip_special_tokens=False))
