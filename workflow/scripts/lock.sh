#!/usr/bin/env bash
# Regenerate requirements.lock: every package requirements.txt needs, pinned with hashes, for CPython 3.11 on
# x86-64 Linux; setup.sh installs from it. torch itself (the CPU build, constraints-cpu.txt) and the CUDA packages
# PyPI's torch metadata names are left out: setup.sh installs torch first. Needs uv (pip install uv).
#   bash workflow/scripts/lock.sh && git diff requirements.lock
set -euo pipefail
cd "$(dirname "$0")/../.."
compile=(uv pip compile requirements.txt -c constraints-cpu.txt --generate-hashes --python-version 3.11
         --python-platform x86_64-manylinux_2_28 --no-emit-package torch)
cuda=$("${compile[@]}" --quiet | grep -oE '^(nvidia-[a-z0-9-]+|triton|cuda-[a-z0-9-]+)==' | sed 's/==$//' | sort -u)
"${compile[@]}" $(printf -- '--no-emit-package %s ' $cuda) --upgrade -o requirements.lock
