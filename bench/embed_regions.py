"""What a re-ranker's regions cost at embed time: vectors + regions from one tower pass vs two, in one run.

    MMR_HOME=<workspace whose champion has a re-ranker that passed its gate> .venv/bin/python bench/embed_regions.py \
        --dataset flickr [--items 128] [--version N]

Over the first ``--items`` clean images of the dataset, already decoded and preprocessed (so only the towers are
timed), three ways, each twice (the best kept):

* ``vectors``: what embed does without a re-ranker (``RetrievalModel.encode_pixels``);
* ``two_passes``: vectors, then the feature maps through the backbone again for the regions (embed before the
  seventh session: a second decode too, not counted here);
* ``one_pass``: the feature maps once, the vectors pooled from them and the regions projected from them
  (``RetrievalModel.item_maps`` / ``project_maps``, what embed does now).

Prints JSON: seconds and items/s of each, the ratios, and the largest difference between the one-pass and the
plain vectors (they must agree).
"""

from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--items", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--version", help="model version (default: the champion)")
    args = ap.parse_args()

    import numpy as np
    import torch

    from mmretrieval.backends import tracking
    from mmretrieval.core.layout import read_clean
    from mmretrieval.core.settings import get_settings
    from mmretrieval.media.image import open_image
    from mmretrieval.serving import loading
    from mmretrieval.serving.reranking import serving_reranker

    settings = get_settings()
    ref = (tracking.get_version(settings, settings.registered_model(args.dataset), args.version) if args.version
           else tracking.require_alias(settings, args.dataset, tracking.CHAMPION))
    model = loading.load_model(settings, ref, "cpu")
    net = serving_reranker(settings, ref)
    if net is None:
        raise SystemExit(f"{ref.uri} has no re-ranker that passed its gate: nothing to compare")
    source = read_clean(settings.layout(args.dataset))
    images = source.frame[source.frame["modality"] == "image"].head(args.items)
    pixels = torch.stack([model.transform(open_image(source.root / m)) for m in images["media"]])
    batches = [pixels[s:s + args.batch_size] for s in range(0, len(pixels), args.batch_size)]

    def vectors() -> np.ndarray:
        return np.concatenate([model.encode_pixels(b) for b in batches])

    def two_passes() -> np.ndarray:
        out = []
        for b in batches:
            out.append(model.encode_pixels(b))
            with torch.no_grad():
                net.project_regions(model.item_maps("image", b))
        return np.concatenate(out)

    def one_pass() -> np.ndarray:
        out = []
        for b in batches:
            maps = model.item_maps("image", b)
            out.append(model.project_maps("image", maps))
            with torch.no_grad():
                net.project_regions(maps)
        return np.concatenate(out)

    results: dict[str, float] = {}
    outputs: dict[str, np.ndarray] = {}
    for name, fn in (("vectors", vectors), ("two_passes", two_passes), ("one_pass", one_pass)):
        best = float("inf")
        for _ in range(2):
            t = time.perf_counter()
            outputs[name] = fn()
            best = min(best, time.perf_counter() - t)
        results[name] = best
    n = len(pixels)
    print(json.dumps({
        "dataset": args.dataset, "items": n, "threads": torch.get_num_threads(),
        "seconds": {k: round(v, 2) for k, v in results.items()},
        "items_per_s": {k: round(n / v, 1) for k, v in results.items()},
        "two_passes_over_one_pass": round(results["two_passes"] / results["one_pass"], 2),
        "one_pass_over_vectors": round(results["one_pass"] / results["vectors"], 2),
        "max_abs_vector_difference": float(np.abs(outputs["one_pass"] - outputs["vectors"]).max()),
    }, indent=1))


if __name__ == "__main__":
    main()
