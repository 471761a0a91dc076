#!/usr/bin/env bash
# Test of scripts/emu-cluster.sh (ctest label netns): hosts, addresses, shaping, isolation, byte
# counters against a known transfer, the rank launcher's variables, cleanup after down / failure /
# SIGTERM, a second run, and the refusal without rights. Exit 77 (skip) when namespaces cannot be
# created here, with the reason on stderr.
set -uo pipefail
EMU=${1:?usage: test_emu_cluster.sh path/to/emu-cluster.sh}
PY=/usr/bin/python3
export LOCMOE_EMU_PREFIX=lmt$$ LOCMOE_EMU_STATE=${TMPDIR:-/tmp}/locmoe-emu-test$$
FAILS=0
fail() { echo "FAIL: $*" >&2; FAILS=$((FAILS + 1)); }
ok() { echo "ok: $*"; }
ours() { ip netns list 2>/dev/null | awk '{print $1}' | grep -c "^$LOCMOE_EMU_PREFIX-" || true; }
cleanup() { "$EMU" down >/dev/null 2>&1; rm -rf "$LOCMOE_EMU_STATE" "$LOCMOE_EMU_STATE".*; }
trap cleanup EXIT

# Without rights: a non-root user is refused with the skip code and a reason (run from a copy that
# user can read, wherever the checkout is: nonroot_refusal.sh).
if command -v setpriv >/dev/null && [ "$(id -u)" = 0 ]; then
  out=$(bash "$(dirname "$0")/nonroot_refusal.sh" "$EMU")
  [ $? = 0 ] && echo "$out" || fail "${out#FAIL: }"
fi

"$EMU" up 3 --bw 200mbit --latency 1ms 2>"$LOCMOE_EMU_STATE.err" >/dev/null
rc=$?
if [ $rc = 77 ]; then cat "$LOCMOE_EMU_STATE.err" >&2; rm -f "$LOCMOE_EMU_STATE.err"; exit 77; fi
[ $rc = 0 ] || { cat "$LOCMOE_EMU_STATE.err" >&2; fail "up failed rc=$rc"; exit 1; }
if grep -q "netem" "$LOCMOE_EMU_STATE.err"; then ok "latency: $(grep netem "$LOCMOE_EMU_STATE.err")"; fi
rm -f "$LOCMOE_EMU_STATE.err"

[ "$(ours)" = 4 ] && ok "3 host namespaces + 1 switch namespace" || fail "expected 4 namespaces, got $(ours)"
for i in 0 1 2; do
  addr=$(ip -n "$LOCMOE_EMU_PREFIX-h$i" -4 -o addr show dev eth0 | awk '{print $4}')
  [ "$addr" = "10.77.0.$((i + 1))/24" ] || fail "host $i address '$addr'"
  # Both directions shaped: the host's egress and the switch port's egress, at 200 Mbit/s.
  for where in "$LOCMOE_EMU_PREFIX-h$i eth0" "$LOCMOE_EMU_PREFIX-sw h$i"; do
    set -- $where
    [[ $(ip netns exec "$1" tc class show dev "$2") == *"rate 200Mbit"* ]] || fail "no 200Mbit class on $1/$2"
  done
done
ok "addresses and shaping"

# A transfer of exactly N bytes from host 0 to host 2: host 0's tx and host 2's rx grow by N plus
# TCP/IP/Ethernet headers (66 bytes per segment of at most 1448 payload bytes at MTU 1500, plus the
# handshake and ACKs), host 1 sees at most broadcast noise (ARP).
N=3000000
# xfer FROM TO ADDR: N bytes over TCP from host (or NIC) FROM to TO, which listens on ADDR.
xfer() {
  "$EMU" exec "$2" $PY -c "
import socket; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('$3', 15001)); s.listen(1); c,_=s.accept(); n=0
while True:
    b=c.recv(1<<20)
    if not b: break
    n+=len(b)
print(n)" >"$LOCMOE_EMU_STATE.recv" &
  local srv=$!
  sleep 0.5
  "$EMU" exec "$1" $PY -c "
