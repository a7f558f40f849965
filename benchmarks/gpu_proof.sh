#!/usr/bin/env bash
# The GPU proof in one call on a GPU machine: unpack the carried packages if any, run, write to $OUT.
#
#   bash benchmarks/gpu_proof.sh [gpu_proof.py options]       # from the repository root
#
# OUT is the output folder (default ./gpu-proof-out); it receives gpu_proof.json, gpu_proof.md and
# gpu_proof.log. On a machine without PyPI access, first run benchmarks/gpu_proof_pack.sh where
# PyPI is reachable and carry the folder .gpuproof with the call (docs/benchmarks.md, "GPU proof").
# Without the pack the proof still runs: the parts that need a missing package (Ray, open_clip,
# torchreid, faiss) are recorded as skipped with that reason.
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-$PWD/gpu-proof-out}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/gpu_proof.log") 2>&1  # everything below is also in the log that comes back
PY=${PYTHON:-python3}
PACK=.gpuproof/site-py312.tar.xz
SITE=/tmp/gpu-proof-site

if [ -f "$PACK" ]; then
    if [ "$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')" != 3.12 ]; then
        echo "warning: $PACK holds CPython 3.12 packages and $PY is $("$PY" -V 2>&1): not used" >&2
    elif mkdir -p "$SITE" && tar -xJf "$PACK" -C "$SITE"; then
        echo "carried packages: $(cat "$SITE/GPU_PROOF_PACKAGES")"
        export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
    else
        echo "warning: $PACK did not unpack; running with the packages installed here" >&2
    fi
elif ! "$PY" -c 'import ray' 2>/dev/null && timeout 20 "$PY" -m pip index versions ray >/dev/null 2>&1; then
    # A machine that reaches PyPI: install what reidray's proof needs the ordinary way.
    "$PY" -m pip install -q "ray[data,serve]==2.60.0" open_clip_torch torchreid==0.2.5 gdown faiss-cpu pydantic \
        || echo "warning: pip install failed; parts that need a missing package will be skipped" >&2
fi

export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
# No model hub is needed (random weights) and none may be reachable: never wait on one.
export HF_HUB_OFFLINE=1 REIDRAY_DOWNLOAD=0 RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=disabled
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.max.sm \
    --format=csv
# 9 minutes at most: the device tool stops a command at 10; the proof's own budget is 8.
timeout 540 "$PY" benchmarks/gpu_proof.py --out "$OUT" "$@"
status=$?
# A run stopped by the timeout printed no table: show what it saved.
[ $status -ne 0 ] && [ -f "$OUT/gpu_proof.md" ] && echo && cat "$OUT/gpu_proof.md"
exit $status
