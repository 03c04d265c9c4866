#!/usr/bin/env bash
# The whole pipeline on the embedded models, on the CPU (about 20 minutes on 2 quiet cores):
#   the teacher Qwen2.5-Coder-0.5B-Instruct rewrites 240 arithmetic questions in new wordings (2 each), then
#   answers every question once with worked steps -> verify (math) -> export -> LoRA SFT of the student
#   SmolLM2-135M-Instruct -> evaluate the teacher and the student before/after on both held-out wording
#   families -> data card + report.
#   bash scripts/quickstart.sh
# Rerunning it resumes: finished stages and evaluations are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export VLLM_CPU_KVCACHE_SPACE=${VLLM_CPU_KVCACHE_SPACE:-2} TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1
D=.venv/bin/distill
RUN=runs/quickstart
TEACHER=qwen2.5-coder-0.5b-instruct
STUDENT=smollm2-135m-instruct
# 100 test problems in each held-out family (heldout and wide), greedy, on vLLM
EVAL=(--task arithmetic --split test --limit 100 --max-tokens 96 --engine vllm)
step() { echo "== $1"; SECONDS=0; }
took() { echo "   ($SECONDS s)"; echo "$1 $SECONDS" >> $RUN/timings.txt; }

mkdir -p $RUN && : > $RUN/timings.txt
step "1/6 build the dataset: prompts -> rephrase (teacher) -> generate (teacher) -> verify -> export"
$D run scripts/recipes/quickstart.yaml
$D status $RUN
took dataset

step "2/6 the teacher on the test split (greedy, prompted as the recipe prompts it: worked examples first)"
[ -s $RUN/eval_teacher.json ] || $D eval $TEACHER "${EVAL[@]}" --output $RUN/eval_teacher.json \
  --system-template system/arithmetic_worked.jinja --shots-template shots/arithmetic_worked.jinja
took eval_teacher

step "3/6 the student before training"
[ -s $RUN/eval_before.json ] || $D eval $STUDENT "${EVAL[@]}" --output $RUN/eval_before.json
took eval_before

step "4/6 LoRA SFT of the student on the teacher's verified answers"
[ -f $RUN/train-sft/manifest.json ] || $D train sft scripts/configs/sft.yaml
took train

step "5/6 the student after training"
[ -s $RUN/eval_after.json ] || $D eval $STUDENT --adapter $RUN/train-sft/adapter "${EVAL[@]}" --output $RUN/eval_after.json
took eval_after

step "6/6 data card and report"
$D card $RUN >/dev/null
$D report $RUN >/dev/null
took card

.venv/bin/python - "$RUN" <<'PY'
import json, sys
run = sys.argv[1]
rows = [("teacher  Qwen2.5-Coder-0.5B-Instruct, with the worked examples", "eval_teacher"), ("student  SmolLM2-135M-Instruct, before", "eval_before"),
        ("student  after LoRA SFT on the teacher's verified answers", "eval_after")]
print("accuracy on the test split (greedy; problems per family in brackets):")
print(f"  {'':64} {'heldout':>9} {'wide':>9}")
for name, key in rows:
    r = json.load(open(f"{run}/{key}.json"))["by_phrasing"]
    print(f"  {name:64} {r['heldout']['pass@1']:>8.1%} {r['wide']['pass@1']:>8.1%}   [{r['heldout']['problems']}/{r['wide']['problems']}]")
times = dict(line.split() for line in open(f"{run}/timings.txt"))
print("time per step (s): " + ", ".join(f"{k} {v}" for k, v in times.items()))
print(f"card:   {run}/card/README.md")
print(f"report: {run}/report.html")
PY
