#!/usr/bin/env bash
# The checks that need a CUDA machine, as one script (issue 19). Run once on a GPU, from the repository root:
#
#   OUT=gpu-out tools/gpu-check.sh              # everything (the experiments take most of the time)
#   STAGES="tests bench" tools/gpu-check.sh     # a subset: tests, bench, experiments
#
# 1. tests:       the kernel tests on the GPU (Triton on real shapes, every hot path under
#                 torch.cuda.set_sync_debug_mode("error"): tests/test_kernels_cuda_sync.py), the benchmark
#                 harness, and the device handling of the experiments;
# 2. bench:       python -m paperlab.bench --device cuda --json at the GPU-sized shapes: the JSON lines
#                 (machine first, then one row each) in $OUT/bench-gpu.jsonl, the whole run as one document
#                 (machine, date, library versions, every row) in $OUT/bench-gpu.json and as a table in
#                 $OUT/bench-gpu.txt; commit $OUT/bench-gpu.json as data/bench/gpu.json: the appendix
#                 "Kernels and speed" reads it;
# 3. experiments: each registered experiment (python -m paperlab run --help lists them; EXPERIMENTS="sae ssd"
#                 for a subset) in the full profile on the GPU, uncached, with its wall time
#                 ($OUT/experiments-gpu.tsv), to set against the same runs on 2 CPU cores.
#
# Needs torch, triton, numba, pytest and hypothesis (the venv's, or the machine's own).
#
# Uses the machine's own torch/triton when the venv is absent (PYTHONPATH points at the checkout).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
STAGES=${STAGES:-tests bench experiments}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src:$PWD/kernels PYTHONUNBUFFERED=1 PAPERLAB_CACHE=$OUT/cache PAPERLAB_PROGRESS=0
PY=${PY:-python3}
[ -x .venv/bin/python ] && PY=${PY_VENV:-.venv/bin/python}
EXPERIMENTS=${EXPERIMENTS:-$($PY -c "from paperlab import registry; print(' '.join(registry.names()))")}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.cuda.is_available())"
status=0

if [[ " $STAGES " == *" tests "* ]]; then
    echo "== tests"
    $PY -m pytest -q -p no:cacheprovider -o addopts="" tests/test_kernels_*.py tests/test_bench.py \
        tests/test_experiments_device.py 2>&1 | tail -25 | tee "$OUT/tests-gpu.txt"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
fi

if [[ " $STAGES " == *" bench "* ]]; then
    echo "== bench"
    $PY -m paperlab.bench --device cuda --json --out "$OUT/bench-gpu.json" | tee "$OUT/bench-gpu.jsonl"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    $PY -c "import json, sys; from paperlab.bench.__main__ import format_table; from paperlab.bench import Row
doc = json.load(open(sys.argv[1])); print(doc['machine']); print(format_table([Row(**r) for r in doc['rows']]))" \
        "$OUT/bench-gpu.json" 2>&1 | tee "$OUT/bench-gpu.txt"
fi

if [[ " $STAGES " == *" experiments "* ]]; then
    echo "== experiments (full profile, on the GPU, uncached)"
    printf "experiment\tdevice\tseconds\tstatus\n" > "$OUT/experiments-gpu.tsv"
    for name in $EXPERIMENTS; do
        start=$(date +%s%N)
        $PY -m paperlab run "$name" --profile full --device cuda --no-cache --out "$OUT" > "$OUT/run-$name.log" 2>&1
        rc=$?
        ms=$(( ($(date +%s%N) - start) / 1000000 ))
        printf "%s\tcuda\t%d.%03d\t%s\n" "$name" $((ms / 1000)) $((ms % 1000)) "$rc" | tee -a "$OUT/experiments-gpu.tsv"
        [ "$rc" -eq 0 ] || { status=1; tail -5 "$OUT/run-$name.log"; }
    done
fi
exit $status
