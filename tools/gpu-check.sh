#!/usr/bin/env bash
# Checks for a CUDA machine: the GPU-only tests (Triton kernels on real shapes, CUDA training), the
# kernel benchmark with Triton rows, and the toolkit experiment on the GPU. Results go to ${OUT:-gpu-out}.
# Uses the machine's own torch/triton when the venv is absent (PYTHONPATH points at the checkout).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/kernels PYTHONUNBUFFERED=1 PAPERLAB_CACHE=$OUT/cache PAPERLAB_PROGRESS=0
PY=${PY:-python3}
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
$PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_kernels_rmsnorm.py tests/test_nn.py \
    tests/test_train.py tests/test_data.py tests/test_bench.py 2>&1 | tail -15
$PY -m paperlab.bench rmsnorm --device cuda | tee "$OUT/bench-cuda.txt"
$PY -m paperlab.bench rmsnorm --device cuda --json > "$OUT/bench-cuda.jsonl"
/usr/bin/time -v $PY -m paperlab run toolkit --profile full --device cuda --out "$OUT" 2>&1 | grep -E "wrote|Elapsed|Maximum resident"
$PY - "$OUT" <<'PY'
import json, sys
r = json.load(open(f"{sys.argv[1]}/toolkit-full.json"))["results"]
print({k: r[k] for k in ("entropy_per_token", "val_sentence_loss", "final_val_window_loss", "samples_in_grammar",
                         "train_seconds")})
PY
