"""Stage ``train``: the dual encoder on the augmented training split, logged to MLflow and registered.

The parts live in :mod:`mmretrieval.training` (data, loop, selection, schedule, checkpoint); :func:`run` wires them:

1. the trainable items of the training split and their captions (with a frozen text tower, the default, every
   caption is encoded once);
2. the model: the towers the data needs (a pretrained, frozen image backbone by default, whose features are
   computed once per image and view; a log-mel CNN for audio) and the projection heads;
3. epochs: one pass over every modality's loader, then validation with the evaluation's metric code; the best epoch
   is kept (:class:`~mmretrieval.training.selection.EpochSelector`) and training stops early after
   ``train.patience`` epochs without improvement; a checkpoint is written after every epoch under
   ``var/checkpoints/<dataset>/<fingerprint>/``, so a rerun with the same params and data resumes a killed run;
4. the training manifest is logged as the run's input (``mlflow.log_input``: dataset name, manifest digest, DVC
   data version) with the validation's data docs page (artifact ``data_docs/``); the kept weights are logged as
   the run's ``model`` artifact, an MLflow ``pyfunc`` model (:mod:`mmretrieval.serving.pyfunc`), and registered as
   a new version with the ``challenger`` alias and a description; ``evaluate`` and ``promote`` decide whether it
   serves and add their metrics and decision to it.

With ``model.text_trainable_layers`` / ``image_trainable_layers`` / ``image_trainable_blocks`` > 0 the top blocks
of the pretrained towers train too, at ``train.tuned_lr``.
"""

from __future__ import annotations

import logging
import random
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mmretrieval.backends import tracking
from mmretrieval.backends.locks import per_dataset
from mmretrieval.core.contracts import TrainResult
from mmretrieval.core.errors import TrainingError
from mmretrieval.core.integrity import MEDIA_SHA256, recorded, verify_files
from mmretrieval.core.io import read_json, read_parquet
from mmretrieval.core.layout import read_clean
from mmretrieval.core.params import ModelParams
from mmretrieval.core.schema import Modality, Split
from mmretrieval.core.settings import Settings, get_settings
from mmretrieval.serving import pyfunc
from mmretrieval.training import policy
from mmretrieval.training.checkpoint import Checkpoint, fingerprint
from mmretrieval.training.selection import EpochSelector

log = logging.getLogger(__name__)
TUNED_PREFIXES = ("text_layers.", "image_layers.")  # DualEncoder's tuned blocks of pretrained towers
__all__ = ["Checkpoint", "fingerprint", "param_groups", "run"]


def param_groups(net: Any, lr: float, tuned_lr: float) -> list[dict[str, Any]]:
    """Trainable parameters: the tuned blocks of pretrained towers at ``tuned_lr``, everything else at ``lr``."""
    named = [(name, q) for name, q in net.named_parameters() if q.requires_grad]
    tuned = [q for name, q in named if name.startswith(TUNED_PREFIXES)]
    groups = [{"params": [q for name, q in named if not name.startswith(TUNED_PREFIXES)], "lr": lr}]
    return groups + ([{"params": tuned, "lr": tuned_lr}] if tuned else [])


def audio_aug_masks(policy: dict[str, Any]) -> tuple[int, float]:
    """SpecAugment mask sizes (mel bands, share of frames) from the augmentation policy; (0, 0.0) when off."""
    audio = policy.get("audio", {})
    return int(audio.get("freq_mask", 0)), float(audio.get("time_mask", 0.0))


