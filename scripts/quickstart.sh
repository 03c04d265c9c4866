#!/usr/bin/env bash
# The whole pipeline on the embedded SmolLM2-135M-Instruct, on the CPU (about 15 minutes on 2 cores):
#   prompts -> generate (4 samples each) -> verify (math) -> export -> LoRA SFT -> evaluate before/after
#   -> data card + report.
#   bash scripts/quickstart.sh
# Rerunning it resumes: finished stages are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
D=.venv/bin/distill
RUN=runs/quickstart

echo "== 1/5 build the dataset: prompts -> generate -> verify -> export"
$D run scripts/recipes/quickstart.yaml
$D status $RUN

echo "== 2/5 the student before training (greedy, held-out phrasing)"
[ -s $RUN/eval_before.json ] || $D eval smollm2-135m-instruct --task arithmetic --split test --limit 100 --max-tokens 96 --engine vllm --output $RUN/eval_before.json

echo "== 3/5 LoRA SFT of the student on the verified teacher samples"
[ -f $RUN/train-sft/manifest.json ] || $D train sft scripts/configs/sft.yaml

echo "== 4/5 the student after training"
[ -s $RUN/eval_after.json ] || $D eval smollm2-135m-instruct --adapter $RUN/train-sft/adapter --task arithmetic --split test --limit 100 --max-tokens 96 --engine vllm --output $RUN/eval_after.json

echo "== 5/5 data card and report"
$D card $RUN >/dev/null
$D report $RUN >/dev/null

.venv/bin/python - "$RUN" <<'PY'
import json, sys
run = sys.argv[1]
before = json.load(open(f"{run}/eval_before.json"))
after = json.load(open(f"{run}/eval_after.json"))
print(f"accuracy on held-out arithmetic (test split, {before['problems']} problems, greedy):")
print(f"  student before: {before['pass@1']:.1%}")
print(f"  student after LoRA SFT on its verified samples: {after['pass@1']:.1%}")
print(f"card:   {run}/card/README.md")
print(f"report: {run}/report.html")
PY
