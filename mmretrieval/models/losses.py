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


def triplet_hardest(image: torch.Tensor, text: torch.Tensor, positives: torch.Tensor,
                    margin: float = 0.2) -> torch.Tensor:
    """Symmetric triplet loss with the hardest in-batch negative (VSE++, Faghri et al. 2018).

    Args:
        image: (B, D) L2-normalised image embeddings.
        text: (B, D) L2-normalised text embeddings; ``text[i]`` is a caption of ``image[i]``.
        positives: (B, B) bool, True where caption j also describes image i (those are never negatives).
        margin: cosine margin between the positive pair and the hardest negative.

    Returns:
        scalar loss: mean hinge over both directions.
    """
    sim = image @ text.T  # (B, B)
    pos = sim.diagonal()  # (B,)
    masked = sim.masked_fill(positives, -2.0)  # cosine >= -1, so -2 is never the hardest
    hardest_i2t = masked.max(dim=1).values  # (B,)
    hardest_t2i = masked.max(dim=0).values  # (B,)
    loss = (margin - pos + hardest_i2t).clamp(min=0) + (margin - pos + hardest_t2i).clamp(min=0)
    return loss.mean() / 2
