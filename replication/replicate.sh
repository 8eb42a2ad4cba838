#!/usr/bin/env bash
# The small-scale replication (replication/README.md): DLLM-JEPA vs diffusion-only fine-tuning of a small
# pretrained diffusion LM on NL-RX-SYNTH, run on one CPU machine in steps that each leave small result files
# in replication/results/ (weights go to $RUNS, never committed). A step whose result file exists is
# skipped, so a run cut short goes on where it stopped, in this session or the next.
#
#   bash replication/replicate.sh base          # the committed base checked against its SHA256SUMS (or pretrained)
#   bash replication/replicate.sh pilot         # lever: the same fine-tuning from an (almost) random base
#   bash replication/replicate.sh curve 1e-3    # learning curve of the baseline arm at one lr, on the holdout
#   bash replication/replicate.sh curve 3e-4 16 # the same over a 16-epoch schedule (name lr3e-4-e16)
#   bash replication/replicate.sh jepa-curve 3e-4  # the DLLM-JEPA arm's curve at one lr (not used to choose)
#   bash replication/replicate.sh chosen        # the lr and epochs with the best holdout curve point
#   bash replication/replicate.sh decode lr1e-3 8   # lever: a curve's final model decoded with another block length
#   bash replication/replicate.sh forgetting lr1e-3 # a curve's snapshots probed against the base (WikiText loss)
#   bash replication/replicate.sh arms 42 123   # the first run: both arms at the chosen lr and epochs, test split
#   bash replication/replicate.sh aggregate     # over the first run's seeds, with the paired tests
#   bash replication/replicate.sh three-arms    # baseline, DLLM-JEPA and the shuffled-target control at the five
#                                               # seeds of THREE_SEEDS (none the selection seed 42), test split;
#                                               # run it twice side by side: each run is taken by one process
#   bash replication/replicate.sh three-probes  # every three-arms run probed: WikiText, GSM8K test, held-out code
#   bash replication/replicate.sh three-aggregate  # over the three arms' seeds: aggregate and claims.md
#   bash replication/replicate.sh all           # every step in order: base, pilot, curves (LRS), the DLLM-JEPA
#                                               # curve, the levers, arms (SEEDS), aggregate, figures, three-arms,
#                                               # three-probes, three-aggregate
# Two steps may run side by side (each process is single-threaded): e.g. `curve 1e-3` and `curve 3e-4`.
#   DATA=/path/to/release/files   the folder holding wikitext/, gsm8k/ and nl_rx/llm_jepa/ (required)
#   SMOKE=1                       every step for a few optimizer steps and items (minutes; results in /tmp)
#   ARMS=jepa | ARMS=baseline     arms: only that arm (run the two side by side, one per core)
#
# The protocol, and why (replication/README.md has the numbers):
#   - one context-rate protocol: each sequence's context rate ~ U(0, 1] (LLaDA's own SFT objective,
#     --random_context_rate true), target view at t_H = 0.7. A small base fine-tuned only at the paper's
#     fixed t_L = 0.2 never learns to generate from a fully masked canvas (the first replication's fixed
#     arms answered '(' to 332 of 500 items), so it cannot be evaluated by generation.
#   - lr and epochs chosen on the 500 held-out training items with the baseline arm (best non-trivial DFA),
#     never on the test split; then 5 seeds per arm from the one committed base.
set -euo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
DATA=${DATA:?set DATA to the folder of the release files: wikitext/, gsm8k/ and nl_rx/llm_jepa/ in their release layouts}
NLRX=$DATA/nl_rx/llm_jepa
R=replication/results
BASE=replication/base
RUNS=${RUNS:-out-replication}
HOLDOUT=500; LIMIT=500; SAMPLES=100; EPOCHS=10; EPOCH_STEPS=235; SNAPSHOT=470  # 235 optimizer steps an epoch
LRS=(1e-3 3e-4); SEEDS=(42 123 777 1001 2024)
# the three-arm run: five seeds apart from seed 42, whose baseline is the lr 3e-4 holdout curve that chose
# lr and epochs (the same run, bit for bit)
THREE_SEEDS=(123 777 1001 2024 2718); THREE_ARMS=(baseline jepa control)
for arm in ${ARMS:-}; do  # a name arm_flags does not know would train DLLM-JEPA under that name
  case $arm in jepa|baseline) ;; *) echo "replicate.sh: ARMS=$ARMS: '$arm' is not an arm of \`arms\` (jepa, baseline)" >&2
                                  exit 2 ;; esac
