#!/usr/bin/env bash
# The prepared GPU check (about 5-10 minutes on one H100/A100): one short training run of each
# foundation-model method at a reduced real scale, through jaxrec.main, then a table of peak
# device memory (the backend's memory_stats) and mean step time after compilation, read from
# each run's runtime.json. Weights are random (no network on the GPU machine): memory and time
# do not depend on the values.
#
#   bash scripts/gpu_check.sh [OUT_DIR]          # default OUT_DIR: ${OUT:-/tmp/gpu_check}
#   STEPS=20 bash scripts/gpu_check.sh           # steps per run (default 20)
#   SCALE=tiny bash scripts/gpu_check.sh         # CPU rehearsal with tiny sizes (CI-sized)
#
# Needs the CUDA build (`make venv CUDA=12`). Writes OUT_DIR/gpu_check.md. The CPU rehearsal
# (SCALE=tiny STEPS=2) runs all six to exit 0 in about 6 minutes on 2 cores; the real-scale
# settings have never run (no GPU was available yet).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-/tmp/gpu_check}}"
STEPS="${STEPS:-20}"
SCALE="${SCALE:-real}"
PY="${PY:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
mkdir -p "$OUT_DIR"
export JAXREC_DATA_DIR="${JAXREC_DATA_DIR:-$OUT_DIR/data}"
export XLA_PYTHON_CLIENT_PREALLOCATE=false     # so memory_stats reports what a step uses

if [ "$SCALE" = tiny ]; then
  DEC="--config.decoder.hidden_size=32 --config.decoder.intermediate_size=64 --config.decoder.num_layers=1 --config.decoder.num_heads=2 --config.decoder.pretrain_steps=2"
  GAZE="--config.model.hidden_size=32 --config.model.intermediate_size=64 --config.model.num_layers=1 --config.model.num_heads=2"
  IISAN_ARGS="smoke"
  BATCH=8
else
  # A ~0.5B-class decoder (width 1024, 16 layers, 16 heads, FFN 2816), bf16 compute;
  # IISAN with BERT-base + ViT-B/16 shaped towers (towers=base) at the paper's batch.
  DEC="--config.decoder.hidden_size=1024 --config.decoder.intermediate_size=2816 --config.decoder.num_layers=16 --config.decoder.num_heads=16 --config.decoder.pretrain_steps=20"
  GAZE="--config.model.hidden_size=1024 --config.model.intermediate_size=2816 --config.model.num_layers=16 --config.model.num_heads=16 --config.model.max_position_embeddings=1024 --config.data.max_len=512"
  IISAN_ARGS="towers=base"
  BATCH=32
fi
COMMON="--config.train.num_steps=$STEPS --config.train.eval_every=$STEPS --config.train.log_every=$STEPS"

run() {   # name, config spec, extra flags...
  local name="$1" spec="$2"; shift 2
  echo "== $name: --config=$spec $*" >&2
  local t0=$SECONDS
  timeout 240 "$PY" -m jaxrec.main --config="$spec" $COMMON "$@" --workdir="$OUT_DIR/$name" \
      > "$OUT_DIR/$name.log" 2>&1
  echo "$name $? $((SECONDS - t0))" >> "$OUT_DIR/status.txt"
}

rm -f "$OUT_DIR/status.txt"
run iisan_cached "iisan:$IISAN_ARGS,cached=1" --config.train.batch_size=$BATCH
run iisan_live "iisan:$IISAN_ARGS,cached=0,tower_dtype=bfloat16" --config.train.batch_size=$BATCH
run iisan_fft "iisan:$IISAN_ARGS,variant=fft,tower_dtype=bfloat16" --config.train.batch_size=$BATCH
run gaze_reward_lora "gaze_reward:smoke,regime=lora" $GAZE --config.train.batch_size=$BATCH --config.train.compute_dtype=bfloat16
run persoma "persoma:smoke" $DEC --config.train.batch_size=$BATCH --config.train.compute_dtype=bfloat16
run lea "lea:smoke,variant=full" $DEC --config.train.compute_dtype=bfloat16

"$PY" - "$OUT_DIR" <<'PYEOF'
import json, os, sys
out = sys.argv[1]
rows = []
for line in open(os.path.join(out, "status.txt")):
    name, rc, secs = line.split()
    rt_path = os.path.join(out, name, "runtime.json")
    rt = json.load(open(rt_path)) if os.path.exists(rt_path) else {}
    peak = rt.get("peak_device_bytes")
    step = rt.get("mean_step_s")
    rows.append(f"| {name} | {rc} | {rt.get('device_kind', '-')} | "
                f"{'-' if peak is None else f'{peak / 2**30:.2f} GiB'} | "
                f"{'-' if step is None else f'{step * 1e3:.1f} ms'} | {secs} s |")
table = ["| run | exit | device | peak device memory | mean step (after compile) | wall (incl. data, compile) |",
         "|---|---|---|---|---|---|", *rows]
text = "\n".join(table)
print(text)
open(os.path.join(out, "gpu_check.md"), "w").write(text + "\n")
PYEOF
