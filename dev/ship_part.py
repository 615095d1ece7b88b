import json, sys, time, torch
torch.set_num_threads(1)
import pretrain_tiny as P
from mpi_kit.tiny import load_tiny
m, proc = load_tiny("assets/tiny-vlm")
n_perc, depths, dest = int(sys.argv[1]), tuple(int(d) for d in sys.argv[2].split(",") if d), sys.argv[3]
t = time.time()
res = P.evaluate(m, proc, n_perception=n_perc, n_policy=200, depths=depths, progress=False)
res["wall"] = time.time() - t
open(dest, "w").write(json.dumps(res))
