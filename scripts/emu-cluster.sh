#!/usr/bin/env bash
# emu-cluster.sh: an emulated cluster of N hosts on this machine, joined by real, shaped links.
#
# Each emulated host is a Linux network namespace "<prefix>-h<i>", plus an IPC namespace of its own
# (so that UCX, which offers shared memory to peers of the same IPC namespace on one machine, sees
# the other hosts as remote: the ranks of one host share memory, those of different hosts talk
# through the network), with one interface, eth0, at
# 10.77.0.<i+1>/24. Its peer end, "h<i>", sits in a namespace of its own, "<prefix>-sw", on the
# bridge "br0" (the switch). Both directions of every host's link are shaped with tc (htb by
# default, or tbf) to --bw: host -> switch on eth0's egress, switch -> host on h<i>'s egress, like
# a full-duplex NIC. Nothing is created outside these namespaces, and the machine's own interfaces
# are never touched.
#
# With --rails L, each host has L NICs instead, one per rank (local rank l uses NIC l, like the 8
# GPU-NIC pairs of an H100 node), on a rail-optimized network: NIC l of every host sits on rail
# l's own bridge ("rail<l>" in "<prefix>-sw"), and the rails meet only at a spine, the namespace
# "<prefix>-sp", which routes between them over one link per rail ("up<l>" on the rail's bridge to
# "r<l>" in the spine). Rank (host i, local rank l) runs in a network namespace of its own,
# "<prefix>-h<i>r<l>" (its NIC is its eth0, at 10.78.<l>.<i+1>/24, routed via the spine at
# 10.78.<l>.254), and in host i's IPC namespace (shared memory with the host's other ranks). NICs
# are shaped to --bw each way; each rail's spine link to --spine-bw each way, or to hosts x --bw /
# --spine-oversub (default 1: non-blocking; more oversubscribes the spine, as many rail-optimized
# fabrics are). Traffic
# between ranks of the same local rank on two hosts stays on its rail; between different local
# ranks it crosses the spine.
#
# Commands (each prints what it does with LOCMOE_EMU_VERBOSE=1):
#   up N [--bw RATE] [--qdisc htb|tbf] [--latency DELAY] [--mtu BYTES]
#        [--rails L [--spine-bw RATE | --spine-oversub F]]
#   down                      removes every namespace of the prefix (and ends processes in them)
#   status [--json]           hosts, addresses, shaping, byte counters
#   exec HOST cmd...          runs cmd inside host HOST's namespace (HOST: index 0.. or h<i>; with
#                             rails h<i>r<l> for NIC l's, h<i> alone for NIC 0's)
#   counters [--json]         tx/rx bytes and packets of every host's eth0 (from /sys/class/net);
#                             with rails, per NIC (summed per host) and per spine link
#   launch -r RANKS_PER_HOST [-p PORT] [-t TIMEOUT_S] [-o LOGDIR] [--fault SPEC] -- cmd...
#                             starts RANKS_PER_HOST ranks of cmd in every host's namespace, with
#                             the torchrun-style variables of comm's TCP bootstrap (RANK,
#                             WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT,
#                             LOCMOE_BOOTSTRAP=tcp, LOCMOE_HOSTID=host<i>); waits for all of them.
#                             With rails, RANKS_PER_HOST must be L (one rank per NIC).
#                             --fault injects one fault mid-run: linkdown:HOST:DELAY_S,
#                             kill:RANK:DELAY_S or stop:RANK:DELAY_S (SIGKILL / SIGSTOP).
#   run N [up options] -- cmd...   up, then cmd (LOCMOE_EMU_PREFIX exported), then down, also on
#                             failure or Ctrl-C; exits with cmd's status.
#
# Environment: LOCMOE_EMU_PREFIX (default "lmemu"; one cluster per prefix, so tests running in
# parallel use their own), LOCMOE_EMU_STATE (state folder, default /run/locmoe-emu).
#
# Exit status 77 (the ctest skip code) when namespaces cannot be created (not root, no
# CAP_SYS_ADMIN, no ip/tc): the message says which.
set -Eeuo pipefail

