#!/usr/bin/env bash
# Build (once) the isolated legacy venv with neural-tangents 0.6.5, our main
# peer. neural-tangents does not import on modern JAX, so it lives in its own
# venv with the last JAX it supports; owidth itself never imports it.
#
#   bash benchmarks/peers/build_venv.sh        # prints the venv's python path
#
# Idempotent: an existing venv that imports neural_tangents is reused.
# Location: $OWIDTH_PEER_VENV (default ~/.cache/owidth/nt-venv).
set -euo pipefail
VENV="${OWIDTH_PEER_VENV:-$HOME/.cache/owidth/nt-venv}"
PY="${PYTHON:-python3}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import neural_tangents" >/dev/null 2>&1; then
  echo "$VENV/bin/python"
  exit 0
fi
"$PY" -m venv "$VENV" >&2
"$VENV/bin/pip" install -q --upgrade pip >&2
"$VENV/bin/pip" install -q "jax==0.4.23" "jaxlib==0.4.23" "neural-tangents==0.6.5" "numpy<2" "scipy<1.13" >&2
"$VENV/bin/python" -c "import neural_tangents" >&2
echo "$VENV/bin/python"
