"""Sampling and log-prob + backward time of one batch (B=16 x G=8, sort_text n=5) under the
sdpa and eager attention kernels, alternated twice in one process.

    .venv/bin/python bench/attention.py MODEL_DIR
"""
import time, torch, sys
torch.set_num_threads(2)
from lmrl.policies.hf import HFPolicy
from lmrl.config import Config
from lmrl.trainer import build_task
cfg = Config().replace(policy={"model": sys.argv[1]}, task={"task":"sort_text","n":5,"heldout_size":500})
task = build_task(cfg)
pol = HFPolicy.from_pretrained(sys.argv[1], max_new_tokens=task.max_new_tokens)
g = torch.Generator().manual_seed(0)
ex = task.sample_prompts(16, g); prompts=pol.encode([e["prompt"] for e in ex])
def timeit(f, k=20):
    for _ in range(3): f()
    t=time.perf_counter()
    for _ in range(k): f()
    return (time.perf_counter()-t)/k
ro = pol.sample(prompts, 8, generator=g)
def lp():
    pol.zero_grad(); l,_ = pol.logprobs(prompts, ro.responses, ro.response_mask, True); l.sum().backward()
for impl in ["sdpa", "eager", "sdpa", "eager"]:
    pol.model.set_attn_implementation(impl)
    print(impl, "sample %.4f" % timeit(lambda: pol.sample(prompts, 8, generator=g)), "logprob+bwd %.4f" % timeit(lp))
