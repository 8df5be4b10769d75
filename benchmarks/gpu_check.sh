#!/usr/bin/env bash
# GPU check for pathwatch: on a machine with an NVIDIA GPU, build and parity-check the FP16
# TensorRT engine, run ONNX Runtime's CUDA provider and the torch CUDA backend, and print the
# speed.py tables against the FP32 reference loop on that GPU. Needs no network.
#
#   bash benchmarks/gpu_check.sh                 # from the repository root
#   GPU_CHECK_BUDGET_S=420 bash benchmarks/gpu_check.sh --rounds 3   # extra args go to speed.py
#
# It takes what the machine has: each missing piece (TensorRT, cuda-python, onnxruntime-gpu,
# a GPU at all) is named with the reason and skipped, never installed (nothing can be
# downloaded here). Without a GPU it says so, prints a short CPU table and exits 0.
# Results: speed.py's tables on stdout, its JSON in $GPU_CHECK_OUT (default: $OUT if set,
# else a temporary directory). Exit status: 0 when everything it could run ran, 1 when
# speed.py failed, 2 when pathwatch cannot be imported or a required module is missing.
set -u -o pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  for cand in python3 python; do
    if command -v "$cand" >/dev/null 2>&1; then PY=$cand; break; fi
  done
fi
if [ -z "$PY" ]; then echo "gpu_check: no python3 on PATH (set PYTHON=...)"; exit 2; fi
BUDGET=${GPU_CHECK_BUDGET_S:-480}   # speed.py's wall-clock limit; the whole script stays under 10 min
RESULTS=${GPU_CHECK_OUT:-${OUT:-$(mktemp -d /tmp/pathwatch-gpu-check.XXXXXX)}}
mkdir -p "$RESULTS"
export PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1   # never reach for the network
export PATHWATCH_BENCH_CACHE=${PATHWATCH_BENCH_CACHE:-${TMPDIR:-/tmp}/pathwatch-bench-cache}  # exports, engines, calibrations
T0=$(date +%s)

section() { printf '\n== %s\n' "$*"; }

section "pathwatch gpu_check ($(date '+%Y-%m-%d %H:%M:%S %Z'), $(hostname))"
echo "repository: $REPO"
echo "python: $(command -v "$PY") ($("$PY" -c 'import platform; print(platform.python_version())' 2>&1))"
echo "load average: $(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || uptime); $(nproc 2>/dev/null || echo '?') CPUs"
echo "results: $RESULTS"

# --- 1. the GPU, as the driver sees it -------------------------------------------------------
section "GPU"
GPU_DRIVER=no
if command -v nvidia-smi >/dev/null 2>&1; then
  if nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv,noheader 2>/dev/null; then
    GPU_DRIVER=yes
  else
    echo "nvidia-smi is installed but reports no usable GPU: $(nvidia-smi 2>&1 | head -n 1)"
  fi
else
  echo "nvidia-smi: not found (no NVIDIA driver on this machine)"
fi

# --- 2. what is installed ---------------------------------------------------------------------
section "Python packages"
"$PY" - <<'EOF'
import importlib, importlib.util
def ver(name):
    try:
        m = importlib.import_module(name)
    except Exception as e:  # a broken install is as good as a missing one
        return f"MISSING ({type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''})"
    return getattr(m, "__version__", "present")
rows = [("numpy", "required"), ("torch", "required: reference loop, torch backend, exports"),
        ("safetensors", "required: loads the model"), ("scipy", "required: parity scores"),
        ("sklearn", "required: calibration densities"), ("onnx", "exports for K other than 3"),
        ("onnxruntime", "onnxruntime backends"), ("tensorrt", "TensorRT engine and runtime"),
        ("cuda.bindings", "TensorRT runtime memory (cuda-python >= 12.6)"),
        ("cuda", "TensorRT runtime memory (older cuda-python)"),
        ("cv2", "frame-path stages"), ("zmq", "publishing, live daemon"), ("pydantic", "live daemon"),
        ("yaml", "live daemon config"), ("rich", "tables (plain text without it)")]
for name, why in rows:
    print(f"  {name:<14} {ver(name):<40} {why}")
try:
    import torch
    print(f"  torch CUDA: built for {torch.version.cuda}, available: {torch.cuda.is_available()}"
          + (f", {torch.cuda.device_count()} device(s): {torch.cuda.get_device_name(0)}"
             if torch.cuda.is_available() else ""))
except Exception:
    pass
try:
    import onnxruntime as ort
    print(f"  onnxruntime providers: {', '.join(ort.get_available_providers())}")
except Exception:
    pass
EOF
TRT_LIBS=$( (ldconfig -p 2>/dev/null | grep -c 'libnvinfer\.so') || true)
TRTEXEC=$(command -v trtexec 2>/dev/null || true)
echo "  TensorRT libraries (ldconfig): ${TRT_LIBS:-0} libnvinfer entries; trtexec: ${TRTEXEC:-not found}"

# --- 3. make `import pathwatch` work without touching the environment ------------------------
section "pathwatch import"
can_import() { "$PY" -c 'import pathwatch.edge.bundle, pathwatch.export.schedule, pathwatch.cli' >/dev/null 2>&1; }
if can_import; then
  echo "pathwatch is importable as installed: $("$PY" -c 'import pathwatch.edge as e; print(e.__file__)')"
