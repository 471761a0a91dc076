# Sourced by the quick-start scripts: installs what is missing (Debian 12), configures, builds.
# Idempotent: a second run installs nothing and rebuilds only what changed.
set -euo pipefail
LOCMOE_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
LOCMOE_BUILD=${LOCMOE_BUILD:-$LOCMOE_ROOT/build}
LOCMOE_JOBS=${LOCMOE_JOBS:-$(nproc)}

# Debian packages the build and tests need. libhwloc-plugins is named explicitly: apt installs it
# only as a recommendation, and without it hwloc loses PCI discovery and its XML reader.
LOCMOE_APT_PACKAGES=(build-essential cmake ninja-build pkg-config git
  libhwloc-dev libhwloc-plugins hwloc-nox libopenmpi-dev openmpi-bin libucx-dev ucx-utils
  libopenblas-dev googletest libgtest-dev libbenchmark-dev libcli11-dev nlohmann-json3-dev libfmt-dev libpugixml-dev
  clang libclang-rt-dev python3 python3-numpy python3-matplotlib python3-dev python3-venv iproute2)

log() { printf '\033[1m[locmoe]\033[0m %s\n' "$*" >&2; }

install_packages() {
  local missing=()
  for p in "${LOCMOE_APT_PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  if ((${#missing[@]})); then
    log "installing: ${missing[*]}"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo=sudo
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  install_python_packages
}

# The Python module's interpreter: a virtual environment made with Debian's python3-venv (Debian's
# own Python refuses `pip install` outside one, PEP 668), holding the PyPI packages the module and
# its tests need: nanobind builds the module, numpy and pytest run its tests, torch (the ordinary
# PyPI wheel, used on the CPU here) runs the locmoe.torch tests. LOCMOE_VENV picks another folder
# (an existing venv with these packages is used as it is). Skipped when they already import.
LOCMOE_VENV=${LOCMOE_VENV:-$LOCMOE_BUILD/venv}
LOCMOE_PIP_PACKAGES=(nanobind numpy pytest torch)
LOCMOE_PYTHON=$LOCMOE_VENV/bin/python
install_python_packages() {
  if [ ! -x "$LOCMOE_PYTHON" ]; then
    log "making the virtual environment $LOCMOE_VENV (/usr/bin/python3 -m venv)"
    /usr/bin/python3 -m venv "$LOCMOE_VENV"
  fi
  if ! "$LOCMOE_PYTHON" -c "import nanobind, numpy, pytest, torch" 2>/dev/null; then
    log "pip installing into $LOCMOE_VENV: ${LOCMOE_PIP_PACKAGES[*]}"
    local start=$SECONDS
    "$LOCMOE_PYTHON" -m pip install -q --disable-pip-version-check "${LOCMOE_PIP_PACKAGES[@]}"
    log "pip install took $((SECONDS - start)) s"
  fi
}
# CMake arguments of the main build: the module and every torch test for the venv's Python, and a
# configure error rather than a silently smaller test suite when that Python lacks any of them.
LOCMOE_PY_CMAKE_ARGS=(-DPython_EXECUTABLE="$LOCMOE_PYTHON" -DLOCMOE_REQUIRE_TORCH=ON)

# configure_and_build BUILD_DIR [cmake args...]
configure_and_build() {
  local dir=$1
  shift
  # Configured again when the build was made for another Python than the one asked for now.
  local want_py="" have_py=""
  for a in "$@"; do [[ $a == -DPython_EXECUTABLE=* ]] && want_py=${a#*=}; done
  [ -f "$dir/CMakeCache.txt" ] && have_py=$(sed -n 's/^Python_EXECUTABLE:[A-Z]*=//p' "$dir/CMakeCache.txt")
  if [ ! -f "$dir/build.ninja" ] || [ "$want_py" != "$have_py" ]; then
    log "configuring $dir"
    cmake -S "$LOCMOE_ROOT" -B "$dir" -G Ninja "$@"
  fi
  log "building $dir ($LOCMOE_JOBS jobs)"
  cmake --build "$dir" -j "$LOCMOE_JOBS"
}

# Open MPI refuses to run as root without these; --oversubscribe lets 8 ranks share 2 cores.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
LOCMOE_MPIRUN=(mpirun --oversubscribe --bind-to none)
