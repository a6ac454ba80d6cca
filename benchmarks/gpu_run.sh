#!/usr/bin/env bash
# benchmarks/gpu.py on the lent GPU machine, in one call (README, "GPU benchmark").
#
#   bash benchmarks/gpu_run.sh prepare   here, in the checkout the session started in:
#                                        the pure wheels the GPU machine lacks, into .whl/
#   bash benchmarks/gpu_run.sh device    there: install them, run, results into $OUT
#
# The GPU machine has Python 3.12 and torch 2.11 but neither demucs nor its julius, and
# no registry; everything else the engine imports (numpy, einops, pyyaml, safetensors,
# tqdm) is in its image. The device tool's call is:
#   run(command="bash benchmarks/gpu_run.sh device", carry=[".whl"], timeout_s=600)
# gpu.py keeps to a 480 s budget and rewrites $OUT/gpu.json after every cell; the log of
# the whole run is $OUT/gpu.log.
set -euo pipefail
WHEELS=(demucs==4.1.0 julius==0.2.8)

case "${1:-}" in
prepare)
    exclude=$(git rev-parse --git-path info/exclude)
    grep -qx '/.whl/' "$exclude" 2>/dev/null || echo /.whl/ >>"$exclude"
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
    ;;
device)
    : "${OUT:?OUT must name the folder for the results}"
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD" PYTHONUNBUFFERED=1
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.log"
    timeout 570 python3 -m benchmarks.gpu "$OUT" --device cuda --compile 2>&1 |
        tee -a "$OUT/gpu.log"
    ;;
*)
    echo "usage: $0 prepare|device" >&2
    exit 2
    ;;
esac
