import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from mmretrieval.media.dedup import MAX_COLOUR_DISTANCE, MIN_SIDE, ImageHash, Merge, dhash, find_duplicates
from mmretrieval.media.hamming import near_pairs


def picture(shift: int = 0, size: int = 64) -> Image.Image:
    im = Image.new("RGB", (size, size), (250, 250, 250))
    d = ImageDraw.Draw(im)
    d.rectangle([10 + shift, 10, 30 + shift, 50], fill=(20, 20, 200))
    d.ellipse([35, 5, 60, 30], fill=(200, 30, 30))
    return im


def test_resized_copy_is_a_near_duplicate_and_a_different_picture_is_not() -> None:
    original = picture()
    resized = original.resize((150, 150)).resize((67, 67))
    other = picture(shift=25).transpose(Image.Transpose.FLIP_TOP_BOTTOM)
    merges = find_duplicates(["h1", "h2", "h3"], [dhash(original), dhash(resized), dhash(other)], max_distance=4)
    assert [(m.index, m.into, m.reason) for m in merges] == [(1, 0, "near_duplicate")]


def test_exact_duplicates_merge_into_the_first_row_in_a_chain() -> None:
    merges = find_duplicates(["x", "y", "x", "x"], [None] * 4, max_distance=-1)
    assert [(m.index, m.into, m.reason, m.distance) for m in merges] == [
        (2, 0, "exact_duplicate", 0), (3, 0, "exact_duplicate", 0)]


def test_flat_images_of_different_colours_are_not_duplicates() -> None:
    red, blue = Image.new("RGB", (32, 32), (220, 20, 20)), Image.new("RGB", (32, 32), (20, 20, 220))
    assert find_duplicates(["a", "b"], [dhash(red), dhash(blue)], max_distance=4) == []


def test_near_duplicates_with_different_labels_or_tiny_images_are_kept_apart() -> None:
    a, b = dhash(picture()), dhash(picture().resize((67, 67)))
    assert find_duplicates(["x", "y"], [a, b], max_distance=4, labels=["cat", "dog"]) == []
    tiny = picture().resize((32, 32))
    assert find_duplicates(["x", "y"], [dhash(tiny), dhash(tiny.resize((31, 31)))], max_distance=4) == []


# --- the multi-index search gives the same groups as comparing every pair -----------------------------------------

def exhaustive(hashes: list[str], phashes: list[ImageHash | None], max_distance: int,
               labels: list[str] | None = None) -> list[Merge]:
    """The reference: today's all-pairs search (O(N^2)), kept here only to check the indexed one against it."""
    n = len(hashes)
    parent = list(range(n))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    def union(i: int, j: int) -> None:
        a, b = find(i), find(j)
        if a != b:
            parent[max(a, b)] = min(a, b)

    first: dict[str, int] = {}
    for i, h in enumerate(hashes):
        if h:
            if h in first:
                union(first[h], i)
            else:
                first[h] = i
    images = [i for i, p in enumerate(phashes) if p is not None and p.min_side >= MIN_SIDE]
    labs = np.array(list(labels) if labels is not None else [""] * n, dtype=object)
    if max_distance >= 0 and len(images) > 1:
        codes = np.array([phashes[i].bits for i in images], dtype=np.uint64)  # type: ignore[union-attr]
        colours = np.array([phashes[i].colour for i in images])  # type: ignore[union-attr]
        for a in range(len(images) - 1):
            x = np.bitwise_xor(codes[a + 1:], codes[a])
            dist = np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)
            close = np.linalg.norm(colours[a + 1:] - colours[a], axis=1) <= MAX_COLOUR_DISTANCE
            others = labs[images[a + 1:]]
            same_label = (others == labs[images[a]]) | (others == "") | (labs[images[a]] == "")
            for b in np.nonzero((dist <= max_distance) & close & same_label)[0]:
                union(images[a], images[a + 1 + int(b)])
    merges = []
    for i in range(n):
        root = find(i)
        if root != i:
            exact = bool(hashes[i]) and hashes[i] == hashes[root]
            pi, pr = phashes[i], phashes[root]
            dist = 0 if exact or pi is None or pr is None else bin(pi.bits ^ pr.bits).count("1")
            merges.append(Merge(i, root, "exact_duplicate" if exact else "near_duplicate", dist))
    return merges