done
PRE=(); SHORT=()
if [ "${SMOKE:-0}" = 1 ]; then
  R=${SMOKE_DIR:-$(mktemp -d)}; RUNS=$R/runs; BASE=$R/base; PRE=(--max_steps 3); SHORT=(--max_steps 4)
  LIMIT=4; SAMPLES=8; SNAPSHOT=2; EPOCH_STEPS=2; LRS=(1e-3); SEEDS=(42 123); THREE_SEEDS=(123)
  echo "smoke run: results in $R"
fi
# LLaDA's pretraining objective (every position maskable, one rate t ~ U(0, 1] per sequence, no JEPA term) on
# the replication corpus (replication/corpus.py), the `small` model (model.py PRESETS) with a byte-level BPE
# of 8,192 tokens trained on the corpus, punctuation split to single tokens: 1,400 x 16 x 256 tokens (~1.2 epochs)
PRETRAIN=(--task text --text_files "$RUNS/corpus.jsonl" --model small --split_punctuation true --jepa_weight 0
          --random_context_rate true --device cpu --dtype float32 --max_len 256 --lr 1e-3 --batch_size 16
          --grad_accum 1 --total_batch 0 --max_steps 1400 --activation_checkpointing false --save_every 200 --seed 0)
FT=(--task nlrx --data_dir "$NLRX" --max_len 128 --batch_size 32 --total_batch 32 --epochs $EPOCHS
    --t_low 0.2 --t_high 0.7 --random_context_rate true --ema_decay 0.996 --predictor_layers 3 --device cpu
    --dtype float32 --activation_checkpointing false --val_holdout $HOLDOUT --save_every 0 --log_every 10
    --overwrite true)
EVAL=(--task nlrx --data_dir "$NLRX" --gen_length 64 --block_length 32 --steps 64 --batch_size 16 --overwrite true)
stamp() { date +%s; }
have() { [ -s "$1" ] && echo "skip: $1 exists"; }
keep() { cp "$1" "$2.tmp" && mv "$2.tmp" "$2"; }  # a kill mid-copy leaves no half file that have() would skip
keep_gz() { gzip -c "$1" > "$2.tmp" && mv "$2.tmp" "$2"; }
mkdir -p "$R/curve" "$R/levers" "$R/arms" "$R/three-arms" "$RUNS/three-arms"

base() {  # the committed base, checked; pretrained (LLaDA's objective on the replication corpus) when absent
  if [ -s "$BASE/SHA256SUMS" ]; then
    (cd "$BASE" && sha256sum --quiet -c SHA256SUMS) && echo "base: $BASE matches its SHA256SUMS" && return
    echo "base: $BASE does not match its SHA256SUMS" >&2; exit 1
  fi
  local t; t=$(stamp)
  python -m replication.corpus --data_dir "$DATA" --out "$RUNS/corpus.jsonl"
  python train.py "${PRETRAIN[@]}" --out_dir "$RUNS/base" --overwrite true "${PRE[@]}"
  mkdir -p "$BASE" && cp "$RUNS/base/final/"* "$BASE/" && cp "$RUNS/base/log.jsonl" "$R/base-log.jsonl"
  cp "$RUNS/base/train_config.json" "$R/base-train_config.json"
  (cd "$BASE" && sha256sum -- * > SHA256SUMS.tmp && mv SHA256SUMS.tmp SHA256SUMS)
  python sample.py --checkpoint "$BASE" --n 6 > "$R/base_samples.txt.tmp" && mv "$R/base_samples.txt.tmp" "$R/base_samples.txt"
  echo "base: pretrained in $(( $(stamp) - t )) s" | tee -a "$R/times.txt"
}

