"""Stage ``train``: the dual encoder on the augmented training split, logged to MLflow and registered.

The text tower is frozen, so every caption is encoded once and training runs the image tower and both projection
heads. Each epoch is scored on the validation split and the best epoch's weights are kept. The new version gets the
``challenger`` alias; ``evaluate`` and ``promote`` decide whether it serves.
"""

from __future__ import annotations

import logging
import math
import random
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from mmretrieval import tracking
from mmretrieval.config import Settings, get_settings
from mmretrieval.errors import TrainingError
from mmretrieval.io import read_json, read_parquet
from mmretrieval.schema import Modality, Split

log = logging.getLogger(__name__)


def _items(frame: Any) -> tuple[list[str], list[str], list[list[str]], list[str]]:
    from mmretrieval.evaluate import captions_of

    ids, media, caps, labels = [], [], [], []
    for _, row in frame[frame["modality"] == Modality.IMAGE.value].iterrows():
        c = captions_of(row)
        if c:
            ids.append(row["id"])
            media.append(row["media"])
            caps.append(c)
            labels.append(str(row["label"]))
    return ids, media, caps, labels


def run(dataset: str, settings: Settings | None = None) -> dict[str, Any]:
    import torch
    from torch.utils.data import DataLoader, Dataset
    from tqdm import tqdm

    from mmretrieval.evaluate import score
    from mmretrieval.models.dual_encoder import ModelConfig, RetrievalModel, build, pick_device, train_transform
    from mmretrieval.models.losses import symmetric_info_nce
    from mmretrieval.models.towers import TextEncoder

    settings = settings or get_settings()
    params = settings.params_for(dataset)
    p, mp = params.train, params.model
    started = time.monotonic()
    aug_dir, clean_dir = settings.stage_dir("augmented", dataset), settings.stage_dir("clean", dataset)
    train_frame = read_parquet(aug_dir / "manifest.parquet", f"augmented training split of {dataset!r}")
    policy = read_json(aug_dir / "policy.json", "augmentation policy")
    clean = read_parquet(clean_dir / "manifest.parquet", f"clean manifest of {dataset!r}")
    val_frame = clean[clean["split"] == Split.VAL.value]
    ids, media, caps, labels = _items(train_frame)
    if len(ids) < 2:
        raise TrainingError(f"the train split of {dataset!r} has {len(ids)} image item(s) with captions or labels; "
                            "need at least 2 (check split ratios and the quarantine)")

    random.seed(p.seed)
    np.random.seed(p.seed)
    torch.manual_seed(p.seed)
    device = pick_device(settings.device)
    text = TextEncoder(mp.text_model, device=device)
    config = ModelConfig(text_model=mp.text_model, text_dim=text.dim, image_backbone=mp.image_backbone,
                         image_size=mp.image_size, embed_dim=mp.embed_dim, init_temperature=mp.init_temperature)
    net = build(config, mp.image_weights).to(device)

    vocab = sorted({c for cs in caps for c in cs})
    cap_index = {c: i for i, c in enumerate(vocab)}
    text_feats = text.encode(vocab).to(device)  # (V, text_dim), frozen tower: once
    label_index = {lab: k for k, lab in enumerate(sorted(set(labels) - {""}))}
    label_ids = torch.tensor([label_index.get(lab, -1) for lab in labels], device=device)  # -1: no label

    transform = train_transform(config, policy.get("image", {}))

    class Images(Dataset):  # type: ignore[type-arg]
        def __init__(self) -> None:
            self.cache: dict[int, Any] = {}

        def __len__(self) -> int:
            return len(ids)

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            from mmretrieval.media import open_image

            if i not in self.cache:
                self.cache[i] = open_image(clean_dir / media[i])
            return transform(self.cache[i]), i

    gen = torch.Generator().manual_seed(p.seed)
    sampler = None
    if p.balance_labels and label_index:
        # every label class weighs as much as one unlabelled item, so a few captioned photos are not drowned
        # by thousands of class-labelled items (and classes are balanced among themselves)
        counts = {lab: labels.count(lab) for lab in label_index}
        weights = [1.0 / counts[lab] if lab else 1.0 for lab in labels]
        sampler = torch.utils.data.WeightedRandomSampler(weights, num_samples=len(ids), generator=gen)
    loader = DataLoader(Images(), batch_size=min(p.batch_size, len(ids)), shuffle=sampler is None,
                        sampler=sampler, generator=gen if sampler is None else None,
                        drop_last=len(ids) > p.batch_size, num_workers=p.num_workers,
                        persistent_workers=p.num_workers > 0)
    opt = torch.optim.AdamW([q for q in net.parameters() if q.requires_grad], lr=p.lr, weight_decay=p.weight_decay)
    total = max(1, p.epochs * len(loader))
    warmup = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    rng = random.Random(p.seed)
    gate_metric = params.gate.metric
    best: tuple[tuple[float, float], int, dict[str, Any]] | None = None
    history: list[dict[str, float]] = []
    tags = {"dataset": dataset, "data_version": str(policy["data_version"]), "git_sha": tracking.git_sha(Path.cwd()),
            "stage": "train", "device": device}

    with tracking.start_run(settings, dataset, run_name=f"train-{dataset}", tags=tags) as mlrun:
        import mlflow

        mlflow.log_params({k: str(v)[:500] for k, v in params.as_flat_dict().items()})
        mlflow.log_params({"train_items": len(ids), "val_items": int(len(val_frame)), "captions": len(vocab)})
        mlflow.log_dict(policy, "augmentation_policy.json")
        bar = tqdm(range(1, p.epochs + 1), desc=f"train {dataset}", unit="epoch")
        for epoch in bar:
            net.train()
            losses = []
            for pixels, idx in loader:
                chosen = [cap_index[rng.choice(caps[i])] for i in idx.tolist()]
                cap_t = torch.tensor(chosen, device=device)
                lab = label_ids[idx.to(device)]
                positives = (cap_t[:, None] == cap_t[None, :]) | ((lab[:, None] == lab[None, :]) & (lab[:, None] >= 0))
                with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device == "cuda"):
                    img = net.encode_image(pixels.to(device, non_blocking=True))
                    txt = net.project_text(text_feats[cap_t])
                    loss = symmetric_info_nce(img.float(), txt.float(), net.logit_scale, positives)
                if not torch.isfinite(loss):
                    raise TrainingError(f"loss became {loss.item()} at epoch {epoch}: lower train.lr "
                                        f"(now {p.lr}) or check the data; nothing was registered")
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(net.parameters(), p.grad_clip)
                opt.step()
                sched.step()
                losses.append(float(loss.item()))
            record = {"loss": float(np.mean(losses)), "lr": float(sched.get_last_lr()[0]),
                      "temperature": float(1 / net.logit_scale.exp().item())}
            if len(val_frame):
                try:
                    val = score(RetrievalModel(net, text, device), val_frame, clean_dir, "media")
                    record |= {f"val_{k}": v for k, v in val.items() if "@" in k or "rank" in k}
                except TrainingError:
                    pass  # fewer than two usable validation items: select on loss
            history.append(record)
            mlflow.log_metrics({k.replace("@", "_at_"): v for k, v in record.items()}, step=epoch)
            # select on the validation gate metric; ties (small val sets saturate) go to the lower training loss
            key = (record.get(f"val_{gate_metric}", 0.0), -record["loss"])
            if best is None or key > best[0]:
                best = (key, epoch, {k: v.detach().clone() for k, v in net.state_dict().items()})
            bar.set_postfix(loss=f"{record['loss']:.3f}", val=f"{record.get(f'val_{gate_metric}', float('nan')):.3f}")
        assert best is not None
        net.load_state_dict(best[2])
        mlflow.log_metrics({"best_epoch": best[1], "train_seconds": time.monotonic() - started})
        with tempfile.TemporaryDirectory() as tmp:
            RetrievalModel(net, text, device).save(Path(tmp))
            mlflow.log_artifacts(tmp, artifact_path=tracking.MODEL_ARTIFACT)
        run_id = mlrun.info.run_id
    ref = tracking.register(settings, dataset, run_id)
    tracking.tag_version(settings, ref, {"data_version": tags["data_version"], "git_sha": tags["git_sha"]})
    tracking.set_alias(settings, dataset, tracking.CHALLENGER, ref.version)
    final = history[best[1] - 1]
    log.info("train %s: registered %s v%s (best epoch %d)", dataset, ref.name, ref.version, best[1])
    return {"dataset": dataset, "data_version": tags["data_version"], "run_id": run_id, "model": ref.name,
            "model_version": ref.version, "best_epoch": best[1], "epochs": p.epochs,
            "metrics": {k: round(v, 4) for k, v in final.items()}, "seconds": round(time.monotonic() - started, 1)}