else
  # The repository keeps edge/, export/ and cli/ at the top level and installs them under one
  # import root (pyproject's package-dir), so PYTHONPATH=. alone is not enough: a directory
  # with pathwatch/{edge,export,cli} links to them makes the same namespace package.
  SHIM=$(mktemp -d /tmp/pathwatch-shim.XXXXXX)
  trap 'rm -rf "$SHIM"' EXIT
  mkdir -p "$SHIM/pathwatch"
  for part in edge export cli; do ln -s "$REPO/$part" "$SHIM/pathwatch/$part"; done
  export PYTHONPATH="$SHIM${PYTHONPATH:+:$PYTHONPATH}"
  if can_import; then
    echo "pathwatch importable through PYTHONPATH=$SHIM (links to $REPO/{edge,export,cli}; nothing installed)"
  else
    echo "the PYTHONPATH shim did not work; trying an offline editable install"
    if timeout 180 "$PY" -m pip install -q --no-index --no-deps --no-build-isolation -e "$REPO" && can_import; then
      echo "installed with pip install -e . --no-deps --no-build-isolation (offline)"
    else
      echo "gpu_check: cannot import pathwatch here:"
      "$PY" -c 'import pathwatch.edge.bundle, pathwatch.export.schedule, pathwatch.cli' 2>&1 | tail -n 3
      exit 2
    fi
  fi
fi
MISSING=$("$PY" - <<'EOF'
import importlib
need = ["numpy", "torch", "safetensors", "scipy", "sklearn"]
bad = []
for n in need:
    try:
        importlib.import_module(n)
    except Exception:
        bad.append(n)
print(" ".join(bad))
EOF
)
if [ -n "$MISSING" ]; then
  echo "gpu_check: speed.py needs $MISSING, not installed here and not installable offline; nothing measured"
  exit 2
fi

# --- 4. no GPU: say so, print a short CPU table, exit 0 ---------------------------------------
TORCH_CUDA=$("$PY" -c 'import torch; print(int(torch.cuda.is_available()))' 2>/dev/null || echo 0)
if [ "$GPU_DRIVER" != yes ] || [ "$TORCH_CUDA" != 1 ]; then
  section "no usable NVIDIA GPU"
  if [ "$GPU_DRIVER" != yes ]; then echo "  no NVIDIA driver/GPU (see above)"; fi
  if [ "$TORCH_CUDA" != 1 ]; then
    echo "  torch $("$PY" -c 'import torch; print(torch.__version__, "built for CUDA", torch.version.cuda)' 2>/dev/null) sees no CUDA device"
  fi
  echo "  skipped: TensorRT engine build and parity check, onnxruntime CUDA provider, torch CUDA backend"
  if [ "${GPU_CHECK_CPU:-1}" = 0 ]; then
    echo "  GPU_CHECK_CPU=0: no CPU table either. Done."
    exit 0
  fi
  section "CPU table instead (short: K=3, 4x3 tiles, 2 rounds; the full one is benchmarks/speed.py)"
  timeout "$BUDGET" "$PY" benchmarks/speed.py --k 3 --grid 4x3 --batch 12 --rounds 2 --repeats 1 \
    --stage-reps 3 --live none --json "$RESULTS/cpu_speed.json" "$@"
  rc=$?
  if [ $rc = 124 ]; then echo "gpu_check: the CPU table ran past ${BUDGET} s and was stopped"; fi
  echo "gpu_check: no GPU here; CPU table exit status $rc; $(( $(date +%s) - T0 )) s in all"
  exit 0
fi

# --- 5. the GPU run ---------------------------------------------------------------------------
section "what runs on this GPU"
"$PY" - <<'EOF'
import importlib.util
try:
    import onnxruntime as ort
    prov, ort_version = ort.get_available_providers(), ort.__version__
except ImportError:
    prov, ort_version = [], "(not installed)"
def has(n):
    try:
        return importlib.util.find_spec(n) is not None
    except (ImportError, ValueError):
        return False
print("  reference loop (eager torch on CUDA, FP32, TF32 off; statistics in numpy): runs")
print("  torch backend (CUDA graphs; FP16 autocast and FP32): runs")
if "CUDAExecutionProvider" in prov:
    print("  onnxruntime CUDA provider: runs")
else:
    print(f"  onnxruntime CUDA provider: SKIPPED, no CUDA provider in onnxruntime {ort_version} "
          f"(providers {', '.join(prov)}); onnxruntime-gpu is not installed and cannot be without network")
if "TensorrtExecutionProvider" in prov:
    print("  onnxruntime TensorRT provider (FP16): runs")
if has("tensorrt") and (has("cuda.bindings") or has("cuda")):
    print("  TensorRT (native runtime): builds the FP16 engine, checks it against the export, runs it")
elif has("tensorrt"):
    print("  TensorRT: SKIPPED, the tensorrt package is here but cuda-python (device memory) is not")
else:
    print("  TensorRT: SKIPPED, the `tensorrt` Python package is not installed; `pip install tensorrt` "
          "needs network access, which this machine does not have")
if prov:
    print("  onnxruntime CPU provider: runs, for comparison with this machine's CPU")
EOF
section "speed.py --device cuda (limit ${BUDGET} s)"
timeout "$BUDGET" "$PY" benchmarks/speed.py --device cuda --k 1 --k 3 --k 5 --k 10 --batch 12 --batch 64 \
  --grid 4x3 --grid 8x6 --rounds 5 --repeats 5 --trt-k 3 --live auto --live-seconds 20 \
  --json "$RESULTS/gpu_speed.json" "$@"
rc=$?
section "done in $(( $(date +%s) - T0 )) s"
if [ $rc = 124 ]; then
  echo "gpu_check: speed.py ran past ${BUDGET} s and was stopped (raise GPU_CHECK_BUDGET_S or pass --rounds 3)"
  exit 1
elif [ $rc != 0 ]; then
  echo "gpu_check: speed.py failed with exit status $rc"
  exit 1
fi
echo "results: $RESULTS/gpu_speed.json"
