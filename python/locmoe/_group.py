"""locmoe.Group: the ranks of one expert-parallel group, and how they find each other.

The library makes a group from MPI_COMM_WORLD or from a TCP rendezvous whose parameters it reads
from the environment (LOCMOE_BOOTSTRAP, LOCMOE_BOOTSTRAP_ADDR, RANK, WORLD_SIZE; see
include/locmoe/locmoe.h). This module decides those parameters where the launcher alone does not
give them: for a torch.distributed process group, and for a split of a group. In both the new
group's rank 0 reserves a port of its own and tells its peers ``host:port`` through a channel they
already share (the process group, or the parent group). Under torchrun (whose own store holds
MASTER_PORT) the library itself publishes rank 0's port in torchrun's store.
"""
import contextlib
import os
import socket
import sys

from . import _locmoe

__all__ = ["Group"]

_BOOTSTRAPS = ("auto", "mpi", "tcp", "self")
_MPI_VARS = ("OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK", "MPI_LOCALNRANKS")


@contextlib.contextmanager
def _env(overrides):
    """The library reads its TCP rendezvous parameters from the environment: set them for one
    group creation only (not thread-safe, as os.environ is not)."""
    saved = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _timeout(timeout_s):
    if timeout_s and timeout_s > 0:
        return float(timeout_s)
    try:
        t = float(os.environ.get("LOCMOE_TIMEOUT_S") or 120.0)
        return t if t > 0 else 120.0
    except ValueError:
        return 120.0  # the library names the malformed variable when it reads it


