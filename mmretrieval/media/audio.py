"""Audio files: decoding (soundfile; a WAV header that lies about its length is read by the bytes there), the
validation checks, cleaning, and the waveform helpers (resample, trim, loudness, fixed length, augmentation) that
cleaning, training, embedding and queries share.
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from mmretrieval.core.errors import MediaError
from mmretrieval.media.files import Problem, decoder_message, size_problem

if TYPE_CHECKING:
    from mmretrieval.core.params import ValidateParams


FLOAT_SUBTYPES = ("FLOAT", "DOUBLE", "VORBIS", "OPUS", "MPEG_LAYER_I", "MPEG_LAYER_II", "MPEG_LAYER_III")


STREAMING_SIZE = 0xFFFFFFFF  # what streaming writers put in a WAV header whose length they did not know


@dataclass(frozen=True)
class Audio:
    """Decoded audio: ``data`` (frames, channels) float32, peak-normalised to 1.0 when a float format exceeds it."""

    data: np.ndarray
    rate: int
    channels: int
    frames: int  # in the file (before any cut at ``max_seconds``)
    subtype: str
    note: str  # what was done about the file ("" if nothing): a lying header, a float peak above 1.0


def read_audio(path: Path, max_seconds: float) -> Audio:
    """Decode an audio file (WAV, FLAC, OGG, MP3 via libsndfile) up to ``max_seconds``. Raises :class:`MediaError`.

    A WAV whose header declares 0 (or 0xFFFFFFFF, "unknown") data bytes is read by the bytes actually there. Float
    formats have no full scale: a peak above 1.0 is normalised to 1.0 (not clipping).
    """
    import numpy as np
    import soundfile as sf

    note = ""
    try:
        fixed = _wav_with_true_length(path)
        handle: io.BytesIO | str = io.BytesIO(fixed) if fixed is not None else str(path)
        if fixed is not None:
            note = "its WAV header declares no data bytes; read by the file's actual length"
        info = sf.info(handle)
        if isinstance(handle, io.BytesIO):
            handle.seek(0)
        frames = int(min(info.frames, max_seconds * info.samplerate)) if info.frames > 0 else -1
        data, rate = sf.read(handle, frames=frames, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, OSError, ValueError, EOFError, struct.error) as e:
        raise MediaError(f"audio {path.name} does not decode: {decoder_message(e)}") from e
    if info.subtype in FLOAT_SUBTYPES and data.size and np.isfinite(data).all():
        peak = float(np.abs(data).max())
        if peak > 1.0:
            data = data / peak
            note = (note + "; " if note else "") + f"float peak {peak:.3g} normalised to 1.0"
    return Audio(data, int(rate), int(info.channels), int(info.frames), str(info.subtype), note)


def _wav_with_true_length(path: Path) -> bytes | None:
    """A RIFF/WAVE file whose ``data`` chunk declares 0 or 0xFFFFFFFF bytes although bytes follow: the file with
    the chunk (and RIFF) sizes set to what is there, whole frames only. ``None`` for any other file."""
    with open(path, "rb") as f:
        head = f.read(12)
        if len(head) < 12 or head[:4] != b"RIFF" or head[8:12] != b"WAVE":
            return None
        raw = head + f.read()
    pos, align = 12, 0
    while pos + 8 <= len(raw):
        chunk, size = raw[pos:pos + 4], struct.unpack("<I", raw[pos + 4:pos + 8])[0]
        if chunk == b"fmt " and size >= 14:
            if pos + 22 > len(raw):  # a cut-off fmt chunk: leave the verdict to the decoder
                return None
            align = struct.unpack("<H", raw[pos + 20:pos + 22])[0]
        if chunk == b"data":
            there = len(raw) - pos - 8
            if size not in (0, STREAMING_SIZE) or there <= 0 or align <= 0:
                return None
            there -= there % align
            body = raw[:pos + 4] + struct.pack("<I", there) + raw[pos + 8:pos + 8 + there]
            return body[:4] + struct.pack("<I", len(body) - 8) + body[8:]
        pos += 8 + size + (size & 1)
    return None


def audio_problem(path: Path, params: ValidateParams) -> Problem | None:
    """Decodes, has samples, no NaN, duration, channels and rate within bounds, not silent, not clipped.

    Clipping is judged on integer formats only (samples at full scale); a float file is first peak-normalised.
    """
    import numpy as np

    if (problem := size_problem(path, params)) is not None:
        return problem
    try:
        audio = read_audio(path, 600.0)
    except MediaError as e:
        return Problem("undecodable", str(e))
    data = audio.data
    if data.size == 0 or audio.frames <= 0:
        return Problem("empty_audio", f"audio {path.name} has no samples")
    if not np.isfinite(data).all():
        return Problem("nan_samples", f"audio {path.name} contains NaN or infinite samples")
    seconds = audio.frames / audio.rate
    if seconds > params.max_audio_seconds:
        return Problem("audio_too_long", f"audio {path.name} lasts {seconds:.1f} s, above {params.max_audio_seconds}")
    if seconds < params.min_audio_seconds:
        return Problem("audio_too_short", f"audio {path.name} lasts {seconds:.3f} s, below {params.min_audio_seconds}")
    if audio.channels > params.max_audio_channels:
        return Problem("too_many_channels", f"audio {path.name} has {audio.channels} channels, above "
                       f"{params.max_audio_channels}")
    if not 4000 <= audio.rate <= 192_000:
        return Problem("bad_sample_rate", f"audio {path.name} has sample rate {audio.rate} Hz")
    mono = data.mean(axis=1)  # what cleaning keeps and the model hears: channels in opposite phase cancel here
    if float(np.sqrt(np.mean(data**2))) < 1e-4:
        return Problem("silent_audio", f"audio {path.name} is silent (RMS below -80 dBFS)")
    if float(np.sqrt(np.mean((mono - mono.mean()) ** 2))) < 1e-4:
        return Problem("silent_audio", f"audio {path.name} is silent once its {audio.channels} channel(s) are mixed "
                       "to mono and any constant (DC) offset removed (RMS below -80 dBFS)")
    if audio.subtype not in FLOAT_SUBTYPES:
        peak = float(np.abs(data).max())
        clipped = float(np.mean(np.abs(data) >= 0.999)) if peak >= 0.999 else 0.0
        if clipped > params.clipped_share:
            return Problem("clipped_audio", f"audio {path.name} has {clipped:.1%} of samples at full scale")
    return None


def clean_audio(src: Path, dst: Path, sample_rate: int, trim_db: float, target_dbfs: float,
                max_seconds: float) -> float:
    """Decode, mix to mono, resample, trim silence, normalise loudness, write 16-bit WAV. Returns seconds kept."""
    import soundfile as sf

    wave = normalize_wave(load_audio(src, sample_rate, max_seconds), sample_rate, trim_db, target_dbfs)
    sf.write(str(dst), wave, sample_rate, subtype="PCM_16")
    return len(wave) / sample_rate


def load_audio(path: Path, sample_rate: int, max_seconds: float) -> np.ndarray:
    """Mono float32 waveform at ``sample_rate``; longer files are cut at ``max_seconds``. Raises MediaError.

    Decoded by :func:`mmretrieval.media.audio.read_audio` (a WAV header that declares no data is read by the file's
    length; a float file peaking above 1.0 is peak-normalised).
    """
    from mmretrieval.media.audio import read_audio

    audio = read_audio(path, max_seconds)
    data, rate = audio.data, audio.rate
    if data.size == 0:
        raise MediaError(f"audio {path.name} has no samples")
    wave = data.mean(axis=1)
    if not np.isfinite(wave).all():
        raise MediaError(f"audio {path.name} contains NaN or infinite samples")
    if rate != sample_rate:
        import librosa

        wave = librosa.resample(wave, orig_sr=rate, target_sr=sample_rate, res_type="soxr_hq")
    return wave.astype(np.float32)


def normalize_wave(wave: np.ndarray, sample_rate: int, trim_db: float = 40.0,
                   target_dbfs: float = -20.0) -> np.ndarray:
    """Trim leading/trailing silence (quieter than peak - ``trim_db``) and scale to ``target_dbfs`` RMS (peak <= 0.99).

    Cleaning applies it to stored clips and the model applies it to every clip it encodes, so queries and
    evaluation files get the same treatment as the training data.
    """
    import librosa

    trimmed, _ = librosa.effects.trim(wave, top_db=trim_db)
    if len(trimmed) >= int(0.05 * sample_rate):
        wave = trimmed
    rms = float(np.sqrt(np.mean(wave**2))) + 1e-12
    wave = wave * (10 ** (target_dbfs / 20) / rms)
    peak = float(np.abs(wave).max())
    if peak > 0.99:
        wave = wave * (0.99 / peak)
    return wave.astype(np.float32)


def fit_length(wave: np.ndarray, length: int, offset: int = 0) -> np.ndarray:
    """Cut ``length`` samples starting at ``offset`` (clamped), zero-padding short clips at the end."""
    if len(wave) >= length:
        start = max(0, min(offset, len(wave) - length))
        return wave[start:start + length]
    return np.pad(wave, (0, length - len(wave)))


def augment_wave(wave: np.ndarray, rng: np.random.Generator, gain_db: float = 6.0, snr_db: float = 0.0,
                 shift: float = 0.0) -> np.ndarray:
    """Random gain (±gain_db), white noise at ``snr_db`` (±5 dB; 0: none) and a time shift of up to ± ``shift`` of
    the clip (leading silence added, or the start cut; not circular).

    Works on the clip itself, before :func:`fit_length` pads it: the padding stays digital silence, as it is when
    the same clip is embedded or used as a query. (Noise over the padding and a circular shift made the training
    clips unlike every clip met later and cost 0.1-0.3 of R@1 on unseen FSDD speakers; docs/benchmarks.md.)
    """
    out = wave * (10 ** (rng.uniform(-gain_db, gain_db) / 20))
    if snr_db > 0:
        power = float(np.mean(out**2)) + 1e-10
        snr = snr_db + rng.uniform(-5, 5)
        out = out + rng.normal(0, np.sqrt(power / 10 ** (snr / 10)), size=out.shape)
    n = int(rng.uniform(-shift, shift) * len(out))
    out = np.concatenate([np.zeros(n, dtype=out.dtype), out]) if n > 0 else out[-n:]
    return np.asarray(out, dtype=np.float32)


def change_speed(wave: np.ndarray, factor: float) -> np.ndarray:
    """Play ``factor`` times faster (tempo and pitch together, as a tape would): linear resampling."""
    if factor == 1.0 or len(wave) < 2:
        return wave
    positions = np.arange(0, len(wave) - 1, factor)
    return np.interp(positions, np.arange(len(wave)), wave).astype(np.float32)
