#!/usr/bin/env bash
# The H100 measurements of the trainer, in parts that each fit one 10-minute device call.
#
#   bash benchmarks/gpu_suite.sh data                 # here (needs TensorFlow): the batches
#   bash benchmarks/gpu_suite.sh components small     # on the GPU machine, results in $OUT
#   bash benchmarks/gpu_suite.sh base small-mask
#
# Parts:
#   data        build-c4 on the shared WET files -> 16k SentencePiece -> 16,384 span-corruption
#               examples at 512/114, stored as uint16 in .gpu-data/span16k_u16.npz (15 MB; carry
#               it to the device with carry: [".gpu-data"])
#   parity      tests/test_gpu.py: cuDNN vs XLA attention, loss and gradients of a 2+2-layer
#               model, padding as mask / lengths / auto, unpacked and packed
#   components  benchmarks/step_components.py for t5.1.1-small and -base at batch 128
#   small|base  benchmarks/train_throughput.py, 300 steps, the default config
#   small-mask|base-mask
#               the same with --override padding=mask (the boolean padding mask, as measured
#               before padding="auto"), for the side-by-side ratio
#   small-features|base-features
#               --override padding=features (padding as one extra q/k head feature: no mask, no
#               lengths), the alternative to the default's sequence lengths
#   small-bf16logits       --override logits_dtype=bfloat16 (t5x keeps float32 logits)
#   pallas-parity   tests/test_gpu.py --fused pallas alone
#   pallas      tests/test_gpu.py --fused pallas (flash_t5 against XLA's attention), then
#               attention_bias_cost.py --impl pallas for four tile choices and, at the default
#               tiles, the bias gradient stored and summed by XLA instead of recomputed
#   small-pallas|base-pallas   --override attention_impl=pallas
#   small-pallas-grouped|base-pallas-grouped   both candidates together
#   small-pallasbias-grouped|base-pallasbias-grouped
#               --override attention_impl=pallas_bias --group-updates (flash_t5 for the
#               biased self-attention, cuDNN for cross-attention)
#   pallas-tiles    the tile timings of the pallas part without its parity check
#   small-grouped|base-grouped
#               --group-updates: the optimizer's updates computed per group of layers (the
#               default since session 7; small|base run it too)
#   small-ungrouped|base-ungrouped   --no-group-updates: one update per parameter
#   small-fp32classifier   --override classifier_dtype=float32 (float32 classifier operands,
#               TF32 on the GPU; the default multiplies bf16 into float32)
#   small-notriton|base-notriton
#               XLA_FLAGS=--xla_gpu_enable_triton_gemm=false (cuBLAS for every matmul)
#   bias-cost   benchmarks/attention_bias_cost.py at base's and small's head counts: cuDNN
#               attention with a learned, a constant and no position bias (~30 s)
#   profile-<small|base>[-pallas|-pallasbias][-grouped]
#               30 steps with --profile-steps 21:25; per-kernel time per step into
#               $OUT/profile-<model>.txt (benchmarks/profile_summary.py) and the Perfetto trace
#
# Each part runs under `timeout` so that one slow compile cannot eat the whole call, and its
# output is streamed to $OUT/<part>.log as it goes. Compilations are cached in
# $JAX_COMPILATION_CACHE_DIR (default /tmp/jaxcache), which survives while the machine is warm.
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export JAX_COMPILATION_CACHE_DIR="${JAX_COMPILATION_CACHE_DIR:-/tmp/jaxcache}"
OUT="${OUT:-benchmarks/results/gpu_suite}"
mkdir -p "$OUT"
DATA=.gpu-data/span16k_u16.npz
PY="${PYTHON:-python3}"
STEPS="${STEPS:-300}"
work_dir=$(mktemp -d)
LIMIT="${LIMIT:-280}"  # seconds per training part

train() {  # train PART MODEL [OVERRIDE] [FLAG]
  local part=$1 model=$2 override=${3:-} flag=${4:-}
  local extra=()
  [ -n "$override" ] && extra=(--override "$override")
  [ -n "$flag" ] && extra+=("$flag")
  timeout "$LIMIT" "$PY" -u benchmarks/train_throughput.py --one "$model" "${extra[@]}" \
    --data "$DATA" --steps "$STEPS" --log-every 50 >"$OUT/$part.json" 2>"$OUT/$part.log"
  echo "$part: exit $? $(tail -c 600 "$OUT/$part.json")"
}

pallas_parity() {  # flash_t5 against XLA's attention in the whole model (script mode: the GPU
  # machines have no pytest)
  timeout "${PARITY_LIMIT:-300}" "$PY" -u tests/test_gpu.py --fused pallas \
    >"$OUT/pallas-parity.log" 2>&1
  echo "pallas parity: exit $?"
  grep -E "^(ok|FAIL)|^jax|Error" "$OUT/pallas-parity.log" | head -n 20
}

pallas_tiles() {  # one base encoder layer, forward + backward, at each spill-free tile choice
  for tiles in "64 64 4 2" "128 64 8 2" "64 64 4 3" "128 64 8 3"; do
    read -r bq bk warps stages <<<"$tiles"
    timeout 100 "$PY" -u benchmarks/attention_bias_cost.py --impl pallas --block-q "$bq" \
      --block-k "$bk" --num-warps "$warps" --num-stages "$stages" \
      --out "$OUT/pallas-$bq-$bk-$warps-$stages.json"
  done
}

