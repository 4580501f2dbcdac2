"""Training throughput vs the raw model: samples/s of the training loop (loading, augmentation, caption sampling,
loss, optimiser) against forward+backward+step of the same model on ready tensors, same batch size, same process.

    MMR_HOME=<workspace with an augmented dataset> .venv/bin/python bench/train_throughput.py --dataset flickr
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--epochs", type=int, default=2)
    args = ap.parse_args()


    import torch

    from mmretrieval.core.settings import get_settings
    from mmretrieval.models.dual_encoder import ModelConfig, build
    from mmretrieval.models.losses import symmetric_info_nce
    from mmretrieval.stages import train

    s = get_settings()
    p = s.params_for(args.dataset)
    over = p.model_copy(update={"train": p.train.model_copy(update={"epochs": args.epochs}), "overrides": {}})
    s = s.model_copy(update={"params": over})
    result = train.run(args.dataset, s)
    pipeline = result["metrics"]["train_samples_per_s"]

    mp, bs = p.model, p.train.batch_size
    net = build(ModelConfig(text_model=mp.text_model, text_dim=384, image_backbone=mp.image_backbone,
                            image_size=mp.image_size, embed_dim=mp.embed_dim or 384))
    opt = torch.optim.AdamW(net.parameters(), lr=p.train.lr)
    pixels, text = torch.randn(bs, 3, mp.image_size, mp.image_size), torch.randn(bs, 384)
    positives = torch.eye(bs, dtype=torch.bool)
    steps = 10
    for i in range(steps + 2):
        if i == 2:  # two warm-up steps
            start = time.perf_counter()
        loss = symmetric_info_nce(net.encode_image(pixels), net.project_text(text), net.logit_scale, positives)
        opt.zero_grad()
        loss.backward()
        opt.step()
    raw = steps * bs / (time.perf_counter() - start)
    print(json.dumps({"dataset": args.dataset, "batch_size": bs, "image_size": mp.image_size,
                      "pipeline_samples_per_s": round(pipeline, 1), "raw_fwd_bwd_samples_per_s": round(raw, 1),
                      "ratio": round(pipeline / raw, 3)}, indent=1))


if __name__ == "__main__":
    main()
