"""Which signal teaches the language model to read the image? "Is there a <colour> object?" without chat template.

Loads the checkpoint after the "see" stage (vision tower trained, language model random), freezes the vision
tower and trains the language model on balanced Yes/No colour questions (batch 16, lr as given), printing the
loss and held-out accuracy (128 questions) every 25 steps. The answer is predicted right after the colour word
("onehop": "<image> red"), after the question ("twohop": "<image>Is there a red object in the image?"), or
after the image ("qfirst": " red<image>"). Env: ATTN=L adds a loss on head 0 of layer L at the answer position
to attend to the cells holding that colour (or <|vision_start|> when none does); GATHER=1 adds one on head 0
of layer 0 to attend to the colour word; SCALE=k scales the visual tokens.

    python dev/retrieval_diagnostic.py VARIANT STEPS LR     (needs runs/pretrain/see/final)

Results (2026-11-28, 1 thread, lr 1e-3): onehop 0.70-0.76 after 1,500 steps (0.58 at 400); onehop SCALE=0.05
0.62 at 350; qfirst 0.55 at 400; twohop ATTN=1 0.45 at 300 (the retrieve head cannot know the colour);
**onehop ATTN=0 0.97 at step 75**; **twohop GATHER=1 ATTN=1 0.88-0.96 from step 225 to 399**. That is `taught retrieval` in
`scripts/pretrain_tiny.py`.
"""
import os
import random
import sys
import time
import torch
from pretrain_tiny import set_threads
from mpi_kit.tiny import load_tiny, IMAGE_SIZE
from mpi_kit.tasks.clevr.scenes import sample_scene, render_scene, ATTRIBUTES
set_threads(1)
variant, steps, lr = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
model, proc = load_tiny(os.environ.get("SEE", "runs/pretrain/see/final"))
torch.manual_seed(0)
if os.environ.get("SCALE"):
    vis = model.model.visual; orig = vis.forward; k = float(os.environ["SCALE"])
    def fwd(*a, **kw):
        out = orig(*a, **kw); out.pooler_output = out.pooler_output * k; return out
    vis.forward = fwd
tok = proc.tokenizer
yes, no = tok.convert_tokens_to_ids(tok.tokenize(" Yes"))[0], tok.convert_tokens_to_ids(tok.tokenize(" No"))[0]
print("yes/no ids", yes, no, tok.tokenize(" Yes"), tok.tokenize(" No"))
COLORS = ATTRIBUTES["color"]
def ex(key):
    rng = random.Random(f"HOP/{key}")
    s = sample_scene(rng); want = rng.random() < 0.5
    for _ in range(50):
        c = rng.choice(COLORS)
        if s.has(color=c) == want: break
    if variant == "onehop": t = f"<|vision_start|><|image_pad|><|vision_end|> {c}"
    elif variant == "qfirst": t = f" {c}<|vision_start|><|image_pad|><|vision_end|>"
    else: t = f"<|vision_start|><|image_pad|><|vision_end|>Is there a {c} object in the image?"
    return t, render_scene(s, IMAGE_SIZE), yes if s.has(color=c) else no, s, c
ATTN = os.environ.get("ATTN")
if ATTN:
    model.set_attn_implementation("eager")
from pretrain_tiny import cell_targets, VALUES
def batch(exs):
    b = proc(text=[e[0] for e in exs], images=[e[1] for e in exs], return_tensors="pt", padding=True)
    if ATTN:
        ids = b["input_ids"]; tgt = torch.zeros_like(ids, dtype=torch.float)
        for i, e in enumerate(exs):
            cells = (ids[i] == model.config.image_token_id).nonzero().squeeze(-1)
            has = cell_targets(e[3])[:, 1 + VALUES.index(("color", e[4]))]
            if has.sum() > 0: tgt[i, cells] = has
            else: tgt[i, (ids[i] == 3).nonzero()[0]] = 1
        b["_tgt"] = tgt
        if os.environ.get("GATHER"):
            g = torch.zeros_like(tgt)
            for i, e in enumerate(exs):
                cid = tok.convert_tokens_to_ids(tok.tokenize(" " + e[4]))[0]
                g[i, (ids[i] == cid).nonzero()[-1]] = 1
            b["_g"] = g
    return b, torch.tensor([e[2] for e in exs])
for p in model.model.visual.parameters(): p.requires_grad_(False)
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
evb, evy = batch([ex(f"eval/{i}") for i in range(128)])
AUX = {}
def logits(b):
    tg = b.pop("_tgt", None); g = b.pop("_g", None)
    out = model(**b, output_attentions=tg is not None)
    if tg is not None:
        att = out.attentions[int(ATTN)][:, 0, -1]    # layer ATTN, head 0, at the last (answer) position
        AUX["aux"] = -torch.log((att * (tg > 0)).sum(-1) + 1e-6).mean()
        if g is not None:
            a0 = out.attentions[0][:, 0, -1]
            AUX["aux"] = AUX["aux"] - torch.log((a0 * g).sum(-1) + 1e-6).mean()
    return out.logits[:, -1]   # left padding: the last position predicts the answer
def evaluate():
    model.eval()
    with torch.no_grad(): lg = logits({k: v for k, v in evb.items() if k not in ("_tgt", "_g")})
    model.train()
    pred = torch.where(lg[:, yes] > lg[:, no], yes, no)
    return (pred == evy).float().mean().item()
t = time.time()
for step in range(steps):
    b, y = batch([ex(f"train/{step}/{j}") for j in range(16)])
    loss = torch.nn.functional.cross_entropy(logits(b), y)
    if AUX: loss = loss + AUX.pop("aux"); AUX.clear()
    loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step(); opt.zero_grad()
    if step % 25 == 0 or step == steps - 1:
        print(variant, step, round(loss.item(), 3), "acc", evaluate(), f"{time.time()-t:.0f}s", flush=True)
