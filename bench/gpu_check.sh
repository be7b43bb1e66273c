#!/usr/bin/env bash
# The GPU checks of issue 14, for a machine with CUDA (one short run, under ~6 minutes on one
# GPU). Run from the repository root after `make test` has built .venv:
#
#     bash bench/gpu_check.sh            # writes bench/results/gpu_check/
#
# 1. Data parallel on the GPU: tests/test_distributed.py's 2-rank = 1-process test (toy and a
#    tiny causal LM, with and without LoRA). nccl when there are 2+ GPUs; on one GPU the two
#    ranks share it under gloo (nccl refuses two ranks on one device), CUDA tensors either way.
# 2. The tiny-model training target (bench/lm_targets.py sort5, seed 0: SFT, then GRPO to a
#    held-out exact match >= 0.98 within 3 minutes).
# 3. lmrl against TRL's GRPOTrainer on the same work (bench/vs_trl.py, tiny model, one cell).
#
# Each part has its own time limit and the script goes on after a failure; the summary at the
# end says which parts passed. Nothing here runs on a CPU-only machine (it says so and exits 2).
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-bench/results/gpu_check}

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "gpu_check: error: no CUDA device here; this script is for a GPU machine" >&2
    exit 2
fi
mkdir -p "$OUT"
"$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())])" | tee "$OUT/device.txt"
gpus=$("$PY" -c "import torch; print(torch.cuda.device_count())")
backend=$([ "$gpus" -ge 2 ] && echo nccl || echo gloo)

declare -A status
part() {  # part NAME SECONDS COMMAND...: run with a limit, keep its output, record pass/fail
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s)"
    local start=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -n 15 "$OUT/$name.log"
    status[$name]="rc=$rc $((SECONDS - start))s"
}

part equality_$backend 150 env LMRL_DIST_BACKEND=$backend "$PY" -m pytest -q -p no:cacheprovider \
    tests/test_distributed.py -m slow -k "two_ranks_end_with"
part lm_target_sort5 240 "$PY" bench/lm_targets.py --only sort5 --seeds 0 --threads 4 \
    --root "$OUT/runs" --out "$OUT/lm_targets.jsonl"
part vs_trl_tiny 240 "$PY" bench/vs_trl.py --sizes tiny --n 5 --kl 0.04 --repeats 1 \
    --steps 30 --heldout 100 --idle-timeout 10 --out "$OUT/vs_trl"

echo "== summary (rc=0 passed; 124 ran out of time)" | tee "$OUT/summary.txt"
for name in "${!status[@]}"; do echo "$name: ${status[$name]}"; done | sort | tee -a "$OUT/summary.txt"
