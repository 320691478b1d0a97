"""Monarch self-attention for diffusers' Wan transformers: one call installs it, ``remove()`` undoes it.

    from monarchrt_ops.integrations.diffusers import apply_monarch_attention

    handle = apply_monarch_attention(pipe.transformer, dense_layers=(0,), dense_steps=2)
    video = pipe(prompt, ...).frames
    handle.remove()  # the original processors are back

What it does (``docs/integrations.md``, "diffusers"):

- Every self-attention ``WanAttention`` of the model (``attn1`` of each block; cross-attention
  ``attn2`` stays dense) gets a :class:`MonarchWanAttnProcessor`. It computes q, k, v as diffusers'
  ``WanAttnProcessor`` does (fused ``to_qkv`` or separate projections, ``norm_q``/``norm_k``, heads,
  then RoPE on the interleaved pairs), runs :func:`monarchrt_ops.monarch_attention` on
  ``(B, S, nh, d)`` in natural video order, and applies ``to_out``.
- A forward pre-hook on the transformer records the token grid ``(frames, H, W)`` of each call
  from the latent ``(B, C, F, H, W)`` and ``config.patch_size``, so the resolution may change
  between calls.
- ``dense_layers``: indices into ``transformer.blocks`` whose self-attention stays dense.
  ``dense_steps``: the first N denoising steps of each pipeline call stay dense. The step counter
  reads the timestep of each transformer forward: the same timestep as the previous forward is the
  same step (classifier-free guidance calls the model twice per step), a smaller one is the next
  step, a larger one (or the first forward) starts a new call at step 0. ``handle.reset_steps()``
  restarts it by hand.
- Dense attention is the original diffusers processor itself, so a dense layer or step is exactly
  what the model computed before.

Requires ``diffusers`` (an optional extra: ``pip install diffusers``); the core package never
imports it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from ..attention import _check_backend, _check_int
from ..attention import monarch_attention as _monarch_attention

try:
    from diffusers.models.transformers.transformer_wan import WanAttention
except ImportError as e:  # pragma: no cover - exercised only without diffusers
    raise ImportError(
        f"monarchrt_ops.integrations.diffusers needs diffusers (pip install diffusers); importing it failed: {e}"
    ) from e

__all__ = [
    "WAN_2_1_T2V_1_3B",
    "MonarchAttentionHandle",
    "MonarchWanAttnProcessor",
    "apply_monarch_attention",
    "random_wan_transformer",
]

# WanTransformer3DModel config of Wan 2.1 T2V 1.3B (Wan-AI/Wan2.1-T2V-1.3B-Diffusers transformer/config.json):
# for random-weight runs (examples, bench). 480x832 video -> latent 60x104 -> 30x52 tokens per frame.
WAN_2_1_T2V_1_3B = {
    "patch_size": (1, 2, 2),
    "num_attention_heads": 12,
    "attention_head_dim": 128,
    "in_channels": 16,
    "out_channels": 16,
    "text_dim": 4096,
    "freq_dim": 256,
    "ffn_dim": 8960,
    "num_layers": 30,
    "cross_attn_norm": True,
    "qk_norm": "rms_norm_across_heads",
    "eps": 1e-6,
    "rope_max_seq_len": 1024,
}

_BLOCK_INDEX = re.compile(r"^blocks\.(\d+)\.")


@dataclass
class _State:
    """What the transformer's pre-hook records for the processors of one model."""

    patch_size: tuple[int, int, int]
    dense_steps: int
    grid: tuple[int, int, int] | None = None  # (frames, H, W) tokens of the current forward
    step: int = 0
    last_timestep: float | None = None
    forwards: int = field(default=0)

    def record(self, hidden_states: torch.Tensor, timestep) -> None:
        if not isinstance(hidden_states, torch.Tensor) or hidden_states.dim() != 5:
            raise ValueError(
                "apply_monarch_attention: the transformer's hidden_states must be a (B, C, F, H, W) latent, "
                f"got {getattr(hidden_states, 'shape', type(hidden_states).__name__)}"
            )
        _, _, f, h, w = hidden_states.shape
        pt, ph, pw = self.patch_size
        self.grid = (f // pt, h // ph, w // pw)
        self.forwards += 1
        if self.dense_steps == 0:
            return
        if torch.compiler.is_compiling():
            raise RuntimeError(
                "apply_monarch_attention(dense_steps > 0) reads each forward's timestep, which a whole-model "
                "torch.compile(fullgraph=True) cannot do; compile the blocks instead "
                "(transformer.compile_repeated_blocks(fullgraph=True)) or use dense_steps=0"
            )
        if timestep is None:
            raise ValueError("apply_monarch_attention(dense_steps > 0) needs the transformer's timestep argument")
        t = float(torch.as_tensor(timestep).detach().max())
        if self.last_timestep is None or t > self.last_timestep:
            self.step = 0  # a new denoising trajectory (pipeline call)
        elif t < self.last_timestep:
            self.step += 1
        self.last_timestep = t

    def reset(self) -> None:
        self.step, self.last_timestep = 0, None


class MonarchWanAttnProcessor:
    """Self-attention processor for ``WanAttention``: Monarch attention, or the original (dense)
    processor for a dense layer or step. Cross-attention calls go to the original processor."""

    _attention_backend = None
    _parallel_config = None

    def __init__(self, original, state: _State, layer: int | None, dense_layer: bool, tiling: dict, num_iters: int,
                 backend: str | None) -> None:  # fmt: skip
        self.original = original
        self.state = state
        self.layer = layer
        self.dense_layer = dense_layer
        self.tiling = tiling
        self.num_iters = num_iters
        self.backend = backend
        self._attention_backend = getattr(original, "_attention_backend", None)

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, rotary_emb=None):
        state = self.state
        if encoder_hidden_states is not None or self.dense_layer or state.step < state.dense_steps:
            return self.original(attn, hidden_states, encoder_hidden_states, attention_mask, rotary_emb)
        if self._parallel_config is not None or getattr(self.original, "_parallel_config", None) is not None:
            raise ValueError(
                "Monarch attention needs whole frames, but diffusers context parallelism gives each rank a slice "
                "of the sequence; use monarchrt_ops.parallel (docs/integrations.md) instead of enable_parallelism"
            )
        if attention_mask is not None:
            raise ValueError("Monarch self-attention takes no attention_mask (Wan passes none)")
        if state.grid is None:
            raise ValueError(
                "no frame grid recorded: call the transformer (its forward records (frames, H, W) from the latent), "
                "not the attention module on its own"
            )
        frames, h, w = state.grid
        seq = hidden_states.shape[1]
        if seq != frames * h * w:
            raise ValueError(
                f"self-attention got {seq} tokens, but the latent of this forward gives {frames}x{h}x{w} = "
                f"{frames * h * w}; Monarch attention needs the whole video sequence in natural order"
            )

        if attn.fused_projections:
            query, key, value = attn.to_qkv(hidden_states).chunk(3, dim=-1)
        else:
            query, key, value = attn.to_q(hidden_states), attn.to_k(hidden_states), attn.to_v(hidden_states)
        query = attn.norm_q(query).unflatten(2, (attn.heads, -1))
        key = attn.norm_k(key).unflatten(2, (attn.heads, -1))
        value = value.unflatten(2, (attn.heads, -1))
        if rotary_emb is not None:
            query = apply_wan_rotary(query, *rotary_emb)
            key = apply_wan_rotary(key, *rotary_emb)

        out = _monarch_attention(
            query, key, value, (h, w), num_iters=self.num_iters, backend=self.backend, **self.tiling
        )
        out = out.flatten(2, 3).type_as(query)
        out = attn.to_out[0](out)
        return attn.to_out[1](out)


