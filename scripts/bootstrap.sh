#!/usr/bin/env bash
# Set up geoseg on Debian 12 (run as root, or with sudo available): system packages,
# a virtual environment in .venv made from Debian's Python (so that QGIS's Python
# packages are visible to it) and geoseg installed into it in editable mode.
#
#   bash scripts/bootstrap.sh          # runtime only (predict, areas, info, demo)
#   bash scripts/bootstrap.sh --test   # plus what the test suite needs
#
# Safe to run again: every step is skipped when it is already done.
set -euo pipefail
cd "$(dirname "$0")/.."

extra=""
[ "${1:-}" = "--test" ] && extra="[test]"

SUDO=""
[ "$(id -u)" -ne 0 ] && SUDO="sudo"
need_apt=""
/usr/bin/python3 -c "import venv, ensurepip" 2>/dev/null || need_apt="$need_apt python3-venv"
/usr/bin/python3 -c "from osgeo import gdal" 2>/dev/null || need_apt="$need_apt python3-gdal"
# The tests also open geoseg's outputs in QGIS (headless) to check what a QGIS user sees.
if [ -n "$extra" ]; then
  /usr/bin/python3 -c "import qgis.core" 2>/dev/null || need_apt="$need_apt python3-qgis qgis-providers"
  # qgis_process.bin (package qgis) runs the plugin headless, as the tests do
  [ -x /usr/bin/qgis_process.bin ] || need_apt="$need_apt qgis"
fi
if [ -n "$need_apt" ]; then
  echo "bootstrap: installing Debian packages:$need_apt" >&2
  export DEBIAN_FRONTEND=noninteractive
  $SUDO apt-get update -qq
  # shellcheck disable=SC2086
  $SUDO apt-get install -y -qq --no-install-recommends $need_apt >/dev/null
fi

if [ ! -x .venv/bin/python ]; then
  echo "bootstrap: creating .venv" >&2
  /usr/bin/python3 -m venv --system-site-packages .venv
fi
stamp=".venv/.geoseg-installed$extra"
if [ ! -f "$stamp" ] || [ setup.cfg -nt "$stamp" ]; then
  echo "bootstrap: installing geoseg$extra into .venv" >&2
  log=.venv/pip-install.log
  if ! { .venv/bin/python -m pip install --disable-pip-version-check --upgrade "pip>=23" &&
         .venv/bin/python -m pip install --disable-pip-version-check -e ".$extra"; } >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    echo "bootstrap: pip install failed (full log: $log)" >&2
    exit 1
  fi
  touch "$stamp"
fi

# The tests also run geoseg on Keras' JAX backend with no TensorFlow installed (as on a
# GPU host that has JAX only): a second, plain environment (pip packages only, numpy 2).
if [ -n "$extra" ]; then
  jstamp=".venv-jax/.geoseg-installed"
  if [ ! -f "$jstamp" ] || [ setup.cfg -nt "$jstamp" ] || [ scripts/bootstrap.sh -nt "$jstamp" ]; then
    echo "bootstrap: creating .venv-jax (Keras on JAX, no TensorFlow) for the tests" >&2
    [ -x .venv-jax/bin/python ] || /usr/bin/python3 -m venv .venv-jax
    log=.venv-jax/pip-install.log
    if ! { .venv-jax/bin/python -m pip install --disable-pip-version-check --upgrade "pip>=23" &&
           .venv-jax/bin/python -m pip install --disable-pip-version-check "jax>=0.4.30" "keras>=3.8" \
             "rasterio>=1.4,<1.5" "click>=8.1" "pyproj>=3.6" "shapely>=2.0" "pyogrio>=0.7" "matplotlib>=3.8" \
             "attrs>=23.2" &&
           .venv-jax/bin/python -m pip install --disable-pip-version-check --no-deps -e .; } >"$log" 2>&1; then
      tail -n 30 "$log" >&2
      echo "bootstrap: pip install into .venv-jax failed (full log: $log)" >&2
      exit 1
    fi
    touch "$jstamp"
  fi
fi
