#!/usr/bin/env bash
# Installs everything RouteNLP needs into a virtualenv (default .venv), pinned by requirements/lock.txt.
# Idempotent: a stamp records the hash of the inputs, so a second run with nothing changed is instant.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${ROUTENLP_VENV:-.venv}
PYTHON=${PYTHON:-python3}
# Where torch's CPU wheel comes from when it is not on this machine's disk,
# e.g. TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu (never hard-coded: offline it would hang).
TORCH_INDEX_URL=${TORCH_INDEX_URL:-}

want=$(cat requirements/*.txt scripts/install.sh pyproject.toml | sha256sum | cut -d' ' -f1)
stamp="$VENV/.routenlp-install"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ] && [ -x "$VENV/bin/tritonserver" ]; then
  echo "install: up to date ($VENV)"; exit 0
fi

# perf_analyzer links libb64 (a Debian package).
if ! ldconfig -p | grep -q 'libb64.so.0d'; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq libb64-0d >/dev/null
  else
    echo "install: libb64-0d is missing and cannot be installed here; run: sudo apt-get install libb64-0d" >&2
  fi
fi

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check "$@"; }
extra=(); [ -n "$TORCH_INDEX_URL" ] && extra=(--extra-index-url "$TORCH_INDEX_URL")
echo "install: torch (CPU)"
pip install -q "${extra[@]}" -c requirements/constraints.txt torch==2.13.0
# The lock was resolved in phases whose conflicts are deliberate (see requirements/*.txt),
# so it is installed exactly, without a second resolve.
echo "install: pinned stack (requirements/lock.txt)"
pip install -q --no-deps -r requirements/lock.txt
# Only the tritonserver binary of this wheel is used; its Python package is never imported.
pip install -q --no-deps nvidia-pytriton==0.7.0
pip install -q --no-deps -e .
"$VENV/bin/python" -m routenlp.stack wire "$VENV"
echo "$want" > "$stamp"
echo "install: done ($VENV)"
