"""Which machine a tensor lives on, read once per device and never at import time."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

# Compute capability major -> architecture family the backends and config tables are keyed by.
_FAMILY_BY_MAJOR = {9: "sm90", 10: "sm100", 12: "sm120"}


@dataclass(frozen=True)
class Arch:
    """``family`` is 'sm90' (H100/H200), 'sm100' (B200), 'sm120' (RTX 5090), 'smXY' or 'cpu'."""

    family: str
    capability: tuple[int, int] | None
    device_name: str
    num_sms: int = 0
    smem_per_block: int = 0  # bytes of opt-in shared memory per block

    @property
    def is_cuda(self) -> bool:
        return self.capability is not None


CPU = Arch(family="cpu", capability=None, device_name="cpu")


@functools.cache
def _cuda_arch(index: int) -> Arch:
    props = torch.cuda.get_device_properties(index)
    cap = (props.major, props.minor)
    family = _FAMILY_BY_MAJOR.get(props.major, f"sm{props.major}{props.minor}")
    smem = getattr(props, "shared_memory_per_block_optin", 0)
    return Arch(family, cap, props.name, props.multi_processor_count, smem)


def arch_of(device: torch.device | str) -> Arch:
    """The architecture of ``device`` (cached per CUDA device index)."""
    device = torch.device(device)
    if device.type != "cuda":
        return CPU if device.type == "cpu" else Arch(device.type, None, device.type)
    index = device.index if device.index is not None else torch.cuda.current_device()
    return _cuda_arch(index)
