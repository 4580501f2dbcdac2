"""Checksums of module weights: the identity of a model in the keys of the per-item caches."""

from __future__ import annotations

import hashlib
from typing import Any


def weights_checksum(*modules: Any) -> str:
    """Hex SHA-256 over the state dicts of ``modules`` (``torch.nn.Module`` s; anything else is skipped): every
    tensor's name, dtype, shape and bytes, in order. Equal weights give equal checksums; about 0.1 s per 100 MB."""
    import torch

    h = hashlib.sha256()
    for n, module in enumerate(modules):
        if not isinstance(module, torch.nn.Module):
            continue
        for name, tensor in module.state_dict().items():
            t = tensor.detach().cpu().contiguous()
            h.update(f"{n}:{name}:{t.dtype}:{tuple(t.shape)}".encode())
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()
