#!/usr/bin/env bash
# Behaviour checksums: a fixed-seed tiny `didi train`, `train-ar`, three distillations (2-step, warm-up/cosine, K-step
# with local credit and teacher samples as real), five samplers and an eval with a temperature sweep, all on the
# embedded corpus as bytes, single-threaded. Prints a checksum of every weights file (of its tensors, not its bytes:
# safetensors writes its metadata in a random order), of every metrics file without its timing fields, of every
# sample file's tokens and records, and of the eval report's rows and frontiers.
#
#   bash benchmarks/behaviour_checksums.sh /tmp/after > after.txt
#   SRC=/path/to/an/older/checkout/src bash benchmarks/behaviour_checksums.sh /tmp/before > before.txt
#   diff before.txt after.txt      # empty: bit-identical behaviour
set -euo pipefail
REPO=${REPO:-$(cd "$(dirname "$0")/.." && pwd)}
OUT=$1
rm -rf "$OUT"; mkdir -p "$OUT"
export DIDI_CACHE=$OUT/cache OMP_NUM_THREADS=1
export PYTHONPATH=${SRC:-$REPO/src}; PY="$REPO/.venv/bin/python"; D="$PY -m didi.cli"
T="--data shakespeare --tokenizer byte --seq-len 32 --hidden-size 32 --n-blocks 2 --n-heads 2 --cond-dim 16 --global-batch-size 8 --eval-every 10 --eval-batches 1 --progress false --warmup-steps 2 --max-documents 20"
$D train --out $OUT/teacher --steps 30 --save-every 15 $T > $OUT/train.log 2>&1
$D train-ar --out $OUT/ar --steps 20 $T > $OUT/ar.log 2>&1
$D distill --teacher $OUT/teacher --out $OUT/student --steps 24 --batch-size 2 --group-size 2 --lr 1e-4 --warmup-steps 2 --save-every 8 --log-every 4 --progress false --disc-warmup-steps 4 > $OUT/distill.log 2>&1
$D distill --teacher $OUT/teacher --out $OUT/student4 --steps 7 --batch-size 2 --group-size 2 --warmup-steps 3 --lr-schedule cosine --min-lr-ratio 0.1 --disc-warmup-steps 2 --student-update-every 2 --log-every 1 --progress false > $OUT/distill4.log 2>&1
$D distill --teacher $OUT/teacher --out $OUT/student3 --steps 6 --batch-size 2 --group-size 2 --student-steps 3 --credit local --disc-window 2 --log-every 2 --progress false --real-source teacher --teacher-nfe 4 > $OUT/distill3.log 2>&1
$D sample --model $OUT/teacher --nfe 8 --num-samples 4 --seed 3 --out $OUT/s_teacher.jsonl --quiet > /dev/null 2>&1
$D sample --model $OUT/student --nfe 8 --num-samples 4 --seed 3 --temperature 0.8 --top-p 0.9 --out $OUT/s_student.jsonl --quiet > /dev/null 2>&1
$D sample --model $OUT/student --nfe 8 --num-samples 4 --seed 3 --sampler rgas --out $OUT/s_rgas.jsonl --quiet > /dev/null 2>&1
$D sample --model $OUT/student --nfe 4 --num-samples 2 --seed 1 --prompt "To be" --length 48 --out $OUT/s_long.jsonl --quiet > /dev/null 2>&1
$D sample --model $OUT/ar --num-samples 3 --seed 2 --out $OUT/s_ar.jsonl --quiet > /dev/null 2>&1
$D eval --model $OUT/teacher --model $OUT/student --nfe 4,8 --evaluator $OUT/ar --num-samples 4 --seeds 0,1 --temperatures 0.5,1.0 --no-references --json $OUT/eval.json > $OUT/eval.log 2>&1 || true
cd $OUT
"$PY" - <<'PY'
import hashlib, json, glob, os
from safetensors.torch import load_file
def h(p):
    t = load_file(p); d = hashlib.sha256()
    for k in sorted(t): d.update(k.encode()); d.update(str(t[k].dtype).encode()); d.update(t[k].contiguous().numpy().tobytes())
    return d.hexdigest()[:16]
TIMING = {"tokens_per_s", "samples_per_s", "seconds", "model"}
for p in sorted(glob.glob("*/*.safetensors")) + sorted(glob.glob("*/checkpoints/*/*.safetensors")):
    print(p, h(p))
for p in sorted(glob.glob("*/metrics.jsonl")):
    rows = [{k: v for k, v in json.loads(l).items() if k not in TIMING} for l in open(p)]
    print(p, hashlib.sha256(json.dumps(rows).encode()).hexdigest()[:16], len(rows))
for p in sorted(glob.glob("s_*.jsonl")):
    rows = [{k: v for k, v in json.loads(l).items() if k not in TIMING} for l in open(p)]
    print(p, hashlib.sha256(json.dumps([r["tokens"] for r in rows]).encode()).hexdigest()[:16],
          hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()[:16])
if os.path.exists("eval.json"):
    rep = json.load(open("eval.json"))
    keep = [{k: r.get(k) for k in ("model", "nfe", "temperature", "gen_ppl", "entropy", "likelihood", "nfe_per_batch")} for r in rep["rows"]]
    print("eval.json rows", hashlib.sha256(json.dumps(keep, sort_keys=True, default=str).encode()).hexdigest()[:16], len(keep))
    print("eval frontiers", hashlib.sha256(json.dumps(rep.get("frontiers"), sort_keys=True, default=str).encode()).hexdigest()[:16])
PY
