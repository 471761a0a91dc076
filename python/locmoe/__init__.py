"""locmoe: expert-parallel dispatch and combine of Mixture-of-Experts tokens.

Tensors cross through DLPack: numpy arrays on the CPU, PyTorch / JAX / CuPy tensors on the GPU, no
copies. The ``*_into`` methods write caller-allocated outputs (allocation-free per step); the
methods without ``_into`` allocate the output with the input's own library (``new_empty`` for
torch tensors, numpy otherwise) and return it.

    g = locmoe.Group()                          # MPI under mpirun, TCP under torchrun, else alone
    # or locmoe.Group.from_torch(pg), or world.split(color): expert-parallel sub-groups
    plan = locmoe.Plan(g, expert, weight, experts_per_rank=L)   # or locmoe.Router().route(g, x, gate, L)
    d = locmoe.Dispatcher(g, experts_per_rank=L, hidden=H, max_tokens=T, top_k=k)
    h = d.make_handle()
    expert_in = d.dispatch(x, plan, h)          # [h.expert_rows, H], expert-major
    out = d.combine(f(expert_in), h)            # [T, H]
"""
from ._group import Group
from ._locmoe import Dispatcher, Error, Handle, Plan, Router, __version__

__all__ = ["Dispatcher", "Error", "Group", "Handle", "Plan", "Router", "__version__"]


def _install_abort_hook():
    """An unhandled exception ending this rank's script tells the other ranks of every live group at
    once (locmoe_abort_all): their pending or next collective fails naming this rank and the
    exception, instead of waiting for it until LOCMOE_TIMEOUT_S. Then the previous hook runs."""
    import sys
    import traceback

    from . import _locmoe

    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        try:
            text = "".join(traceback.format_exception_only(exc_type, exc)).strip()
            _locmoe._abort_all(f"unhandled exception: {text}")
        except Exception:  # never hide the original error
            pass
        previous(exc_type, exc, tb)

    sys.excepthook = hook


_install_abort_hook()


def _empty(ref, rows, cols, dtype=None):
    """An uninitialized [rows, cols] array from the same library/device as `ref`."""
    if hasattr(ref, "new_empty"):  # torch.Tensor
        return ref.new_empty((rows, cols)) if dtype is None else ref.new_empty((rows, cols), dtype=dtype)
    import numpy as np
    return np.empty((rows, cols), dtype=ref.dtype if dtype is None else dtype)


def _float32_like(ref):
    if hasattr(ref, "new_empty"):
        import torch
        return torch.float32
    import numpy as np
    return np.float32


def _dispatch(self, x, plan, handle):
    """Collective. Returns expert_in [handle.expert_rows, H] (a view of a max_expert_rows buffer)."""
    buf = _empty(x, self.max_expert_rows, self.hidden)
    rows = self.dispatch_into(x, plan, handle, buf)
    return buf[:rows]


def _combine(self, expert_out, handle):
    """Collective. Returns out [handle.num_tokens, H]."""
    out = _empty(expert_out, handle.num_tokens, self.hidden)
    self.combine_into(expert_out, handle, out)
    return out


def _dispatch_backward(self, grad_expert_in, handle):
    """Collective. Returns grad_x [handle.num_tokens, H]; with weight_grads_with_dispatch_backward
    (grad_x, grad_weights float32 [T, k]), the weight gradients of the combine_backward before."""
    gx = _empty(grad_expert_in, handle.num_tokens, self.hidden)
    if not self.weight_grads_with_dispatch_backward:
        self.dispatch_backward_into(grad_expert_in, handle, gx)
        return gx
    gw = _empty(grad_expert_in, handle.num_tokens, handle.k, dtype=_float32_like(grad_expert_in))
    self.dispatch_backward_into(grad_expert_in, handle, gx, gw)
    return gx, gw


def _combine_backward(self, grad_out, handle, expert_out):
    """Collective. Returns (grad_expert_out [expert_rows, H], grad_weights float32 [T, k]); with
    weight_grads_with_dispatch_backward grad_weights is None (dispatch_backward returns them)."""
    gy = _empty(grad_out, handle.expert_rows, self.hidden)
    if self.weight_grads_with_dispatch_backward:
        self.combine_backward_into(grad_out, handle, expert_out, gy)
        return gy, None
    gw = _empty(grad_out, handle.num_tokens, handle.k, dtype=_float32_like(grad_out))
    self.combine_backward_into(grad_out, handle, expert_out, gy, gw)
    return gy, gw


Dispatcher.dispatch = _dispatch
Dispatcher.combine = _combine
Dispatcher.dispatch_backward = _dispatch_backward
Dispatcher.combine_backward = _combine_backward
