#!/usr/bin/env bash
# The checks that need a CUDA machine, as one script (issue 19). On the lent GPU machine (the device tool,
# 15 minutes of device time in all, 10 minutes a command, at most 8 files back from $OUT):
#
#   tools/gpu-wheels.sh                                        # here, first: the wheels the machine lacks
#   run(command="BUDGET_S=420 STAGES='tests bench' tools/gpu-check.sh", carry=[".whl"], timeout_s=480)
#   run(command="BUDGET_S=300 STAGES=experiments tools/gpu-check.sh", carry=[".whl"], timeout_s=360)
#
# The second call finds the machine warm if it follows at once. Stages:
#
# 1. tests:       the CUDA tests first (every kernel's hot path under torch.cuda.set_sync_debug_mode("error"):
#                 tests/test_kernels_cuda_sync.py), then the kernel tests on the GPU (Triton on real
#                 shapes), the benchmark harness and the experiments' device handling: $OUT/tests-gpu.txt;
# 2. bench:       python -m paperlab.bench --device cuda --json at the GPU-sized shapes: the whole run as one
#                 document (machine, date, library versions, every row) in $OUT/bench-gpu.json, its rows
#                 as they come in $OUT/bench-gpu.jsonl (the machine first: what a cut-short run keeps),
#                 and as a table on the output; commit bench-gpu.json as data/bench/gpu.json: the
#                 appendix "Kernels and speed" reads it;
# 3. experiments: each registered experiment (EXPERIMENTS="sae ssd" for some; SAE first, the one issue 19
#                 names) in the full profile on the GPU, uncached, with its wall time and exit status in
#                 $OUT/experiments-gpu.tsv (a row "skipped" for each the budget left no time for), the end
#                 of each one's output in $OUT/experiments-gpu.log and its results JSON in
#                 $OUT/experiments-results.tar.gz; set the times against the same runs on 2 CPU cores.
#
# BUDGET_S (default 0: none) is the wall time the stages may use together: each command runs under
# `timeout` for what is left, the tests stage for TESTS_S (200) at most, and an experiment does not start
# with under a minute left, so that the files under $OUT are written before the device tool's limit kills
# the command. The machine's own Python
# (torch, triton, numba, pytest, hypothesis) is used unless a .venv is there; .whl/*.whl (WHEELS=.whl), when
# carried, are installed into /tmp/site first. For a dry run of the plumbing on a CPU: DEVICE=cpu PROFILE=fast
# BENCH_ARGS="--quick" (tests/test_bench.py runs one). To try it against the machine's library versions
# rather than the lock's (a 5 GB venv):
#   python3.12 -m venv /tmp/v211 && /tmp/v211/bin/pip install torch==2.11.0 "triton==3.6.*" "numba==0.68.*" \
#       einops tqdm matplotlib scipy scikit-learn sacrebleu httpx threadpoolctl pytest pytest-timeout hypothesis \
#       anyio click h11 cloudpickle
#   tools/gpu-wheels.sh && OUT=/tmp/gpuout PY_VENV=/tmp/v211/bin/python DEVICE=cpu PROFILE=fast \
#       BENCH_ARGS="--quick" tools/gpu-check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
STAGES=${STAGES:-tests bench experiments}
DEVICE=${DEVICE:-cuda}
PROFILE=${PROFILE:-full}
BENCH_ARGS=${BENCH_ARGS:-}
BUDGET_S=${BUDGET_S:-0}
TESTS_S=${TESTS_S:-200}
START=$(date +%s)
mkdir -p "$OUT"
WORK=$(mktemp -d)  # run logs, results and the cache stay out of $OUT: few files come back from there
export PYTHONPATH=$PWD/src:$PWD/kernels PYTHONUNBUFFERED=1 PAPERLAB_CACHE=$WORK/cache PAPERLAB_PROGRESS=0
PY=${PY:-python3}
[ -x .venv/bin/python ] && PY=${PY_VENV:-.venv/bin/python}
WHEELS=${WHEELS:-.whl}
if compgen -G "$WHEELS/*.whl" > /dev/null; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
        "$WHEELS"/*.whl || { echo "gpu-check: could not install $WHEELS/*.whl" >&2; exit 1; }
    export PYTHONPATH=$PYTHONPATH:/tmp/site
fi
EXPERIMENTS=${EXPERIMENTS:-$($PY -c "from paperlab import registry
names = registry.names(); print(' '.join(sorted(names, key=lambda n: n != 'sae')))")}
status=0

left() {  # seconds of the budget still left (a day when there is no budget)
    local r=86400
    [ "$BUDGET_S" -gt 0 ] && r=$(( BUDGET_S - ($(date +%s) - START) ))
    echo $(( r > 1 ? r : 1 ))
}

{
    command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version \
        --format=csv,noheader
    $PY -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', \
torch.cuda.is_available())"
} 2>&1 | tee "$OUT/machine.txt"

if [[ " $STAGES " == *" tests "* ]]; then
    # the sync-debug tests first, on their own, then the rest within TESTS_S, so that the bench keeps its
    # share of the budget; one test may take 120 s at most
    stage_end=$(( $(date +%s) + TESTS_S ))
    : > "$OUT/tests-gpu.txt"
    for tests in "tests/test_kernels_cuda_sync.py" \
                 "$(ls tests/test_kernels_*.py | grep -v cuda_sync | tr "\n" " ")tests/test_bench.py tests/test_experiments_device.py"; do
        cap=$(( stage_end - $(date +%s) )); [ "$cap" -lt "$(left)" ] || cap=$(left)
        echo "== tests: $tests ($cap s at most)" | tee -a "$OUT/tests-gpu.txt"
        # shellcheck disable=SC2086  # the file names: several words
        timeout "$(( cap > 1 ? cap : 1 ))" $PY -m pytest -q -p no:cacheprovider -o addopts="" --timeout 120 \
            -k "not gpu_check_script" \
            $tests 2>&1 | tail -30 | tee -a "$OUT/tests-gpu.txt"
        [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    done
fi

if [[ " $STAGES " == *" bench "* ]]; then
    echo "== bench ($(left) s left)"
    # the rows as they are measured (a line each, the machine first), kept if the budget cuts the run short
    # shellcheck disable=SC2086  # BENCH_ARGS: several words
    timeout "$(left)" $PY -m paperlab.bench --device "$DEVICE" --json --out "$OUT/bench-gpu.json" $BENCH_ARGS \
        | tee "$OUT/bench-gpu.jsonl"
    [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
    [ -f "$OUT/bench-gpu.json" ] && $PY -c "import json, sys
from paperlab.bench.__main__ import format_table
from paperlab.bench import Row
doc = json.load(open(sys.argv[1])); print(doc['machine']); print(format_table([Row(**r) for r in doc['rows']]))" \
        "$OUT/bench-gpu.json"
fi

if [[ " $STAGES " == *" experiments "* ]]; then
    echo "== experiments ($PROFILE profile, on $DEVICE, uncached; $(left) s left)"
    printf "experiment\tdevice\tseconds\tstatus\n" > "$OUT/experiments-gpu.tsv"
    : > "$OUT/experiments-gpu.log"
    mkdir -p "$WORK/results"
    for name in $EXPERIMENTS; do
        if [ "$(left)" -lt 60 ]; then
            printf "%s\t%s\t-\tskipped (budget)\n" "$name" "$DEVICE" | tee -a "$OUT/experiments-gpu.tsv"
            continue
        fi
        start=$(date +%s%N)
        timeout "$(left)" $PY -m paperlab run "$name" --profile "$PROFILE" --device "$DEVICE" --no-cache \
            --out "$WORK/results" > "$WORK/run-$name.log" 2>&1
        rc=$?
        ms=$(( ($(date +%s%N) - start) / 1000000 ))
        printf "%s\t%s\t%d.%03d\t%s\n" "$name" "$DEVICE" $((ms / 1000)) $((ms % 1000)) "$rc" \
            | tee -a "$OUT/experiments-gpu.tsv"
        { echo "== $name (exit $rc)"; tail -20 "$WORK/run-$name.log"; } >> "$OUT/experiments-gpu.log"
        [ "$rc" -eq 0 ] || { status=1; tail -5 "$WORK/run-$name.log"; }
    done
    tar -czf "$OUT/experiments-results.tar.gz" -C "$WORK/results" .
fi
rm -rf "$WORK"
exit $status
