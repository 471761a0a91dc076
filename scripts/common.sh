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
  clang libclang-rt-dev python3 python3-numpy python3-matplotlib python3-dev iproute2)

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
}

# configure_and_build BUILD_DIR [cmake args...]
configure_and_build() {
  local dir=$1
  shift
  if [ ! -f "$dir/build.ninja" ]; then
    log "configuring $dir"
    cmake -S "$LOCMOE_ROOT" -B "$dir" -G Ninja "$@"
  fi
  log "building $dir ($LOCMOE_JOBS jobs)"
  cmake --build "$dir" -j "$LOCMOE_JOBS"
}

# Open MPI refuses to run as root without these; --oversubscribe lets 8 ranks share 2 cores.
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_rmaps_base_oversubscribe=1
LOCMOE_MPIRUN=(mpirun --oversubscribe --bind-to none)