PREFIX=${LOCMOE_EMU_PREFIX:-lmemu}
STATE_DIR=${LOCMOE_EMU_STATE:-/run/locmoe-emu}
STATE=$STATE_DIR/$PREFIX.env
SUBNET=10.77.0
RAIL_NET=10.78  # rail l: $RAIL_NET.<l>.0/24, the spine at .254
# Default shaping: about 9:1 intra-host (shared memory) to inter-host bandwidth on this machine,
# like NVLink (~450 GB/s per direction) against a 400 Gb/s NIC. Measured: docs/PERFORMANCE.md,
# "## Emulated cluster".
DEFAULT_BW=${LOCMOE_EMU_BW:-8gbit}
SKIP=77

die() { echo "emu-cluster: $*" >&2; exit 1; }
note() { echo "emu-cluster: $*" >&2; }
v() { [ "${LOCMOE_EMU_VERBOSE:-0}" = 1 ] && echo "+ $*" >&2; "$@"; }

switch_ns() { echo "$PREFIX-sw"; }
spine_ns() { echo "$PREFIX-sp"; }
host_ipc() { echo "$STATE_DIR/$PREFIX-h$1.ipc"; }
# NIC $2 of host $1 (a NIC is a network namespace with one interface, eth0): its namespace, the name
# of its switch port and its address. Without rails a host has one NIC, and it is the host's.
nic_ns() { if [ "${EMU_RAILS:-0}" = 0 ]; then echo "$PREFIX-h$1"; else echo "$PREFIX-h$1r$2"; fi; }
nic_port() { if [ "${EMU_RAILS:-0}" = 0 ]; then echo "h$1"; else echo "h$1r$2"; fi; }
nic_addr() { if [ "${EMU_RAILS:-0}" = 0 ]; then echo "$SUBNET.$(($1 + 1))"; else echo "$RAIL_NET.$2.$(($1 + 1))"; fi; }
nics_per_host() { if [ "${EMU_RAILS:-0}" = 0 ]; then echo 1; else echo "$EMU_RAILS"; fi; }
# The command prefix that runs a program as local rank $2 of host $1 (the network namespace of its
# NIC, the host's IPC namespace). Both tools exec, so the pid of this prefix becomes the program's.
rank_enter() { echo ip netns exec "$(nic_ns "$1" "$(($2 % $(nics_per_host)))")" nsenter --ipc="$(host_ipc "$1")" --; }

# Fails with exit 77 and a reason when this process cannot create network namespaces.
require_netns_rights() {
  command -v ip >/dev/null || { note "SKIP: iproute2 'ip' not found (apt-get install iproute2)"; exit $SKIP; }
  command -v tc >/dev/null || { note "SKIP: 'tc' not found (apt-get install iproute2)"; exit $SKIP; }
  command -v nsenter >/dev/null && command -v unshare >/dev/null || { note "SKIP: nsenter/unshare not found (util-linux)"; exit $SKIP; }
  if [ "$(id -u)" -ne 0 ]; then
    note "SKIP: creating network namespaces needs root (CAP_SYS_ADMIN and CAP_NET_ADMIN); running as uid $(id -u)"
    exit $SKIP
  fi
  local probe="$PREFIX-probe$$" err
  if ! err=$(ip netns add "$probe" 2>&1); then
    note "SKIP: cannot create a network namespace here: $err"
    exit $SKIP
  fi
  ip netns del "$probe" 2>/dev/null || true
}

# Rate in tc syntax (bit, kbit, mbit, gbit, bps, kbps, mbps, gbps; decimal SI as tc) -> bytes/s.
rate_bytes_per_s() {
  local r=${1,,}
  local num=${r%%[a-z]*} unit=${r##*[0-9.]}
  [[ $num =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "bad rate '$1' (expected e.g. 4gbit, 500mbit, 1gbps)"
  local mult
  case $unit in
    bit) mult=0.125 ;; kbit) mult=125 ;; mbit) mult=125000 ;; gbit) mult=125000000 ;;
    bps) mult=1 ;; kbps) mult=1000 ;; mbps) mult=1000000 ;; gbps) mult=1000000000 ;;
    *) die "bad rate unit in '$1' (bit, kbit, mbit, gbit, bps, kbps, mbps, gbps)" ;;
  esac
  awk -v n="$num" -v m="$mult" 'BEGIN { printf "%.0f\n", n * m }'
}