def model_config(mp: ModelParams, text_dim: int, present: list[str], audio_tracks: bool = False) -> Any:
    """The :class:`~mmretrieval.models.dual_encoder.ModelConfig` for the modalities present in the training data;
    ``audio_tracks``: some training video has an audio track (fused through the audio tower with
    ``model.video_audio``)."""
    from mmretrieval.models.dual_encoder import ModelConfig
    from mmretrieval.models.efficientnet import is_pretrained_cnn, provenance
    from mmretrieval.models.text_packages import provenance as text_provenance

    with_video = Modality.VIDEO.value in present
    with_images = Modality.IMAGE.value in present or with_video  # video frames go through the image tower
    video_audio = with_video and audio_tracks and mp.video_audio and bool(mp.audio_tower)
    source = {}
    if with_images and is_pretrained_cnn(mp.image_backbone):
        origin = provenance(mp.image_backbone)
        source = {"image_weights_source": f"{origin['package']}=={origin['version']} {origin['file']}",
                  "image_weights_sha256": origin["sha256"]}
    return ModelConfig(
        text_model=mp.text_model, text_dim=text_dim, embed_dim=mp.embed_dim or text_dim,
        init_temperature=mp.init_temperature, image_backbone=mp.image_backbone if with_images else "",
        image_size=mp.image_size, text_trainable_layers=mp.text_trainable_layers,
        image_trainable_layers=mp.image_trainable_layers if with_images else 0,
        image_trainable_blocks=mp.image_trainable_blocks if with_images else 0,
        image_head=mp.image_head, text_head=mp.text_head, image_dropout=mp.image_dropout,
        audio_tower=mp.audio_tower if Modality.AUDIO.value in present or video_audio else "",
        audio_sample_rate=mp.audio_sample_rate, audio_seconds=mp.audio_seconds, n_mels=mp.n_mels,
        audio_norm=mp.audio_norm, video_pool=mp.video_pool if with_video else "", video_frames=mp.video_frames,
        text_center=mp.text_center,
        video_audio=video_audio, **source, **text_provenance(mp.text_model))


@dataclass
class _Job:
    """What :func:`run`'s steps share: the dataset's inputs, and the model, data and optimiser built from them."""

    dataset: str
    settings: Settings
    params: Any  # the dataset's params
    layout: Any
    started: float  # time.monotonic() when the stage started
    train_frame: Any  # the augmented training split (pandas)
    policy: dict[str, Any]  # the augmentation policy
    clean_dir: Path
    val_frame: Any  # the clean validation split (pandas)
    items: Any  # training.data.TrainItems
    data_version: str
    device: str = "cpu"
    text: Any = None  # TextEncoder
    net: Any = None  # DualEncoder
    captions: Any = None  # training.data.CaptionBank
    label_ids: Any = None  # (items,) label class indices
    gen: Any = None  # the loaders' torch.Generator
    loaders: dict[str, Any] = field(default_factory=dict)
    encoders: dict[str, Any] = field(default_factory=dict)
    opt: Any = None
    sched: Any = None
    validator: Any = None  # training.loop.Validator, None without validation rows
    record: Any = None  # training.policy.DataRecord: the clean data this model is trained on
    features: dict[str, dict[str, int]] = field(default_factory=dict)  # backbone features reused/computed


@per_dataset("train")  # locks.py: a second run of this dataset waits
def run(dataset: str, settings: Settings | None = None, force: bool = False) -> TrainResult:
    """Train and register a challenger, or, when ``train.when`` says the champion is good enough for this data
    (:mod:`mmretrieval.training.policy`; ``force``: train anyway), return the champion with ``skipped`` and why."""
    import torch

    from mmretrieval.models.dual_encoder import pick_device
    from mmretrieval.training.schedule import warmup_cosine

    settings = settings or get_settings()
    params = settings.params_for(dataset)
    p = params.train
    started = time.monotonic()
    source = read_clean(settings.layout(dataset))
    now = policy.current_record(source.frame, source.data_version, params)
    retrain, reason, serving = policy.should_train(settings, dataset, params, now, force)
    if not retrain:
        return _kept(dataset, settings, serving, now, reason, started)
    log.info("train %s: training a new model: %s", dataset, reason)
    job = _read_inputs(dataset, settings, params, started)
    job.record = now
    torch.manual_seed(p.seed)
    np.random.seed(p.seed)
    job.device = pick_device(settings.device)
    _build_model(job)
    _build_data(job)
    job.opt = torch.optim.AdamW(param_groups(job.net, p.lr, p.tuned_lr), weight_decay=p.weight_decay)
    job.sched = warmup_cosine(job.opt, p.epochs * sum(len(dl) for dl in job.loaders.values()))
    _build_validation(job)
    ckpt = Checkpoint(job.layout.checkpoints(fingerprint(params, job.data_version)))
    code_version = tracking.git_sha(Path(__file__).resolve().parents[1])
    selector, history, run_id = _train(job, ckpt, code_version)
    ref = tracking.register(settings, dataset, run_id)
    tracking.describe_version(settings, ref, data_version=job.data_version, git_sha=code_version)
    tracking.set_alias(settings, dataset, tracking.CHALLENGER, ref.version)
    ckpt.remove()
    best_epoch = selector.best_epoch
    final = history[best_epoch - 1]
    log.info("train %s: registered %s v%s (best epoch %d of %d)", dataset, ref.name, ref.version, best_epoch,
             len(history))
    return TrainResult(dataset, job.data_version, run_id, ref.name, ref.version, best_epoch, len(history),
                       {k: round(v, 4) for k, v in final.items()}, round(time.monotonic() - job.started, 1),
                       reason=reason, features=job.features)