holdout_curve() {  # $1 name, $2 run folder: every snapshot and final/ scored on the holdout
  local name=$1 out=$2 ckpt step
  for ckpt in "$out"/snapshots/step* "$out/final"; do
    [ -d "$ckpt" ] || continue
    step=${ckpt##*step}; [ "$ckpt" = "$out/final" ] && step=final
    have "$R/curve/$name-step$step.json" && continue
    python evaluate.py "${EVAL[@]}" --checkpoint "$ckpt" --split val --val_holdout $HOLDOUT --limit $LIMIT \
        --out_dir "$out/eval-step$step"
    keep_gz "$out/eval-step$step/nlrx-0shot-val.jsonl" "$R/curve/$name-step$step-items.jsonl.gz"
    keep "$out/eval-step$step/nlrx-0shot-val.json" "$R/curve/$name-step$step.json"  # last: the step's marker
  done
}

finetune_curve() {  # $1 name, $2 model, $3 the JEPA weight (0: the baseline arm, 1: DLLM-JEPA), then train.py
  # flags: seed 42, snapshots every 2 epochs, a resumable state every epoch (as in arms())
  local name=$1 model=$2 w=$3 out=$RUNS/curve-$1 t again=(); shift 3
  t=$(stamp)
  if ! have "$R/curve/$name-log.jsonl"; then
    if [ -d "$out/resume" ] || [ -d "$out/final" ]; then again=(--resume true --overwrite false); fi
    python train.py "${FT[@]}" "${SHORT[@]}" --model "$model" --jepa_weight "$w" --seed 42 --snapshot_every $SNAPSHOT \
        --save_every $EPOCH_STEPS --out_dir "$out" "$@" "${again[@]}"
    keep "$out/train_config.json" "$R/curve/$name-train_config.json"
    keep "$out/log.jsonl" "$R/curve/$name-log.jsonl"
  fi
  holdout_curve "$name" "$out"
  echo "curve $name: $(( $(stamp) - t )) s" | tee -a "$R/times.txt"
}

pilot() {  # lever: the same fine-tuning from a base pretrained for one step (random weights, same tokenizer),
  # its final model probed beside the lr 1e-3 curve's (run `curve 1e-3` first)
  if [ ! -d "$RUNS/random-base/final" ]; then
    [ -s "$RUNS/corpus.jsonl" ] || python -m replication.corpus --data_dir "$DATA" --out "$RUNS/corpus.jsonl"
    python train.py "${PRETRAIN[@]}" --max_steps 1 --save_every 0 --out_dir "$RUNS/random-base" --overwrite true
  fi
  finetune_curve random-base-lr1e-3 "$RUNS/random-base/final" 0 --lr 1e-3
  have "$R/levers/probe-curves-final.json" && return  # both finals (lr 1e-3) against the base: WikiText loss
  python probe.py --base "$BASE" --checkpoints "$RUNS/curve-lr1e-3/final,$RUNS/curve-random-base-lr1e-3/final" \
      --names pretrained-base,random-base --n_samples $SAMPLES --sample_len 256 --mmlu_dir none \
      --wikitext_dir "$DATA/wikitext/wikitext-103-raw" --out_dir "$RUNS/probe-curves" --overwrite true
  keep "$RUNS/probe-curves/probe.json" "$R/levers/probe-curves-final.json"
}

decode() {  # $1 curve name, $2 block length: its final/ on the holdout, generation 64 in 64 steps
  local out=$RUNS/curve-$1 name=$1-final-block$2
  have "$R/levers/$name.json" && return
  python evaluate.py "${EVAL[@]}" --block_length "$2" --checkpoint "$out/final" --split val --val_holdout $HOLDOUT \
      --limit $LIMIT --out_dir "$out/eval-final-block$2"
  keep_gz "$out/eval-final-block$2/nlrx-0shot-val.jsonl" "$R/levers/$name-items.jsonl.gz"
  keep "$out/eval-final-block$2/nlrx-0shot-val.json" "$R/levers/$name.json"
}

forgetting() {  # $1 curve name: every snapshot and final/ probed against the base (drift, WikiText-103 loss)
  local out=$RUNS/curve-$1 ckpts="" names="" ckpt step
  have "$R/levers/probe-curve-$1.json" && return
  for ckpt in "$out"/snapshots/step* "$out/final"; do
    [ -d "$ckpt" ] || continue
    step=${ckpt##*step}; [ "$ckpt" = "$out/final" ] && step=final
    ckpts+="$ckpt,"; names+="step$step,"
  done
  [ -n "$ckpts" ] || { echo "forgetting: $out holds no snapshot and no final/: run its curve first" >&2; exit 1; }
  python probe.py --base "$BASE" --checkpoints "${ckpts%,}" --names "${names%,}" --n_samples $SAMPLES --sample_len 256 \
      --wikitext_dir "$DATA/wikitext/wikitext-103-raw" --mmlu_dir none --out_dir "$RUNS/probe-curve-$1" --overwrite true
  keep "$RUNS/probe-curve-$1/probe.json" "$R/levers/probe-curve-$1.json"
}

chosen() {  # "lr epochs": the best holdout point (non-trivial DFA, then DFA, then functional) of the base's curves
  python - "$R/curve" "$EPOCHS" <<'PY'
import glob, json, os, re, sys
best = None
for path in glob.glob(os.path.join(sys.argv[1], "lr*-step*.json")):  # the baseline's curves: not jepa-lr*
    # lr1e-3-step470 (epoch 2), lr1e-3-stepfinal (the schedule's end: 10 epochs), lr1e-3-e16-stepfinal (16)
    m = re.fullmatch(r"lr(.+?)(?:-e(\d+))?-step(\d+|final)\.json", os.path.basename(path))
    if not m:
        continue
    epochs = int(m.group(2) or sys.argv[2]) if m.group(3) == "final" else max(1, int(m.group(3)) // 235)
    s = json.load(open(path))
    key = (s.get("nontrivial/dfa") or 0.0, s["dfa"], s["functional"], -epochs)  # a tie: the fewer epochs
    if best is None or key > best[0]:
        best = (key, m.group(1), epochs)
if best is None:
    sys.exit("no learning curve yet: run `replicate.sh curve <lr>` first")
print(best[1], best[2])
PY
}

arms() {  # both arms at the chosen lr and epochs: fine-tune, evaluate on the first 500 test items, probe
  local lr epochs seed arm out t
  read -r lr epochs < <(chosen)
  echo "arms: lr $lr, $epochs epochs (the best holdout point of the curves)" | tee "$R/arms/chosen.txt"
  for seed in "$@"; do
    for arm in ${ARMS:-jepa baseline}; do  # ARMS=jepa / ARMS=baseline: one arm, so two can run side by side
      out=$RUNS/$arm-s$seed; t=$(stamp)
      have "$R/arms/$arm-s$seed-summary.json" || train_and_evaluate "$R/arms" "$out" "$arm" "$seed" "$lr" "$epochs"
      if ! have "$R/arms/$arm-s$seed-probe.json"; then
        python probe.py --base "$BASE" --checkpoints "$out" --names ft --n_samples $SAMPLES --sample_len 256 \
            --wikitext_dir "$DATA/wikitext/wikitext-103-raw" --mmlu_dir none --out_dir "$out/probe" --overwrite true
        keep "$out/probe/probe.json" "$R/arms/$arm-s$seed-probe.json"
      fi
      echo "$arm seed $seed: $(( $(stamp) - t )) s" | tee -a "$R/times.txt"
    done
  done
}

arm_flags() {  # $1 arm: its train.py flags
  case $1 in
    baseline) echo --jepa_weight 0 ;;
    jepa) echo --jepa_weight 1 ;;
    control) echo --jepa_weight 1 --shuffled_target true ;;  # each example gets another example's target
    *) echo "replicate.sh: no arm '$1'" >&2; return 2 ;;
  esac
}