load_state() {
  [ -f "$STATE" ] || die "no emulated cluster '$PREFIX' is up (run: $0 up N)"
  # shellcheck disable=SC1090
  source "$STATE"
}

resolve_host() {  # index or h<i> -> index
  local h=${1#h}
  [[ $h =~ ^[0-9]+$ ]] && [ "$h" -lt "$EMU_HOSTS" ] || die "no host '$1' (hosts 0..$((EMU_HOSTS - 1)))"
  echo "$h"
}

# shape NS DEV [RATE]: the egress of DEV in namespace NS limited to RATE (default $BW; and delayed
# by $LATENCY).
shape() {
  local ns=$1 dev=$2 BW=${3:-$BW} bytes burst
  bytes=$(rate_bytes_per_s "$BW")
  # A burst of 2 ms at the rate, at least 128 KiB: veth hands tc GSO packets of up to 64 KiB.
  burst=$((bytes / 500))
  [ "$burst" -ge 131072 ] || burst=131072
  case $QDISC in
    htb)
      # Both directions of a link carry data at once in an all-to-all; behind a FIFO shaper each
      # flow's ACKs would wait behind the other flow's full-size packets and hold both well below
      # the rate (no fq_codel or sfq in this kernel). So packets under 128 bytes (ACKs, small
      # control messages) go to a class served first; both share the one rate of class 1:1.
      v ip netns exec "$ns" tc qdisc add dev "$dev" root handle 1: htb default 10
      v ip netns exec "$ns" tc class add dev "$dev" parent 1: classid 1:1 htb rate "$BW" ceil "$BW" quantum 65536 \
        burst "$burst" cburst "$burst"
      v ip netns exec "$ns" tc class add dev "$dev" parent 1:1 classid 1:5 htb rate 1mbit ceil "$BW" prio 0 quantum 1514 \
        burst "$burst" cburst "$burst"
      v ip netns exec "$ns" tc class add dev "$dev" parent 1:1 classid 1:10 htb rate "$BW" ceil "$BW" prio 1 quantum 65536 \
        burst "$burst" cburst "$burst"
      ip netns exec "$ns" tc filter add dev "$dev" parent 1: protocol ip prio 1 u32 match u16 0x0000 0xff80 at 2 \
        flowid 1:5 2>/dev/null || { [ "${U32_WARNED:-0}" = 1 ] || note "no u32 classifier: ACKs share the data queue"; U32_WARNED=1; }
      ;;
    tbf)
      v ip netns exec "$ns" tc qdisc add dev "$dev" root handle 1: tbf rate "$BW" burst "$burst" latency "${TBF_LATENCY:-100ms}"
      ;;
    *) die "bad --qdisc '$QDISC' (htb or tbf)" ;;
  esac
  if [ -n "$LATENCY" ]; then
    local parent=1:10
    [ "$QDISC" = tbf ] && parent=1:1
    if ! ip netns exec "$ns" tc qdisc replace dev "$dev" parent "$parent" handle 10: netem delay "$LATENCY" 2>/dev/null; then
      if [ "${LATENCY_WARNED:-0}" = 0 ]; then
        note "--latency $LATENCY ignored: netem (sch_netem) is absent from this kernel ($(uname -r)); links add no delay"
        LATENCY_WARNED=1
      fi
      LATENCY_APPLIED=0
    fi
  fi
}

cmd_down() {
  local ns pid
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep -E "^$PREFIX-(h[0-9]+(r[0-9]+)?|sw|sp)$" || true); do
    # Processes still inside our namespaces were started through this tool: end them by pid.
    for pid in $(ip netns pids "$ns" 2>/dev/null || true); do
      kill -KILL "$pid" 2>/dev/null || true
    done
    v ip netns del "$ns" 2>/dev/null || true
  done
  local f
  for f in "$STATE_DIR/$PREFIX"-h*.ipc; do
    [ -e "$f" ] || continue
    umount "$f" 2>/dev/null || true
    rm -f "$f"
  done
  rm -f "$STATE"
}

