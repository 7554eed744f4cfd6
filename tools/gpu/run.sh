#!/usr/bin/env bash
# One prepared GPU run (issue 29): adapter and driver, zipmerge's GPU figures at ResNet-20 x1 and
# x4 next to PyTorch's on the same GPU (ratios printed), the x4 pair trained for as many epochs
# as --epochs (the training state of every epoch under OUT, so a timeout still leaves them, and
# a rerun with the same OUT resumes), one full x4 merge with evaluation. Everything goes under
# --out.
#
#   tools/gpu/run.sh [--smoke] [--backend cuda|wgpu] [--device D] [--bin PATH] [--data DIR]
#                    [--epochs N] [--out DIR]
#
# --smoke: a tiny configuration for a machine without a GPU (wgpu on Mesa's lavapipe,
# `--device cpu`, the embedded sample, a few images): checks the script end to end.
# --bin: a zipmerge binary built elsewhere (`cargo build --release --features cuda`, which needs
# internet access at build time); default: target/release/zipmerge, built here when missing. A
# binary without the cuda feature runs the GPU through wgpu (Vulkan) instead, and says so.
set -euo pipefail
cd "$(dirname "$0")/../.."

SMOKE=0; BACKEND=cuda; DEVICE=""; BIN=""; DATA=""; EPOCHS=30; OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE=1; BACKEND=wgpu; DEVICE=cpu; shift ;;
    --backend) BACKEND="$2"; shift 2 ;;
    --device) DEVICE="$2"; shift 2 ;;
    --bin) BIN="$2"; shift 2 ;;
    --data) DATA="$2"; shift 2 ;;
    --epochs) EPOCHS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    *) echo "error: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-gpu-run-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$OUT"
exec > >(tee -a "$OUT/run.log") 2>&1
export XDG_RUNTIME_DIR=${XDG_RUNTIME_DIR:-/tmp}

if [ "$SMOKE" = 1 ]; then
  DATA=${DATA:-datasets/cifar10-sample}; IMAGES=64; WIDTHS="1"; LIMIT="--limit 64"; EPOCHS=1; WARMUP=0.2
  PROBE="--probe-images 64 --bn-reset-images 64 --batch-size 32"
else
  DATA=${DATA:-../shared/datasets/cifar10}; IMAGES=2000; WIDTHS="1 4"; LIMIT=""; WARMUP=1
  PROBE=""
fi
DEV=${DEVICE:+--device $DEVICE}

echo "== machine"
date -u; uname -a
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv || echo "nvidia-smi: not found"

echo "== binary"
if [ -z "$BIN" ]; then
  BIN=target/release/zipmerge
  [ -x "$BIN" ] || cargo build --release
fi
"$BIN" --version
if [ "$BACKEND" = cuda ] && "$BIN" bench --backend cuda --images 1 --batch-size 1 2>&1 | grep -q "no cuda support"; then
  # the cuda feature needs internet at build time (cubecl-llvm's LLVM bundle): RESULTS.md
  echo "note: $BIN was built without the cuda feature; using --backend wgpu (Vulkan on the same GPU)"
  BACKEND=wgpu
fi

echo "== zipmerge bench ($BACKEND)"
for W in $WIDTHS; do
  "$BIN" bench --backend "$BACKEND" $DEV --arch resnet20 --width "$W" --images "$IMAGES" --batch-size 500 --json > "$OUT/bench-x$W.json"
  echo "x$W: $(cat "$OUT/bench-x$W.json" | tr -d '\n' | cut -c1-400)"
done

echo "== PyTorch on the same GPU"
if [ "$SMOKE" = 0 ] && python3 -c "import torch; assert torch.cuda.is_available()" 2>/dev/null; then
  python3 tools/gpu/torch_gpu.py --widths $WIDTHS --batch-size 128 500 | tee "$OUT/torch.jsonl"
else
  echo "skipped: no PyTorch with CUDA here" | tee "$OUT/torch.jsonl"
fi

echo "== training the x4 pair ($EPOCHS epochs, state after every epoch under $OUT)"
W=4; [ "$SMOKE" = 1 ] && W=1
for P in 0 1; do
  L=$([ $P = 0 ] && echo a || echo b)
  M="$OUT/models/resnet20x$W-$L"
  RESUME=""; [ -d "$M.train-state" ] && RESUME="--resume"
  "$BIN" train --backend "$BACKEND" $DEV --arch resnet20 --width "$W" --head text --data "$DATA" \
    --split 5+5 --split-seed 6 --part $P --seed $((P + 1)) --epochs "$EPOCHS" \
    --batch-size 128 --lr 0.1 --warmup "$WARMUP" $LIMIT --no-progress --out "$M" $RESUME
  python3 - "$M/manifest.json" <<'PY'
import json, sys
t = json.load(open(sys.argv[1]))["provenance"]["training"]
secs = sum(e["seconds"] for e in t["epochs_log"])
print(f"{sys.argv[1]}: task accuracy {t['final_task_accuracy']:.2f}%, "
      f"train images/s {t['train_images'] * len(t['epochs_log']) / secs:.0f}")
PY
done

echo "== one full x$W merge with evaluation"
/usr/bin/time -v "$BIN" merge --backend "$BACKEND" $DEV --model "$OUT/models/resnet20x$W-a" \
  --model "$OUT/models/resnet20x$W-b" --data "$DATA" $PROBE --out "$OUT/merged-x$W" 2> "$OUT/merge-time.txt"
grep -E "Elapsed|Maximum resident" "$OUT/merge-time.txt"

echo "== ratios (zipmerge / PyTorch, same GPU)"
python3 - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
torch = [json.loads(l) for l in (out / "torch.jsonl").read_text().splitlines() if l.startswith("{")]
for b in sorted(out.glob("bench-x*.json")):
    z = json.loads(b.read_text()); w = int(b.stem.split("x")[1])
    for t in (t for t in torch if t["width"] == w and t["batch"] == 500):
        print(f"x{w} forward: zipmerge {z.get('forward_images_per_second', 0):.0f} / pytorch "
              f"{t['forward_images_per_second']:.0f} = {z.get('forward_images_per_second', 0) / t['forward_images_per_second']:.2f}")
if not torch:
    print("no PyTorch figures (smoke run or no CUDA PyTorch)")
PY
echo "done: $OUT"
