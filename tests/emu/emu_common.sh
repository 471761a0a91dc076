# Sourced by the emulated-cluster tests: a private cluster prefix and state folder per test run,
# removal on every exit and the skip code when namespaces cannot be made (the transport settings
# that keep shared memory inside a host and put every byte between hosts on the shaped eth0 are
# `emu-cluster.sh launch`'s).
EMU=${EMU:?} RANK_BIN=${RANK_BIN:?}
export LOCMOE_EMU_PREFIX=lm${EMU_TEST_TAG:-t}$$ LOCMOE_EMU_STATE=${TMPDIR:-/tmp}/locmoe-emu-$EMU_TEST_TAG$$
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