def _kept(dataset: str, settings: Settings, serving: policy.Champion | None, now: policy.DataRecord, reason: str,
          started: float) -> TrainResult:
    """The result of a run whose policy kept the champion (which :func:`policy.decide` only does with one)."""
    if serving is None:
        raise TrainingError(f"train {dataset}: no new model but no champion either ({reason})")
    log.info("train %s: no new model: %s", dataset, reason)
    return TrainResult(dataset, now.data_version, serving.run_id, settings.registered_model(dataset), serving.version,
                       seconds=round(time.monotonic() - started, 1), skipped=True, reason=reason,
                       champion_data_version=serving.record.data_version if serving.record else None)


def _read_inputs(dataset: str, settings: Settings, params: Any, started: float) -> _Job:
    """The augmented training split and its policy, the clean validation split; raises :class:`TrainingError`
    when fewer than two training items have captions or labels."""
    from mmretrieval.training import data

    layout = settings.layout(dataset)
    train_frame = read_parquet(layout.training_manifest, f"augmented training split of {dataset!r}")
    policy = read_json(layout.augmentation_policy, "augmentation policy")
    source = read_clean(layout)
    clean, clean_dir = source.frame, source.root
    if MEDIA_SHA256 in clean.columns:  # the clean file digests the byte checks and the feature cache use
        digests = clean.drop_duplicates("id").set_index("id")[MEDIA_SHA256]
        train_frame = train_frame.assign(**{MEDIA_SHA256: train_frame["id"].map(digests).fillna("")})
    items = data.TrainItems.from_frame(train_frame)
    if len(items) < 2:
        raise TrainingError(f"the train split of {dataset!r} has {len(items)} image/audio item(s) with captions or "
                            "labels; need at least 2 (check split ratios and the quarantine)")
    return _Job(dataset, settings, params, layout, started, train_frame, policy, clean_dir,
                clean[clean["split"] == Split.VAL.value], items, str(policy["data_version"]))


def _build_model(job: _Job) -> None:
    """The text tower and the dual encoder for the modalities of the training items (SpecAugment on the audio
    tower from the augmentation policy, active in training mode only)."""
    from mmretrieval.models.dual_encoder import build
    from mmretrieval.models.towers import load_text_tower

    mp, items = job.params.model, job.items
    job.text = load_text_tower(mp.text_model, job.device, mp.text_trainable_layers)
    job.net = build(model_config(mp, job.text.dim, items.present, any(items.audio_tracks)), mp.image_weights,
                    text=job.text, device=job.device).to(job.device)
    if mp.text_center:  # the mean of the training captions' text vectors, stored with the model
        job.net.fit_text_mean(job.text.encode([c for caps in items.captions for c in caps]))
    if job.net.config.audio_tower:
        job.net.audio_backbone.frontend.masks = audio_aug_masks(job.policy)


