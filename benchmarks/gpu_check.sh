#!/usr/bin/env bash
# One command for a lent GPU: what only a GPU can tell, in under 10 minutes.
#
#   bash benchmarks/gpu_check.sh [OUT_DIR]           # on the GPU machine, from the repo root
#   GPU_CHECK_SMALL=1 bash benchmarks/gpu_check.sh   # tiny sizes: checks the script itself on CPU
#
# 1. device, driver, jax and cuDNN versions; 2. attention parity: every kernel this GPU can run
# (cuDNN, the Pallas Triton kernel, chunked) vs XLA, unpacked and packed (outputs and gradients); 3. predicted (AOT memory_analysis) vs measured peak_bytes_in_use of the train step;
# 4. train_throughput at seq 2048 in bf16 (step ms, MFU, compile s) from d256-l6 to d2048-l20,
# and packed rows (segment ids: the Pallas Triton kernel) at the largest size; 4c. packed
# runs (benchmarks/packed_throughput.py: K small models vmapped into one step) at d16-d256;
# 5. loader tokens/s at seq 2048; 6. a smoke run killed with -9 after a checkpoint, resumed, and
# compared with an uninterrupted run. Everything is also written to OUT_DIR/gpu_check.log.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-${OUT:-/tmp/gpu_check}}
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
py=${PYTHON:-python3}
quiet() { grep -v -E '^[WI][0-9]{4} ' || true; }  # absl INFO/WARNING lines

if [[ ${GPU_CHECK_SMALL:-0} == 1 ]]; then
  sizes=d32-l1,d64-l2; big=d64-l2; seq=128; batch=8; dtype=float32; attn="--seq_len=128 --heads=2 --head_dim=32"
else
  sizes=d256-l6,d512-l8,d1024-l14,d2048-l20; big=d2048-l20; seq=2048; batch=8; dtype=bfloat16; attn=""
fi

echo "== 1. device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || echo "no nvidia-smi"
$py - <<'PY'
import jax
print("jax", jax.__version__, "devices", jax.devices())
try:
    from jax._src.lib import cuda_versions
    print("cudnn", cuda_versions.cudnn_get_version() if cuda_versions else "n/a")
except Exception as e:  # noqa: BLE001
    print("cudnn version unknown:", e)
PY

echo "== 2. attention parity (each kernel vs XLA, unpacked and packed)"
$py benchmarks/attention_parity.py $attn 2>&1 | quiet

echo "== 3. memory: predicted vs measured ($big, batch $batch x seq $seq, $dtype)"
$py benchmarks/aot_memory.py --target=local --execute --sizes=$big --seq_len=$seq --batch=$batch \
  --dtype=$dtype --mesh=-1,1,1 2>&1 | quiet

echo "== 3b. memory pre-flight: what the trainer would pick on this device ($big)"
$py benchmarks/aot_memory.py --target=local --choose --device_gib=0 --sizes=$big --seq_len=$seq \
  --batch=$batch --dtype=$dtype --mesh=-1,1,1 2>&1 | quiet

echo "== 4. train throughput (seq $seq, $dtype)"
$py benchmarks/train_throughput.py --sizes=$sizes --seq_len=$seq --batch=$batch --dtype=$dtype \
  --steps=5 2>&1 | quiet

echo "== 4b. packed rows (8 segments per row: the triton kernel on GPU) vs unpacked, $big"
$py benchmarks/train_throughput.py --sizes=$big --seq_len=$seq --batch=$batch --dtype=$dtype \
  --steps=5 --pack 2>&1 | quiet

echo "== 4c. packed runs: 4 same-shape small models in one vmapped step vs one at a time"
$py benchmarks/packed_throughput.py --sizes=d16-l1,d64-l2,d128-l3,d256-l4 --runs=4 --rounds=10 2>&1 | quiet

echo "== 5. loader at seq $seq"
$py benchmarks/bench_loader.py --seq_len=$seq --batch_size=$batch --seconds=3 2>&1 | quiet

echo "== 6. smoke: kill -9 after a checkpoint, resume, compare with an uninterrupted run"
rm -rf "$out/smoke_ref" "$out/smoke_killed"
$py -m ehr_jax.main --config=configs/smoke.py --workdir="$out/smoke_ref" 2>&1 | quiet | tail -2
$py -m ehr_jax.main --config=configs/smoke.py --workdir="$out/smoke_killed" >/dev/null 2>&1 &
pid=$!
for _ in $(seq 600); do [[ -d "$out/smoke_killed/checkpoints/50" ]] && break; sleep 0.1; done
kill -9 "$pid" 2>/dev/null || true
wait "$pid" 2>/dev/null || true
$py -m ehr_jax.main --config=configs/smoke.py --workdir="$out/smoke_killed" 2>&1 | quiet | tail -2
$py - "$out" <<'PY'
import json, sys
ref, resumed = (json.load(open(f"{sys.argv[1]}/{name}/summary.json")) for name in ("smoke_ref", "smoke_killed"))
keys = ("final_train_loss", "val_loss", "steps")
same = all(ref[k] == resumed[k] for k in keys)
print("resume after kill -9:", "identical" if same else "DIFFERENT", {k: (ref[k], resumed[k]) for k in keys})
sys.exit(0 if same else 1)
PY
echo "gpu_check: done ($out/gpu_check.log)"
