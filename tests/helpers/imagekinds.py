"""Real image files of every Pillow mode and bit depth the decoder must handle, each with the pixels it must yield.

Shared by the decoder's unit tests and the entry-point table (tests/integration/test_one_decoder.py). Each file
holds a horizontal ramp (so a decoder that stretches, inverts or drops a channel is caught) and the expected RGB
pixels are computed here from the ramp by the rule the decoder promises (the mode's range; transparency on white),
not by the decoder.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image

W, H = 48, 40
RAMP8 = np.tile(np.linspace(0, 255, W).round().astype(np.uint8), (H, 1))  # (H, W)
# 16-bit ramp below full scale, so a decoder that stretches to the image's own maximum is caught
RAMP16 = np.tile(np.linspace(0, 50_000, W).round().astype(np.uint16), (H, 1))


def gray(unit: np.ndarray) -> np.ndarray:
    """(H, W) values in 0..1 -> (H, W, 3) uint8."""
    return np.repeat(np.rint(np.clip(unit, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=2)


def rgb_ramp() -> np.ndarray:
    return np.stack([RAMP8, RAMP8[:, ::-1], np.full_like(RAMP8, 90)], axis=2)


def on_white(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    a = alpha.astype(np.float64)[..., None] / 255.0
    return np.rint(rgb.astype(np.float64) * a + 255.0 * (1 - a)).astype(np.uint8)


def _mode_1(p: Path) -> np.ndarray:
    bits = (RAMP8 > 127)
    Image.fromarray(bits).save(p)
    return gray(bits.astype(float))


def _mode_l(p: Path) -> np.ndarray:
    Image.fromarray(RAMP8, "L").save(p)
    return gray(RAMP8 / 255)


def _mode_la(p: Path) -> np.ndarray:
    alpha = RAMP8[:, ::-1].copy()
    Image.fromarray(np.stack([RAMP8, alpha], axis=2), "LA").save(p)
    return on_white(np.repeat(RAMP8[..., None], 3, axis=2), alpha)


def _palette(p: Path, *, alpha_palette: bool) -> np.ndarray:
    index = (RAMP8 // 32).astype(np.uint8)  # 8 colours
    colours = np.array([[c * 30, 255 - c * 30, (c * 70) % 256] for c in range(8)], dtype=np.uint8)
    im = Image.fromarray(index, "P")
    im.putpalette(colours.flatten().tolist())
    alphas = np.array([0, 40, 80, 120, 160, 200, 240, 255], dtype=np.uint8)
    if alpha_palette:
        im.save(p, transparency=bytes(alphas))
        return on_white(colours[index], alphas[index])
    im.save(p, transparency=3)  # one key index
    return on_white(colours[index], np.where(index == 3, 0, 255).astype(np.uint8))


def _mode_rgb_trns(p: Path) -> np.ndarray:
    rgb = rgb_ramp()
    key = tuple(int(v) for v in rgb[0, 10])
    Image.fromarray(rgb, "RGB").save(p, transparency=key)
    hidden = np.all(rgb == np.array(key, dtype=np.uint8), axis=2)
    return on_white(rgb, np.where(hidden, 0, 255).astype(np.uint8))


def _mode_l_trns(p: Path) -> np.ndarray:
    key = int(RAMP8[0, 20])
    Image.fromarray(RAMP8, "L").save(p, transparency=key)
    return on_white(np.repeat(RAMP8[..., None], 3, axis=2), np.where(RAMP8 == key, 0, 255).astype(np.uint8))


def _mode_i16_trns(p: Path) -> np.ndarray:
    key = int(RAMP16[0, 30])
    Image.frombytes("I;16", (W, H), RAMP16.astype("<u2").tobytes()).save(p, transparency=key)
    base = gray(RAMP16 / 65535)
    return on_white(base, np.where(RAMP16 == key, 0, 255).astype(np.uint8))


def _mode_rgba(p: Path) -> np.ndarray:
    rgb, alpha = rgb_ramp(), RAMP8[::-1].copy()
    alpha[:, :6] = 0  # a fully transparent band: white, never black
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(p)
    return on_white(rgb, alpha)


def _mode_pa_tiff(p: Path) -> np.ndarray:
    index = (RAMP8 // 64).astype(np.uint8)
    colours = np.array([[250, 0, 0], [0, 250, 0], [0, 0, 250], [20, 20, 20]], dtype=np.uint8)
    alpha = np.where(np.arange(W) < W // 2, 255, 0).astype(np.uint8)[None].repeat(H, 0)
    im = Image.fromarray(index, "P")
    im.putpalette(colours.flatten().tolist())
    im = im.convert("PA")
    im.putalpha(Image.fromarray(alpha, "L"))
    im.save(p)
    return on_white(colours[index], alpha)


def _mode_cmyk(p: Path) -> np.ndarray:
    cmyk = np.stack([RAMP8, np.zeros_like(RAMP8), RAMP8[:, ::-1], np.full_like(RAMP8, 30)], axis=2)
    Image.fromarray(cmyk, "CMYK").save(p)
    c, m, y, k = (cmyk[..., i].astype(np.float64) for i in range(4))
    return np.rint(np.stack([(255 - v) * (255 - k) / 255 for v in (c, m, y)], axis=2)).astype(np.uint8)


def _mode_ycbcr(p: Path) -> np.ndarray:
    ycc = np.stack([RAMP8, np.full_like(RAMP8, 128), np.full_like(RAMP8, 128)], axis=2)  # neutral chroma: grey
    Image.fromarray(ycc, "YCbCr").save(p)
    return gray(RAMP8 / 255)


def _i16(order: str, mode: str) -> Callable[[Path], np.ndarray]:
    def write(p: Path) -> np.ndarray:
        Image.frombytes(mode, (W, H), RAMP16.astype(order + "u2").tobytes()).save(p)
        return gray(RAMP16 / 65535)
    return write


def _i16_png(p: Path) -> np.ndarray:
    Image.fromarray(RAMP16).save(p)
    return gray(RAMP16 / 65535)


def _mode_i(p: Path) -> np.ndarray:
    Image.fromarray(RAMP16.astype(np.int32), "I").save(p)  # 16-bit data in a 32-bit integer TIFF
    return gray(RAMP16 / 65535)


def _mode_f(p: Path) -> np.ndarray:
    unit = (RAMP16 / 65535).astype(np.float32)
    Image.fromarray(unit, "F").save(p)
    return gray(unit.astype(np.float64))


def _exif_rotated(p: Path) -> np.ndarray:
    """An 8-bit RGB TIFF stored sideways with EXIF orientation 6 (rotate 90° clockwise to view)."""
    rgb = rgb_ramp()
    stored = np.rot90(rgb, k=1).copy()  # what a camera held sideways writes
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored, "RGB").save(p, exif=exif)
    return np.rot90(stored, k=-1).copy()


# what a camera stores for a picture ``u`` (H, W[, C]) viewed upright, per EXIF orientation (the decoder undoes it)
STORED = {1: lambda u: u, 2: lambda u: u[:, ::-1], 3: lambda u: u[::-1, ::-1], 4: lambda u: u[::-1],
          5: lambda u: np.swapaxes(u, 0, 1), 6: lambda u: np.rot90(u, k=1),
          7: lambda u: np.swapaxes(u[::-1, ::-1], 0, 1), 8: lambda u: np.rot90(u, k=-1)}


def write_oriented(p: Path, orientation: int, deep: bool = False) -> np.ndarray:
    """An image stored as a camera held at ``orientation`` writes it, tagged so; returns the upright pixels.
    ``deep``: a 16-bit big-endian TIFF (Pillow's TIFF reader leaves those as stored), else 8-bit RGB."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    upright16 = RAMP16.copy()
    upright16[:5] = 0  # a dark band on top: rotations and flips are told apart
    if deep:
        stored = np.ascontiguousarray(STORED[orientation](upright16))
        Image.frombytes("I;16B", stored.shape[::-1], stored.astype(">u2").tobytes()).save(p, exif=exif)
        return gray(upright16 / 65535)
    upright = rgb_ramp()
    upright[:5] = 0
    Image.fromarray(np.ascontiguousarray(STORED[orientation](upright)), "RGB").save(p, exif=exif)
    return upright


def _first_frame(p: Path) -> np.ndarray:
    first = Image.fromarray(RAMP16).convert("I")
    second = Image.new("I", (W, H), 0)
    first.save(p, save_all=True, append_images=[second])
    return gray(RAMP16 / 65535)


# name -> (file name, writer returning the expected (H, W, 3) pixels)
KINDS: dict[str, tuple[str, Callable[[Path], np.ndarray]]] = {
    "1": ("bilevel.png", _mode_1),
    "L": ("gray.png", _mode_l),
    "LA": ("gray_alpha.png", _mode_la),
    "P_key": ("palette_key.png", lambda p: _palette(p, alpha_palette=False)),
    "P_alpha": ("palette_alpha.png", lambda p: _palette(p, alpha_palette=True)),
    "PA": ("palette_alpha.tif", _mode_pa_tiff),
    "RGB_tRNS": ("rgb_key.png", _mode_rgb_trns),
    "L_tRNS": ("gray_key.png", _mode_l_trns),
    "I16_tRNS": ("gray16_key.png", _mode_i16_trns),
    "RGBA": ("rgba.png", _mode_rgba),
    "CMYK": ("cmyk.tif", _mode_cmyk),
    "YCbCr": ("ycbcr.tif", _mode_ycbcr),
    "I;16_png": ("gray16.png", _i16_png),
    "I;16_le_tiff": ("gray16_le.tif", _i16("<", "I;16")),
    "I;16B_tiff": ("gray16_be.tif", _i16(">", "I;16B")),
    "I": ("int32.tif", _mode_i),
    "F": ("float32.tif", _mode_f),
    "EXIF_6": ("rotated.tif", _exif_rotated),
    "EXIF_5_I;16B": ("rotated16.tif", lambda p: write_oriented(p, 5, deep=True)),
    "EXIF_8_png": ("rotated.png", lambda p: write_oriented(p, 8)),
    "multipage": ("pages.tif", _first_frame),
}


def write_kind(kind: str, folder: Path) -> tuple[Path, np.ndarray]:
    name, writer = KINDS[kind]
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    return path, writer(path)