cmd_up() {
  local n=${1:-}
  [[ $n =~ ^[0-9]+$ ]] && [ "$n" -ge 1 ] && [ "$n" -le 250 ] || die "up: expected a host count 1..250, got '${n}'"
  shift
  BW=$DEFAULT_BW QDISC=htb LATENCY="" MTU=1500 EMU_RAILS=0
  local spine_bw="" oversub=1
  while [ $# -gt 0 ]; do
    case $1 in
      --bw) BW=$2; shift 2 ;;
      --qdisc) QDISC=$2; shift 2 ;;
      --latency) LATENCY=$2; shift 2 ;;
      --mtu) MTU=$2; shift 2 ;;
      --rails) EMU_RAILS=$2; shift 2 ;;
      --spine-bw) spine_bw=$2; shift 2 ;;
      --spine-oversub) oversub=$2; shift 2 ;;
      *) die "up: unknown option '$1'" ;;
    esac
  done
  rate_bytes_per_s "$BW" >/dev/null
  [[ $EMU_RAILS =~ ^[0-9]+$ ]] && [ "$EMU_RAILS" -le 64 ] || die "up: --rails expects a NIC count 1..64, got '$EMU_RAILS'"
  [ -z "$spine_bw" ] && [ "$oversub" = 1 ] || [ "$EMU_RAILS" -gt 0 ] ||
    die "up: --spine-bw and --spine-oversub need --rails (without rails, hosts share one switch)"
  [[ $oversub =~ ^[0-9]+(\.[0-9]+)?$ ]] && awk -v f="$oversub" 'BEGIN { exit !(f >= 1) }' ||
    die "up: --spine-oversub expects a factor >= 1, got '$oversub'"
  # Each rail's spine link carries at most what the rail's n NICs send: that rate is non-blocking.
  [ -n "$spine_bw" ] ||
    spine_bw="$(awk -v b="$(rate_bytes_per_s "$BW")" -v n="$n" -v f="$oversub" 'BEGIN { printf "%.0f", b * n / f }')bps"
  rate_bytes_per_s "$spine_bw" >/dev/null
  require_netns_rights
  [ ! -f "$STATE" ] || die "cluster '$PREFIX' is already up ($STATE); run: $0 down"
  # Anything half-built is removed when a step fails or the user interrupts.
  trap 'note "up failed; removing what was created"; cmd_down; exit 1' ERR
  trap 'cmd_down; exit 130' INT TERM
  LATENCY_APPLIED=1
  local sw sp i l ns port bridge rails
  rails=$(nics_per_host)
  sw=$(switch_ns)
  v ip netns add "$sw"
  v ip -n "$sw" link set lo up
  for ((l = 0; l < rails; l++)); do
    bridge=br0
    [ "$EMU_RAILS" = 0 ] || bridge=rail$l
    v ip -n "$sw" link add "$bridge" type bridge
    v ip -n "$sw" link set "$bridge" up
  done
  if [ "$EMU_RAILS" != 0 ]; then
    sp=$(spine_ns)
    v ip netns add "$sp"
    v ip -n "$sp" link set lo up
    v ip netns exec "$sp" sysctl -qw net.ipv4.ip_forward=1
    for ((l = 0; l < rails; l++)); do
      v ip -n "$sp" link add "r$l" mtu "$MTU" type veth peer name "up$l" netns "$sw"
      v ip -n "$sw" link set "up$l" mtu "$MTU" master "rail$l" up
      v ip -n "$sp" addr add "$RAIL_NET.$l.254/24" dev "r$l"
      v ip -n "$sp" link set "r$l" up
      shape "$sp" "r$l" "$spine_bw"  # spine -> rail l
      shape "$sw" "up$l" "$spine_bw"  # rail l -> spine
    done
  fi
  mkdir -p "$STATE_DIR"
  for ((i = 0; i < n; i++)); do
    touch "$(host_ipc "$i")"
    v unshare --ipc="$(host_ipc "$i")" true
    for ((l = 0; l < rails; l++)); do
      ns=$(nic_ns "$i" "$l") port=$(nic_port "$i" "$l")
      bridge=br0
      [ "$EMU_RAILS" = 0 ] || bridge=rail$l
      v ip netns add "$ns"
      v ip -n "$ns" link set lo up
      v ip -n "$ns" link add eth0 mtu "$MTU" type veth peer name "$port" netns "$sw"
      v ip -n "$sw" link set "$port" mtu "$MTU" master "$bridge" up
      # An RDMA NIC does not restart slow start after a pause: an all-to-all pauses its TCP
      # connections between steps, and the restart would halve the rate of each next step.
      v ip netns exec "$ns" sysctl -qw net.ipv4.tcp_slow_start_after_idle=0
      v ip -n "$ns" addr add "$(nic_addr "$i" "$l")/24" dev eth0
      v ip -n "$ns" link set eth0 up
      [ "$EMU_RAILS" = 0 ] || v ip -n "$ns" route add default via "$RAIL_NET.$l.254"
      shape "$ns" eth0
      shape "$sw" "$port"
    done
  done
  cat >"$STATE" <<EOF2