three_arms() {  # every (seed, arm) of THREE_SEEDS x THREE_ARMS not yet done: fine-tune, evaluate on the test
  # split's first 500 items. A run is taken under a lock, so two processes of this step share the work.
  local lr epochs seed arm out
  read -r lr epochs < <(chosen)
  echo "three-arms: lr $lr, $epochs epochs (the best holdout point of the baseline's curves)" | tee "$R/three-arms/chosen.txt"
  for seed in "${THREE_SEEDS[@]}"; do
    for arm in "${THREE_ARMS[@]}"; do
      have "$R/three-arms/$arm-s$seed-summary.json" && continue
      out=$RUNS/three-arms/$arm-s$seed
      ( flock -n 9 || { echo "three-arms: $arm seed $seed is taken by another process"; exit 0; }
        train_and_evaluate "$R/three-arms" "$out" "$arm" "$seed" "$lr" "$epochs" ) 9> "$out.lock"
    done
  done
}

train_and_evaluate() {  # $1 results folder, $2 run folder, $3 arm, $4 seed, $5 lr, $6 epochs
  local r=$1 out=$2 arm=$3 seed=$4 t again=(); t=$(stamp)
  # a resumable state every epoch (and on SIGTERM): a run cut short resumes bit-identically where it stopped; a
  # finished one (final/, its evaluation cut short) is not trained again (train.py checks its settings are these)
  if [ -d "$out/resume" ] || [ -d "$out/final" ]; then again=(--resume true --overwrite false); fi
  # shellcheck disable=SC2046  # arm_flags' words are flags
  python train.py "${FT[@]}" "${SHORT[@]}" --model "$BASE" --epochs "$6" $(arm_flags "$arm") --seed "$seed" \
      --lr "$5" --out_dir "$out" --save_every $EPOCH_STEPS "${again[@]}"
  python evaluate.py "${EVAL[@]}" --checkpoint "$out" --limit $LIMIT
  keep_gz "$out/eval/nlrx-0shot.jsonl" "$r/$arm-s$seed-items.jsonl.gz"
  keep "$out/log.jsonl" "$r/$arm-s$seed-log.jsonl"
  keep "$out/train_config.json" "$r/$arm-s$seed-train_config.json"
  keep "$out/eval/nlrx-0shot.json" "$r/$arm-s$seed-summary.json"  # last: the step's marker
  echo "$(basename "$r") $arm seed $seed: trained and evaluated in $(( $(stamp) - t )) s" | tee -a "$R/times.txt"
}