import socket; s=socket.create_connection(('$3', 15001)); s.sendall(b'x'*$N); s.close()"
  wait $srv
  [ "$(cat "$LOCMOE_EMU_STATE.recv")" = "$N" ] || fail "$1 -> $2: received $(cat "$LOCMOE_EMU_STATE.recv") of $N bytes"
}
read_ctr() { "$EMU" counters --json | $PY -c "import json,sys; d=json.load(sys.stdin); print(' '.join(str(h['$1']) for h in d['hosts']))"; }
tx0=($(read_ctr tx_bytes)) rx0=($(read_ctr rx_bytes))
xfer 0 2 10.77.0.3
tx1=($(read_ctr tx_bytes)) rx1=($(read_ctr rx_bytes))
d_tx0=$((tx1[0] - tx0[0])) d_rx2=$((rx1[2] - rx0[2])) d_rx1=$((rx1[1] - rx0[1]))
max=$((N + (N / 1448 + 1) * 66 + 8192))
for v in "tx host0:$d_tx0" "rx host2:$d_rx2"; do
  n=${v#*:}
  [ "$n" -ge "$N" ] && [ "$n" -le "$max" ] && ok "$v bytes for $N payload (bound $max)" || fail "$v not in [$N, $max]"
done
[ "$d_rx1" -lt 4096 ] && ok "host 1 saw $d_rx1 bytes" || fail "host 1 saw $d_rx1 bytes of a transfer between 0 and 2"

# The launcher: every rank gets its variables and runs in its host's namespace.
out=$("$EMU" launch -r 2 -p 29777 -- sh -c 'echo "$RANK $WORLD_SIZE $LOCAL_RANK $LOCMOE_HOSTID $MASTER_ADDR:$MASTER_PORT $LOCMOE_BOOTSTRAP $(ip -4 -o addr show dev eth0 | awk "{print \$4}")"' | sort -n)
expect=""
for r in 0 1 2 3 4 5; do
  h=$((r / 2))
  expect+="$r 6 $((r % 2)) host$h 10.77.0.1:29777 tcp 10.77.0.$((h + 1))/24"$'\n'
done
[ "$out"$'\n' = "$expect" ] && ok "launch variables" || fail "launch output:"$'\n'"$out"$'\n'"expected:"$'\n'"$expect"
# IPC namespaces: the ranks of one host share one (shared memory between them), hosts differ (so
# UCX does not offer shared memory between hosts and their bytes take the shaped link).
ipc=$("$EMU" launch -r 2 -- sh -c 'echo "$LOCMOE_HOSTID $(readlink /proc/self/ns/ipc)"' | sort -u)
[ "$(wc -l <<<"$ipc")" = 3 ] && [ "$(awk '{print $2}' <<<"$ipc" | sort -u | wc -l)" = 3 ] &&
  ! grep -q "$(readlink /proc/self/ns/ipc)" <<<"$ipc" && ok "one IPC namespace per host" || fail "IPC namespaces: $ipc"

# A rank the launcher kills makes launch fail; the other ranks still finish.
"$EMU" launch -r 1 -t 20 --fault kill:1:0.3 -o "$LOCMOE_EMU_STATE.logs" -- sleep 2 2>/dev/null
rc=$?
[ $rc != 0 ] && [ "$(cat "$LOCMOE_EMU_STATE.logs/rank1.rc")" = 137 ] && [ "$(cat "$LOCMOE_EMU_STATE.logs/rank0.rc")" = 0 ] &&
  ok "fault kill: launch rc $rc, rank 1 rc 137" || fail "fault kill: rc=$rc"
# A stopped rank is ended by the launcher's deadline.
start=$(date +%s)
"$EMU" launch -r 1 -t 2 --fault stop:0:0.2 -o "$LOCMOE_EMU_STATE.logs" -- sleep 1 2>/dev/null
rc=$?
el=$(($(date +%s) - start))
[ $rc != 0 ] && [ $el -le 6 ] && ok "fault stop: ended by the deadline after ${el}s" || fail "fault stop: rc=$rc after ${el}s"

"$EMU" down
[ "$(ours)" = 0 ] && ok "down removed everything" || fail "$(ours) namespaces left after down"
left=$(ls "$LOCMOE_EMU_STATE" 2>/dev/null; grep -c " $LOCMOE_EMU_STATE/" /proc/mounts)
[ "$left" = 0 ] || fail "state or IPC namespace mounts left after down: $left"
"$EMU" status | grep -q down || fail "status after down"

# run: a second cluster in a row, removed when the command fails...
"$EMU" run 2 -- "$EMU" exec 1 false 2>/dev/null
rc=$?
[ $rc = 1 ] && [ "$(ours)" = 0 ] && ok "run: failure passed through (rc $rc), cluster removed" || fail "run failure: rc=$rc left=$(ours)"
# ... and when it is interrupted (SIGTERM; an interactive Ctrl-C takes the same trap).
"$EMU" run 2 -- sleep 60 2>/dev/null &
runner=$!
for _ in $(seq 50); do [ -f "$LOCMOE_EMU_STATE/$LOCMOE_EMU_PREFIX.env" ] && break; sleep 0.1; done
sleep 0.3
kill -TERM $runner
start=$(date +%s)
wait $runner
rc=$?
[ $rc = 130 ] && [ "$(ours)" = 0 ] && [ $(($(date +%s) - start)) -le 5 ] && ok "run: SIGTERM removed the cluster" ||
  fail "run SIGTERM: rc=$rc left=$(ours)"

# Rails: 2 hosts x 2 NICs, one namespace per NIC, a spine between the rails.
# --spine-oversub 4: each rail's spine link at 2 hosts x 400 Mbit/s / 4 = 200 Mbit/s.
"$EMU" up 2 --bw 400mbit --rails 2 --spine-oversub 4 >/dev/null 2>&1 || fail "up --rails"
[ "$(ours)" = 6 ] && ok "rails: 4 NIC namespaces, the switch and the spine" || fail "rails: $(ours) namespaces, expected 6"
for h in 0 1; do
  for l in 0 1; do
    addr=$(ip -n "$LOCMOE_EMU_PREFIX-h${h}r$l" -4 -o addr show dev eth0 | awk '{print $4}')
    [ "$addr" = "10.78.$l.$((h + 1))/24" ] || fail "rails: NIC $l of host $h at '$addr'"
    [[ $(ip netns exec "$LOCMOE_EMU_PREFIX-h${h}r$l" tc class show dev eth0) == *"rate 400Mbit"* ]] || fail "rails: NIC h${h}r$l not shaped"
  done
done
for where in "$LOCMOE_EMU_PREFIX-sp r0" "$LOCMOE_EMU_PREFIX-sw up1"; do
  set -- $where
  [[ $(ip netns exec "$1" tc class show dev "$2") == *"rate 200Mbit"* ]] || fail "rails: spine link $1/$2 not shaped to 200Mbit"
done
# A transfer between the same rails stays off the spine; one across rails crosses it once.
spine_tx() { "$EMU" counters --json | $PY -c "import json,sys; print(sum(s['tx_bytes'] for s in json.load(sys.stdin)['spine']))"; }
s0=$(spine_tx)
xfer h0r1 h1r1 10.78.1.2
s1=$(spine_tx)
xfer h0r0 h1r1 10.78.1.2
s2=$(spine_tx)
[ $((s1 - s0)) -lt 4096 ] && ok "rails: same-rail transfer, $((s1 - s0)) bytes on the spine" || fail "rails: same-rail transfer put $((s1 - s0)) bytes on the spine"
[ $((s2 - s1)) -ge "$N" ] && [ $((s2 - s1)) -le "$max" ] && ok "rails: cross-rail transfer, $((s2 - s1)) bytes through the spine" ||
  fail "rails: cross-rail transfer put $((s2 - s1)) bytes through the spine, expected [$N, $max]"
# Every rank in its NIC's namespace, sharing its host's IPC namespace; one rank per NIC.
out=$("$EMU" launch -r 2 -p 29778 -- sh -c 'echo "$RANK $LOCMOE_HOSTID $MASTER_ADDR $(ip -4 -o addr show dev eth0 | awk "{print \$4}") $(readlink /proc/self/ns/ipc)"' | sort -n)
expect=$(for r in 0 1 2 3; do echo "$r host$((r / 2)) 10.78.0.1 10.78.$((r % 2)).$((r / 2 + 1))/24"; done)
[ "$(cut -d' ' -f1-4 <<<"$out")" = "$expect" ] && [ "$(awk '{print $2, $5}' <<<"$out" | sort -u | wc -l)" = 2 ] &&
  [ "$(awk '{print $5}' <<<"$out" | sort -u | wc -l)" = 2 ] && ok "rails: launch places rank l on NIC l, one IPC namespace per host" ||
  fail "rails launch output:"$'\n'"$out"
msg=$("$EMU" launch -r 3 -- true 2>&1) && fail "rails: launch -r 3 on 2 rails accepted" ||
  { grep -q "rails" <<<"$msg" && ok "rails: $msg" || fail "rails: launch -r 3: $msg"; }
"$EMU" down
[ "$(ours)" = 0 ] && ok "rails: down removed everything" || fail "rails: $(ours) namespaces left after down"
msg=$("$EMU" up 2 --spine-bw 1gbit 2>&1) && fail "--spine-bw without --rails accepted" || ok "$msg"
msg=$("$EMU" up 2 --rails 2 --spine-oversub 0.5 2>&1) && fail "--spine-oversub 0.5 accepted" || ok "$msg"
"$EMU" down >/dev/null 2>&1

[ $FAILS = 0 ] || { echo "$FAILS failure(s)" >&2; exit 1; }
echo "all emu-cluster checks passed"