for part in "$@"; do
  case "$part" in
    data)
      work=$(mktemp -d)
      "$PY" -m t5forge.cli build-c4 --input ../shared/data/wet/*.warc.wet.gz --output "$work/c4" \
        --no-badwords --format jsonl &&
        "$PY" -m t5forge.cli train-spm --input "$work/c4" --output "$work/spm16k" --vocab-size 16000 &&
        "$PY" -m t5forge.cli export --task corpus_span_corruption --corpus "$work/c4" \
          --vocab "$work/spm16k.model" --sequence-length inputs=512,targets=114 \
          --examples 16384 --output "$work/span16k" &&
        mkdir -p .gpu-data &&
        "$PY" - "$work/span16k.npz" "$DATA" <<'EOF'
import sys

import numpy as np

arrays = dict(np.load(sys.argv[1]))
assert max(int(a.max()) for a in arrays.values()) < 2**16
np.savez(sys.argv[2], **{k: a.astype(np.uint16) for k, a in arrays.items()})
print({k: a.shape for k, a in arrays.items()})
EOF
      cp "$work/span16k.json" "${DATA%.npz}.json"
      rm -rf "$work"
      ;;
    parity)
      timeout "${PARITY_LIMIT:-540}" "$PY" -u tests/test_gpu.py >"$OUT/parity.log" 2>&1
      echo "parity: exit $?"
      grep -E "^(ok|FAIL)|^jax" "$OUT/parity.log"
      ;;
    components)
      for model in t5.1.1-small t5.1.1-base; do
        timeout "$LIMIT" "$PY" -u benchmarks/step_components.py --model "$model" \
          --batch-size 128 --out "$OUT/components-$model.json" >"$OUT/components-$model.log" 2>&1
        echo "components $model: exit $?"
        tail -n 30 "$OUT/components-$model.log"
      done
      ;;
    small) train small t5.1.1-small ;;
    base) train base t5.1.1-base ;;
    small-mask) train small-mask t5.1.1-small padding=mask ;;
    base-mask) train base-mask t5.1.1-base padding=mask ;;
    small-features) train small-features t5.1.1-small padding=features ;;
    base-features) train base-features t5.1.1-base padding=features ;;
    small-bf16logits) train small-bf16logits t5.1.1-small logits_dtype=bfloat16 ;;
    small-fp32classifier) train small-fp32classifier t5.1.1-small classifier_dtype=float32 ;;
    pallas-parity) pallas_parity ;;
    pallas-tiles) pallas_tiles ;;
    pallas)
      # flash_t5: the whole-model check against XLA's attention, then spill-free tile choices
      # and, at the default tiles, the bias gradient stored and summed by XLA.
      pallas_parity
      pallas_tiles
      timeout 100 "$PY" -u benchmarks/attention_bias_cost.py --impl pallas --bias-grad store \
        --out "$OUT/pallas-store.json"
      ;;
    small-pallas) train small-pallas t5.1.1-small attention_impl=pallas ;;
    base-pallas) train base-pallas t5.1.1-base attention_impl=pallas ;;
    small-pallas-grouped) train small-pallas-grouped t5.1.1-small attention_impl=pallas --group-updates ;;
    base-pallas-grouped) train base-pallas-grouped t5.1.1-base attention_impl=pallas --group-updates ;;
    small-grouped) train small-grouped t5.1.1-small "" --group-updates ;;
    small-ungrouped) train small-ungrouped t5.1.1-small "" --no-group-updates ;;
    base-ungrouped) train base-ungrouped t5.1.1-base "" --no-group-updates ;;
    small-pallasbias-grouped|base-pallasbias-grouped)
      model="t5.1.1-${part%%-*}"
      train "$part" "$model" attention_impl=pallas_bias --group-updates
      ;;
    base-grouped) train base-grouped t5.1.1-base "" --group-updates ;;
    bias-cost)
      for heads in 12 6; do
        timeout 120 "$PY" -u benchmarks/attention_bias_cost.py --heads "$heads" \
          --out "$OUT/bias-cost-$heads-heads.json"
      done
      ;;
    small-notriton | base-notriton)
      XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_triton_gemm=false" \
        train "$part" "t5.1.1-${part%-notriton}"
      ;;
    profile-*)
      # Steps 21..25 of 30 traced; the per-kernel summary (benchmarks/profile_summary.py) and
      # the Perfetto trace itself come back in $OUT.
      variant="${part#profile-}"
      model="t5.1.1-${variant%%-*}"
      extra=()
      [[ "$part" == *-pallas* ]] && extra=(--override attention_impl=pallas)
      [[ "$part" == *-pallasbias* ]] && extra=(--override attention_impl=pallas_bias)
      [[ "$part" == *-grouped ]] && extra+=(--group-updates)
      timeout "$LIMIT" "$PY" -u -m t5forge.cli train --model "$model" --data "$DATA" \
        --steps 30 --batch-size 128 --output "$work_dir/$part" --profile-steps 21:25 \
        --checkpoint-every 0 --no-progress --no-tensorboard "${extra[@]}" >"$OUT/$part.log" 2>&1
      echo "$part: exit $?"
      "$PY" benchmarks/profile_summary.py "$work_dir/$part/profile" --steps 5 --top 40 \
        --out "$OUT/$part.json" >"$OUT/$part.txt" && head -n 60 "$OUT/$part.txt"
      cp "$(find "$work_dir/$part/profile" -name perfetto_trace.json.gz | head -n 1)" \
        "$OUT/$part.perfetto_trace.json.gz"
      ;;
    *) echo "unknown part: $part" >&2; exit 2 ;;
  esac
done
