#!/usr/bin/env bash
# Issue 19's measurements on a GPU host that has JAX but no TensorFlow, Keras or SimpleITK (the
# lent H100/H200 machines), from the repository root, everything logged to $OUT/gpu_jax.log:
#   training patches/s of the Isensee network, 128^3, batch 2: model only (float32,
#   mixed_bfloat16, mixed_float16), then the full input pipeline (the faster mixed precision,
#   workers 8 and 14), with data waits and peak GPU memory (bench/train.py);
#   inference seconds per BraTS-size case, sliding windows with and without mirroring
#   (bench/predict.py).
# Needs, beside the working tree (both ignored by git via .git/info/exclude): .whl/, cp312
# wheels of what the host lacks (keras 3.15.1, namex, optree, tables (it bundles its
# libblosc2), numexpr; never numpy, jax or ml_dtypes, which the host has), and .gpudata/store.h5
# (python bench/make_gpu_data.py: 3 synthetic BraTS-size cases). The device call:
#   run(command="bash bench/gpu_jax.sh", carry=[".whl", ".gpudata"], timeout_s=540)
# Sizes and limits can be overridden: see the variables below (a CPU simulation: PATCH=16
# STEPS=2 ... TOTAL=1500 CASE=small.npy WHL=cp311-wheels PYTHON=venv/bin/python).
set -u -o pipefail
OUT=${OUT:-/tmp/gpu_jax_out}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
SITE=${SITE:-/tmp/site}
PATCH=${PATCH:-128} BATCH=${BATCH:-2} STEPS=${STEPS:-20} STEPS_FULL=${STEPS_FULL:-40}
EPOCHS=${EPOCHS:-3} REPEATS=${REPEATS:-3} WORKERS=${WORKERS:-8,14}
PRECISIONS=${PRECISIONS:-mixed_bfloat16,mixed_float16,float32}
TOTAL=${TOTAL:-520}  # seconds for everything; each step gets what is left, less the later ones'
STORE=${STORE:-.gpudata/store.h5} CASE=${CASE:-$STORE} PREDICT_PATCH=${PREDICT_PATCH:-$PATCH}
WHL=${WHL:-.whl}

left() { echo $(( TOTAL - SECONDS - $1 )); }  # seconds left, keeping $1 for the later steps
cap() { local t; t=$(left "$2"); (( t > $1 )) && t=$1; (( t < 10 )) && t=10; echo "$t"; }

main() {
  echo "== $(date -u +%FT%TZ) $(hostname) bench/gpu_jax.sh in $PWD"
  nvidia-smi -L 2>&1 || echo "(no nvidia-smi)"
  if ls "$WHL"/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$SITE" "$WHL"/*.whl || { echo "wheel install failed"; return 1; }
  fi
  export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
  if ! "$PY" -c "import SimpleITK" 2>/dev/null; then
    echo "no SimpleITK here: bench/nositk stands in for it (never called on these paths)"
    export PYTHONPATH="$PYTHONPATH:$PWD/bench/nositk"
  fi
  export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
  export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/jax_cache}
  export TF_CPP_MIN_LOG_LEVEL=2
  "$PY" - <<'EOF' || { echo "imports failed"; return 1; }
import importlib, platform, sys
print("python", platform.python_version(), sys.executable)
for name in ("jax", "jaxlib", "keras", "numpy", "scipy", "h5py", "tables", "numexpr", "numba",
             "optree", "ml_dtypes", "SimpleITK", "tensorflow"):
    try:
        module = importlib.import_module(name)
        print(f"  {name} {getattr(module, '__version__', '?')} {module.__file__}")
    except Exception as error:  # noqa: BLE001 - a report
        print(f"  {name}: {type(error).__name__}: {error}")