def _build_data(job: _Job) -> None:
    """The caption bank and one loader per modality, with the encoder each loader's batches go through; frozen
    pretrained image backbones are run once per image and view (and per clip frame)."""
    import torch

    from mmretrieval.models.dual_encoder import eval_transform, train_transform
    from mmretrieval.training import data

    net, items, p, device = job.net, job.items, job.params.train, job.device
    job.captions = data.CaptionBank(items.captions, job.text, device)
    job.label_ids = torch.tensor(items.label_ids(), device=device)
    job.gen = torch.Generator()
    for modality in items.present:
        members = items.members(modality)
        if modality == Modality.IMAGE.value and net.image_frozen:
            mirror = bool(job.policy.get("image", {}).get("horizontal_flip"))
            feats = data.cached_image_features(net, items, members, job.clean_dir, eval_transform(net.config), mirror,
                                               device, job.layout.item_cache, job.features)
            dataset_ = data.FeatureDataset(feats, members, items.captions, p.caption_draws)
            workers, job.encoders[modality] = 0, net.project_image
            members = dataset_.members  # an item with several captions may be drawn several times
        elif modality == Modality.VIDEO.value and net.image_frozen:  # K frames per clip through the backbone, once
            feats, waves, audio = data.cached_video_features(net, items, members, job.clean_dir, device,
                                                             cache_root=job.layout.item_cache, counts=job.features)
            dataset_, workers = data.VideoFeatureDataset(feats, waves, audio, members, items.captions,
                                                          p.caption_draws), 0
            job.encoders[modality] = lambda b: net.project_video(b.pixels, b.wave, b.audio)  # audio tracks fused
            members = dataset_.members
        else:  # decoded while training: the bytes are checked first
            verify_files([job.clean_dir / items.media[i] for i in members], [items.digest(i) for i in members],
                         f"train {job.dataset} {modality} byte check")
            transform = train_transform(net.config, job.policy.get("image", {}))
            dataset_ = data.MediaDataset(items, members, job.clean_dir, net.config, transform,
                                         job.policy.get("audio", {}), p.seed)
            workers, job.encoders[modality] = p.num_workers, (lambda m: lambda b: net.encode(m, b))(modality)
        job.loaders[modality] = data.loader(dataset_, items, members, p, job.gen, workers)


def _build_validation(job: _Job) -> None:
    """The validator over the clean validation split (none without validation rows); says when there are too few
    validation items for it to pick the kept epoch."""
    from mmretrieval.training.loop import Validator

    p, val = job.params.train, job.val_frame
    media = val["media"].tolist()
    verify_files([job.clean_dir / m if isinstance(m, str) and m else job.clean_dir for m in media], recorded(val),
                 f"train {job.dataset} validation byte check")
    job.validator = Validator(job.net, job.text, val, job.clean_dir, job.params.index, job.device,
                              job.params.gate.metric) if len(val) else None
    if len(val) and len(val) < p.min_val_items:
        log.info("train %s: %d validation items < train.min_val_items (%d): validation metrics are logged, the "
                 "epoch with the lowest training loss is kept", job.dataset, len(val), p.min_val_items)


def _train(job: _Job, ckpt: Checkpoint, code_version: str) -> tuple[EpochSelector, list[dict[str, float]], str]:
    """The epochs in an MLflow run (resuming a killed run of the same job from ``ckpt``), then the kept epoch's
    weights logged as the run's model. Returns the epoch selector, the per-epoch records and the run id."""
    from mmretrieval.core.progress import progress
    from mmretrieval.models.dual_encoder import RetrievalModel

    p, net = job.params.train, job.net
    selector, best_state, history, run_id, first_epoch = EpochSelector(p.patience), {}, [], None, 1
    if ckpt.exists():
        best_state, meta = ckpt.load(net, job.opt, job.sched, job.device)
        selector = EpochSelector.from_state(meta["selector"])
        first_epoch, history, run_id = meta["epoch"] + 1, meta["history"], meta["run_id"]
        log.info("train %s: resuming run %s after epoch %d from %s", job.dataset, run_id, meta["epoch"], ckpt.folder)
    tags = {"dataset": job.dataset, "data_version": job.data_version, "git_sha": code_version,
            "stage": "train", "device": job.device, "fingerprint": ckpt.folder.name}
    with tracking.start_run(job.settings, job.dataset, run_name=f"train-{job.dataset}", tags=tags,
                            run_id=run_id) as mlrun:
        if run_id is None:
            _log_inputs(job)
        epochs = progress(range(first_epoch, p.epochs + 1), f"train {job.dataset}", unit="epochs", every=0)
        select_on_val = len(job.val_frame) >= p.min_val_items
        for epoch in epochs:
            record = _epoch(job, epoch)
            history.append(record)
            tracking.log_metrics({k.replace("@", "_at_"): v for k, v in record.items()}, step=epoch)
            resolved = job.validator.primary_metric if job.validator else None
            val_value = record.get(f"val_{resolved}") if resolved else None
            if selector.update(epoch, val_value if select_on_val else None, record["loss"]):
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            ckpt.save(net, best_state, job.opt, job.sched, {"epoch": epoch, "selector": selector.state(),
                                                            "history": history, "run_id": mlrun.info.run_id})
            log.info("train %s epoch %d/%d: loss %.4f, val %s %s", job.dataset, epoch, p.epochs, record["loss"],
                     resolved or job.params.gate.metric, f"{val_value:.4f}" if val_value is not None else
                     "n/a (no validation items)" if not len(job.val_frame) else "n/a")
            if selector.should_stop:
                log.info("train %s: early stop after epoch %d (no better val %s for %d epochs)", job.dataset, epoch,
                         job.params.gate.metric, selector.stale)
                break
        net.load_state_dict(best_state)
        tracking.log_metrics({"best_epoch": selector.best_epoch, "epochs_run": len(history),
                              "train_seconds": time.monotonic() - job.started})
        pyfunc.log_model(RetrievalModel(net, job.text, job.device))
        run_id = mlrun.info.run_id
    return selector, history, run_id


