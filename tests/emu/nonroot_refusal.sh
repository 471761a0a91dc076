#!/usr/bin/env bash
# emu-cluster.sh run by a user without rights (nobody, uid 65534) is refused with the skip code 77
# and a reason naming root. Needs root (to become nobody with setpriv): otherwise exits 77 itself.
#
# nobody runs a world-readable copy of the script, from /: the checkout itself may sit where
# nobody cannot read (root's home is mode 700 on Debian), and running it there fails in bash,
# before the script's own check, with "Permission denied" (rc 126).
# With --private, EMU is first copied into a mode-700 folder and run from there, as in such a
# checkout: the case that guards the above.
# Usage: nonroot_refusal.sh [--private] path/to/emu-cluster.sh ; prints "ok: ..." or "FAIL: ...".
set -uo pipefail
private=0
if [ "${1:-}" = --private ]; then
  private=1
  shift
fi
EMU=${1:?usage: nonroot_refusal.sh [--private] path/to/emu-cluster.sh}
if [ "$(id -u)" != 0 ] || ! command -v setpriv >/dev/null; then
  echo "SKIP: becoming another user needs root and setpriv (uid $(id -u))" >&2
  exit 77
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
if ((private)); then
  mkdir -m 700 "$tmp/home"
  cp "$EMU" "$tmp/home/emu-cluster.sh"
  EMU=$tmp/home/emu-cluster.sh
  cd "$tmp/home" || exit 1
  # Without the copy below, nobody cannot even start it: that is what this mode checks against.
  setpriv --reuid=65534 --regid=65534 --clear-groups bash "$EMU" up 2 >/dev/null 2>&1
  [ $? = 126 ] || { echo "FAIL: nobody could run a script in a mode-700 folder: the check is void"; exit 1; }
fi
chmod 755 "$tmp"
mkdir -m 755 "$tmp/pub"
cp "$EMU" "$tmp/pub/emu-cluster.sh"
chmod 755 "$tmp/pub/emu-cluster.sh"
msg=$(cd / && setpriv --reuid=65534 --regid=65534 --clear-groups "$tmp/pub/emu-cluster.sh" up 2 2>&1)
rc=$?
if [ $rc = 77 ] && grep -q "needs root" <<<"$msg"; then
  echo "ok: non-root refused: $msg"
else
  echo "FAIL: non-root: rc=$rc msg=$msg"
  exit 1
fi
