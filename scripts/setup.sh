#!/usr/bin/env bash
# Install atc-il and everything it needs into ./.venv (Python 3.11). Idempotent.
# Where torch is absent, the CPU build is installed first, so no CUDA wheels are pulled on a
# machine without a GPU; a machine (or venv) that already has torch keeps it.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
export PIP_DISABLE_PIP_VERSION_CHECK=1
if ! python -c "import torch" >/dev/null 2>&1; then
  echo "[setup] installing torch (CPU build)"
  pip install -q "torch==2.13.0" 2>&1 | grep -v "is ignored: it is neither" || true
  python -c "import torch" 2>/dev/null || { echo "[setup] torch install failed" >&2; exit 1; }
fi
if ! python -c "import atc_il, pytest" >/dev/null 2>&1 || [ pyproject.toml -nt .venv/.atc-il-installed ]; then
  echo "[setup] installing atc-il and its dependencies"
  pip install -q -e ".[dev]" 2>&1 | grep -v "is ignored: it is neither" || true
  python -c "import atc_il, atc_il_cli, pipelines, bluesky, mlflow, fastapi, dask, torch, onnxruntime, numba, pytest" \
    || { echo "[setup] install failed" >&2; exit 1; }
  touch .venv/.atc-il-installed
fi
echo "[setup] ready: $(python -c 'import torch, numpy, pandas; print("torch", torch.__version__, "numpy", numpy.__version__, "pandas", pandas.__version__)')"
