#!/usr/bin/env bash
# The defaults sweep of docs/defaults.md: two small real data sets, recipes x seeds, 2 CPU ranks.
# Usage (from the repository root, venv active):
#   docs/defaults_sweep.sh data                 # write and convert both sets into $SWEEP
#   docs/defaults_sweep.sh run SET NAME SEEDS... -- [train options of the recipe]
#   docs/defaults_sweep.sh table                # val top-1 (last epoch) of every run
# Runs at nice 19 and waits while /tmp/quiet exists, so that it uses idle CPU only.
set -euo pipefail
SWEEP=${SWEEP:-/tmp/defaults-sweep}
FASHION=${FASHION:-/usr/share/datasets/fashion-mnist}
EPOCHS=${EPOCHS:-6}
COMMON=(--model resnet18 --image-size 32 --batch-size 32 --workers 1 --no-progress)

quiet() { while [ -e /tmp/quiet ]; do sleep 30; done; }

case "$1" in
data)
    quiet
    nice -n 19 python -c "from tests.digits import write_digits; write_digits('$SWEEP/digits-images')"
    nice -n 19 python -c "from tests.fashion import write_fashion; write_fashion('$SWEEP/fashion-images', 200, '$FASHION')"
    for set in digits fashion; do
        quiet
        nice -n 19 python -m data.convert --images "$SWEEP/$set-images" --out "$SWEEP/$set" --master 'local[2]' \
            --overwrite --no-progress
    done ;;
run)
    set=$2 name=$3; shift 3
    seeds=(); while [ "$1" != "--" ]; do seeds+=("$1"); shift; done; shift
    for seed in "${seeds[@]}"; do
        quiet
        out="$SWEEP/runs/$set/$name/seed$seed"
        rm -rf "$out"; mkdir -p "$(dirname "$out")"
        OMP_NUM_THREADS=1 nice -n 19 torchrun --standalone --nproc-per-node 2 -m trainer.train \
            --data "$SWEEP/$set" --out "$out" --epochs "$EPOCHS" --seed "$seed" "${COMMON[@]}" "$@" \
            > "$out.log" 2>&1 || { echo "failed: $out.log"; tail -3 "$out.log"; }
        python -c "import json; s = json.load(open('$out/summary.json')); print('$set $name seed $seed', \
'val_top1', s['val_top1'], 'best', s['best_val_top1'])" || true
    done ;;
table)
    python - "$SWEEP" <<'PY'
import glob, json, os, statistics, sys
rows = {}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "runs", "*", "*", "seed*", "summary.json"))):
    set_, name, seed = path.split(os.sep)[-4:-1]
    summary = json.load(open(path))
    rows.setdefault((set_, name), []).append((seed[4:], summary["val_top1"], summary["val_loss"]))
print("| set | recipe | seeds | val top-1 mean | per seed | val loss mean |\n|---|---|---|---|---|---|")
for (set_, name), runs in rows.items():
    top1 = [t for _, t, _ in runs]
    print(f"| {set_} | {name} | {', '.join(s for s, _, _ in runs)} | {statistics.mean(top1):.3f} | "
          f"{' / '.join(f'{t:.3f}' for t in top1)} | {statistics.mean(l for _, _, l in runs):.3f} |")
PY
    ;;
esac
