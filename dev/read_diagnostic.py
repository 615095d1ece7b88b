"""Why the tiny model does not read its image: can the language model learn to bind a question to the visual tokens?

Loads the checkpoint after the "see" stage (vision tower trained on dense per-cell targets, language model still
random), freezes the vision tower and trains the language model on "Is there a <colour> object in the image?"
(balanced Yes/No), printing the loss and held-out accuracy (128 questions) every 25 steps.

    python dev/read_diagnostic.py VARIANT STEPS LR      (T=threads, default 1; needs runs/pretrain/see/final)

Variants: base (as pretraining does), fixed (always "red": no binding needed), scale<k> (visual tokens x k),
oracleword (visual tokens replaced by the sum of the attribute words' embeddings of the object in each cell),
attn (an extra loss makes head 0 of layer 0, at the colour word, attend to the cells holding that colour, or to
<|vision_start|> when none does), textrule (the answer depends on the question text only), curr (curriculum of
1, 2, 4, then 8 colours). Results are in assets/tiny-vlm/README.md, "Left open".
"""
import random
import sys
import time
import torch
from pretrain_tiny import set_threads
from mpi_kit.tiny import load_tiny, IMAGE_SIZE
from mpi_kit.tasks.clevr.scenes import sample_scene, render_scene, ATTRIBUTES
from mpi_kit.data import assistant
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling
set_threads(int(__import__("os").environ.get("T","1")))
variant = sys.argv[1]; steps = int(sys.argv[2]); lr = float(sys.argv[3])
model, proc = load_tiny(__import__("os").environ.get("SEE", "runs/pretrain/see/final"))
if "attn" in variant:
    model.config._attn_implementation = "eager"
    model.config.text_config._attn_implementation = "eager"
    model.set_attn_implementation("eager")
torch.manual_seed(0)
scale = None
if "scale" in variant:
    vis = model.model.visual
    orig = vis.forward
    def fwd(*a, **k):
        out = orig(*a, **k)
        out.pooler_output = out.pooler_output * float(variant.split("scale")[1].split("_")[0])
        return out
    vis.forward = fwd
def color_ex(key, ncolors=8):
    rng = random.Random(f"DIAG/{key}")
    s = sample_scene(rng)
    want = rng.random() < 0.5
    for _ in range(50):
        c = "red" if "fixed" in variant else rng.choice(ATTRIBUTES["color"][:ncolors])
        if s.has(color=c) == want: break
    q = f"Is there a {c} object in the image?"
    ORACLE.setdefault("pending", []).append((s, c))
    return {"prompt": [{"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": q}]}],
            "completion": assistant(ans(s, c)), "images": [render_scene(s, IMAGE_SIZE)],
            "answer": ans(s, c)}
def ans(s, c):
    if "textrule" in variant:
        return "Yes" if c in ("red", "blue", "green", "gray") else "No"
    return "Yes" if s.has(color=c) else "No"
ORACLE = {}
if "oracle" in variant:
    from pretrain_tiny import VALUES
    g = torch.Generator().manual_seed(1)
    if "word" in variant:
        E = model.get_input_embeddings().weight.detach()
        tok = proc.tokenizer
        vecs = torch.stack([E[tok.convert_tokens_to_ids(tok.tokenize(" object"))[0]]] + [E[tok.convert_tokens_to_ids(tok.tokenize(" " + v))[0]] for a, v in VALUES])
        vecs = vecs / vecs.norm(dim=-1, keepdim=True)
    else:
        vecs = torch.randn(1 + len(VALUES), model.config.text_config.hidden_size, generator=g) / 16
    def oracle_feats(pixel_values, image_grid_thw=None, **kw):
        from transformers.modeling_outputs import BaseModelOutputWithPooling
        t = ORACLE["t"]
        f = t @ vecs
        return BaseModelOutputWithPooling(last_hidden_state=f, pooler_output=list(f.split([int(x) for x in (image_grid_thw.prod(-1) // 4)])))
    model.model.get_image_features = oracle_feats
    _render = render_scene
collate = DataCollatorForVisionLanguageModeling(proc, completion_only_loss=True)
for p in model.model.visual.parameters(): p.requires_grad_(False)
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
yes_id = proc.tokenizer.convert_tokens_to_ids(proc.tokenizer.tokenize("Yes"))[0]
no_id = proc.tokenizer.convert_tokens_to_ids(proc.tokenizer.tokenize("No"))[0]
ev = [color_ex(f"eval/{i}") for i in range(128)]
def mk(exs):
    pend = ORACLE.pop("pending", [])[-len(exs):]
    scenes = [x[0] for x in pend]
    b = collate(exs)
    if "attn" in variant:
        from pretrain_tiny import cell_targets, VALUES
        ids = b["input_ids"]
        tgt = torch.zeros_like(ids, dtype=torch.float)
        qpos = []
        for i, (sc, c) in enumerate(pend):
            cid = proc.tokenizer.convert_tokens_to_ids(proc.tokenizer.tokenize(" " + c))[0]
            qpos.append(int((ids[i] == cid).nonzero()[-1]))
            cells = (ids[i] == model.config.image_token_id).nonzero().squeeze(-1)
            has = cell_targets(sc)[:, 1 + VALUES.index(("color", c))]
            if has.sum() > 0:
                tgt[i, cells] = has
            else:
                tgt[i, (ids[i] == 3).nonzero()[0]] = 1
        b["_q"] = torch.tensor(qpos); b["_tgt"] = tgt
    if "oracle" in variant:
        from pretrain_tiny import cell_targets
        b["_t"] = torch.cat([cell_targets(x) for x in scenes])
    return b
evb = mk(ev)
def evaluate():
    model.eval()
    with torch.no_grad():
        ORACLE["t"] = evb.get("_t")
        out = model(**{k: v for k, v in evb.items() if k not in ("labels", "_t", "_q", "_tgt")})
    lab = evb["labels"]
    # position predicting the first completion token
    pos = (lab != -100).float().argmax(1) - 1
    lg = out.logits[torch.arange(len(ev)), pos]
    pred = ["Yes" if lg[i, yes_id] > lg[i, no_id] else "No" for i in range(len(ev))]
    model.train()
    return sum(p == e["answer"] for p, e in zip(pred, ev)) / len(ev)
t = time.time(); model.train()
for step in range(steps):
    ends = [int(x) for x in __import__("os").environ.get("CURR", "60,150,250").split(",")]  # ends of the 1/2/4-colour stages
    nc = 8 if "curr" not in variant else (1 if step < ends[0] else 2 if step < ends[1] else 4 if step < ends[2] else 8)
    b = mk([color_ex(f"train/{step}/{j}", nc) for j in range(16)])
    ORACLE["t"] = b.pop("_t", None)
    q, tg = b.pop("_q", None), b.pop("_tgt", None)
    if q is not None:
        out = model(**b, output_attentions=True)
        att = out.attentions[0][torch.arange(len(q)), 0, q]  # (B, T) head 0 at the colour word
        aux = -torch.log((att * (tg > 0)).sum(-1) + 1e-6).mean()
        loss = out.loss + aux
        if step % 25 == 0: print("aux", round(aux.item(), 3))
    else:
        loss = model(**b).loss
    loss.backward(); torch.nn.utils.clip_grad_norm_(params, 1.0); opt.step(); opt.zero_grad()
    if step % 25 == 0 or step == steps - 1:
        print(variant, step, "nc", nc, round(loss.item(), 3), "acc", evaluate(), f"{time.time()-t:.0f}s", flush=True)
