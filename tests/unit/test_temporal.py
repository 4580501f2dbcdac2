"""Temporal pooling, the per-frame vectors that say where a clip matched, and the video twins of the metrics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mmretrieval.media.video import best_time, pack_frames, sample_times
from mmretrieval.models.temporal import TemporalPool


def test_sample_times_are_the_centres_of_k_equal_slices() -> None:
    assert sample_times(8.0, 4) == [1.0, 3.0, 5.0, 7.0]
    with pytest.raises(ValueError):
        sample_times(8.0, 0)


def test_mean_pooling_is_blind_to_order_and_attention_starts_as_mean_pooling() -> None:
    x = torch.randn(3, 6, 16)
    mean = TemporalPool("mean", 16, 6)
    assert torch.allclose(mean(x), mean(x.flip(1)))
    attention = TemporalPool("attention", 16, 6, dim=8, heads=2).eval()
    assert torch.allclose(attention(x), x.mean(1))  # zero-initialised correction: training starts from the mean


@pytest.mark.integration  # trains a model until it has learned the task
def test_attention_pooling_learns_to_tell_a_sequence_from_its_reverse() -> None:
    """Forward vs reversed sequences of the same frames: a linear read-out of mean pooling is at chance, of the
    attention pool it separates them."""
    torch.manual_seed(0)
    frames = torch.randn(64, 6, 16)
    x = torch.cat([frames, frames.flip(1)])
    y = torch.cat([torch.zeros(64), torch.ones(64)])
    accuracy = {}
    for kind in ("mean", "attention"):
        pool = TemporalPool(kind, 16, 6, dim=16, heads=2, dropout=0.0)
        head = torch.nn.Linear(16, 1)
        opt = torch.optim.Adam([*pool.parameters(), *head.parameters()], lr=3e-3)
        for _ in range(150):
            loss = torch.nn.functional.binary_cross_entropy_with_logits(head(pool(x)).squeeze(1), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            accuracy[kind] = float(((head(pool(x)).squeeze(1) > 0).float() == y).float().mean())
    assert accuracy["mean"] <= 0.6 and accuracy["attention"] >= 0.95, accuracy


def test_packed_frame_vectors_name_the_time_of_the_frame_nearest_to_the_query() -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(4, 8)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    packed = pack_frames([0.5, 1.5, 2.5, 3.5], vectors.ravel(), 8)
    assert best_time(packed, vectors[2]) == 2.5
    assert best_time(packed, np.ones(5)) is None  # another model's dimension: no answer rather than a wrong one


def test_video_only_datasets_gate_on_the_video_twin_of_the_gate_metric() -> None:
    from mmretrieval.evaluation.metrics import resolve_metric

    assert resolve_metric("t2i_recall@10", {"t2v_recall@10": 0.5}) == "t2v_recall@10"
    assert resolve_metric("i2t_mrr", {"v2t_mrr": 0.5, "a2t_mrr": 0.1}) == "a2t_mrr"  # audio first, as before


def test_a_hit_carries_best_time_s_in_its_json() -> None:
    import json

    from mmretrieval.serving.client import Hit

    hit = Hit(1, "c", 0.9, "video", "c.mp4", "", "", "col", "1", "d", {}, best_time_s=2.5)
    assert json.loads(hit.to_json())["best_time_s"] == 2.5


def test_a_trainable_image_tower_encodes_clips_and_their_frames_into_the_shared_space() -> None:
    """Video on a from-scratch backbone (no cached features): (B, K, 3, S, S) frames -> clip and frame unit vectors."""
    from mmretrieval.models.dual_encoder import DualEncoder, ModelConfig

    config = ModelConfig(text_model="unused", text_dim=16, image_backbone="resnet18", image_size=32, embed_dim=8,
                         text_head="linear", video_pool="attention", video_frames=3)
    net = DualEncoder(config).eval()
    pixels = torch.randn(2, 3, 3, 32, 32)
    with torch.no_grad():
        clips = net.encode_video(pixels)
        frames = net.project_image(net.frame_features(pixels).flatten(0, 1))
    assert clips.shape == (2, 8) and frames.shape == (6, 8)
    assert torch.allclose(clips.norm(dim=1), torch.ones(2), atol=1e-5)
    with pytest.raises(ValueError, match="3 frames"):
        net.temporal(torch.randn(1, 4, net.temporal.reduce.in_features))