EMU_HOSTS=$n
EMU_BW=$BW
EMU_BW_BYTES=$(rate_bytes_per_s "$BW")
EMU_QDISC=$QDISC
EMU_LATENCY=$([ "$LATENCY_APPLIED" = 1 ] && echo "$LATENCY" || echo "")
EMU_MTU=$MTU
EMU_RAILS=$EMU_RAILS
EMU_SPINE_BW=$([ "$EMU_RAILS" = 0 ] || echo "$spine_bw")
EMU_SPINE_BW_BYTES=$([ "$EMU_RAILS" = 0 ] && echo 0 || rate_bytes_per_s "$spine_bw")
EOF2
  trap - ERR INT TERM
  if [ "$EMU_RAILS" = 0 ]; then
    note "up: $n hosts ($PREFIX-h0..$PREFIX-h$((n - 1)), $SUBNET.1..$SUBNET.$n), links shaped to $BW each way ($QDISC)"
  else
    note "up: $n hosts x $rails rails ($PREFIX-h<i>r<l> at $RAIL_NET.<l>.<i+1>), NICs shaped to $BW each way," \
      "each rail's spine link to $spine_bw ($QDISC)"
  fi
}

counter() { ip netns exec "$1" cat "/sys/class/net/$2/statistics/$3"; }