def apply_wan_rotary(x: torch.Tensor, freqs_cos: torch.Tensor, freqs_sin: torch.Tensor) -> torch.Tensor:
    """Wan's RoPE on ``(B, S, nh, d)``: channel pairs ``(2i, 2i+1)`` rotate by the angle whose cosine is
    ``freqs_cos[..., 2i]`` and sine ``freqs_sin[..., 2i+1]`` (diffusers repeats each value twice),
    computed in the dtype of the frequencies (float64 in diffusers) and returned in ``x``'s dtype."""
    pairs = x.unflatten(-1, (-1, 2))
    x_even, x_odd = pairs[..., 0], pairs[..., 1]
    cos, sin = freqs_cos[..., 0::2], freqs_sin[..., 1::2]
    rotated = torch.stack((x_even * cos - x_odd * sin, x_even * sin + x_odd * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)


class MonarchAttentionHandle:
    """Returned by :func:`apply_monarch_attention`; ``remove()`` restores the original processors."""

    def __init__(self, transformer, state: _State, originals: dict, hooks: list) -> None:
        self.transformer = transformer
        self._state = state
        self._originals = originals  # module -> original processor
        self._hooks = hooks
        self.active = True

    @property
    def grid(self) -> tuple[int, int, int] | None:
        """``(frames, H, W)`` tokens of the last transformer forward."""
        return self._state.grid

    @property
    def step(self) -> int:
        """Denoising step of the current pipeline call, as counted for ``dense_steps``."""
        return self._state.step

    @property
    def processors(self) -> dict:
        """Module name -> installed :class:`MonarchWanAttnProcessor`."""
        names = {m: n for n, m in self.transformer.named_modules()}
        return {names[m]: m.processor for m in self._originals}

    def reset_steps(self) -> None:
        """Start the ``dense_steps`` count again (the next forward is step 0)."""
        self._state.reset()

    def remove(self) -> None:
        """Put the original processors back and remove the hook. Idempotent."""
        if not self.active:
            return
        for module, original in self._originals.items():
            module.processor = original
        for hook in self._hooks:
            hook.remove()
        self.active = False

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.remove()


def apply_monarch_attention(
    transformer,
    *,
    f_tied: int = 1,
    h_reduce: int = 1,
    w_reduce: int = 1,
    num_iters: int = 1,
    dense_layers=(),
    dense_steps: int = 0,
    backend: str | None = None,
) -> MonarchAttentionHandle:
    """Install Monarch self-attention in a diffusers Wan transformer.

    Args:
        transformer: ``WanTransformer3DModel`` or another model whose self-attention modules are
            diffusers' ``WanAttention`` and whose forward takes the latent ``(B, C, F, H, W)`` first
            (or as ``hidden_states``) with ``config.patch_size``.
        f_tied, h_reduce, w_reduce, num_iters, backend: as :func:`monarchrt_ops.monarch_attention`;
            the tiling must divide every grid the model is called with (checked per call).
        dense_layers: indices into ``transformer.blocks`` whose self-attention stays dense.
        dense_steps: the first N denoising steps of each pipeline call stay dense (module docstring).

    Returns:
        A :class:`MonarchAttentionHandle`; ``handle.remove()`` restores the model exactly.

    Raises TypeError for a model without Wan self-attention, ValueError for bad settings or when
    Monarch attention is already installed.
    """
    for name, value in (("f_tied", f_tied), ("h_reduce", h_reduce), ("w_reduce", w_reduce), ("num_iters", num_iters)):
        _check_int(name, value)
    _check_int("dense_steps", dense_steps, minimum=0)
    backend = _check_backend(backend) or None
    patch_size = getattr(getattr(transformer, "config", None), "patch_size", None)
    if not isinstance(transformer, torch.nn.Module) or patch_size is None or len(patch_size) != 3:
        raise TypeError(
            f"apply_monarch_attention needs a diffusers Wan transformer (an nn.Module with config.patch_size "
            f"(t, h, w)), got {type(transformer).__name__}"
        )
    blocks = getattr(transformer, "blocks", None)
    n_blocks = len(blocks) if blocks is not None else 0
    dense_layers = tuple(dense_layers)
    for i in dense_layers:
        if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < n_blocks:
            raise ValueError(f"dense_layers entry {i!r} is not a block index in [0, {n_blocks})")

    targets = [
        (name, m) for name, m in transformer.named_modules() if isinstance(m, WanAttention) and not m.is_cross_attention
    ]
    if not targets:
        raise TypeError(f"{type(transformer).__name__} has no diffusers WanAttention self-attention modules")
    for name, m in targets:
        if isinstance(m.processor, MonarchWanAttnProcessor):
            raise ValueError(f"Monarch attention is already installed ({name}); call handle.remove() first")
        if m.add_k_proj is not None:
            raise ValueError(f"{name} is a self-attention with image key/value projections, which is not supported")

    state = _State(patch_size=tuple(int(p) for p in patch_size), dense_steps=dense_steps)
    tiling = {"f_tied": f_tied, "h_reduce": h_reduce, "w_reduce": w_reduce}
    originals = {}
    for name, m in targets:
        match = _BLOCK_INDEX.match(name)
        layer = int(match.group(1)) if match else None
        originals[m] = m.processor
        m.processor = MonarchWanAttnProcessor(
            m.processor, state, layer, layer in dense_layers, tiling, num_iters, backend
        )

    def pre_hook(module, args, kwargs):
        hidden_states = args[0] if args else kwargs.get("hidden_states")
        timestep = args[1] if len(args) > 1 else kwargs.get("timestep")
        state.record(hidden_states, timestep)

    hook = transformer.register_forward_pre_hook(pre_hook, with_kwargs=True)
    return MonarchAttentionHandle(transformer, state, originals, [hook])


def random_wan_transformer(config: dict | None = None, *, dtype=torch.bfloat16, device="cpu", seed: int = 0):
    """A randomly initialised ``WanTransformer3DModel`` (default: :data:`WAN_2_1_T2V_1_3B`) in
    ``dtype``, with the modules diffusers keeps in float32 (``_keep_in_fp32_modules``) left in float32
    as ``from_pretrained(torch_dtype=...)`` does. For examples and benchmarks; no weights are downloaded."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    with torch.device(device):
        model = WanTransformer3DModel(**(config or WAN_2_1_T2V_1_3B))
    torch.nn.Module.to(model, dtype=dtype)  # nn.Module.to: ModelMixin.to warns about the fp32 modules we fix next
    keep = tuple(getattr(model, "_keep_in_fp32_modules", None) or ())
    if dtype in (torch.float16, torch.bfloat16):
        for name, module in model.named_modules():
            if any(part in keep for part in name.split(".")):
                torch.nn.Module.to(module, dtype=torch.float32)
    return model.eval()
