"""Media checks and decoding shared by validation, cleaning, training and querying.

Each check returns ``None`` when the file is usable, else a :class:`Problem` (a reason code and a message).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

from mmretrieval.errors import MediaError

if TYPE_CHECKING:
    from PIL import Image

    from mmretrieval.config import ValidateParams


@dataclass(frozen=True)
class Problem:
    reason: str  # machine-readable code, e.g. "missing_file"
    message: str  # for people


def path_problem(rel: str, root: Path) -> Problem | None:
    """Is ``rel`` a safe relative path to an existing file inside ``root``?"""
    if not rel:
        return Problem("empty_path", "path is empty")
    p = PurePosixPath(rel.replace("\\", "/"))
    if p.is_absolute() or rel.startswith(("/", "\\")) or (len(rel) > 1 and rel[1] == ":"):
        return Problem("absolute_path", f"path {rel!r} is absolute; paths must be relative to the dataset root")
    if ".." in p.parts:
        return Problem("parent_path", f"path {rel!r} climbs out with '..'; paths must stay inside the dataset root")
    full = root / p
    if not full.is_file():
        return Problem("missing_file", f"file {rel!r} does not exist under {root}")
    if not full.resolve().is_relative_to(root.resolve()):
        return Problem("path_escape", f"path {rel!r} resolves outside the dataset root (symlink?)")
    return None


def open_image(source: Path | bytes, max_pixels: int = 40_000_000) -> Image.Image:
    """Open and fully decode an image (a file or uploaded bytes) as RGB, applying EXIF orientation.

    The pixel count is checked from the header, before decoding. Raises :class:`MediaError`.
    """
    import io

    from PIL import Image, ImageOps

    Image.MAX_IMAGE_PIXELS = max_pixels
    # bytes accepted here: replaced by issue-12's decoder at merge
    path = Path("the uploaded image") if isinstance(source, bytes) else Path(source)
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            w, h = im.size
            if w * h > max_pixels:
                raise MediaError(f"image {path.name} is {w}x{h}, above the {max_pixels}-pixel limit")
            im.seek(0)
            im.load()
            im = ImageOps.exif_transpose(im)
            if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
                im = im.convert("RGBA")
                background = Image.new("RGBA", im.size, (255, 255, 255, 255))
                im = Image.alpha_composite(background, im)
            if im.mode == "I;16" or im.mode == "I":
                import numpy as np

                arr = np.asarray(im, dtype=np.float32)
                im = Image.fromarray((arr / max(float(arr.max()), 1.0) * 255).astype("uint8"))
            return im.convert("RGB")
    except MediaError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MediaError(f"image {path.name} is a decompression bomb: {e}") from e
    except (OSError, ValueError, SyntaxError) as e:
        raise MediaError(f"image {path.name} does not decode: {e}") from e


def size_problem(path: Path, params: ValidateParams) -> Problem | None:
    size = os.path.getsize(path)
    if size == 0:
        return Problem("empty_file", f"file {path.name} is empty (0 bytes)")
    if size > params.max_file_bytes:
        return Problem("file_too_large", f"file {path.name} is {size} bytes, above {params.max_file_bytes}")
    return None


def image_problem(path: Path, params: ValidateParams) -> Problem | None:
    if (problem := size_problem(path, params)) is not None:
        return problem
    try:
        im = open_image(path, params.max_image_pixels)
    except MediaError as e:
        reason = "decompression_bomb" if "pixel limit" in str(e) or "bomb" in str(e) else "undecodable"
        return Problem(reason, str(e))
    if min(im.size) < params.min_image_side:
        return Problem("image_too_small", f"image {path.name} is {im.size[0]}x{im.size[1]}, "
                       f"below the {params.min_image_side}-pixel minimum side")
    return None


def audio_problem(path: Path, params: ValidateParams) -> Problem | None:
    """Decodes (WAV, FLAC, OGG, MP3 via libsndfile), has samples, no NaN, duration within bounds."""
    import numpy as np
    import soundfile as sf

    if (problem := size_problem(path, params)) is not None:
        return problem
    try:
        info = sf.info(str(path))
        data, _ = sf.read(str(path), frames=int(min(info.frames, 600 * info.samplerate)), dtype="float32",
                          always_2d=True)
    except (RuntimeError, sf.LibsndfileError, OSError, ValueError) as e:
        return Problem("undecodable", f"audio {path.name} does not decode: {e}")
    if data.size == 0 or info.frames <= 0:
        return Problem("empty_audio", f"audio {path.name} has no samples")
    if not np.isfinite(data).all():
        return Problem("nan_samples", f"audio {path.name} contains NaN or infinite samples")
    seconds = info.frames / info.samplerate
    if seconds > params.max_audio_seconds:
        return Problem("audio_too_long", f"audio {path.name} lasts {seconds:.1f} s, above {params.max_audio_seconds}")
    if seconds < params.min_audio_seconds:
        return Problem("audio_too_short", f"audio {path.name} lasts {seconds:.3f} s, below {params.min_audio_seconds}")
    if info.channels > params.max_audio_channels:
        return Problem("too_many_channels", f"audio {path.name} has {info.channels} channels, above "
                       f"{params.max_audio_channels}")
    if not 4000 <= info.samplerate <= 192_000:
        return Problem("bad_sample_rate", f"audio {path.name} has sample rate {info.samplerate} Hz")
    peak = float(np.abs(data).max())
    if float(np.sqrt(np.mean(data**2))) < 1e-4:
        return Problem("silent_audio", f"audio {path.name} is silent (RMS below -80 dBFS)")
    clipped = float(np.mean(np.abs(data) >= 0.999)) if peak >= 0.999 else 0.0
    if clipped > params.clipped_share:
        return Problem("clipped_audio", f"audio {path.name} has {clipped:.1%} of samples at full scale")
    return None


def clean_audio(src: Path, dst: Path, sample_rate: int, trim_db: float, target_dbfs: float,
                max_seconds: float) -> float:
    """Decode, mix to mono, resample, trim silence, normalise loudness, write 16-bit WAV. Returns seconds kept."""
    import soundfile as sf

    from mmretrieval.models.audio import load_audio, normalize_wave

    wave = normalize_wave(load_audio(src, sample_rate, max_seconds), sample_rate, trim_db, target_dbfs)
    sf.write(str(dst), wave, sample_rate, subtype="PCM_16")
    return len(wave) / sample_rate