def flip(rng: np.random.Generator, bits: int, count: int) -> int:
    for b in rng.choice(64, size=min(count, 64), replace=False).tolist():
        bits ^= 1 << b
    return bits


def planted(n: int, max_flips: int, seed: int, colour_spread: float = 30.0
            ) -> tuple[list[str], list[ImageHash | None], list[str]]:
    """``n`` rows: random hashes, each followed by variants at 0..``max_flips`` bits with nearby or far colours,
    mixed labels, a few exact copies, missing hashes and small images."""
    rng = np.random.default_rng(seed)
    hashes: list[str] = []
    phashes: list[ImageHash | None] = []
    labels: list[str] = []
    while len(hashes) < n:
        base = int(rng.integers(0, 2**63)) * 2 + int(rng.integers(0, 2))
        colour = rng.uniform(0, 255, size=3)
        for _ in range(int(rng.integers(1, 5))):
            bits = flip(rng, base, int(rng.integers(0, max_flips + 1)))
            c = np.clip(colour + rng.normal(0, colour_spread / 2, size=3), 0, 255)
            side = int(rng.choice([32, 64, 256], p=[0.05, 0.05, 0.9]))
            kind = rng.random()
            phashes.append(None if kind < 0.03 else ImageHash(bits, (float(c[0]), float(c[1]), float(c[2])), side))
            hashes.append(hashes[int(rng.integers(0, len(hashes)))] if kind > 0.97 and hashes else f"h{len(hashes)}")
            labels.append(str(rng.choice(["", "", "cat", "dog"])))
    return hashes[:n], phashes[:n], labels[:n]


@pytest.mark.parametrize("max_distance", [-1, 0, 1, 4, 9, 16, 64])
def test_indexed_search_merges_exactly_like_all_pairs_on_planted_near_duplicates(max_distance: int) -> None:
    hashes, phashes, labels = planted(1000, max_flips=max(0, max_distance) + 3, seed=max_distance + 10)
    want = exhaustive(hashes, phashes, max_distance, labels)
    assert want  # the planted set has duplicates to find
    assert find_duplicates(hashes, phashes, max_distance, labels) == want
    assert find_duplicates(hashes, phashes, max_distance) == exhaustive(hashes, phashes, max_distance)


def test_thousands_of_equal_hashes_flat_pictures_merge_exactly_like_all_pairs() -> None:
    """Flat pictures all hash to 0: big groups of equal bits, compared through the colour grid."""
    rng = np.random.default_rng(3)
    n = 3000
    bits = [0 if k % 3 else 1 << int(rng.integers(0, 64)) for k in range(n)]
    colours = rng.uniform(0, 255, size=(n, 3))  # many colour cells, neighbours near the 24 boundary
    colours[:400] = rng.normal(250, 3, size=(400, 3)).clip(0, 255)  # white pages: big cells
    colours[600:900] = rng.uniform(140, 240, size=(300, 3))
    colours[601:900:2] = colours[600:900:2] - 14.2  # pairs just over 24 apart (24.6), often in one coarse cell
    phashes: list[ImageHash | None] = [ImageHash(b, (float(c[0]), float(c[1]), float(c[2])), 128)
                                       for b, c in zip(bits, colours, strict=True)]
    labels = [str(rng.choice(["", "a", "b", "c"], p=[0.01, 0.33, 0.33, 0.33])) for _ in range(n)]
    labels[600:900] = ["z"] * 300
    hashes = [f"h{k}" for k in range(n)]
    for d in (0, 1):
        want = exhaustive(hashes, phashes, d, labels)
        assert len({m.into for m in want}) > 3  # several groups, not one
        assert find_duplicates(hashes, phashes, d, labels) == want


