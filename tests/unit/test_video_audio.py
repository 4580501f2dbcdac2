"""A clip's audio track fused with its frames' vector: only where a clip has one, with a weight the contrastive
objective learns."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pandas as pd
import pytest
import torch

from mmretrieval.core.errors import ModelError
from mmretrieval.models.dual_encoder import DualEncoder, ModelConfig

RATE, SECONDS = 8000, 0.5


def config(**over: object) -> ModelConfig:
    base = ModelConfig(text_model="unused", text_dim=16, image_backbone="resnet18", image_size=32, embed_dim=8,
                       text_head="linear", video_pool="mean", video_frames=3, audio_tower="cnn",
                       audio_sample_rate=RATE, audio_seconds=SECONDS, video_audio=True)
    return dataclasses.replace(base, **over)  # type: ignore[arg-type]


def tones(freqs: list[float]) -> torch.Tensor:
    t = np.arange(int(RATE * SECONDS)) / RATE
    return torch.from_numpy(np.stack([0.3 * np.sin(2 * np.pi * f * t) for f in freqs]).astype(np.float32))


def test_a_clip_without_a_track_keeps_its_frames_vector_and_a_track_moves_it_by_the_learned_weight() -> None:
    torch.manual_seed(0)
    net = DualEncoder(config()).eval()
    feats = torch.randn(3, 3, net.image_proj.in_features)
    waves = tones([300, 300, 900])
    with torch.no_grad():
        frames_only = net.project_video(feats)
        fused = net.project_video(feats, waves, torch.tensor([False, True, True]))
        audio = net.encode_audio(waves)
    assert torch.equal(fused[0], frames_only[0])  # no track: exactly the frames' vector
    assert not torch.allclose(fused[1], frames_only[1], atol=1e-3)
    w = net.audio_weight
    assert w == pytest.approx(float(torch.sigmoid(torch.tensor(-1.0))))
    expected = torch.nn.functional.normalize((1 - w) * frames_only[1:] + w * audio[1:], dim=-1)
    assert torch.allclose(fused[1:], expected, atol=1e-5)
    assert not torch.allclose(fused[1], fused[2], atol=1e-3)  # same frames, different tracks


def test_fusing_audio_needs_the_audio_tower_and_a_model_without_it_ignores_tracks() -> None:
    with pytest.raises(ModelError, match="video_audio"):
        DualEncoder(config(audio_tower=""))
    net = DualEncoder(config(video_audio=False, audio_tower="")).eval()
    feats = torch.randn(2, 3, net.image_proj.in_features)
    with torch.no_grad():
        assert torch.equal(net.project_video(feats, tones([300, 900]), torch.tensor([True, True])),
                           net.project_video(feats))
    assert net.audio_weight == 0.0


@pytest.mark.integration  # trains a model until it has learned the task
def test_the_contrastive_objective_learns_the_tracks_and_their_weight_when_only_the_sound_tells_clips_apart() -> None:
    """Every clip shows the same frames; its caption names its tone. Frames alone are at chance (1 of 4); trained with
    the symmetric InfoNCE the pipeline uses, the fused vectors find their caption and the audio weight grows."""
    from mmretrieval.models.losses import symmetric_info_nce

    torch.manual_seed(0)
    net = DualEncoder(config())
    freqs = [250.0, 500.0, 1000.0, 2000.0]
    captions = torch.randn(4, 16)  # one caption feature per tone
    frames = torch.randn(1, 3, net.image_proj.in_features).expand(4, -1, -1)
    audio = torch.ones(4, dtype=torch.bool)
    opt = torch.optim.AdamW(net.parameters(), lr=3e-3)
    start = net.audio_weight
    rng = np.random.default_rng(0)
    for _ in range(60):
        waves = tones(freqs) * torch.from_numpy(rng.uniform(0.5, 1.5, (4, 1)).astype(np.float32))
        loss = symmetric_info_nce(net.project_video(frames, waves, audio), net.project_text(captions),
                                  net.logit_scale, torch.eye(4, dtype=torch.bool))
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    with torch.no_grad():
        clips = net.project_video(frames, tones(freqs), audio)
        silent = net.project_video(frames)
        texts = net.project_text(captions)
    assert (texts @ clips.T).argmax(dim=1).tolist() == [0, 1, 2, 3]
    assert len(set((texts @ silent.T).argmax(dim=1).tolist())) == 1  # frames alone: one clip for every caption
    assert net.audio_weight > start + 0.01  # AdamW moves the gate's logit by <= lr a step: 60 steps, <= 0.18


def test_the_training_items_record_which_videos_have_a_track_and_only_then_the_model_fuses_audio() -> None:
    from mmretrieval.core.params import ModelParams
    from mmretrieval.stages.train import model_config
    from mmretrieval.training.data import TrainItems

    meta = [json.dumps({"video": {"has_audio": True}}), json.dumps({"video": {"has_audio": False}}), "", "{bad"]
    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "modality": "video", "media": ["a.mp4", "b.mp4", "c.mp4", "d"],
                          "text": ["one", "two", "three", "four"], "label": "", "metadata": meta})
    items = TrainItems.from_frame(frame)
    assert items.audio_tracks == [True, False, False, False]
    mp = ModelParams(image_backbone="resnet18", image_size=32)
    with_track = model_config(mp, 16, ["video"], audio_tracks=True)
    assert with_track.video_audio and with_track.audio_tower == "cnn"
    without = model_config(mp, 16, ["video"], audio_tracks=False)
    assert not without.video_audio and without.audio_tower == ""
    assert not model_config(mp.model_copy(update={"video_audio": False}), 16, ["video"], audio_tracks=True).video_audio


def test_encoding_leaves_the_decoding_workers_their_cores_and_restores_torchs_threads() -> None:
    import os

    from mmretrieval.core.params import EmbedParams
    from mmretrieval.stages.embed import _threads, compute_threads

    cores = os.cpu_count() or 1
    assert compute_threads(EmbedParams(num_workers=1), 1, "cpu") == max(1, cores - 1)
    assert compute_threads(EmbedParams(num_workers=1), 0, "cpu") == cores  # no worker started: every core
    assert compute_threads(EmbedParams(num_workers=cores + 3), cores + 3, "cpu") == 1
    assert compute_threads(EmbedParams(torch_threads=3), 1, "cpu") == 3
    assert compute_threads(EmbedParams(), 1, "cuda") == 0
    before = torch.get_num_threads()
    with _threads(before + 1):
        assert torch.get_num_threads() == before + 1
    assert torch.get_num_threads() == before