# Byte and packet counters: every host's NICs (summed per host, and per NIC with rails) and, with
# rails, every rail's spine link (tx: rail -> spine, rx: spine -> rail, counted at the rail's end).
cmd_counters() {
  load_state
  local json=0 i l ns rails sep
  [ "${1:-}" = --json ] && json=1
  rails=$(nics_per_host)
  [ $json = 1 ] && printf '{"prefix":"%s","bw_bytes_per_s":%s,"rails":%s,"spine_bw_bytes_per_s":%s,"hosts":[' \
    "$PREFIX" "$EMU_BW_BYTES" "${EMU_RAILS:-0}" "${EMU_SPINE_BW_BYTES:-0}"
  for ((i = 0; i < EMU_HOSTS; i++)); do
    local tb=0 rb=0 tp=0 rp=0 nics="" t1 r1 t2 r2
    sep=""
    for ((l = 0; l < rails; l++)); do
      ns=$(nic_ns "$i" "$l")
      t1=$(counter "$ns" eth0 tx_bytes) r1=$(counter "$ns" eth0 rx_bytes)
      t2=$(counter "$ns" eth0 tx_packets) r2=$(counter "$ns" eth0 rx_packets)
      tb=$((tb + t1)) rb=$((rb + r1)) tp=$((tp + t2)) rp=$((rp + r2))
      nics+=$(printf '%s{"rail":%d,"addr":"%s","tx_bytes":%s,"rx_bytes":%s,"tx_packets":%s,"rx_packets":%s}' \
        "$sep" "$l" "$(nic_addr "$i" "$l")" "$t1" "$r1" "$t2" "$r2")
      sep=,
      [ $json = 1 ] || [ "$EMU_RAILS" = 0 ] ||
        printf 'h%dr%-3d %-12s tx_bytes %-14s rx_bytes %-14s tx_packets %-10s rx_packets %s\n' \
          "$i" "$l" "$(nic_addr "$i" "$l")" "$t1" "$r1" "$t2" "$r2"
    done
    if [ $json = 1 ]; then
      [ "$i" -gt 0 ] && printf ','
      printf '{"host":%d,"addr":"%s","tx_bytes":%s,"rx_bytes":%s,"tx_packets":%s,"rx_packets":%s' \
        "$i" "$(nic_addr "$i" 0)" "$tb" "$rb" "$tp" "$rp"
      [ "$EMU_RAILS" = 0 ] || printf ',"nics":[%s]' "$nics"
      printf '}'
    elif [ "$EMU_RAILS" = 0 ]; then
      printf 'h%-3d %-12s tx_bytes %-14s rx_bytes %-14s tx_packets %-10s rx_packets %s\n' \
        "$i" "$(nic_addr "$i" 0)" "$tb" "$rb" "$tp" "$rp"
    fi
  done
  [ $json = 0 ] || printf ']'
  if [ "$EMU_RAILS" != 0 ]; then
    [ $json = 0 ] || printf ',"spine":['
    local sw
    sw=$(switch_ns)
    for ((l = 0; l < rails; l++)); do
      t1=$(counter "$sw" "up$l" tx_bytes) r1=$(counter "$sw" "up$l" rx_bytes)
      t2=$(counter "$sw" "up$l" tx_packets) r2=$(counter "$sw" "up$l" rx_packets)
      if [ $json = 1 ]; then
        [ "$l" -gt 0 ] && printf ','
        printf '{"rail":%d,"tx_bytes":%s,"rx_bytes":%s,"tx_packets":%s,"rx_packets":%s}' "$l" "$t1" "$r1" "$t2" "$r2"
      else
        printf 'rail%-3d spine link  tx_bytes %-14s rx_bytes %-14s tx_packets %-10s rx_packets %s\n' \
          "$l" "$t1" "$r1" "$t2" "$r2"
      fi
    done
    [ $json = 0 ] || printf ']'
  fi
  [ $json = 0 ] || printf '}\n'
  return 0
}

cmd_status() {
  if [ ! -f "$STATE" ]; then
    echo "cluster '$PREFIX': down"
    return 0
  fi
  load_state
  if [ "${1:-}" = --json ]; then
    cmd_counters --json
    return 0
  fi
  if [ "${EMU_RAILS:-0}" = 0 ]; then
    echo "cluster '$PREFIX': $EMU_HOSTS hosts, links $EMU_BW each way ($EMU_QDISC), latency ${EMU_LATENCY:-none}, mtu $EMU_MTU"
  else
    echo "cluster '$PREFIX': $EMU_HOSTS hosts x $EMU_RAILS rails, NICs $EMU_BW each way, spine links $EMU_SPINE_BW" \
      "each way ($EMU_QDISC), latency ${EMU_LATENCY:-none}, mtu $EMU_MTU"
  fi
  cmd_counters
}

