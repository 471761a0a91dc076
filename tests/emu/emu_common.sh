# Sourced by the emulated-cluster tests: a private cluster prefix and state folder per test run,
# removal on every exit, the skip code when namespaces cannot be made, and the transport settings
# that keep shared memory inside a host and put every byte between hosts on the shaped eth0.
EMU=${EMU:?} RANK_BIN=${RANK_BIN:?}
export LOCMOE_EMU_PREFIX=lm${EMU_TEST_TAG:-t}$$ LOCMOE_EMU_STATE=${TMPDIR:-/tmp}/locmoe-emu-$EMU_TEST_TAG$$
# cma is left out: with it, UCX's rendezvous for large messages between hosts ran at ~50% of the
# link rate here (posix,sysv,tcp: 94%, as ucx_perftest), measured 2026-11-24.
export LOCMOE_TRANSPORT=ucx UCX_TLS=posix,sysv,tcp UCX_NET_DEVICES=eth0 UCX_WARN_UNUSED_ENV_VARS=n
FAILS=0
LOGS=$LOCMOE_EMU_STATE.logs
fail() { echo "FAIL: $*" >&2; FAILS=$((FAILS + 1)); }
ok() { echo "ok: $*"; }
emu_cleanup() { "$EMU" down >/dev/null 2>&1; rm -rf "$LOCMOE_EMU_STATE" "$LOGS"; }
trap emu_cleanup EXIT
# emu_up ARGS...: up, or exit 77 with the reason when namespaces cannot be created here.
emu_up() {
  local err rc=0
  err=$("$EMU" up "$@" 2>&1 >/dev/null) || rc=$?
  [ $rc = 77 ] && { echo "$err" >&2; exit 77; }
  [ $rc = 0 ] || { echo "$err" >&2; echo "FAIL: emu-cluster up $*" >&2; exit 1; }
}
# ranks_json: the JSON lines of every rank log of the last launch (one per rank).
ranks_json() { cat "$LOGS"/rank*.log | grep '^{' ; }
emu_finish() { [ "$FAILS" = 0 ] || { echo "$FAILS failure(s)" >&2; exit 1; }; echo "all checks passed"; }
