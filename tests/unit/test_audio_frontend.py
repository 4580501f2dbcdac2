"""Audio front end and augmentation: padding does not move the band normalisation; SpecAugment masks; speed
change; waveform augmentation leaves the padding silent and does not wrap the clip around."""

import numpy as np
import torch

from mmretrieval.media.audio import augment_wave, change_speed, fit_length
from mmretrieval.models.audio import LogMel, spec_augment


def tone_burst(seconds: float = 0.4, rate: int = 16000) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * 440 * t) * np.hanning(len(t))).astype(np.float32)


def test_band_normalisation_of_the_speech_frames_does_not_depend_on_padding() -> None:
    wave = tone_burst()
    front = LogMel(16000, n_mels=40, norm="band").eval()
    short = front(torch.from_numpy(np.pad(wave, (0, 8000)))[None])[0, 0]
    long = front(torch.from_numpy(np.pad(wave, (0, 24000)))[None])[0, 0]
    frames = 15  # the burst's frames (0.4 s at a 20 ms hop, minus the edge)
    assert torch.allclose(short[:, :frames], long[:, :frames], atol=1e-3)


def test_clip_normalisation_is_shifted_by_padding() -> None:  # what "band" avoids
    wave = tone_burst()
    front = LogMel(16000, n_mels=40, norm="clip").eval()
    short = front(torch.from_numpy(np.pad(wave, (0, 8000)))[None])[0, 0]
    long = front(torch.from_numpy(np.pad(wave, (0, 24000)))[None])[0, 0]
    assert not torch.allclose(short[:, :15], long[:, :15], atol=1e-2)


def test_spec_augment_zeroes_bands_and_frames_only_in_training_mode() -> None:
    torch.manual_seed(0)
    mel = torch.ones(8, 40, 100)
    masked = spec_augment(mel, max_bands=6, max_time_share=0.1)
    zero_share = float((masked == 0).float().mean())
    assert 0 < zero_share < 0.5
    front = LogMel(16000, n_mels=40)
    front.masks = (6, 0.1)
    x = torch.from_numpy(np.pad(tone_burst(), (0, 8000)))[None]
    assert torch.equal(front.eval()(x), front.eval()(x))  # evaluation is deterministic
    assert not torch.equal(front.train()(x), front.eval()(x))


def test_change_speed_resamples_the_length() -> None:
    wave = tone_burst(1.0)
    assert abs(len(change_speed(wave, 1.1)) - len(wave) / 1.1) <= 2
    assert abs(len(change_speed(wave, 0.9)) - len(wave) / 0.9) <= 2
    assert change_speed(wave, 1.0) is wave


def test_noise_is_added_to_the_clip_and_the_padding_stays_silent() -> None:
    wave = tone_burst(0.4)
    noisy = fit_length(augment_wave(wave, np.random.default_rng(0), gain_db=0, snr_db=20), 24000)
    assert np.abs(noisy[: len(wave)] - wave).max() > 1e-3  # noise on the clip
    assert not noisy[len(wave):].any()  # digital silence after it, as at query time
    assert np.array_equal(augment_wave(wave, np.random.default_rng(0), gain_db=0, snr_db=0), wave)  # 0: no noise


def test_time_shift_adds_leading_silence_or_cuts_the_start_without_wrapping() -> None:
    wave = tone_burst(0.4) + 0.01  # no exact zeros inside the clip
    for seed in range(20):
        out = augment_wave(wave, np.random.default_rng(seed), gain_db=0, snr_db=0, shift=0.2)
        n = len(out) - len(wave)
        if n >= 0:
            assert not out[:n].any() and np.array_equal(out[n:], wave)  # delayed
        else:
            assert np.array_equal(out, wave[-n:])  # start cut, nothing moved to the end


def test_frame_map_is_the_sequence_the_pooled_tower_output_averages() -> None:
    from mmretrieval.models.audio import AudioCNN

    torch.manual_seed(0)
    tower = AudioCNN(16000).eval()
    wave = torch.randn(2, 24000) * 0.1  # 1.5 s: 76 log-mel frames, halved by each of 4 blocks -> 4
    frames = tower.frame_map(wave)
    assert frames.shape == (2, tower.width, 1, 4)
    assert torch.allclose(frames.mean(dim=(2, 3)), tower(wave), atol=1e-6)