three_probes() {  # every three-arms run whose probe is missing, against the base: drift and collapse on
  # WikiText; the forgetting measures on WikiText-103 validation, on GSM8K test (the base saw GSM8K train) and on
  # Python it never saw (torch's nn/modules), against the unigram model of the base's own corpus. Needs the run's
  # final weights in $RUNS/three-arms: keep them until its probe is committed.
  local seed arm out t
  [ -s "$RUNS/corpus.jsonl" ] || python -m replication.corpus --data_dir "$DATA" --out "$RUNS/corpus.jsonl"
  [ -s "$RUNS/held-out-code.txt" ] || python -m replication.corpus --code_out "$RUNS/held-out-code.txt"
  for seed in "${THREE_SEEDS[@]}"; do
    for arm in "${THREE_ARMS[@]}"; do
      out=$RUNS/three-arms/$arm-s$seed
      have "$R/three-arms/$arm-s$seed-probe.json" && continue
      [ -s "$R/three-arms/$arm-s$seed-summary.json" ] || { echo "three-probes: $arm seed $seed not trained yet"; continue; }
      [ -d "$out/final" ] || { echo "three-probes: $out/final is gone: run three-arms for it again" >&2; exit 1; }
      t=$(stamp)
      python probe.py --base "$BASE" --checkpoints "$out" --names ft --n_samples $SAMPLES --sample_len 256 \
          --wikitext_dir "$DATA/wikitext/wikitext-103-raw" --mmlu_dir none --unigram_text "$RUNS/corpus.jsonl" \
          --forgetting_data "gsm8k-test=$DATA/gsm8k/openai/test.jsonl,torch-code=$RUNS/held-out-code.txt" \
          --out_dir "$out/probe" --overwrite true
      keep "$out/probe/probe.json" "$R/three-arms/$arm-s$seed-probe.json"
      echo "three-arms $arm seed $seed: probed in $(( $(stamp) - t )) s" | tee -a "$R/times.txt"
    done
  done
}

