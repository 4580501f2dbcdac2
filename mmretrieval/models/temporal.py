"""Temporal pooling: K frame feature vectors of a clip -> one clip feature vector (what the image head projects).

* ``mean``: the average of the frame features. Blind to order: a clip and the same clip played backwards pool to
  the same vector, so "moving up" and "moving down" cannot be told apart.
* ``attention``: the mean plus a learned correction from one small pre-norm transformer block over the frames
  (each slot: the frame's features and their change from the previous frame, both reduced to ``dim``, plus a
  learned position encoding; self-attention, then a mean over the slots and a projection back to the feature
  width). The correction starts at zero (its output layer is
  zero-initialised), so training starts from mean pooling; a single frame as a query (image -> video) stays in the
  space of the pooled clips.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn


class TemporalPool(nn.Module):
    """(B, K, width) frame features -> (B, width) clip features; ``K`` is fixed by the model (``frames`` >= 1).
    ``kind`` and ``frames`` are ``model.video_pool`` and ``model.video_frames``, checked by :class:`ModelParams`
    (:mod:`mmretrieval.core.params`)."""

    def __init__(self, kind: Literal["mean", "attention"], width: int, frames: int, dim: int = 256, heads: int = 4,
                 dropout: float = 0.1) -> None:
        super().__init__()
        self.kind, self.frames = kind, frames
        if kind == "attention":
            self.reduce = nn.Linear(width, dim)
            self.motion = nn.Linear(width, dim)  # the change from the previous frame: direction made explicit
            self.position = nn.Parameter(torch.randn(frames, dim) * 0.02)  # (K, dim) learned position encodings
            self.block = nn.TransformerEncoderLayer(dim, heads, 2 * dim, dropout, batch_first=True, norm_first=True)
            self.expand = nn.Linear(dim, width)
            nn.init.zeros_(self.expand.weight)
            nn.init.zeros_(self.expand.bias)

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, K, width) -> (B, width)."""
        mean = frames.mean(dim=1)  # (B, width)
        if self.kind == "mean":
            return mean
        if frames.shape[1] != self.frames:
            raise ValueError(f"the temporal module was trained on {self.frames} frames per clip, got {frames.shape[1]}")
        change = torch.cat([torch.zeros_like(frames[:, :1]), frames[:, 1:] - frames[:, :-1]], dim=1)  # (B, K, width)
        h = self.block(self.reduce(frames) + self.motion(change) + self.position)  # (B, K, dim)
        return mean + self.expand(h.mean(dim=1))  # (B, width)
