"""The generated temporal benchmark: moving handwritten digits, mean pooling vs the attention temporal module.

    .venv/bin/python bench/video_temporal.py --train-digits 60 --test-digits 30 --epochs 40 100

Clips come from scikit-learn's bundled ``load_digits`` (``mmretrieval.demo.moving_digits``): each digit image moves up,
down, left and right (four clips, captions "a seven moving up"); train and test use disjoint digit images. The
clips are written as real H.264 MP4 files and read back by seeking (K frames, ``model.video_frames``); the frames go
through the frozen pretrained image tower once, and both poolings train on those cached features with the
pipeline's own pieces (``training.data.FeatureDataset``, ``training.loop.train_one_epoch``, the InfoNCE loss, the
same schedule), then are scored with ``evaluate.metrics_from_vectors`` (t2v/v2t, with chance levels).

A clip played backwards holds the same frames, so mean pooling gives "up" and "down" (and "left" and "right") the
same vector: at best it finds the digit and the axis, i.e. text -> video hit_rate@1 of about 0.5 (the
direction-blind ceiling; exactly 0.5 in expectation when ties are broken at random, which the shuffled gallery does).
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import time
from pathlib import Path

import numpy as np


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--train-digits", type=int, default=60, help="digit images for training (x4 clips)")
    ap.add_argument("--test-digits", type=int, default=30, help="other digit images for testing (x4 clips)")
    ap.add_argument("--epochs", type=int, nargs="+", default=[40], help="one result per value (features computed once)")
    ap.add_argument("--frames", type=int, default=8, help="K")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--model", default="{}", help='JSON overrides of params.yaml\'s model section, e.g. '
                    '\'{"image_dropout": 0.0}\'')
    ap.add_argument("--pools", nargs="+", default=["mean", "attention"])
    ap.add_argument("--work", type=Path)
    args = ap.parse_args()


    import torch

    from mmretrieval.core.settings import get_settings
    from mmretrieval.demo.moving_digits import digit_images, write_clips
    from mmretrieval.evaluation.evaluator import metrics_from_vectors
    from mmretrieval.evaluation.metrics import build_eval_set
    from mmretrieval.models.dual_encoder import build
    from mmretrieval.models.losses import symmetric_info_nce
    from mmretrieval.models.towers import TextEncoder
    from mmretrieval.stages.train import model_config, param_groups
    from mmretrieval.training import data
    from mmretrieval.training.loop import train_one_epoch
    from mmretrieval.training.schedule import warmup_cosine

    work = args.work or Path(tempfile.mkdtemp(prefix="mmr-temporal-"))
    s = get_settings(work)
    caches = {"train": work / f"features-train-{args.test_digits}-{args.train_digits}-{args.frames}-{args.seed}.pt",
              "test": work / f"features-test-{args.test_digits}-{args.frames}-{args.seed}.pt"}
    images, targets = digit_images()
    order = np.random.default_rng(args.seed).permutation(len(images))
    test_idx, train_idx = order[:args.test_digits], order[args.test_digits:args.test_digits + args.train_digits]
    started = time.monotonic()
    train_rows = write_clips(work / "train", images, targets, train_idx, frames=16, size=64)
    test_rows = write_clips(work / "test", images, targets, test_idx, frames=16, size=64)  # same bytes on a rerun
    random.Random(args.seed).shuffle(test_rows)  # ties (mean pooling) fall in random order
    write_s = time.monotonic() - started

    text = TextEncoder(s.params.model.text_model)
    results: dict[str, dict[str, float]] = {}
    feats: dict[str, torch.Tensor] = {k: torch.load(c) for k, c in caches.items() if c.is_file()}
    for epochs, pool in [(e, pool) for e in args.epochs for pool in args.pools]:
        p = s.params.train.model_copy(update={"epochs": epochs, "seed": args.seed})
        torch.manual_seed(args.seed)
        mp = s.params.model.model_copy(update={"video_pool": pool, "video_frames": args.frames,
                                               **json.loads(args.model)})
        net = build(model_config(mp, text.dim, ["video"]), text=text)
        sets = {}
        for name, rows in (("train", train_rows), ("test", test_rows)):
            items = data.TrainItems([r["id"] for r in rows], ["video"] * len(rows), [r["path"] for r in rows],
                                    [[r["text"]] for r in rows], [""] * len(rows), [False] * len(rows))
            if name not in feats:
                t0 = time.monotonic()
                feats[name] = data.cached_video_features(net, items, list(range(len(rows))), work, "cpu")[0]
                results.setdefault("_timing", {})[f"{name}_features_s"] = round(time.monotonic() - t0, 1)
                torch.save(feats[name], caches[name])
            sets[name] = items
        items, members = sets["train"], list(range(len(train_rows)))
        captions = data.CaptionBank(items.captions, text, "cpu")
        gen = torch.Generator()
        dataset = data.FeatureDataset(feats["train"], members, items.captions)
        loaders = {"video": data.loader(dataset, items, dataset.members, p, gen, 0)}
        opt = torch.optim.AdamW(param_groups(net, p.lr, p.tuned_lr), weight_decay=p.weight_decay)
        sched = warmup_cosine(opt, p.epochs * len(loaders["video"]))
        label_ids = torch.full((len(items),), -1)
        t0 = time.monotonic()
        for epoch in range(1, p.epochs + 1):
            gen.manual_seed(p.seed * 100_003 + epoch)
            train_one_epoch(net, data.round_robin(loaders), {"video": net.project_video}, captions, label_ids,
                            lambda v, t, pos, net=net: symmetric_info_nce(v, t, net.logit_scale, pos), opt, sched,
                            p.grad_clip, random.Random(epoch), epoch, "cpu")
        train_s = time.monotonic() - t0
        net.eval()
        test = sets["test"]
        eval_set = build_eval_set(test.ids, test.captions, test.labels)
        with torch.no_grad():
            vids = net.project_video(feats["test"][0]).numpy()
            texts = net.project_text(text.encode(eval_set.captions)).numpy()
        metrics, _, _ = metrics_from_vectors(texts, vids, eval_set, "video")
        key = f"{pool}, {epochs} epochs"
        results[key] = {k: round(v, 4) for k, v in metrics.items()
                        if k.split("_", 1)[1] in ("hit_rate@1", "hit_rate@1_chance", "hit_rate@5", "mrr", "queries")}
        results[key]["train_seconds"] = round(train_s, 1)
        top = (texts @ vids.T).argmax(axis=1)  # each caption's first clip: right, wrong direction or wrong digit
        found = [test.captions[j][0] for j in top]
        results[key]["t2v_top1_wrong_direction"] = sum(f != q and f.split()[1] == q.split()[1]
                                                       for f, q in zip(found, eval_set.captions, strict=True))
        results[key]["t2v_top1_wrong_digit"] = sum(f.split()[1] != q.split()[1]
                                                   for f, q in zip(found, eval_set.captions, strict=True))
        with torch.no_grad():
            train_vids = net.project_video(feats["train"][0]).numpy()
            train_set = build_eval_set(items.ids, items.captions, items.labels)
            train_texts = net.project_text(text.encode(train_set.captions)).numpy()
        fit, _, _ = metrics_from_vectors(train_texts, train_vids, train_set, "video")
        results[key]["train_t2v_hit_rate@1"] = round(fit["t2v_hit_rate@1"], 4)
        print(key, results[key], flush=True)
    results["_setup"] = {"train_clips": len(train_rows), "test_clips": len(test_rows), "K": args.frames,
                         "backbone": s.params.model.image_backbone, "model_overrides": json.loads(args.model),
                         "write_clips_s": round(write_s, 1), "direction_blind_ceiling_t2v_hit_rate@1": 0.5}
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
