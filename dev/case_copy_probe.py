"""Teacher-forced case-copy probe: does the model write the right case number right after "the response is Case"?

Gold CoT of held-out policies (seed family "base/probe/..."), one forward pass, argmax at the case token. With
--renumber, every "Case k" is renamed to a random number in 0..63 first, so N = 2 and N = 4 trees also name the
cases that only N = 6 trees have. Separates copying the case token from reaching it (greedy following).

    python dev/case_copy_probe.py MODEL_DIR --depth 2 --renumber --n 60
"""
import argparse
import random
import re

import torch
from trl.trainer.sft_trainer import DataCollatorForVisionLanguageModeling

from mpi_kit.tasks.clevr.abilities import make_example
from mpi_kit.tiny import load_tiny


def renumber(ex, rng):
    parts = [c for m in ex["prompt"] + ex["completion"] for c in m["content"] if c.get("text")]
    old = sorted({int(k) for c in parts for k in re.findall(r"Case (\d+)", c["text"])})
    new = dict(zip(old, rng.sample(range(64), len(old))))
    for c in parts:
        c["text"] = re.sub(r"Case (\d+)", lambda m: f"Case {new[int(m[1])]}", c["text"])
    return ex


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--depth", type=int, default=2)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--renumber", action="store_true")
    a = ap.parse_args()
    torch.set_num_threads(1)
    model, processor = load_tiny(a.model)
    model.eval()
    tok = processor.tokenizer
    collate = DataCollatorForVisionLanguageModeling(processor, completion_only_loss=True)
    case_id = tok.convert_tokens_to_ids(tok.tokenize(" Case"))[-1]
    rng = random.Random(0)
    right = low = low_right = 0
    for i in range(a.n):
        ex = make_example("policy", f"probe/{i}", a.depth)
        if a.renumber:
            ex = renumber(ex, rng)
        batch = collate([{k: ex[k] for k in ("prompt", "completion", "images")}])
        ids, labels = batch["input_ids"][0], batch["labels"][0]
        first = int((labels != -100).nonzero()[0])
        pos = [p for p in range(first, len(ids) - 1) if ids[p] == case_id][0]  # the CoT's "... is Case"
        with torch.no_grad():
            logits = model(**{k: v for k, v in batch.items() if k != "labels"}).logits[0, pos]
        ok = int(logits.argmax()) == int(ids[pos + 1])
        k = int(tok.decode(ids[pos + 1]).strip())
        right += ok
        if k < 16:
            low += 1
            low_right += ok
    print(f"depth {a.depth} renumber {a.renumber}: {right}/{a.n} right; cases 0-15: {low_right}/{low}; "
          f"16-63: {right - low_right}/{a.n - low}")


if __name__ == "__main__":
    main()
