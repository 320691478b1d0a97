"""The ``reference`` backend: plain PyTorch on any device and dtype; the oracle and the CPU path."""

from __future__ import annotations

import torch

from .. import reference
from ..arch import Arch
from ..registry import NoConfig
from ..structured_reference import reference_hadamard, reference_monarch_matmul, reference_monarch_matmul_backward


class _Reference(NoConfig):
    """Every reference backend: runs anything, takes no config."""

    name = "reference"

    def supports(self, problem, arch: Arch) -> str | None:
        return None


class ReferenceAttention(_Reference):
    def launch(self, config, q, k, v, *, sm_scale, causal_block_tiles, num_iters):
        """Tile-order q, k, v -> (z, lse) of reference.monarch_attention_tiles."""
        return reference.monarch_attention_tiles(
            q, k, v, sm_scale=sm_scale, causal_block_tiles=causal_block_tiles, num_iters=num_iters
        )

    def launch_backward(self, config, dz, dlse, q, k, v, z, lse, *, sm_scale, causal_block_tiles, num_iters):
        """Gradients of (z, lse) by recomputing the reference forward under autograd."""
        with torch.enable_grad():
            inputs = [x.detach().requires_grad_() for x in (q, k, v)]
            z_re, lse_re = self.launch(
                config, *inputs, sm_scale=sm_scale, causal_block_tiles=causal_block_tiles, num_iters=num_iters
            )
            grads = torch.autograd.grad((z_re, lse_re), inputs, (dz, dlse.to(lse_re.dtype)))
        return tuple(g.to(x.dtype) for g, x in zip(grads, (q, k, v), strict=True))


class ReferenceHadamard(_Reference):
    def launch(self, config, x2d, out2d, *, m, n2, scale, transpose, fp32_intermediate=False):
        out2d.copy_(reference_hadamard(x2d, m, n2, scale, transpose))  # fp32 throughout anyway
        return out2d


class ReferenceMonarchMatmul(_Reference):
    def launch(self, config, x2d, w1, w2):
        return reference_monarch_matmul(x2d, w1, w2)

    def launch_backward(self, config, dout2d, x2d, w1, w2):
        """(dx2d, dw1, dw2) in closed form (einsums)."""
        return reference_monarch_matmul_backward(dout2d, x2d, w1, w2)
