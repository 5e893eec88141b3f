#!/usr/bin/env bash
# docs/curriculum.md "Defaults that travel": the new-user path on reasoning-gym tasks. For each task: answer-only
# SFT data from its train split, `reasonloop sft`, then `reasonloop train` with the defaults and with the
# candidate setting; held-out greedy pass@1, sampled pass@1 (mean of 8) and pass@8 on EVAL_N test problems.
# Both arms say setting=defaults: the defaults as they were measured (setting=auto would read rl_from_sft.yaml).
# Usage: scripts/defaults_travel.sh [RUNS_DIR] [RL_STEPS] [SFT_STEPS] [TASK_NAMES...]
# Environment: SFT_LR (default 3e-4, sft's default), EVAL_N (100), CANDIDATE (the candidate run's overrides),
# SFT_FORM (answer, the default: <think>A</think><answer>A</answer>; worked; careful: see scripts/travel_data.py),
# TRAVEL_TASKS (space-separated name=spec entries replacing the five below; e.g.
# "chain_sum3=chain_sum,min_terms=2,max_terms=4,min_digits=1,max_digits=1"),
# REASONLOOP / PYTHON (launchers; may be several words, e.g. "taskset -c 1 nice reasonloop").
# The table: python scripts/curriculum_table.py --travel RUNS_DIR
set -euo pipefail
R=${1:-runs/travel}
STEPS=${2:-40}
SFT_STEPS=${3:-200}
ONLY=("${@:4}")
read -r -a RL <<< "${REASONLOOP:-reasonloop}"
read -r -a PY <<< "${PYTHON:-python}"
read -r -a CAND <<< "${CANDIDATE:-group_size=16 prompts_per_step=8 entropy_coef=0.01}"
# name=reasoning-gym spec (level 0 of basic_arithmetic has only ~100 distinct problems: level 1 instead)
TASKS=("chain_sum=chain_sum,level.num_terms=0,level.num_digits=1" "count_bits=count_bits,level=0"
       "spell_backward=spell_backward,level=0" "calendar_arithmetic=calendar_arithmetic,level=0"
       "basic_arithmetic=basic_arithmetic,level=1")
[ -z "${TRAVEL_TASKS:-}" ] || read -r -a TASKS <<< "$TRAVEL_TASKS"
mkdir -p "$R"
for entry in "${TASKS[@]}"; do
  t=${entry%%=*}
  if [ ${#ONLY[@]} -gt 0 ] && [[ " ${ONLY[*]} " != *" $t "* ]]; then continue; fi
  task="reasoning_gym:${entry#*=},template=raw"
  [ -f "$R/$t-sft.jsonl" ] || "${PY[@]}" scripts/travel_data.py "${entry#*=}" "$R/$t-sft.jsonl" "${SFT_FORM:-answer}"
  # the SFT row of the table is the RL runs' "before" evaluation (same held-out problems and k)
  [ -f "$R/$t-sft/model/config.json" ] || "${RL[@]}" sft task="$task" data="$R/$t-sft.jsonl" threads=1 steps="$SFT_STEPS" \
    optim.lr="${SFT_LR:-3e-4}" eval_n=1 eval_every=0 save_every=0 eval_max_new_tokens=64 output_dir="$R/$t-sft"
  common=(task="$task" model.name="$R/$t-sft/model" setting=defaults threads=1 steps="$STEPS" eval_n="${EVAL_N:-100}" eval_k=8 eval_every=0
          save_every=0 samples_every=0)
  [ -f "$R/$t-rl-default/summary.json" ] || "${RL[@]}" train "${common[@]}" output_dir="$R/$t-rl-default"
  [ -f "$R/$t-rl-candidate/summary.json" ] || "${RL[@]}" train "${common[@]}" output_dir="$R/$t-rl-candidate" "${CAND[@]}"
done
