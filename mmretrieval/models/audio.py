"""Audio tower: waveform -> log-mel spectrogram (plain torch + a librosa mel filterbank) -> small CNN.

Files are read with soundfile, mixed to mono and resampled to one rate (soxr via librosa); clips are cut or
zero-padded to a fixed length so batches stack.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

FRONTENDS = ("band", "clip")
LOG_FLOOR = 80 / (10 / np.log(10))  # 80 dB in natural-log power units: quieter bins are clamped to max - 80 dB
ACTIVE = 40 / (10 / np.log(10))  # frames within 40 dB of the loudest frame count as speech for the statistics


class LogMel(nn.Module):
    """Waveform -> log-mel spectrogram, normalised per clip so loudness, microphone and padding do not matter.

    ``norm="clip"`` (default): one mean/std over the whole log-mel spectrogram of the clip. ``norm="band"``: the log
    power is floored at 80 dB below the clip's peak, then each mel band's mean
    over the *active* frames (within 40 dB of the loudest) is subtracted (cepstral mean normalisation: removes the
    channel/voice colouring of an unseen speaker) and the result is scaled by the active frames' standard deviation;
    zero-padding after a short clip therefore does not shift the statistics. On unseen FSDD speakers neither won
    clearly in our runs (docs/benchmarks.md), so the simpler one stays the default.

    ``masks`` (set by the training loop from the augmentation policy; used only in training mode) applies
    SpecAugment: two frequency masks of up to ``freq`` bands and two time masks of up to ``time`` share of the frames.
    """

    def __init__(self, sample_rate: int, n_mels: int = 40, n_fft: int = 512, hop_seconds: float = 0.02,
                 norm: str = "clip") -> None:
        super().__init__()
        import librosa

        if norm not in FRONTENDS:
            raise ValueError(f"audio normalisation {norm!r} is unknown; use one of {FRONTENDS}")
        self.norm = norm
        self.masks: tuple[int, float] = (0, 0.0)
        self.n_fft, self.hop = n_fft, max(1, int(sample_rate * hop_seconds))
        fb = librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=n_mels)  # (n_mels, n_fft // 2 + 1)
        self.register_buffer("fb", torch.from_numpy(fb).float(), persistent=False)
        self.register_buffer("window", torch.hann_window(n_fft), persistent=False)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, T) waveform -> (B, 1, n_mels, frames)."""
        spec = torch.stft(wave, self.n_fft, self.hop, window=self.window, return_complex=True).abs() ** 2
        power = self.fb @ spec  # (B, n_mels, frames)
        if self.norm == "clip":
            mel = torch.log(power + 1e-6)
            mel = (mel - mel.mean(dim=(1, 2), keepdim=True)) / (mel.std(dim=(1, 2), keepdim=True) + 1e-5)
        else:
            mel = torch.log(power + 1e-10)
            mel = torch.maximum(mel, mel.amax(dim=(1, 2), keepdim=True) - LOG_FLOOR)
            energy = torch.log(power.sum(dim=1, keepdim=True) + 1e-10)  # (B, 1, frames) frame power
            active = (energy >= energy.amax(dim=2, keepdim=True) - ACTIVE).float()
            n = active.sum(dim=2, keepdim=True)
            centred = mel - (mel * active).sum(dim=2, keepdim=True) / n
            std = ((centred**2 * active).sum(dim=(1, 2), keepdim=True) / (n * mel.shape[1])).sqrt()
            mel = centred / (std + 1e-5)
        if self.training and (self.masks[0] or self.masks[1]):
            mel = spec_augment(mel, *self.masks)
        return mel.unsqueeze(1)


def spec_augment(mel: torch.Tensor, max_bands: int, max_time_share: float, count: int = 2) -> torch.Tensor:
    """Zero ``count`` random frequency bands (each up to ``max_bands`` wide) and time spans (each up to
    ``max_time_share`` of the frames) per clip of a (B, n_mels, frames) batch."""
    b, n_mels, frames = mel.shape
    keep = torch.ones_like(mel, dtype=torch.bool)
    for _ in range(count):
        for size, axis, limit in ((max_bands, 1, n_mels), (int(max_time_share * frames), 2, frames)):
            if size <= 0:
                continue
            width = torch.randint(0, size + 1, (b, 1, 1), device=mel.device)
            start = (torch.rand(b, 1, 1, device=mel.device) * (limit - width + 1)).long()
            pos = torch.arange(limit, device=mel.device).view((1, -1, 1) if axis == 1 else (1, 1, -1))
            keep &= ~((pos >= start) & (pos < start + width))
    return mel * keep


class AudioCNN(nn.Module):
    """Log-mel front end (20 ms hop) and four conv blocks (about 0.6 M parameters at the default widths)."""

    def __init__(self, sample_rate: int, n_mels: int = 40, widths: tuple[int, ...] = (24, 48, 96, 192),
                 norm: str = "clip") -> None:
        super().__init__()
        self.frontend = LogMel(sample_rate, n_mels, norm=norm)
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
        """(B, T) -> (B, width): the mean of :meth:`frame_map` over its frames."""
        return self.frame_map(wave).mean(dim=(2, 3))

    def frame_map(self, wave: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, width, 1, F): the clip's frame sequence (what the re-ranker attends over), the last block's
        feature map averaged over its mel bands. F is the log-mel's 1 + T // hop frames halved by each block's
        pooling: 4 columns of 320 ms for 1.5 s at the default 20 ms hop and four blocks."""
        return self.body(self.frontend(wave)).mean(dim=2, keepdim=True)


