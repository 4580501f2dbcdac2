"""Contrastive losses.

References: Oord et al. 2018 (InfoNCE); Radford et al. 2021 (CLIP, symmetric form); Khosla et al. 2020 (several
positives per anchor).
"""

from __future__ import annotations

import torch


def symmetric_info_nce(image: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor,
                       positives: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE with any number of positives per row.

    Args:
        image: (B, D) L2-normalised image embeddings.
        text: (B, D) L2-normalised text embeddings; ``text[i]`` is a caption of ``image[i]``.
        logit_scale: scalar, log of the inverse temperature.
        positives: (B, B) bool, ``positives[i, j]`` when caption j also describes image i (diagonal is True).
            Captions shared by several items (class names, repeated captions) are then not pushed apart.

    Returns:
        scalar loss: mean of the image->text and text->image terms.
    """
    logits = logit_scale.exp().clamp(max=100) * image @ text.T  # (B, B)
    neg_inf = torch.finfo(logits.dtype).min
    i2t = torch.logsumexp(logits, dim=1) - torch.logsumexp(logits.masked_fill(~positives, neg_inf), dim=1)  # (B,)
    t2i = torch.logsumexp(logits, dim=0) - torch.logsumexp(logits.masked_fill(~positives, neg_inf), dim=0)  # (B,)
    return (i2t.mean() + t2i.mean()) / 2