aggregate_runs() {  # $1 the runs' results folder, $2 where the aggregate goes, then the arms (the first two
  # paired, and each further one with both): over every seed all arms have a probe for, mean +- population std,
  # paired differences with their intervals, items per seed, the test items also trained on
  # (replication/leaks.py) apart; then claims.md, the one family of tests (replication/claims.py)
  local r=$1 out=$2 arm s pairs runs="" items="" seeds=(); shift 2
  local arms=("$@")
  for s in $(ls "$r" | sed -n "s/^${arms[0]}-s\([0-9]*\)-probe.json$/\1/p" | sort -n); do
    for arm in "${arms[@]}"; do [ -s "$r/$arm-s$s-probe.json" ] || continue 2; done
    seeds+=("$s")
  done
  for arm in "${arms[@]}"; do
    local files="" records=""
    for s in "${seeds[@]}"; do
      files+="$r/$arm-s$s-summary.json+$r/$arm-s$s-probe.json,"; records+="$r/$arm-s$s-items.jsonl.gz,"
    done
    runs+="$arm:$files;"; items+="$arm:$records;"
  done
  pairs="${arms[0]}/${arms[1]}"
  for arm in "${arms[@]:2}"; do pairs+=",$arm/${arms[1]},${arms[0]}/$arm"; done
  [ -s "$R/arms/leaked.json" ] || python -m replication.leaks --data_dir "$NLRX" --limit $LIMIT --val_holdout $HOLDOUT \
      --out "$R/arms/leaked.json"
  python -m replication.aggregate --arms "$runs" --pair "$pairs" --items "$items" --leaked "$R/arms/leaked.json" \
      --out "$out/aggregate.json" | tee "$out/aggregate.txt"
  [ ${#seeds[@]} -ge 3 ] && python -m replication.claims --aggregate "$out/aggregate.json" > "$out/claims.md" \
      && echo "wrote $out/claims.md"  # a regression with intercept and slope needs three seeds
  return 0
}

three_aggregate() {  # the three arms' aggregate, claims.md and drift figures in results/three-arms/
  aggregate_runs "$R/three-arms" "$R/three-arms" jepa baseline control
  python -m replication.figures --results "$R" --arms_dir three-arms > /dev/null  # its figures go in three-arms/
}

step=${1:-}; shift || true
case "$step" in
  base) base ;;
  pilot) pilot ;;
  curve) case $# in  # the 10-epoch schedule keeps its first name; another length is named by its epochs
           1) finetune_curve "lr$1" "$BASE" 0 --lr "$1" ;;
           2) finetune_curve "lr$1-e$2" "$BASE" 0 --lr "$1" --epochs "$2" ;;
           *) echo "usage: replicate.sh curve <lr> [<epochs>]" >&2; exit 2 ;;
         esac ;;
  jepa-curve) [ $# = 1 ] || { echo "usage: replicate.sh jepa-curve <lr>" >&2; exit 2; }
              finetune_curve "jepa-lr$1" "$BASE" 1 --lr "$1" ;;
  chosen) chosen ;;
  forgetting) [ $# = 1 ] || { echo "usage: replicate.sh forgetting <curve name>" >&2; exit 2; }; forgetting "$1" ;;
  decode) [ $# = 2 ] || { echo "usage: replicate.sh decode <curve name> <block length>" >&2; exit 2; }; decode "$@" ;;
  arms) [ $# -ge 1 ] || { echo "usage: replicate.sh arms <seed> [<seed> ...]" >&2; exit 2; }; arms "$@" ;;
  aggregate) aggregate_runs "$R/arms" "$R" jepa baseline ;;
  three-arms) three_arms ;;
  three-probes) three_probes ;;
  three-aggregate) three_aggregate ;;
  all) base; for lr in "${LRS[@]}"; do finetune_curve "lr$lr" "$BASE" 0 --lr "$lr"; done; pilot
       read -r lr _ < <(chosen); finetune_curve "jepa-lr$lr" "$BASE" 1 --lr "$lr"  # the chosen lr (3e-4)
       for lr in "${LRS[@]}"; do forgetting "lr$lr"; done
       decode lr1e-3 8; decode random-base-lr1e-3 8; decode random-base-lr1e-3 4
       arms "${SEEDS[@]}"; aggregate_runs "$R/arms" "$R" jepa baseline
       python -m replication.figures --results "$R" > /dev/null
       three_arms; three_probes; three_aggregate ;;
  *) echo "usage: replicate.sh base | pilot | curve <lr> [<epochs>] | jepa-curve <lr> | decode <curve> <block> | forgetting <curve> | chosen | arms <seed>... | aggregate | three-arms | three-probes | three-aggregate | all" >&2
     exit 2 ;;
esac