def _reserve_port():
    """(socket, port): a port for rank 0's rendezvous listener, held until the group is made. The
    socket is bound with SO_REUSEADDR and never listens, so the library's listener (SO_REUSEADDR
    too) binds the same port, while the kernel gives the port to nobody else and a plain bind by
    another process fails. Picking a free port and closing it before the library binds it would
    leave a window for another process to take it."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("", 0))
    return s, s.getsockname()[1]


def _is_this_machine(host):
    try:
        infos = socket.getaddrinfo(host, None, socket.AF_INET)
    except (socket.gaierror, UnicodeError):
        return False
    for *_, sa in infos:
        if sa[0].startswith("127."):
            return True
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.bind((sa[0], 0))
                return True
            except OSError:
                pass
    return False


def _my_address():
    """How the peers reach this process (the library's listener binds every interface). When
    MASTER_ADDR names this machine, MASTER_ADDR itself: the peers already reach it. Otherwise this
    machine's address on the route to MASTER_ADDR; without MASTER_ADDR (mpirun) the host name."""
    master = os.environ.get("MASTER_ADDR")
    if master:
        if _is_this_machine(master):
            return master
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
            try:
                u.connect((master, 9))  # a UDP connect sends nothing: it only picks the route
                return u.getsockname()[0]
            except OSError:
                pass
    host = socket.gethostname()
    return host if _is_this_machine(host) else "127.0.0.1"


def _tcp_env(addr, rank, size):
    return {"LOCMOE_BOOTSTRAP": "tcp", "LOCMOE_BOOTSTRAP_ADDR": addr, "RANK": str(rank), "WORLD_SIZE": str(size)}


def _launched_by_mpi():
    return any(v in os.environ for v in _MPI_VARS)


def _wants_tcp(bootstrap):
    if bootstrap != "auto":
        return bootstrap == "tcp"
    chosen = os.environ.get("LOCMOE_BOOTSTRAP", "auto") or "auto"
    if chosen != "auto":
        return chosen == "tcp"
    return not _launched_by_mpi() and "RANK" in os.environ and "WORLD_SIZE" in os.environ


def _process_group_rendezvous(pg):
    """Rank 0 of the torch.distributed process group `pg` sends its listener's host:port to the
    others over `pg` (collective over pg)."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        raise ValueError("process_group: torch.distributed is not initialized (call init_process_group first)")
    rank, size = dist.get_rank(pg), dist.get_world_size(pg)
    if rank < 0:
        raise ValueError("process_group: this process (global rank %d) is not a member of it" % dist.get_rank())
    reservation, obj = None, [None]
    if rank == 0:
        reservation, port = _reserve_port()
        obj = ["%s:%d" % (_my_address(), port)]
    try:
        dist.broadcast_object_list(obj, src=dist.get_global_rank(pg, 0), group=pg)
    except BaseException:
        if reservation is not None:
            reservation.close()
        raise
    return _tcp_env(obj[0], rank, size), reservation


def _tcp_rendezvous(timeout):
    """Parameters of a TCP rendezvous of the whole job (RANK, WORLD_SIZE): ({} when the
    environment already gives them, reservation or None)."""
    if os.environ.get("LOCMOE_BOOTSTRAP_ADDR"):
        return {}, None
    try:
        rank, size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    except (KeyError, ValueError):
        return {}, None  # the library names the missing or malformed variable
    if size <= 1 or not 0 <= rank < size:
        return {}, None
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and os.environ.get("MASTER_ADDR") \
            and os.environ.get("MASTER_PORT"):
        return {}, None  # torchrun's store: the library does that rendezvous itself (torchrun_store.cc)
    dist = sys.modules.get("torch.distributed")
    if dist is not None and dist.is_available() and dist.is_initialized() and dist.get_world_size() == size:
        # The default process group's rank 0 may hold MASTER_PORT (its TCPStore server).
        return _process_group_rendezvous(dist.group.WORLD)
    return {}, None  # a launcher of our own (MASTER_PORT free): rank 0 listens on MASTER_PORT


class Group(_locmoe.Group):
    """The ranks of one expert-parallel group. Collective constructor (every rank of the new group).

    bootstrap: 'auto' (MPI under mpirun, a TCP rendezvous under torchrun or with RANK/WORLD_SIZE
    set, else this process alone) | 'mpi' (MPI_COMM_WORLD; MPI initialized when needed) | 'tcp'
    | 'self'. Under torchrun no extra variable is needed: rank 0 listens on a port of its own and
    publishes it in torchrun's store. LOCMOE_BOOTSTRAP_ADDR=host:port gives the rendezvous
    address explicitly; a launcher of your own may set MASTER_ADDR/MASTER_PORT to a free port
    that rank 0 listens on.
    a2a_algo: 'auto' | 'flat' | 'hier'; transport: '' (LOCMOE_TRANSPORT) | 'mpi' | 'ucx' | 'nccl';
    timeout_s: deadline of every wait on a peer (0: LOCMOE_TIMEOUT_S).
    process_group: a torch.distributed process group (the world or a subgroup): the new group has
    its ranks, in its order (``Group.from_torch(pg)`` says the same); collective over the process
    group, whose rank 0 sends its rendezvous address over it.

    A group made by a TCP rendezvous moves tokens over UCX (the MPI transport needs the group to
    be MPI_COMM_WORLD), so sub-groups need a build with UCX.
    """

    def __init__(self, bootstrap="auto", a2a_algo="auto", transport="", timeout_s=0.0, process_group=None):
        if bootstrap not in _BOOTSTRAPS:
            raise ValueError("bootstrap must be 'auto', 'mpi', 'tcp' or 'self', got %r" % (bootstrap,))
        env, reservation = {}, None
        if process_group is not None:
            if bootstrap not in ("auto", "tcp"):
                raise ValueError("a Group from a process_group uses the TCP rendezvous: bootstrap must be 'auto' "
                                 "or 'tcp', got %r" % (bootstrap,))
            env, reservation = _process_group_rendezvous(process_group)
        elif _wants_tcp(bootstrap):
            env, reservation = _tcp_rendezvous(_timeout(timeout_s))
            env["LOCMOE_BOOTSTRAP"] = "tcp"
        try:
            with _env(env):
                super().__init__("auto" if bootstrap == "tcp" else bootstrap, a2a_algo, transport, timeout_s)
        finally:
            if reservation is not None:
                reservation.close()

    @classmethod
    def from_torch(cls, process_group=None, **kwargs):
        """Collective over `process_group` (default: the world of torch.distributed). A Group of
        the process group's ranks, in its order; kwargs as Group (a2a_algo, transport, timeout_s)."""
        if process_group is None:
            import torch.distributed as dist
            process_group = dist.group.WORLD
        return cls(process_group=process_group, **kwargs)

    def split(self, color, key=None, a2a_algo="auto", transport="", timeout_s=0.0):
        """Collective over this group (every rank, like MPI_Comm_split). The ranks that pass the
        same `color` (an int >= 0) form a new Group, ordered by (`key`, rank in this group)
        (key: an int, default this rank); returns it, or None for color None (this rank joins no
        group). E.g. expert-parallel groups of n consecutive ranks inside a data-parallel job:
        ``ep = world.split(world.rank // n)``. A bad color or key on any rank raises on every rank,
        naming that rank. The new group is made collectively by its members only."""
        import numpy as np

        R, me = self.size, self.rank
        key = me if key is None else key
        limit = 2 ** 52  # exchanged as float64 sums: exact below 2^53
        why = None
        if color is not None and (isinstance(color, bool) or not isinstance(color, (int, np.integer))
                                  or not 0 <= color < limit):
            why = "color must be None or an int in [0, 2^52), got %r" % (color,)
        elif isinstance(key, bool) or not isinstance(key, (int, np.integer)) or not -limit < key < limit:
            why = "key must be an int in (-2^52, 2^52), got %r" % (key,)
        # One exchange carries every rank's (valid, member, color, key): a bad argument on one rank
        # is an error on all at once instead of a peer waiting in the next collective.
        rows = np.zeros((R, 4))
        rows[me] = (0, 0, 0, 0) if why else (1, color is not None, color or 0, key)
        self.allreduce_sum(rows.reshape(-1))
        bad = [r for r in range(R) if rows[r, 0] != 1]
        if bad:
            raise ValueError("Group.split: " + (why if why else "rank %d of the group passed a bad color or key"
                                                % bad[0]))
        members = sorted((r for r in range(R) if rows[r, 1] and rows[r, 2] == (color or 0)),
                         key=lambda r: (rows[r, 3], r)) if color is not None else []
        leader = members[0] if members else -1
        # Each new group's rank 0 sends host:port (utf-8 bytes, one per float64) over this group.
        width = 258
        addrs = np.zeros((R, width))
        reservation = None
        if me == leader:
            reservation, port = _reserve_port()
            text = ("%s:%d" % (_my_address(), port)).encode()[:width - 1]
            addrs[me, :len(text)] = np.frombuffer(text, dtype=np.uint8)
            addrs[me, width - 1] = len(text)
        try:
            self.allreduce_sum(addrs.reshape(-1))
            if color is None:
                return None
            n = int(addrs[leader, width - 1])
            addr = bytes(addrs[leader, :n].astype(np.uint8)).decode()
            with _env(_tcp_env(addr, members.index(me), len(members))):
                return Group("auto", a2a_algo, transport, timeout_s)
        finally:
            if reservation is not None:
                reservation.close()

    def __repr__(self):
        return "locmoe.Group(rank %d of %d, %d nodes)" % (self.rank, self.size, self.num_nodes)
