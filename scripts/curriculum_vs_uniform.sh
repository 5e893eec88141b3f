#!/usr/bin/env bash
# docs/curriculum.md's comparison: uniform sampling vs the curriculum at equal samples (60 steps x 16 prompts x 8;
# the curriculum's online filter drops groups without refilling, max_refills=0),
# held-out greedy pass@1 on 100 problems every 10 steps. Usage: scripts/curriculum_vs_uniform.sh [RUNS_DIR]
set -euo pipefail
R=${1:-runs/curriculum}
RL=${REASONLOOP:-reasonloop}
common=(threads=1 steps=60 eval_n=100 eval_k=0 eval_every=10 save_every=0 samples_every=0)
export REASONLOOP_ALLOW_UNISOLATED=${REASONLOOP_ALLOW_UNISOLATED:-0}
skip() { [ -f "$1/summary.json" ]; }  # a finished run is not rerun
for variant in "" "curriculum.enabled=true max_refills=0" ; do
  for task in arithmetic mix:arithmetic+code_arith; do
    name=${task%%:*}
    if [ -z "$variant" ]; then out="$R/$name-uniform"; extra=(); else out="$R/$name-curriculum"; extra=($variant); fi
    skip "$out" || "$RL" train "${common[@]}" task="$task" output_dir="$out" "${extra[@]}"
  done
done
for task in arithmetic mix:arithmetic+code_arith; do  # the sampling distribution alone (no online filter)
  out="$R/${task%%:*}-curriculum-nofilter"
  skip "$out" || "$RL" train "${common[@]}" task="$task" output_dir="$out" curriculum.enabled=true curriculum.filter=false
done