def _log_inputs(job: _Job) -> None:
    """A new run's params, augmentation policy, training manifest (``mlflow.log_input``) and data docs page."""
    tracking.log_params({k: str(v)[:500] for k, v in job.params.as_flat_dict().items()})
    tracking.log_params({"train_items": len(job.items), "val_items": int(len(job.val_frame)),
                         "captions": len(job.captions),
                         "image_weights_source": job.net.config.image_weights_source or "none"})
    tracking.log_dict(job.policy, "augmentation_policy.json")
    tracking.log_dataset(job.dataset, job.data_version, job.layout.training_manifest, job.train_frame)
    with tempfile.TemporaryDirectory() as tmp:  # what train.when compares the next data version with
        kept = policy.log_record(job.record, Path(tmp))
        tracking.log_params(kept["params"])
        tracking.set_tags(kept["tags"])
        tracking.log_artifact(kept["path"], str(Path(policy.ITEMS_ARTIFACT).parent))
    if job.layout.data_docs.is_file():  # the validation's data docs page, viewable in the run's artifacts
        tracking.log_artifact(job.layout.data_docs, "data_docs")


def _epoch(job: _Job, epoch: int) -> dict[str, float]:
    """One training pass and, with a validator, validation: the epoch's record (loss, lr, temperature, throughput,
    ``val_*`` metrics without chance levels). Each epoch's order and captions depend only on (seed, epoch)."""
    import torch

    from mmretrieval.core.progress import progress
    from mmretrieval.models.losses import symmetric_info_nce, triplet_hardest
    from mmretrieval.training import data
    from mmretrieval.training.loop import train_one_epoch

    p, net = job.params.train, job.net

    def loss_fn(item_vecs: torch.Tensor, text_vecs: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
        if p.loss == "infonce":
            return symmetric_info_nce(item_vecs, text_vecs, net.logit_scale, positives)
        return triplet_hardest(item_vecs, text_vecs, positives, p.margin)

    job.gen.manual_seed(p.seed * 100_003 + epoch)
    torch.manual_seed(p.seed * 100_003 + epoch)
    batches = progress(data.round_robin(job.loaders), f"train {job.dataset} epoch {epoch}",
                       total=sum(len(dl) for dl in job.loaders.values()), unit="batches")
    stats = train_one_epoch(net, batches, job.encoders, job.captions, job.label_ids, loss_fn,
                            job.opt, job.sched, p.grad_clip, random.Random(p.seed * 100_003 + epoch), epoch,
                            job.device)
    record = {"loss": stats.loss, "lr": float(job.sched.get_last_lr()[0]),
              "temperature": float(1 / net.logit_scale.exp().item()),
              "train_samples_per_s": stats.samples / max(stats.seconds, 1e-9)}
    if job.validator:
        record |= {f"val_{k}": v for k, v in job.validator(net).items() if not k.endswith("_chance")}
    return record

