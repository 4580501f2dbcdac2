from PIL import Image, ImageDraw

from mmretrieval.media.dedup import dhash, find_duplicates


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
