#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels that bcat needs and that a GPU machine with its own Python 3.12
# stack lacks: one with torch, transformers, accelerate, peft, safetensors, tokenizers, numpy, pandas, pyarrow,
# scipy, matplotlib, sacrebleu, jinja2, tqdm and pytest installed and no network. The versions are the lock's
# (requirements/lock.txt); peft is carried too, so that bcat runs there with the version it was tested with.
# Neither the built-in model's packages (bcat[builtin], 240 MB) nor lingua (bcat[langid], 96 MB) travel.
#
# There, from the repository root, bcat installs on top of the machine's own versions plus these wheels:
#   python3 -m pip install -q --no-index --no-deps --no-build-isolation --target /tmp/site .whl/*.whl . && export PYTHONPATH=$PWD:/tmp/site PATH=/tmp/site/bin:$PATH
# (the checkout's own bcat comes first on the path, as with `pip install -e`; the installed copy gives the
# `bcat` command and its metadata).
#
# Usage: scripts/gpu_wheels.sh        (prints each wheel and the total, and fails above 64 MiB)
set -euo pipefail
cd "$(dirname "$0")/.."
PACKAGES=(babel datasets dill multiprocess omegaconf peft trl import-linter grimp)
LIMIT=$((64 * 1024 * 1024))  # what travels with a working tree to that machine

pins=()
for name in "${PACKAGES[@]}"; do
  pin=$(grep -i -E "^${name}==" requirements/lock.txt) || { echo "gpu_wheels: $name is not in requirements/lock.txt" >&2; exit 2; }
  pins+=("$pin")
done
rm -rf .whl && mkdir .whl
platforms=()
for n in 17 24 27 28 31 34 35; do platforms+=(--platform "manylinux_2_${n}_x86_64"); done
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${platforms[@]}" --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${pins[@]}"
ls -l .whl/*.whl | awk '{printf "%10d  %s\n", $5, $NF}'
total=$(cat .whl/*.whl | wc -c)
echo "total: $total bytes ($((total / 1024 / 1024)) MiB) in $(ls .whl/*.whl | wc -l) wheels"
if (( total > LIMIT )); then echo "gpu_wheels: over the 64 MiB a working tree may carry" >&2; exit 1; fi
