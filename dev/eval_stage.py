import json, sys, time, torch
torch.set_num_threads(1)
import pretrain_tiny as P
from mpi_kit.tiny import load_tiny
path, out, n_perc, n_pol = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
depths = tuple(int(d) for d in sys.argv[5].split(",") if d)
m, proc = load_tiny(path)
t = time.time()
res = P.evaluate(m, proc, n_perception=n_perc, n_policy=n_pol, depths=depths, progress=False)
res["eval_seconds"] = time.time() - t
open(out, "w").write(json.dumps(res, indent=1))
print(json.dumps({k: v for k, v in res.items() if not isinstance(v, dict)}, indent=1)); print(res.get("cot_steps"))
