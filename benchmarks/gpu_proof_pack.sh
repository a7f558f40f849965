#!/usr/bin/env bash
# Pack what a bare GPU image lacks for benchmarks/gpu_proof.py into ONE file that travels with the repo.
#
#   bash benchmarks/gpu_proof_pack.sh          # here, where PyPI is reachable: writes .gpuproof/site-py312.tar.xz
#
# The lent GPU machine (see docs/benchmarks.md, "GPU proof") reaches no package registry and has
# Python 3.12 with torch, timm, transformers, numpy, pandas, pyarrow, aiohttp, grpcio... but not
# Ray, Pydantic, FastAPI, open_clip, torchreid or faiss. Its tool carries at most 64 MiB per call,
# and Ray 2.60's wheel alone is 76 MiB (most of it a Java jar, the dashboard's web page and RLlib,
# none of which the proof runs). So this script installs the missing packages for CPython 3.12 on
# x86-64 into a folder, drops what the GPU image already has and the parts of Ray the proof never
# loads, and compresses the rest into .gpuproof/site-py312.tar.xz (git-ignored); benchmarks/gpu_proof.sh
# unpacks it on the device and puts it on PYTHONPATH. The script fails if the pack is over 60 MiB.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
PACK=.gpuproof/site-py312.tar.xz
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
PLATFORM=(--only-binary=:all: --python-version 3.12 --implementation cp --abi cp312 --abi abi3 --abi none
          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
          --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform any)

# Distributions the GPU image already holds (its package list, read 2026-11-17): never carried, so
# the image's own numpy, pyarrow or torch is the one that loads.
DEVICE_HAS=" absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings cuda-core
cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet filelock
flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro onnx onnx-ir onnxruntime onnxscript opencv-python-headless opt-einsum opt-einsum-fx
optax optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker
prometheus-client propcache protobuf psutil py-cpuinfo pyarrow pybind11 pygments pyparsing pyproject-hooks
pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil
pytorch-lightning pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image
scikit-learn scipy seaborn sentence-transformers sentencepiece setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl
tifffile tiktoken timm tokenizers toolz torch torch-geometric torchaudio torchdiffeq torchmetrics torchvision
tqdm transformers treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig
werkzeug wheel wrapt xarray xxhash yarl zipp "

mkdir -p "$WORK/wheels" "$WORK/site" .gpuproof
# Ray with its data and serve extras, resolved for 3.12; open_clip and gdown without their
# dependencies (torch, timm... are on the image), with the two small ones they add.
"$PY" -m pip download -q "${PLATFORM[@]}" -d "$WORK/wheels" "ray[data,serve]==2.60.0"
"$PY" -m pip download -q "${PLATFORM[@]}" --no-deps -d "$WORK/wheels" \
    open_clip_torch ftfy wcwidth gdown beautifulsoup4 soupsieve faiss-cpu
for wheel in "$WORK"/wheels/*.whl; do
    name=$(basename "$wheel" | cut -d- -f1 | tr 'A-Z_.' 'a-z--')
    [[ " $(echo $DEVICE_HAS) " == *" $name "* ]] && rm "$wheel"
done
"$PY" -m pip install -q "${PLATFORM[@]}" --no-deps --no-compile --target "$WORK/site" "$WORK"/wheels/*.whl
# torchreid 0.2.5 is published as source only; its Python package is all reidray imports.
"$PY" -m pip download -q --no-deps --no-binary :all: -d "$WORK/sdist" torchreid==0.2.5
tar -xzf "$WORK"/sdist/torchreid-0.2.5.tar.gz -C "$WORK/sdist"
cp -r "$WORK/sdist/torchreid-0.2.5/torchreid" "$WORK/site/"
mkdir "$WORK/site/torchreid-0.2.5.dist-info"  # so importlib.metadata (the proof's version table) finds it
cp "$WORK/sdist/torchreid-0.2.5/PKG-INFO" "$WORK/site/torchreid-0.2.5.dist-info/METADATA"

# Parts of Ray the proof never loads (Java workers, the dashboard's web page, RLlib), tests, and
# console scripts (their first line names this machine's Python).
rm -rf "$WORK"/site/ray/jars "$WORK"/site/ray/dashboard/client/build "$WORK"/site/ray/rllib "$WORK"/site/bin
find "$WORK/site" -depth -type d \( -name tests -o -name __pycache__ \) -exec rm -rf {} +
ls "$WORK/site" | grep -E 'dist-info$' | sed 's/-[0-9].*//' | tr '\n' ' ' > "$WORK/site/GPU_PROOF_PACKAGES"
XZ_OPT=-9 tar -cJf "$PACK" -C "$WORK/site" .
size=$(stat -c %s "$PACK")
echo "$PACK: $((size / 1024 / 1024)) MiB; carries: $(cat "$WORK/site/GPU_PROOF_PACKAGES")"
if (( size > 60 * 1024 * 1024 )); then
    echo "the pack is over 60 MiB: the device tool carries at most 64 MiB per call, repo included" >&2
    exit 1
fi
