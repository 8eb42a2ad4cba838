#!/usr/bin/env bash
# The small-scale replication (README, "Small-scale replication"), start to finish on one CPU machine:
# pretrain a small diffusion LM, then DLLM-JEPA vs diffusion-only fine-tuning on NL-RX-SYNTH under two
# protocols, each with its own learning rate chosen on held-out training items (baseline arm):
#   fixed   the paper's: context view masked at a fixed t_L = 0.2 (target at t_H = 0.7)
#   random  the second protocol: each sequence's context rate drawn from U(0, 1] (LLaDA's own SFT
#           objective, --random_context_rate true); the target view stays at t_H = 0.7
# then three seeds per arm, evaluation, probes against the base, aggregation over seeds.
# Small result files land in results/nlrx-small/ (the base's) and results/nlrx-small/<protocol>/; no weights.
#   DATA=/path/to/release/files bash replicate.sh      # DATA holds wikitext/, gsm8k/ and nl_rx/llm_jepa/
#   SMOKE=1 bash replicate.sh                          # every step for a few steps (minutes; results in /tmp)
#   FIXED_ARMS=0 bash replicate.sh                     # without the fixed-t_L arms (about 45 minutes less)
# A step whose result file exists is skipped, so a run cut short goes on where it stopped; delete a result
# file (or out-small-base/ for the base) to run its step again. Order: base, fixed sweep, random sweep and
# arms, fixed arms (the fixed arms last: if the fixed sweep shows the base cannot learn the task at t_L 0.2,
# they compare probes only).
set -euo pipefail
cd "$(dirname "$0")"
DATA=${DATA:-../shared/data}
NLRX=$DATA/nl_rx/llm_jepa
R=results/nlrx-small
BASE=out-small-base
PRE=(); SHORT=(); LIMIT=500; VAL_LIMIT=0; SAMPLES=100
if [ "${SMOKE:-0}" = 1 ]; then
  R=$(mktemp -d); BASE=$R/out-small-base; PRE=(--max_steps 3 --out_dir "$BASE"); SHORT=(--max_steps 2)
  LIMIT=4; VAL_LIMIT=4; SAMPLES=8
  echo "smoke run: results in $R"
fi
HOLDOUT=500
SEEDS=(42 123 777)
FT=(--task nlrx --data_dir "$NLRX" --model "$BASE/final" --max_len 128 --batch_size 32 --total_batch 32
    --epochs 2 --t_low 0.2 --t_high 0.7 --ema_decay 0.996 --predictor_layers 3 --device cpu --dtype float32
    --activation_checkpointing false --val_holdout $HOLDOUT --save_every 0 --overwrite true)
EVAL=(--task nlrx --data_dir "$NLRX" --gen_length 64 --block_length 32 --steps 64 --batch_size 16 --overwrite true)
stamp() { date +%s; }
have() { [ -s "$1" ] && echo "skip: $1 exists"; }
keep() { cp "$1" "$2.tmp" && mv "$2.tmp" "$2"; }  # a kill mid-copy leaves no half file that have() would skip
keep_gz() { gzip -c "$1" > "$2.tmp" && mv "$2.tmp" "$2"; }
protocol_flags() { [ "$1" = random ] && echo "--random_context_rate true" || echo "--random_context_rate false"; }

pretrain() {  # LLaDA's pretraining objective on the replication corpus, then samples from a fully masked canvas
  local t; t=$(stamp)
  if ! have "$BASE/final/model.safetensors"; then  # train.py writes final/ whole or not at all
    python train.py --preset pretrain-small --data_dir "$DATA" --overwrite true "${PRE[@]}"
    echo "pretraining: $(( $(stamp) - t )) s" | tee -a "$R/times.txt"
  fi
  have "$R/base_samples.txt" && return
  python sample.py --checkpoint "$BASE" --n 6 > "$R/base_samples.txt.tmp"
  mv "$R/base_samples.txt.tmp" "$R/base_samples.txt"
}

