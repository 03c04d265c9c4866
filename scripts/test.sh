#!/usr/bin/env bash
# Set up, then run the whole test suite (about 25-35 minutes on 2 CPU cores).
#   bash scripts/test.sh            # everything
#   bash scripts/test.sh -k store   # extra arguments go to pytest
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2}
.venv/bin/ruff check pipeline tests scripts
.venv/bin/ruff format --check pipeline tests scripts
exec .venv/bin/python -m pytest tests "$@"
