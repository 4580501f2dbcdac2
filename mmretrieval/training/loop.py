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
from mmretrieval.training.data import CaptionBank, backbone_features

if TYPE_CHECKING:
    import pandas as pd

    from mmretrieval.core.params import IndexParams
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
    """Scores the model on the validation split after each epoch, with the evaluation's own metric code.

    Media are decoded once. With a frozen pretrained image backbone the images' backbone features are computed once
    too, and each epoch only projects them; audio clips go through the (training) audio tower every epoch.
    """

    def __init__(self, net: DualEncoder, text: TextEncoder, frame: pd.DataFrame, clean_dir: Path,
                 index: IndexParams, device: str) -> None:
        from mmretrieval.evaluation.evaluator import MEDIA_LETTER, gather
        from mmretrieval.evaluation.metrics import build_eval_set
        from mmretrieval.media.image import open_image
        from mmretrieval.models.dual_encoder import RetrievalModel, eval_transform

        self.index, self.device = index, device
        self.parts: list[tuple[str, Any, Any, torch.Tensor]] = []  # (modality, eval set, media or features, captions)
        probe = RetrievalModel(net, text, device)
        for modality in MEDIA_LETTER:
            if modality not in set(frame["modality"]) or modality not in probe.modalities:
                continue
            load = open_image if modality == Modality.IMAGE.value else probe.load_wave
            if modality == Modality.VIDEO.value:
                load = probe.load_clip
            try:
                ids, media, caps, labels, _ = gather(frame, clean_dir, "media", modality, load)
            except TrainingError:
                continue  # fewer than two usable items: this modality is not validated
            eval_set = build_eval_set(ids, caps, labels)
            if modality == Modality.IMAGE.value and net.image_frozen:
                media = backbone_features(net, media, eval_transform(net.config), device)
            if modality == Modality.VIDEO.value and net.image_frozen:  # frame features (N, K, width), computed once
                with torch.no_grad():
                    feats = torch.cat([net.frame_features(torch.stack([c.pixels for c in media[i:i + 8]]).to(device))
                                       .float().cpu() for i in range(0, len(media), 8)])
                media = [c._replace(pixels=f) for c, f in zip(media, feats, strict=True)]
            self.parts.append((modality, eval_set, media, text.encode(eval_set.captions)))
        net.train()

    def __bool__(self) -> bool:
        return bool(self.parts)

    @torch.no_grad()
    def __call__(self, net: DualEncoder) -> dict[str, float]:
        from mmretrieval.evaluation.evaluator import metrics_from_vectors
        from mmretrieval.models.dual_encoder import eval_transform

        net.eval()
        metrics: dict[str, float] = {}
        for modality, eval_set, media, caption_features in self.parts:
            texts = net.project_text(caption_features.to(self.device)).float().cpu().numpy()
            if modality == Modality.VIDEO.value:  # clips: frame features (frozen backbone) or frames, audio tracks
                encode = net.project_video if net.image_frozen else net.encode_video
                batches = [default_collate(media[i:i + 8]).to(self.device) for i in range(0, len(media), 8)]
                items = torch.cat([encode(b.pixels, b.wave, b.audio).float().cpu() for b in batches])
            elif modality == Modality.AUDIO.value:
                items = torch.cat([net.encode_audio(torch.stack(media[i:i + 64]).to(self.device)).float().cpu()
                                   for i in range(0, len(media), 64)])
            elif isinstance(media, torch.Tensor):
                items = net.project_image(media.to(self.device)).float().cpu()
            else:
                transform = eval_transform(net.config)
                items = torch.cat([net.encode_image(torch.stack([transform(im) for im in media[i:i + 64]])
                                                    .to(self.device)).float().cpu()
                                   for i in range(0, len(media), 64)])
            found, _, _ = metrics_from_vectors(texts, items.numpy(), eval_set, modality, index=self.index)
            metrics |= found
        net.train()
        return metrics