cmd_exec() {
  load_state
  [ $# -ge 2 ] || die "exec: expected HOST cmd..."
  local h=${1%r*} l=0
  [[ $1 != *r* ]] || l=${1##*r}
  h=$(resolve_host "$h")
  [[ $l =~ ^[0-9]+$ ]] && [ "$l" -lt "$(nics_per_host)" ] || die "exec: no NIC '$l' on host $h"
  shift
  exec $(rank_enter "$h" "$l") "$@"
}

cmd_launch() {
  load_state
  local rph=1 port=29500 timeout=0 logdir="" fault=""
  while [ $# -gt 0 ]; do
    case $1 in
      -r | --ranks-per-host) rph=$2; shift 2 ;;
      -p | --port) port=$2; shift 2 ;;
      -t | --timeout) timeout=$2; shift 2 ;;
      -o | --logdir) logdir=$2; shift 2 ;;
      --fault) fault=$2; shift 2 ;;
      --) shift; break ;;
      *) die "launch: unknown option '$1' (options before --, then the command)" ;;
    esac
  done
  [ $# -ge 1 ] || die "launch: no command after --"
  [[ $rph =~ ^[0-9]+$ ]] && [ "$rph" -ge 1 ] || die "launch: bad ranks per host '$rph'"
  [ "${EMU_RAILS:-0}" = 0 ] || [ "$rph" = "$EMU_RAILS" ] ||
    die "launch: $rph ranks per host on $EMU_RAILS rails; with rails each rank has its NIC: -r $EMU_RAILS"
  local world=$((EMU_HOSTS * rph)) pids=() i j r
  [ -z "$logdir" ] || mkdir -p "$logdir"
  # The transport between emulated hosts, each setting only where the caller left it unset: UCX,
  # shared memory inside a host and TCP on the shaped eth0 between hosts (cma left out: with it,
  # large messages between hosts ran at ~50% of the link rate). Eager protocol only: UCX's
  # rendezvous over TCP sends its handshake on the same in-order streams as bulk data, so it
  # waits behind whole messages already queued at the shaper (an RDMA NIC answers it in
  # microseconds); measured 2026-11-24 on 2 hosts x 4 ranks at 200 Mbit/s: 16 KiB per pair with the
  # hierarchical exchange (64 KiB messages) 14.6 ms with rendezvous vs 8.0 ms eager, 1 MiB 1166 vs
  # 695 ms (the link's bound: 671 ms); shared memory kept its ~10 GB/s (emu-linkbw.sh).
  # Two UCX 1.13.1 defects bound this choice (both seen here, 2026-11-24): with eager zero-copy
  # sends (the default above UCX_ZCOPY_THRESH) a peer's death makes UCX's TCP transport assert
  # (`comp->count > 0` in ucp_proto_am_zcopy_completion) and abort the survivor, so the fault
  # tests set UCX_ZCOPY_THRESH=inf; with eager copies (bcopy) only, a peer sometimes never
  # completed its receive at 8 Gbit/s (4 of 6 runs of 2 x 4 ranks, 64 KiB per pair, hung), so
  # the default keeps zero-copy (32 of 32 runs clean at 4 KiB to 4 MiB per pair).
  export LOCMOE_TRANSPORT=${LOCMOE_TRANSPORT:-ucx} UCX_TLS=${UCX_TLS:-posix,sysv,tcp} \
    UCX_NET_DEVICES=${UCX_NET_DEVICES:-eth0} UCX_RNDV_THRESH=${UCX_RNDV_THRESH:-inf} \
    UCX_WARN_UNUSED_ENV_VARS=${UCX_WARN_UNUSED_ENV_VARS:-n}
  # Ranks are ours: on Ctrl-C or a failure of this script they are ended by pid. SIGKILL also ends a
  # stopped (SIGSTOP) rank; no SIGCONT first, which would let it run on for a moment.
  trap 'for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done; exit 130' INT TERM
  for ((i = 0; i < EMU_HOSTS; i++)); do
    for ((j = 0; j < rph; j++)); do
      r=$((i * rph + j))
      local out=/dev/stdout
      [ -z "$logdir" ] || out=$logdir/rank$r.log
      RANK=$r WORLD_SIZE=$world LOCAL_RANK=$j LOCAL_WORLD_SIZE=$rph \
        MASTER_ADDR=$(nic_addr 0 0) MASTER_PORT=$port LOCMOE_BOOTSTRAP=tcp LOCMOE_HOSTID=host$i \
        $(rank_enter "$i" "$j") "$@" >"$out" 2>&1 &
      pids+=($!)
    done
  done
  if [ -n "$fault" ]; then
    inject_fault "$fault" "$rph" "${pids[@]}" &
    local fpid=$!
  fi
  local watchdog=""
  if [ "$timeout" != 0 ]; then
    # The watchdog's own sleep is ended with it (an orphaned sleep would hold the caller's stdout
    # open, and a test harness reading it would wait for the sleep).
    (
      trap 'kill "$sp" 2>/dev/null; exit 0' TERM
      sleep "$timeout" &
      sp=$!
      wait "$sp"
      note "launch: deadline of ${timeout}s passed; killing the ranks still running"
      for p in "${pids[@]}"; do kill -KILL "$p" 2>/dev/null || true; done
    ) </dev/null >/dev/null &
    watchdog=$!
  fi
  local rc=0 st
  for ((r = 0; r < world; r++)); do
    st=0
    wait "${pids[$r]}" || st=$?
    [ -z "$logdir" ] || echo "$st" >"$logdir/rank$r.rc"
    [ "$st" = 0 ] || [ "$rc" != 0 ] || rc=$st
  done
  [ -z "$watchdog" ] || { kill "$watchdog" 2>/dev/null || true; wait "$watchdog" 2>/dev/null || true; }
  [ -z "$fault" ] || wait "$fpid" 2>/dev/null || true
  trap - INT TERM
  return "$rc"
}

