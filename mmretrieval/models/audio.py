"""Audio tower: waveform -> log-mel spectrogram (plain torch + a librosa mel filterbank) -> small CNN.

Files are read with soundfile, mixed to mono and resampled to one rate (soxr via librosa); clips are cut or
zero-padded to a fixed length so batches stack.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmretrieval.errors import MediaError


def load_audio(path: Path, sample_rate: int, max_seconds: float) -> np.ndarray:
    """Mono float32 waveform at ``sample_rate``; longer files are cut at ``max_seconds``. Raises MediaError."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
        frames = int(min(info.frames, max_seconds * info.samplerate)) if info.frames > 0 else -1
        data, rate = sf.read(str(path), frames=frames, dtype="float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError, OSError, ValueError) as e:
        raise MediaError(f"audio {path.name} does not decode: {e}") from e
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


class LogMel(nn.Module):
    def __init__(self, sample_rate: int, n_mels: int = 40, n_fft: int = 512, hop_seconds: float = 0.02) -> None:
        super().__init__()
        import librosa

        self.n_fft, self.hop = n_fft, max(1, int(sample_rate * hop_seconds))
        fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)  # (n_mels, n_fft // 2 + 1)
        self.register_buffer("fb", torch.from_numpy(fb).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, T) waveform -> (B, 1, n_mels, frames) per-clip standardised log-mel."""
        spec = torch.stft(wave, self.n_fft, self.hop, window=self.window, return_complex=True).abs() ** 2
        mel = torch.log(self.fb @ spec + 1e-6)  # (B, n_mels, frames)
        mel = (mel - mel.mean(dim=(1, 2), keepdim=True)) / (mel.std(dim=(1, 2), keepdim=True) + 1e-5)
        return mel.unsqueeze(1)


class AudioCNN(nn.Module):
    """Log-mel front end (20 ms hop) and four conv blocks (about 0.6 M parameters at the default widths)."""

    def __init__(self, sample_rate: int, n_mels: int = 40, widths: tuple[int, ...] = (24, 48, 96, 192)) -> None:
        super().__init__()
        self.frontend = LogMel(sample_rate, n_mels)
        layers: list[nn.Module] = []
        c_in = 1
        for w in widths:
            layers += [nn.Conv2d(c_in, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c_in = w
        self.body = nn.Sequential(*layers)
        self.width = c_in

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, width)."""
        x = self.body(self.frontend(wave))
        return x.mean(dim=(2, 3))


def augment_wave(wave: np.ndarray, rng: np.random.Generator, gain_db: float = 6.0, snr_db: float = 20.0,
                 shift: float = 0.1) -> np.ndarray:
    """Random gain (±gain_db), white noise at ``snr_db`` (±5 dB) and a circular time shift (± shift of the clip)."""
    out = wave * (10 ** (rng.uniform(-gain_db, gain_db) / 20))
    power = float(np.mean(out**2)) + 1e-10
    snr = snr_db + rng.uniform(-5, 5)
    out = out + rng.normal(0, np.sqrt(power / 10 ** (snr / 10)), size=out.shape).astype(np.float32)
    return np.roll(out, int(rng.uniform(-shift, shift) * len(out))).astype(np.float32)
