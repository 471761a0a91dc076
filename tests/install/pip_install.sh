#!/usr/bin/env bash
# `pip install .` of the checkout into a fresh virtual environment, then, from a folder outside
# the checkout and the build: `import locmoe` resolves to the installed package (not a source or
# build tree), the C++ library and its CMake package are in it, and the module's own numpy tests
# (python/tests/test_locmoe.py) pass against it.
# Kept cheap: no tests/benchmarks/examples (pyproject.toml), no CUDA kernels, ccache when present,
# and a build folder kept in WORK so that a second run rebuilds only what changed.
# Usage: pip_install.sh SRC WORK PYTHON
set -euo pipefail
SRC=$1 WORK=$2 PY=$3
venv=$WORK/venv
rm -rf "$venv" "$WORK/elsewhere"
mkdir -p "$WORK/elsewhere"
"$PY" -m venv "$venv"
args=(--config-settings=build-dir="$WORK/build" --config-settings=cmake.define.LOCMOE_ENABLE_CUDA=OFF)
if command -v ccache >/dev/null; then
  for lang in C CXX; do args+=("--config-settings=cmake.define.CMAKE_${lang}_COMPILER_LAUNCHER=ccache"); done
fi
start=$SECONDS
"$venv/bin/python" -m pip install -q --disable-pip-version-check "${args[@]}" "$SRC"
echo "pip install . took $((SECONDS - start)) s"
cd "$WORK/elsewhere"
env -u PYTHONPATH "$venv/bin/python" - "$venv" <<'PY'
import os, sys
import locmoe
venv = os.path.realpath(sys.argv[1])
pkg = os.path.dirname(os.path.realpath(locmoe.__file__))
assert pkg.startswith(venv + os.sep), f"locmoe imported from {pkg}, not from the venv {venv}"
for part in ("_locmoe", "torch.py"):
    assert any(f.startswith(part) for f in os.listdir(pkg)), f"{part} missing in {pkg}: {os.listdir(pkg)}"
libs = os.listdir(os.path.join(pkg, "lib"))
assert any(f.startswith("liblocmoe.so") for f in libs), libs
assert os.path.isfile(os.path.join(pkg, "lib", "cmake", "locmoe", "locmoeConfig.cmake"))
assert os.path.isfile(os.path.join(pkg, "include", "locmoe", "locmoe.h"))
g = locmoe.Group()
print("installed locmoe", locmoe.__version__, "in", pkg, "group of", g.size)
PY
env -u PYTHONPATH LOCMOE_TIMEOUT_S=60 "$venv/bin/python" -m unittest discover -s "$SRC/python/tests" -p test_locmoe.py