sweep() {  # three learning rates on the baseline arm (seed 42), scored on the held-out training items
  local p=$1 d=$R/$1 lr t
  mkdir -p "$d"
  for lr in 3e-4 1e-3 3e-3; do
    have "$d/sweep-lr$lr.json" && continue
    t=$(stamp)
    python train.py "${FT[@]}" "${SHORT[@]}" $(protocol_flags "$p") --jepa_weight 0 --seed 42 --lr $lr \
        --out_dir "$d/out-sweep-$lr"
    python evaluate.py "${EVAL[@]}" --checkpoint "$d/out-sweep-$lr" --split val --val_holdout $HOLDOUT --limit $VAL_LIMIT
    keep_gz "$d/out-sweep-$lr/eval/nlrx-0shot-val.jsonl" "$d/sweep-lr$lr-items.jsonl.gz"
    keep "$d/out-sweep-$lr/eval/nlrx-0shot-val.json" "$d/sweep-lr$lr.json"  # last: the step's marker
    echo "$p sweep lr $lr: $(( $(stamp) - t )) s" | tee -a "$d/times.txt"
  done
}

chosen_lr() {  # best validation DFA match, then functional, then exact
  python -c "
import json
scores = {lr: json.load(open(f'$R/$1/sweep-lr{lr}.json')) for lr in ('3e-4', '1e-3', '3e-3')}
print(max(scores, key=lambda lr: (scores[lr]['dfa'], scores[lr]['functional'], scores[lr]['exact'])))"
}

arms() {  # both arms, three seeds: fine-tune, evaluate on the first 500 test items, probe against the base
  local p=$1 d=$R/$1 lr seed arm w out t
  lr=$(chosen_lr "$p")
  echo "$p: lr $lr (best validation DFA match, then functional, then exact)" | tee "$d/chosen_lr.txt"
  for seed in "${SEEDS[@]}"; do
    for arm in jepa baseline; do
      w=1; [ $arm = baseline ] && w=0
      out=$d/out-nlrx-$arm-s$seed
      # the baseline at seed 42 is the sweep's run at the chosen lr (same flags, same seed): not trained twice
      [ $arm$seed = baseline42 ] && out=$d/out-sweep-$lr
      t=$(stamp)
      if ! have "$d/$arm-s$seed-summary.json"; then
        [ $arm$seed = baseline42 ] || python train.py "${FT[@]}" "${SHORT[@]}" $(protocol_flags "$p") --jepa_weight $w --seed $seed --lr "$lr" \
            --out_dir "$out"
        python evaluate.py "${EVAL[@]}" --checkpoint "$out" --limit $LIMIT
        keep_gz "$out/eval/nlrx-0shot.jsonl" "$d/$arm-s$seed-items.jsonl.gz"
        keep "$out/log.jsonl" "$d/$arm-s$seed-log.jsonl"
        keep "$out/eval/nlrx-0shot.json" "$d/$arm-s$seed-summary.json"  # last: the step's marker
      fi
      if ! have "$d/$arm-s$seed-probe.json"; then
        python probe.py --base "$BASE/final" --checkpoints "$out" --names ft --n_samples $SAMPLES --sample_len 256 \
            --wikitext_dir "$DATA/wikitext/wikitext-103-raw" --mmlu_dir none --out_dir "$out/probe" --overwrite true
        keep "$out/probe/probe.json" "$d/$arm-s$seed-probe.json"
      fi
      echo "$p $arm seed $seed: $(( $(stamp) - t )) s" | tee -a "$d/times.txt"
    done
  done
  aggregate "$p"
}

aggregate() {  # over seeds: mean +- population std per arm, per-seed differences
  local d=$R/$1 arm s runs=()
  for arm in jepa baseline; do
    local files=""
    for s in "${SEEDS[@]}"; do files+="$d/$arm-s$s-summary.json+$d/$arm-s$s-probe.json,"; done
    runs+=("$arm:$files")
  done
  python aggregate.py --arms "${runs[0]};${runs[1]}" --pair jepa/baseline --out "$d/aggregate.json" \
      | tee "$d/aggregate.txt"
}

mkdir -p "$R"
t0=$(stamp)
pretrain
sweep fixed
sweep random
arms random
[ "${FIXED_ARMS:-1}" = 1 ] && arms fixed
echo "this invocation: $(( $(stamp) - t0 )) s" | tee -a "$R/times.txt"