import jax, keras
print("backend", keras.backend.backend(), "devices", jax.devices())
import unet3d.recipes  # noqa: F401 - the training path imports
print("unet3d imports ok; tensorflow loaded:", "tensorflow" in sys.modules)
EOF
  echo "== files: $(du -sh .whl .gpudata 2>/dev/null | tr '\n' ' ')"
  local precisions n t
  n=$(echo "$PRECISIONS" | tr ',' '\n' | wc -l)

  echo "== $(date -u +%T) [${SECONDS}s] training, model only: $PRECISIONS"
  t=$(cap 330 200)
  timeout -k 10 "$t" "$PY" bench/train.py --data_file "$STORE" --patch "$PATCH" \
    --batch_size "$BATCH" --steps "$STEPS" --epochs "$EPOCHS" --replicas 1 --modes "model only" \
    --precisions "$PRECISIONS" --child_timeout $(( t / n )) --json "$OUT/train_model_only.json" \
    --work_dir /tmp/bench_train_model_only || echo "(model only: exit $?)"

  echo "== $(date -u +%T) [${SECONDS}s] inference: sliding, sliding+mirror"
  if grep -q 'DEFINE_list("runtimes"' bench/predict.py; then
    precisions=(--runtimes keras --precisions float32,bfloat16)
  else
    precisions=(--precisions float32,mixed_bfloat16)
  fi
  t=$(cap 170 110)
  timeout -k 10 "$t" "$PY" bench/predict.py --case_file "$CASE" --patch "$PREDICT_PATCH" \
    --modes sliding,sliding+mirror --repeats "$REPEATS" "${precisions[@]}" \
    || echo "(inference: exit $?)"

  local full
  full=$("$PY" - "$OUT/train_model_only.json" <<'EOF'
import json, sys
try:
    rows = json.load(open(sys.argv[1]))
except (OSError, ValueError):
    rows = []
rates = {r["precision"]: r["result"]["patches_per_second"] for r in rows
         if r["result"] and r["precision"].startswith("mixed")}
print(max(rates, key=rates.get) if rates else "mixed_bfloat16")
EOF
  )
  n=$(echo "$WORKERS" | tr ',' '\n' | wc -l)
  echo "== $(date -u +%T) [${SECONDS}s] training, full input pipeline: $full, workers $WORKERS"
  t=$(cap 240 5)
  timeout -k 10 "$t" "$PY" bench/train.py --data_file "$STORE" --patch "$PATCH" \
    --batch_size "$BATCH" --steps "$STEPS_FULL" --epochs "$EPOCHS" --replicas 1 --modes full \
    --workers "$WORKERS" --precisions "$full" --child_timeout $(( t / n )) \
    --json "$OUT/train_full.json" --work_dir /tmp/bench_train_full || echo "(full: exit $?)"
  echo "== $(date -u +%T) [${SECONDS}s] training summary (patch $PATCH^3, batch $BATCH)"
  "$PY" - "$OUT/train_model_only.json" "$OUT/train_full.json" <<'EOF'
import json, sys
rows = []
for path in sys.argv[1:]:
    try:
        rows += json.load(open(path))
    except (OSError, ValueError):
        pass
only = {r["precision"]: r["result"]["patches_per_second"] for r in rows
        if r["result"] and r["mode"] == "model only"}
print("| precision | data | patches/s | s/epoch | waiting for data s/epoch | computing s/epoch | "
      "full / model only | first epoch s | peak GPU GB |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for r in rows:
    res, p = r["result"], r["precision"]
    label = f"full, {r['workers']} workers" if r["mode"] == "full" else r["mode"]
    if not res:
        print(f"| {p} | {label} | failed | | | | | | |")
        continue
    s, wait = res["seconds_per_epoch"], res.get("data_wait_seconds_per_epoch")
    ratio = res["patches_per_second"] / only[p] if r["mode"] == "full" and p in only else None
    cells = [f"{res['patches_per_second']:.1f}", f"{s:.2f}",
             "-" if wait is None else f"{wait:.2f}", "-" if wait is None else f"{s - wait:.2f}",
             "-" if ratio is None else f"{ratio:.2f}", f"{res['first_epoch_seconds']:.0f}",
             f"{res['peak_device_gb']:.1f}" if "peak_device_gb" in res else "-"]
    print(f"| {p} | {label} | " + " | ".join(cells) + " |")
EOF
  echo "== $(date -u +%T) [${SECONDS}s] done"
}

main 2>&1 | tee "$OUT/gpu_jax.log"