def test_indexed_search_matches_all_pairs_on_the_demo_images(tmp_path: Path) -> None:
    """The bundled demo sample, plus resized, cropped and tinted copies of its photos (real near-duplicates)."""
    from PIL import ImageEnhance

    from mmretrieval.demo.sample import build

    build(tmp_path, digits_per_class=10)
    rows = list(csv.DictReader(open(tmp_path / "manifest.csv", encoding="utf-8")))
    images = [(r, Image.open(tmp_path / r["path"]).convert("RGB")) for r in rows if r["modality"] == "image"]
    variants = []
    for r, im in images:
        if min(im.size) >= MIN_SIDE:
            w, h = im.size
            variants += [(r, im.resize((w // 2, h // 2))), (r, im.crop((4, 4, w - 4, h - 4))),
                         (r, ImageEnhance.Brightness(im).enhance(1.15)), (r, ImageEnhance.Contrast(im).enhance(0.7))]
    everything = images + variants
    phashes: list[ImageHash | None] = [dhash(im) for _, im in everything]
    hashes = [f"{r['id']}#{k}" for k, (r, _) in enumerate(everything)]
    labels = [r["label"] for r, _ in everything]
    for d in (0, 4, 10, 20):
        want = exhaustive(hashes, phashes, d, labels)
        assert find_duplicates(hashes, phashes, d, labels) == want
    assert len(exhaustive(hashes, phashes, 10, labels)) >= len(variants) // 2  # the copies are found


def test_indexed_search_matches_all_pairs_on_ten_thousand_images() -> None:
    hashes, phashes, labels = planted(10_000, max_flips=6, seed=7)
    want = exhaustive(hashes, phashes, 4, labels)
    assert len(want) > 1000
    assert find_duplicates(hashes, phashes, 4, labels) == want


def test_edge_cases_empty_single_and_out_of_range_distances() -> None:
    assert find_duplicates([], [], 4) == []
    one = ImageHash(5, (1.0, 2.0, 3.0), 100)
    assert find_duplicates(["a"], [one], 4) == []
    same = [ImageHash(5, (1.0, 2.0, 3.0), 100), ImageHash(5, (1.0, 2.0, 3.0), 100)]
    assert find_duplicates(["a", "b"], same, 0) == [Merge(1, 0, "near_duplicate", 0)]
    assert find_duplicates(["a", "b"], same, -1) == []
    far = [ImageHash(0, (0.0, 0.0, 0.0), 100), ImageHash(2**64 - 1, (0.0, 0.0, 0.0), 100)]
    assert find_duplicates(["a", "b"], far, 63) == []
    assert find_duplicates(["a", "b"], far, 64) == [Merge(1, 0, "near_duplicate", 64)]
    assert find_duplicates(["a", "b"], far, 99) == exhaustive(["a", "b"], list(far), 99)


@pytest.mark.parametrize("max_distance", [0, 1, 3, 4, 8, 20, 64])
def test_near_pairs_finds_every_pair_within_the_distance_once(max_distance: int) -> None:
    rng = np.random.default_rng(max_distance)
    base = [int(rng.integers(0, 2**63)) * 2 + 1 for _ in range(300)]
    codes = np.unique(np.array(base + [flip(rng, b, int(rng.integers(0, max_distance + 3))) for b in base],
                               dtype=np.uint64))
    i, j = near_pairs(codes, max_distance)
    dist = np.bitwise_count(codes[:, None] ^ codes[None, :])
    want = set(zip(*np.nonzero(np.triu(dist <= max_distance, 1)), strict=True))
    assert len(want) > 0 or max_distance == 0
    assert len(i) == len(want) and set(zip(i.tolist(), j.tolist(), strict=True)) == want
    with pytest.raises(ValueError, match="65"):
        near_pairs(codes, 65)
    assert [len(x) for x in near_pairs(codes[:1], max_distance) + near_pairs(codes[:0], max_distance)] == [0] * 4
