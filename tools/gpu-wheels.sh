#!/usr/bin/env bash
# The wheels the GPU machine lacks (issue 19), fetched here into .whl/ for the device tool to carry.
#
#   tools/gpu-wheels.sh        # then the device calls that tools/gpu-check.sh's header gives, carry=[".whl"]
#
# The lent H200's own Python (3.12, torch 2.11, triton, numba, pytest, hypothesis, scipy, scikit-learn,
# sacrebleu, einops, httpx, tqdm, matplotlib: /work/.library/device/KINDS.md) has every dependency of the
# kernels and the benchmark, but not these, which the experiments import: python-chess (Buffer of Thoughts),
# gymnasium and FastAPI with pydantic (AgentGym). They are pure Python but for pydantic-core, fetched for
# CPython 3.12 on x86-64 Linux (python-chess, published as source only, is built into a wheel here),
# each at the version constraints.txt locks; tools/gpu-check.sh installs
# .whl/*.whl into /tmp/site when the folder is there. No dependency is resolved (the machine has numpy,
# anyio, click, h11); the list names each package it lacks.
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES="chess gymnasium Farama-Notifications fastapi starlette pydantic pydantic_core annotated-types
typing-inspection typing_extensions opentelemetry-api annotated-doc uvicorn"
PY=${PY:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
pins=()
for name in $PACKAGES; do
    pin=$(grep -i -E "^${name//[-_]/[-_]}==" constraints.txt || true)
    [ -n "$pin" ] || { echo "gpu-wheels: $name is not in constraints.txt" >&2; exit 1; }
    pins+=("$pin")
done
rm -rf .whl
platforms=()
for tag in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
           manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$tag")
done
for pin in "${pins[@]}"; do
    if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            "${platforms[@]}" -d .whl "$pin" 2>/dev/null; then
        # published as source only (python-chess): a wheel built here installs there if it is pure Python
        "$PY" -m pip wheel -q --no-deps -w .whl "$pin"
        name=${pin%%==*}
        compgen -G ".whl/${name//-/_}-*-py3-none-any.whl" > /dev/null || compgen -G ".whl/${name}-*-py3-none-any.whl" \
            > /dev/null || { echo "gpu-wheels: $pin has no CPython 3.12 wheel and is not pure Python" >&2; exit 1; }
    fi
done
ls .whl
du -sh .whl
