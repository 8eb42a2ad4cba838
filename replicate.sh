#!/usr/bin/env bash
# The small-scale replication (README, "Small-scale replication"), start to finish on one CPU machine:
# pretrain a small diffusion LM, choose the fine-tuning learning rate on held-out training items (baseline
# arm), then DLLM-JEPA vs diffusion-only fine-tuning on NL-RX-SYNTH over three seeds, evaluation, probes,
# aggregation. Small result files land in results/nlrx-small/ (no weights).
#   DATA=/path/to/release/files bash replicate.sh      # DATA holds wikitext/, gsm8k/ and nl_rx/llm_jepa/
#   SMOKE=1 bash replicate.sh                          # every step for a few steps (minutes; results in /tmp)
set -euo pipefail
cd "$(dirname "$0")"
DATA=${DATA:-../shared/data}
NLRX=$DATA/nl_rx/llm_jepa
R=results/nlrx-small
PRE=(); SHORT=(); LIMIT=500; VAL_LIMIT=0; SAMPLES=100
if [ "${SMOKE:-0}" = 1 ]; then
  R=$(mktemp -d); PRE=(--max_steps 3 --out_dir "$R/out-small-base"); SHORT=(--max_steps 2); LIMIT=4; VAL_LIMIT=4; SAMPLES=8
  echo "smoke run: results in $R"
fi
BASE=${PRE[3]:-out-small-base}
mkdir -p "$R"
HOLDOUT=500
FT=(--task nlrx --data_dir "$NLRX" --model "$BASE/final" --max_len 128 --batch_size 32 --total_batch 32
    --epochs 2 --t_low 0.2 --t_high 0.7 --ema_decay 0.996 --predictor_layers 3 --device cpu --dtype float32
    --activation_checkpointing false --val_holdout $HOLDOUT --save_every 0)
EVAL=(--task nlrx --data_dir "$NLRX" --gen_length 64 --block_length 32 --steps 64 --batch_size 16)
stamp() { date +%s; }
t0=$(stamp)

# 1. the base: LLaDA's pretraining objective on the replication corpus, then samples from a fully masked canvas
python train.py --preset pretrain-small --data_dir "$DATA" "${PRE[@]}"
python sample.py --checkpoint "$BASE" --n 6 > "$R/base_samples.txt"
echo "pretraining: $(( $(stamp) - t0 )) s" | tee "$R/times.txt"

# 2. the learning rate: three values on the baseline arm (seed 42), scored on the held-out training items
for lr in 3e-4 1e-3 3e-3; do
  t=$(stamp)
  python train.py "${FT[@]}" "${SHORT[@]}" --jepa_weight 0 --seed 42 --lr $lr --out_dir "$R/out-sweep-$lr"
  python evaluate.py "${EVAL[@]}" --checkpoint "$R/out-sweep-$lr" --split val --val_holdout $HOLDOUT --limit $VAL_LIMIT
  cp "$R/out-sweep-$lr/eval/nlrx-0shot-val.json" "$R/sweep-lr$lr.json"
  echo "sweep lr $lr: $(( $(stamp) - t )) s" | tee -a "$R/times.txt"
done
LR=$(python -c "
import json, sys
scores = {lr: json.load(open(f'$R/sweep-lr{lr}.json')) for lr in ('3e-4', '1e-3', '3e-3')}
print(max(scores, key=lambda lr: (scores[lr]['dfa'], scores[lr]['functional'], scores[lr]['exact'])))")
echo "chosen lr $LR (best validation DFA match, then functional, then exact)" | tee -a "$R/times.txt"

# 3. both arms, three seeds: fine-tune, evaluate on the first 500 test items, probe against the base
for seed in 42 123 777; do
  for arm in jepa baseline; do
    w=1; [ $arm = baseline ] && w=0
    out=$R/out-nlrx-$arm-s$seed
    t=$(stamp)
    python train.py "${FT[@]}" "${SHORT[@]}" --jepa_weight $w --seed $seed --lr "$LR" --out_dir $out
    python evaluate.py "${EVAL[@]}" --checkpoint $out --limit $LIMIT
    python probe.py --base "$BASE/final" --checkpoints $out --names ft --n_samples $SAMPLES --sample_len 256 \
        --wikitext_dir "$DATA/wikitext/wikitext-103-raw" --mmlu_dir none --out_dir $out/probe
    cp $out/eval/nlrx-0shot.json "$R/$arm-s$seed-summary.json"
    gzip -c $out/eval/nlrx-0shot.jsonl > "$R/$arm-s$seed-items.jsonl.gz"
    cp $out/probe/probe.json "$R/$arm-s$seed-probe.json"
    echo "$arm seed $seed: $(( $(stamp) - t )) s" | tee -a "$R/times.txt"
  done
done

# 4. over seeds: mean +- population std per arm, per-seed differences
runs() { for s in 42 123 777; do printf '%s' "$R/$1-s$s-summary.json+$R/$1-s$s-probe.json,"; done; }
python aggregate.py --arms "jepa:$(runs jepa);baseline:$(runs baseline)" --pair jepa/baseline --out "$R/aggregate.json" \
    | tee "$R/aggregate.txt"
echo "total: $(( $(stamp) - t0 )) s" | tee -a "$R/times.txt"
