#!/usr/bin/env bash
# Checks on a CPU machine with PyPI that bcat installs and runs the way it must on the GPU machine (bench/README.md,
# "gpu_check.py"): a Python 3.12 venv holding that machine's versions (its pip list: torch 2.11.0+cu130,
# transformers 5.17.0, accelerate 1.15.0, safetensors 0.8.0, tokenizers 0.23.2, numpy 2.5.2, huggingface_hub
# 1.33.0, sentencepiece 0.2.2; the others it has without a version read are taken as PyPI's newest), then the
# wheels of scripts/gpu_wheels.sh and bcat installed there exactly as that machine installs them (--no-deps,
# --target), then: the imports, the CLI, `bench/gpu_check.py --dry-run`, bcat's doctests and the tests that
# matter there, except the `slow` ones (the built-in model's packages do not travel).
#
# PyPI's torch 2.11.0 for Linux is the CUDA 13.0 build, the GPU machine's own: about 5.5 GB installed with its
# NVIDIA libraries; on a machine without a GPU it runs on the CPU.
#
# Usage: scripts/check_gpu_env_on_cpu.sh [VENV] [OUT]      (defaults /tmp/venv312, /tmp/gpu-env-check)
#   PYTHON=python3.12 picks the interpreter; on a shared machine run it as `OMP_NUM_THREADS=1 nice -n 15 ...`.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.12}
VENV=${1:-/tmp/venv312}
OUT=${2:-/tmp/gpu-env-check}
MACHINE=(torch==2.11.0 transformers==5.17.0 accelerate==1.15.0 safetensors==0.8.0 tokenizers==0.23.2 numpy==2.5.2
         huggingface_hub==1.33.0 sentencepiece==0.2.2 peft scipy matplotlib jinja2 tqdm pytest pyarrow sacrebleu pyyaml
         pandas xxhash)
TESTS=(tests/model tests/training tests/evaluation/test_generation.py tests/evaluation/test_eval_precision.py
       tests/integrations tests/test_readme.py tests/test_bench_continuous_batching.py tests/test_bench_protocol.py
       tests/test_packaging.py tests/test_layers.py tests/gpu bcat)

[[ -x "$VENV/bin/python" ]] || "$PYTHON" -m venv "$VENV"
py="$VENV/bin/python"
"$py" -c 'import sys; assert sys.version_info[:2] == (3, 12), sys.version' \
  || { echo "check_gpu_env_on_cpu: $VENV is not Python 3.12 (PYTHON=$PYTHON)" >&2; exit 2; }
"$py" -m pip install -q "${MACHINE[@]}"

bash scripts/gpu_wheels.sh
rm -rf "$OUT" && mkdir -p "$OUT"
site="$OUT/site"
# what bench/README.md runs on the GPU machine, with this venv's python as that machine's python3
"$py" -m pip install -q --no-index --no-deps --no-build-isolation --target "$site" .whl/*.whl .
export PYTHONPATH="$PWD:$site" PATH="$site/bin:$PATH"

"$py" -c 'import torch, transformers, accelerate, peft, trl, numpy, bcat, bcat.cli
print("check_gpu_env_on_cpu:", *(f"{m.__name__} {m.__version__}" for m in (torch, transformers, accelerate, peft, trl, numpy)))'
"$py" -m bcat.cli --help > /dev/null
bcat --help > /dev/null  # the installed command
"$py" bench/gpu_check.py --dry-run --output "$OUT/gpu-check"
"$py" -m pytest -p no:cacheprovider -rfEs -m "not slow" "${TESTS[@]}"
echo "check_gpu_env_on_cpu: all passed"
