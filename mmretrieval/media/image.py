"""Images: the one decoder and the image checks shared by validation, cleaning, training, evaluation, embedding
and querying.

:func:`open_image` is the one image decoder: every entry point (validate, clean, train, evaluate, embed, the CLI
query, :meth:`RetrievalClient.search <mmretrieval.serving.client.RetrievalClient.search>` with a path, bytes or a PIL
image,
and the HTTP upload) goes through it, so the same file gives the same pixels everywhere.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from mmretrieval.core.errors import MediaError
from mmretrieval.core.params import MAX_IMAGE_PIXELS
from mmretrieval.media.files import Problem, decoder_message, size_problem

if TYPE_CHECKING:
    from PIL import Image

    from mmretrieval.core.params import ValidateParams

MAX_IMAGE_SIDE = 65_535  # the largest side any common format (JPEG, WebP) can declare; longer sides are refused
FLAT_STD = 1.0  # a decoded image whose pixel standard deviation (0-255 scale) is below this counts as constant
CLIPPED_SHARE = 0.5  # ... as does a float image with more than this share of its samples outside 0.0..1.0
# Pillow modes whose samples are wider than 8 bits, scaled by the mode's range: 16-bit unsigned, 32-bit int, float
DEEP_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")
ALPHA_MODES = ("RGBA", "LA", "PA", "La", "RGBa")
TRUE_COLOUR = ("CMYK", "YCbCr", "LAB", "HSV")
UINT16_MAX = 65_535
ORIENTATION = 0x0112  # the EXIF orientation tag
INT32_MIN, INT32_SPAN = -(2**31), 2**32 - 1
BLANK_STD = 2.0  # a decoded picture whose every RGB channel has a standard deviation (0-255) below this is blank
SAMPLED_FRAMES = 16  # frames of an animation compared to choose the one that represents it
FRAME_PIXEL_BUDGET = 160_000_000  # pixels (frames x width x height) decoded at most to choose that frame
ANIMATED_FORMATS = ("GIF", "PNG", "WEBP")  # GIF, APNG and animated WebP; other multi-frame files keep frame 0


class BlankImage(MediaError):
    """A picture that decodes to a constant or near-constant image (``reason`` ``blank_image``)."""

    reason = "blank_image"


@dataclass(frozen=True)
class Decoded:
    """An image decoded by :func:`decode_image`: the RGB result and whether decoding flattened a varied source."""

    image: Image.Image  # mode RGB, EXIF orientation applied, transparency composited on white
    flattened: bool  # the result is (near) constant although the source's samples vary
    source: str  # the source's mode and sample range, for messages (e.g. "I;16B 0..4095")
    frame: int = 0  # the frame decoded (an animation's representative frame, see :func:`representative_frame`)
    frames: int = 1  # frames in the file


def open_image(source: Path | str | bytes | Image.Image, max_pixels: int = MAX_IMAGE_PIXELS,
               max_side: int | None = None) -> Image.Image:
    """The one image decoder: a file path, raw bytes (an upload) or a PIL image -> an RGB image (H x W x 3, uint8).

    The header's size is checked before any pixel is decoded: each side must be 1..:data:`MAX_IMAGE_SIDE` and
    width x height at most ``max_pixels`` (PIL's process-wide ``Image.MAX_IMAGE_PIXELS`` is neither used nor
    changed). Then: of an animation (GIF, APNG, animated WebP) the frame that represents it
    (:func:`representative_frame`; never an APNG's default image that is not part of the animation), of another
    multi-frame file the first frame; EXIF orientation applied, every Pillow mode converted
    by its range (``1``, ``L``, ``P``, ``RGB``, ``CMYK``, ``YCbCr``: as Pillow converts them; ``I;16``/``I;16B``/
    ``I;16L``: 0..65535; ``I``: 0..65535 when every sample fits, else the full int32 range; ``F``: 0.0..1.0, NaN as
    0, values outside clipped), and transparency (an alpha channel, a palette's alpha or a tRNS key colour)
    composited on white.

    ``max_side`` (pixels; queries pass twice the side their model resizes to): a file or bytes larger than that is
    decoded smaller, never below ``max_side`` on its short side: a JPEG at a reduced DCT scale (Pillow's
    ``draft``), any other format decoded whole and reduced by an integer factor (box filter, Pillow's ``reduce``)
    before any conversion, so that a 6000x6000 upload never exists as a float array.

    Raises :class:`MediaError` naming the image and its size, or why it does not decode.
    """
    return decode_image(source, max_pixels, max_side).image


def decode_image(source: Path | str | bytes | Image.Image, max_pixels: int = MAX_IMAGE_PIXELS,
                 max_side: int | None = None) -> Decoded:
    """:func:`open_image`, also saying whether decoding flattened a varied source to a (near) constant image."""
    from PIL import Image

    if isinstance(source, Image.Image):  # taken as Pillow decodes it: its TIFF reader applies (most) orientations
        name = "the query image"
        _check_size(source.size, name, max_pixels)
        try:
            where = source.tell() if getattr(source, "is_animated", False) else None
            frame = representative_frame(source, name) if where is not None else 0
            source.load()  # before reading the orientation: a lazy TIFF is turned by Pillow while loading
            decoded = _oriented(source, name)
            if where is not None:
                source.seek(where)  # the caller's image is left at its frame
        except (OSError, ValueError, SyntaxError, EOFError) as e:
            raise MediaError(f"{name} does not decode: {decoder_message(e)}") from e
        return _framed(decoded, frame, getattr(source, "n_frames", 1))
    if isinstance(source, (bytes, bytearray, memoryview)):
        name, opened = "the uploaded image", io.BytesIO(bytes(source))
    else:
        name, opened = f"image {Path(source).name}", Path(source)
    try:
        with warnings.catch_warnings():  # the size is checked by us, right below, against our own limit
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = Image.open(opened)
        with im:
            _check_size(im.size, name, max_pixels)
            frame = representative_frame(im, name)  # 0 but for animations
            orientation = _take_orientation(im)  # before load(): Pillow's TIFF loader would apply it, not always
            if max_side and im.format == "JPEG" and min(im.size) > 2 * max_side:
                w, h = im.size
                im.draft(None, (w * max_side // min(w, h), h * max_side // min(w, h)))  # a DCT scale >= that
            im.load()
            _check_size(im.size, name, max_pixels)  # formats with several sizes (ICO) pick one when loading
            frames = getattr(im, "n_frames", 1)
            return _framed(_oriented(reduced(im, max_side) if max_side else im, name, orientation), frame, frames)
    except MediaError:
        raise
    except Image.DecompressionBombError as e:
        raise MediaError(f"{name} is a decompression bomb: its header declares far more than the "
                         f"{max_pixels}-pixel limit (Pillow refused to open it)") from e
    except (OSError, ValueError, SyntaxError, EOFError, IndexError, KeyError, TypeError, ZeroDivisionError,
            MemoryError) as e:  # what Pillow's format plugins raise on broken or hostile files
        raise MediaError(f"{name} does not decode: {decoder_message(e)}") from e


def _framed(decoded: Decoded, frame: int, frames: int) -> Decoded:
    return Decoded(decoded.image, decoded.flattened, decoded.source, frame, int(frames or 1))


def representative_frame(im: Image.Image, name: str = "the image") -> int:
    """Seek ``im`` to the frame that represents it and return its index: 0 for a still or a multi-page file; for an
    animation (GIF, APNG, animated WebP) the frame with the most detail (largest summed RGB standard deviation, the
    earliest on a tie) among :data:`SAMPLED_FRAMES` spread evenly over its frames (an APNG's default image skipped
    when it is not part of the animation), so a blank first frame (a fade-in from white, a placeholder) is not
    taken. At most :data:`FRAME_PIXEL_BUDGET` pixels are decoded: a long, large animation is sampled over its
    first frames only; a frame that does not decode ends the sampling (the best frame before it is taken). Pillow's
    errors on the first candidate propagate (the caller names the file)."""
    frames = int(getattr(im, "n_frames", 1) or 1)
    if frames < 2 or not getattr(im, "is_animated", False) or im.format not in ANIMATED_FORMATS:
        im.seek(0)
        return 0
    first = 1 if im.format == "PNG" and getattr(im, "default_image", False) else 0
    w, h = im.size
    reach = min(frames, first + max(1, FRAME_PIXEL_BUDGET // max(1, w * h)))  # seeking decodes the frames between
    count = min(SAMPLED_FRAMES, reach - first)
    candidates = sorted({first + (i * (reach - first)) // count for i in range(count)})
    best, best_score = candidates[0], -1.0
    for index in candidates:
        try:
            im.seek(index)
            score = detail(_convert(im, name).image)
        except (OSError, EOFError, ValueError, SyntaxError):  # a broken later frame: choose among those before it
            if index == candidates[0]:
                raise
            break
        if score > best_score + 1e-6:
            best, best_score = index, score
    im.seek(best)
    return best


def detail(image: Image.Image) -> float:
    """The summed standard deviation (0-255 scale) of an RGB image's channels, from its histogram (no copy)."""
    from PIL import ImageStat

    return float(sum(ImageStat.Stat(image).stddev))


def is_blank(image: Image.Image) -> bool:
    """Whether every channel of an RGB image has a standard deviation below :data:`BLANK_STD`: a constant or
    near-constant picture (white, black, one colour, a faint smudge) that carries no content."""
    from PIL import ImageStat

    return max(ImageStat.Stat(image).stddev) < BLANK_STD


def blank_message(name: str, decoded: Decoded) -> str:
    """Why a :func:`is_blank` picture is refused, naming the frame of an animation."""
    where = f"its most detailed sampled frame ({decoded.frame + 1} of {decoded.frames})" if decoded.frames > 1 \
        else "it"
    return (f"image {name}: {where} is a blank picture (every colour channel's standard deviation below "
            f"{BLANK_STD:g} of 255): a constant or near-constant picture carries no content to search by")


def clean_size(size: tuple[int, int], short_side: int, max_side: int) -> tuple[int, int]:
    """The (width, height) in pixels an image of ``size`` is scaled down to, aspect kept: the shorter side at most
    ``short_side`` and the longer at most ``max_side``, never enlarged, no side below 1. A short side rather than a
    long one bounds it because CNN towers resize the shorter side (Lite0: to 256, then crop 224): a 4:3 photo cut to
    256 on its long side came back upscaled from 192 and lost 1.4 points of E4 R@10 (docs/benchmarks.md)."""
    w, h = size
    scale = min(1.0, short_side / min(w, h), max_side / max(w, h))
    return (max(1, round(w * scale)), max(1, round(h * scale))) if scale < 1.0 else (w, h)


def scaled_down(im: Image.Image, short_side: int, max_side: int) -> Image.Image:
    """``im`` resized to :func:`clean_size` (bicubic, as ``Image.thumbnail``), or itself when it already fits."""
    from PIL import Image

    size = clean_size(im.size, short_side, max_side)
    return im if size == im.size else im.resize(size, Image.Resampling.BICUBIC, reducing_gap=2.0)


def reduced(im: Image.Image, max_side: int) -> Image.Image:
    """``im`` reduced by the largest integer factor that keeps its short side at least ``max_side`` pixels (itself
    when that factor is 1). Modes ``reduce`` cannot take are converted first, as :func:`_convert` would read them:
    a palette or a transparency key to RGBA, ``1`` to ``L``, 16-bit to ``I``."""
    factor = min(im.size) // max(1, max_side)
    if factor < 2:
        return im
    if im.mode == "P" or (im.info.get("transparency") is not None and im.mode in ("1", "L", "RGB")):
        im = im.convert("RGBA")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode.startswith("I;16"):
        im = im.convert("I")
    return im.reduce(factor)


def _check_size(size: tuple[int, int], name: str, max_pixels: int) -> None:
    w, h = size
    if w < 1 or h < 1:
        raise MediaError(f"{name} is {w}x{h}: a side is empty")
    if max(w, h) > MAX_IMAGE_SIDE:
        raise MediaError(f"{name} is {w}x{h}, a side above the {MAX_IMAGE_SIDE}-pixel limit")
    if w * h > max_pixels:
        raise MediaError(f"{name} is {w}x{h} = {w * h} pixels, above the {max_pixels}-pixel limit")


def _take_orientation(im: Image.Image) -> int:
    """The EXIF orientation (1 = as stored), removed from ``im`` so that nothing but :func:`_oriented` applies it
    (Pillow's TIFF loader transposes on load but silently leaves ``I;16B`` images as stored)."""
    exif = im.getexif()
    value = exif.get(ORIENTATION, 1)
    exif.pop(ORIENTATION, None)
    tags = getattr(im, "tag_v2", None)
    if tags is not None and ORIENTATION in tags:
        del tags[ORIENTATION]
        stored = getattr(im, "_tile_size", None)  # Pillow's TIFF reader pre-swapped the size for orientations 5-8
        if isinstance(stored, tuple) and len(stored) == 2:
            im._size = stored
    try:
        return int(value)
    except (TypeError, ValueError):  # a malformed orientation value: shown as stored
        return 1


def _oriented(im: Image.Image, name: str, orientation: int | None = None) -> Decoded:
    """Convert to RGB, then apply the EXIF orientation to the RGB result (conversion is per pixel, so the order does
    not change a value)."""
    from PIL import Image

    if orientation is None:
        try:
            orientation = int(im.getexif().get(ORIENTATION, 1))
        except (TypeError, ValueError):
            orientation = 1
    decoded = _convert(im, name)
    turn = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
            5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
            8: Image.Transpose.ROTATE_90}.get(orientation)
    out = decoded.image.transpose(turn) if turn is not None else decoded.image
    # the result is upright: no orientation may travel with it (decoding it again must change nothing)
    out.info = {k: v for k, v in out.info.items() if k not in ("exif", "xmp", "XML:com.adobe.xmp")}
    out.getexif().pop(ORIENTATION, None)
    return Decoded(out, decoded.flattened, decoded.source)


def _convert(im: Image.Image, name: str) -> Decoded:
    """Any Pillow mode -> RGB (see :func:`open_image`)."""
    import numpy as np
    from PIL import Image

    mode, trns = im.mode, im.info.get("transparency")
    if mode in DEEP_MODES:
        raw = np.asarray(im)
        values = raw.astype(np.float64)
        finite = np.isfinite(values)
        if mode == "F":
            unit = np.where(finite, values, 0.0)
        elif mode == "I" and raw.size and (int(raw.min()) < 0 or int(raw.max()) > UINT16_MAX):
            unit = (values - INT32_MIN) / INT32_SPAN
        else:
            unit = values / UINT16_MAX
        rgb = np.repeat(np.clip(unit, 0.0, 1.0)[..., None], 3, axis=2)
        alpha = (raw != trns).astype(np.float64) if isinstance(trns, int) else None
        seen = values[finite]
        varies = bool(seen.size) and float(seen.max()) > float(seen.min())
        # float samples outside 0..1 are clipped: most of them out of range flattens the picture as surely
        clipped = float(np.mean((seen < 0.0) | (seen > 1.0))) if mode == "F" and seen.size else 0.0
        source = f"{mode} {seen.min():g}..{seen.max():g}" if seen.size else f"{mode} without finite samples"
    elif mode in ALPHA_MODES or (trns is not None and mode in ("1", "L", "P", "RGB")):
        rgba = np.asarray(im.convert("RGBA"), dtype=np.float64) / 255.0
        rgb, alpha = rgba[..., :3], rgba[..., 3]
        varies = bool(rgb.size) and float(np.ptp(rgb.reshape(-1, 3), axis=0).max()) > 0
        clipped = 0.0
        source = f"{mode} with alpha {alpha.min() * 255:g}..{alpha.max() * 255:g}"
    else:
        try:
            return Decoded(im.convert("RGB"), False, mode)
        except ValueError as e:
            raise MediaError(f"{name} has pixel mode {mode!r}, which cannot be converted to RGB: {e}") from e
    if alpha is not None:
        rgb = rgb * alpha[..., None] + (1.0 - alpha[..., None])  # on white
    pixels = np.rint(rgb * 255.0).astype(np.uint8)
    out = Image.fromarray(pixels, "RGB")
    return Decoded(out, varies and (float(pixels.std()) < FLAT_STD or clipped > CLIPPED_SHARE), source)


def open_item_image(path: Path, max_pixels: int = MAX_IMAGE_PIXELS) -> Image.Image:
    """:func:`open_image` for a dataset item: raises :class:`BlankImage` (``reason`` ``blank_image``) for a picture
    that :func:`is_blank`, :class:`MediaError` when it does not decode."""
    decoded = decode_image(path, max_pixels)
    if is_blank(decoded.image):
        raise BlankImage(blank_message(Path(path).name, decoded))
    return decoded.image


def image_problem(path: Path, params: ValidateParams) -> Problem | None:
    """Decodes within the size limits, is not flattened to a constant by decoding, is not too small, and is not
    blank (:func:`is_blank`: ``blank_image``)."""
    if (problem := size_problem(path, params)) is not None:
        return problem
    try:
        decoded = decode_image(path, params.max_image_pixels)
    except MediaError as e:
        reason = "decompression_bomb" if "pixel limit" in str(e) or "bomb" in str(e) else "undecodable"
        return Problem(reason, str(e))
    im = decoded.image
    if decoded.flattened:
        return Problem("flattened_image", f"image {path.name} ({decoded.source}) decodes to a near-constant picture "
                       "although its samples vary (a bit depth or value range the decoder reads by the mode's "
                       "range, or fully transparent pixels); re-save it as 8-bit RGB")
    if min(im.size) < params.min_image_side:
        return Problem("image_too_small", f"image {path.name} is {im.size[0]}x{im.size[1]}, "
                       f"below the {params.min_image_side}-pixel minimum side")
    if is_blank(im):
        return Problem(BlankImage.reason, blank_message(path.name, decoded))
    return None


