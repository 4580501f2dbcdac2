"""One training epoch, and validation with the evaluation code.

Each batch holds one modality; every item in it is paired with one of its captions (drawn anew each epoch), and
items sharing a caption or a label are positives of each other in the loss.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import default_collate

from mmretrieval.core.errors import TrainingError
from mmretrieval.core.schema import Modality
from mmretrieval.models.modalities import media_modality
from mmretrieval.training.data import CaptionBank, backbone_features

if TYPE_CHECKING:
    import pandas as pd

    from mmretrieval.core.params import IndexParams
    from mmretrieval.evaluation.evaluator import Decoded
    from mmretrieval.models.dual_encoder import DualEncoder
    from mmretrieval.models.towers import TextEncoder

# (item vectors, caption vectors, positives) -> scalar loss
LossFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class EpochStats:
    loss: float  # mean batch loss
    samples: int
    seconds: float


def positives_of(caption_ids: torch.Tensor, label_ids: torch.Tensor) -> torch.Tensor:
    """(B, B) bool: pair (i, j) is positive when the drawn captions are equal or the items share a label (>= 0)."""
    same_label = (label_ids[:, None] == label_ids[None, :]) & (label_ids[:, None] >= 0)
    return (caption_ids[:, None] == caption_ids[None, :]) | same_label


def train_one_epoch(net: DualEncoder, batches: Iterable[tuple[str, Any]],
                    encoders: dict[str, Callable[[torch.Tensor], torch.Tensor]], captions: CaptionBank,
                    label_ids: torch.Tensor, loss_fn: LossFn, opt: torch.optim.Optimizer, sched: Any,
                    grad_clip: float, rng: random.Random, epoch: int, device: str) -> EpochStats:
    """One pass; ``encoders[modality]`` maps a loader's batch to unit vectors. Raises :class:`TrainingError` when
    the loss stops being finite (nothing is registered then)."""
    net.train()
    losses, seen, started = [], 0, time.monotonic()
    for modality, (batch, idx) in batches:
        cap_t = captions.draw(idx.tolist(), rng, device)
        positives = positives_of(cap_t, label_ids[idx.to(device)])
        with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
            items = encoders[modality](batch.to(device, non_blocking=True)).float()
            texts = net.project_text(captions.features(cap_t)).float()
        loss = loss_fn(items, texts, positives)
        if not torch.isfinite(loss):
            raise TrainingError(f"loss became {loss.item()} at epoch {epoch}: lower train.lr or check the data; "
                                "nothing was registered")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
        opt.step()
        sched.step()
        losses.append(float(loss.item()))
        seen += len(idx)
    return EpochStats(float(np.mean(losses)) if losses else float("nan"), seen, time.monotonic() - started)


class Validator:
    """Scores the model on the validation split after each epoch with the evaluator
    (:class:`~mmretrieval.evaluation.evaluator.RetrievalEvaluator`): its decoding, metrics, centring and primary
    metric.

    Media are decoded once. With a frozen pretrained image backbone the images' (and video frames') backbone features
    are computed once too, and each epoch only projects them; audio clips go through the (training) audio tower every
    epoch.
    """

    def __init__(self, net: DualEncoder, text: TextEncoder, frame: pd.DataFrame, clean_dir: Path,
                 index: IndexParams, device: str, primary_metric: str) -> None:
        from mmretrieval.evaluation.evaluator import RetrievalEvaluator
        from mmretrieval.models.dual_encoder import RetrievalModel

        self.evaluator = RetrievalEvaluator(frame, clean_dir, index=index, primary_metric=primary_metric)
        self.device = device
        self.probe = RetrievalModel(net, text, device)  # the model as evaluation decodes and prepares for it
        self.parts: list[tuple[Decoded, Any, torch.Tensor]] = []  # (items, their media or features, caption features)
        for modality in self.evaluator.modalities:
            if modality not in self.probe.modalities:
                continue
            try:
                decoded = self.evaluator.decode(self.probe, modality)
            except TrainingError:
                continue  # fewer than two usable items: this modality is not validated
            media = _frozen_features(net, decoded, device) if net.image_frozen else decoded.media
            self.parts.append((decoded, media, text.encode(decoded.eval_set.captions)))
        net.train()

    def __bool__(self) -> bool:
        return bool(self.parts)

    @property
    def primary_metric(self) -> str:
        """The key of the gate's metric among the last call's metrics (:meth:`RetrievalEvaluator.resolve_primary`)."""
        return self.evaluator.primary_metric

    @torch.no_grad()
    def __call__(self, net: DualEncoder) -> dict[str, float]:
        net.eval()
        metrics: dict[str, float] = {}
        for decoded, media, caption_features in self.parts:
            texts = net.project_text(caption_features.to(self.device)).float().cpu().numpy()
            items = self._item_vectors(net, decoded.modality, media)
            found, _, _ = self.evaluator.metrics_of(texts, items.numpy(), decoded)
            metrics |= found
        net.train()
        self.evaluator.resolve_primary(metrics)
        return metrics

    def _item_vectors(self, net: DualEncoder, modality: str, media: Any) -> torch.Tensor:
        """(items, D) unit vectors on CPU: cached image features through the image head, or the decoded items
        prepared and batched as the modality table says, through their tower (video frame features: temporal
        pooling and the head)."""
        if isinstance(media, torch.Tensor):  # (items, width) features of a frozen image backbone
            return net.project_image(media.to(self.device)).float().cpu()
        kind = media_modality(modality)
        frame_features = modality == Modality.VIDEO.value and net.image_frozen  # clips hold (K, width) features
        parts = []
        for start in range(0, len(media), kind.batch_size):
            batch = default_collate([kind.prepare(self.probe, m) for m in media[start:start + kind.batch_size]])
            batch = batch.to(self.device)
            vectors = net.project_video(batch.pixels, batch.wave, batch.audio) if frame_features else \
                net.encode(modality, batch)
            parts.append(vectors.float().cpu())
        return torch.cat(parts)


@torch.no_grad()
def _frozen_features(net: DualEncoder, decoded: Decoded, device: str) -> Any:
    """With a frozen image backbone, what validation keeps of decoded items so each epoch only runs the heads:
    images -> (items, width) backbone features; clips -> the clips with their frames' (K, width) features as
    ``pixels``; other items as they are."""
    from mmretrieval.models.dual_encoder import eval_transform

    if decoded.modality == Modality.IMAGE.value:
        return backbone_features(net, decoded.media, eval_transform(net.config), device)
    if decoded.modality == Modality.VIDEO.value:
        media = decoded.media
        feats = torch.cat([net.frame_features(torch.stack([c.pixels for c in media[i:i + 8]]).to(device))
                           .float().cpu() for i in range(0, len(media), 8)])
        return [c._replace(pixels=f) for c, f in zip(media, feats, strict=True)]
    return decoded.media