# inject_fault SPEC RANKS_PER_HOST PIDS...: sleeps, then applies one fault. The pids are those of
# `ip netns exec` / nsenter, which exec() into the rank, so a signal reaches the rank itself.
inject_fault() {
  local spec=$1 rph=$2
  shift 2
  local pids=("$@") kind target delay
  IFS=: read -r kind target delay <<<"$spec"
  [ -n "$delay" ] || die "--fault: expected KIND:TARGET:DELAY_S, got '$spec'"
  sleep "$delay"
  case $kind in
    linkdown)
      local h
      h=$(resolve_host "$target")
      note "fault: link of host $h down"
      local l
      for ((l = 0; l < $(nics_per_host); l++)); do ip -n "$(nic_ns "$h" "$l")" link set eth0 down; done
      ;;
    kill | stop)
      [[ $target =~ ^[0-9]+$ ]] && [ "$target" -lt "${#pids[@]}" ] || die "--fault: no rank '$target'"
      local sig=KILL
      [ "$kind" = stop ] && sig=STOP
      note "fault: SIG$sig to rank $target (pid ${pids[$target]}, host $((target / rph)))"
      kill -"$sig" "${pids[$target]}"
      if [ "$sig" = STOP ]; then
        # A stopped rank cannot end by itself: once every other rank has ended, end it.
        local p alive=1
        while [ $alive = 1 ]; do
          alive=0
          for p in "${pids[@]}"; do
            [ "$p" = "${pids[$target]}" ] || ! kill -0 "$p" 2>/dev/null || alive=1
          done
          [ $alive = 0 ] || sleep 0.2
        done
        note "fault: every other rank has ended; SIGKILL to the stopped rank $target"
        kill -KILL "${pids[$target]}" 2>/dev/null || true
      fi
      ;;
    *) die "--fault: unknown kind '$kind' (linkdown, kill, stop)" ;;
  esac
}

cmd_run() {
  local up_args=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do up_args+=("$1"); shift; done
  [ "${1:-}" = -- ] || die "run: expected: run N [up options] -- cmd..."
  shift
  [ $# -ge 1 ] || die "run: no command after --"
  # down runs however this ends: success, failure, Ctrl-C or SIGTERM. The command runs in the
  # background so that a signal to this script is handled at once (bash defers traps until a
  # foreground child returns); the trap ends the command (by pid) before removing the cluster.
  RUN_CHILD=""
  trap 'cmd_down' EXIT
  trap 'exit 130' INT TERM
  cmd_up "${up_args[@]}"
  trap 'on_run_signal' INT TERM
  export LOCMOE_EMU_PREFIX=$PREFIX LOCMOE_EMU_STATE=$STATE_DIR
  "$@" &
  RUN_CHILD=$!
  local rc=0
  wait "$RUN_CHILD" || rc=$?
  RUN_CHILD=""
  return $rc
}

on_run_signal() {
  note "interrupted; removing the emulated cluster '$PREFIX'"
  [ -z "${RUN_CHILD:-}" ] || { kill -TERM "$RUN_CHILD" 2>/dev/null || true; }
  exit 130
}

usage() { awk 'NR > 1 && !/^#/ { exit } NR > 1 { sub(/^# ?/, ""); print }' "$0"; }

main() {
  local cmd=${1:-}
  [ $# -gt 0 ] && shift
  case $cmd in
    up) cmd_up "$@" ;;
    down) cmd_down ;;
    status) cmd_status "$@" ;;
    counters) cmd_counters "$@" ;;
    exec) cmd_exec "$@" ;;
    launch) cmd_launch "$@" ;;
    run) cmd_run "$@" ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 2 ;;
  esac
}

main "$@"
