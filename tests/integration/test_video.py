"""Video end to end on clips generated at test time: every bad-video kind quarantined with its reason, every container
format decoded by seeking, and `mmr run` through train/evaluate/publish to a search hit that says when it matched."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from mmretrieval.media.video import read_frames, write_clip
from mmretrieval.runner import run_stage
from mmretrieval.serving.pyfunc import ARTIFACT as PYFUNC_WEIGHTS
from mmretrieval.stages.ingest import ingest
from tests.helpers.files import write_manifest
from tests.helpers.workspace import mmr, shared

pytestmark = pytest.mark.integration

VIDEO_PARAMS = """
datasets: [demo]
model: {video_frames: 4, video_pool: attention}
train: {epochs: 2, batch_size: 16}
gate: {floor: 0.0, margin_over_chance: -1.0, chance_z: 0.0}  # plumbing, not quality (bench/video_temporal.py)
"""


def noise(n: int, h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 255, (n, h, w, 3), dtype=np.uint8)


def write_audio_only(path: Path) -> Path:
    import av

    with av.open(str(path), "w") as c:
        a = c.add_stream("aac", rate=16000)
        for start in range(0, 16000, 1024):
            f = av.AudioFrame.from_ndarray(np.full((1, 1024), 0.1, np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts = 16000, start
            for p in a.encode(f):
                c.mux(p)
        for p in a.encode():
            c.mux(p)
    return path


def write_junk_packets(good: Path, path: Path) -> Path:
    """The container and timestamps of ``good`` with every video packet's bytes replaced by noise."""
    import av

    rng = np.random.default_rng(1)
    with av.open(str(good)) as src, av.open(str(path), "w") as dst:
        out = dst.add_stream_from_template(src.streams.video[0])
        for pk in src.demux(src.streams.video[0]):
            if pk.size:
                q = av.Packet(rng.integers(0, 255, pk.size, dtype=np.uint8).tobytes())
                q.pts, q.dts, q.time_base, q.stream = pk.pts, pk.dts, pk.time_base, out
                dst.mux(q)
    return path


@pytest.fixture
def video_workspace(workspace: Path) -> Path:
    (workspace / "params.yaml").write_text(VIDEO_PARAMS + "validate: {max_video_seconds: 5, max_video_pixels: 5000}\n")
    return workspace


def test_every_bad_video_kind_is_quarantined_with_its_reason_and_counts_add_up(video_workspace: Path) -> None:
    src = video_workspace.parent / "src"
    v = src / "videos"
    wave = (0.3 * np.sin(np.arange(16000 * 4) / 8)).astype(np.float32)
    good = {"mp4": "libx264", "mkv": "libx264", "webm": "libvpx-vp9", "mov": "libx264", "avi": "mjpeg"}
    for suffix, codec in good.items():
        write_clip(v / f"ok.{suffix}", noise(40), fps=10, codec=codec, audio=wave if suffix == "mov" else None)
    write_clip(v / "vfr.mp4", noise(45), times=[0.0, 0.5, 1.0, 1.5, 2.0] + [2.0 + 0.05 * i for i in range(1, 41)])
    write_clip(v / "upright.mp4", noise(20), fps=10, rotation=90)
    write_clip(v / "full.mkv", noise(40, seed=2), fps=10)
    data = (v / "full.mkv").read_bytes()
    (v / "truncated.mkv").write_bytes(data[:len(data) // 2])
    (v / "cut_header.mp4").write_bytes((v / "ok.mp4").read_bytes()[:300])
    (v / "text.avi").write_bytes(b"not a video at all " * 20)
    write_audio_only(v / "sound_only.mkv")
    write_junk_packets(v / "full.mkv", v / "junk.mkv")
    write_clip(v / "long.mp4", noise(60, h=16, w=16), fps=10)  # 6 s > 5 s cap
    write_clip(v / "large.mp4", noise(10, h=64, w=96), fps=10)  # 6144 px > 5000 cap
    write_clip(v / "rotate_tag.mkv", noise(10), fps=10, tags={"rotate": "sideways"})
    write_clip(v / "rotate_45.mp4", noise(10), fps=10, rotation=45)
    Image.new("RGB", (64, 48), "red").save(v / "still.mp4", format="PNG")  # a photo named like a video
    expected = {"ok.mp4": "", "ok.mkv": "", "ok.webm": "", "ok.mov": "", "ok.avi": "", "vfr.mp4": "",
                "upright.mp4": "", "truncated.mkv": "truncated_video", "cut_header.mp4": "undecodable",
                "text.avi": "undecodable", "sound_only.mkv": "no_video_stream", "junk.mkv": "no_frames",
                "long.mp4": "video_too_long", "large.mp4": "video_too_large", "rotate_tag.mkv": "bad_rotation",
                "rotate_45.mp4": "bad_rotation", "still.mp4": "no_video_stream"}
    rows = [{"id": name, "modality": "video", "path": f"videos/{name}", "text": f"clip {name}"} for name in expected]
    rows.append({"id": "gone", "modality": "video", "path": "videos/gone.mp4", "text": "missing"})
    ingest(write_manifest(src, rows), "badvideo")

    validated = run_stage("validate", "badvideo")  # bad files never stop the run
    reasons = pd.read_parquet(video_workspace / "data/validated/badvideo/rows.parquet").set_index("id")["reason"]
    assert reasons.to_dict() == expected | {"gone": "missing_file"}
    assert validated["valid"] + validated["quarantine"] == validated["rows"] == len(rows)
    result = run_stage("clean", "badvideo")
    assert result["input"] == result["clean"] + result["quarantined"] + result["merged_duplicates"] == len(rows)
    assert result["clean"] == 7
    clean = pd.read_parquet(video_workspace / "data/clean/badvideo/manifest.parquet").set_index("id")
    facts = {i: json.loads(m)["video"] for i, m in clean["metadata"].items()}
    assert facts["ok.mov"]["has_audio"] and not facts["ok.mp4"]["has_audio"]
    assert facts["ok.mp4"] | {"codec": "h264"} == {"duration_s": 4.0, "fps": 10.0, "width": 64, "height": 48,
                                                   "codec": "h264", "has_audio": False, "rotation": 0,
                                                   "variable_frame_rate": False}
    assert facts["vfr.mp4"]["variable_frame_rate"] and facts["upright.mp4"]["rotation"] == 90
    kept = video_workspace / "data/clean/badvideo" / clean.loc["ok.webm", "media"]
    assert kept.suffix == ".webm" and kept.read_bytes() == (v / "ok.webm").read_bytes()  # the original is kept


def test_frames_are_taken_at_their_timestamps_in_every_container_and_at_a_variable_frame_rate(tmp_path: Path) -> None:
    """Each frame's content encodes its own time (a bright column at x = 10 * t): the sampled frame must match the
    time it reports, whether the file has a constant or a variable frame rate."""

    def timed(times: list[float]) -> np.ndarray:
        out = np.zeros((len(times), 48, 64, 3), dtype=np.uint8)
        for i, t in enumerate(times):
            out[i, :, int(round(10 * t)) % 64] = 255
        return out

    for suffix, codec in {"mp4": "libx264", "mkv": "libx264", "webm": "libvpx-vp9", "mov": "libx264",
                          "avi": "mjpeg"}.items():
        times = [i / 10 for i in range(40)]
        frames = read_frames(write_clip(tmp_path / f"c.{suffix}", timed(times), fps=10, codec=codec), k=4)
        assert [round(t, 2) for t in frames.times] == [0.5, 1.5, 2.5, 3.5], suffix
        columns = [int(np.asarray(im)[:, :, 1].sum(axis=0).argmax()) for im in frames.images]
        assert columns == [round(10 * t) for t in frames.times], suffix
    vfr = [0.0, 0.5, 1.0, 1.5, 2.0] + [2.0 + 0.05 * i for i in range(1, 41)]  # 2 fps, then 20 fps
    frames = read_frames(write_clip(tmp_path / "vfr.mp4", timed(vfr), times=vfr), k=4)
    assert frames.info.variable_frame_rate
    for t, want, im in zip(frames.times, [0.5, 1.5, 2.55, 3.6], frames.images, strict=True):
        assert abs(t - want) < 0.06
        assert int(np.asarray(im)[:, :, 1].sum(axis=0).argmax()) == round(10 * t)


def test_mmr_run_takes_generated_clips_to_search_hits_that_say_when_they_matched(video_workspace: Path) -> None:
    from mmretrieval.demo.moving_digits import clip_frames, digit_images, write_clips

    (video_workspace / "params.yaml").write_text(VIDEO_PARAMS)
    src = video_workspace.parent / "src"
    images, targets = digit_images()
    rows = write_clips(src / "clips", images, targets, range(6), frames=8, size=64)
    for i, r in enumerate(rows):
        r["split"] = "test" if i < 4 else "train"
    tone = 0.3 * np.sin(2 * np.pi * 330 * np.arange(16000) / 16000)
    for r in rows[4:10]:  # six training clips get an audio track: the model trains with it fused
        stem = Path(r["path"]).stem
        write_clip(src / r["path"], clip_frames(images[int(stem[5:9])], stem.split("_")[1], 8, 64), fps=8.0,
                   audio=tone)
    # a frame of a clip as the query (image -> video): the clips last 1 s (8 frames at 8 fps), so the K = 4 sampled
    # times are 0.125, 0.375, 0.625 and 0.875 s; the query is the frame at the third
    frame = read_frames(src / "clips/digit0003_left.mp4", times=[0.625]).images[0]
    frame.save(src / "frame.png")
    manifest = write_manifest(src, rows)
    assert mmr("ingest", str(manifest), "--name", "vid", cwd=video_workspace).returncode == 0
    out = mmr("run", "--dataset", "vid", cwd=video_workspace)
    assert out.returncode == 0, out.stderr[-3000:]
    results = json.loads(out.stdout)
    metrics = results["evaluate"]["metrics"]
    assert {"t2v_recall@10", "v2t_recall@10", "t2v_hit_rate@1_chance"} <= set(metrics)
    assert "t2v_recall@10" in results["promote"]["reasons"][0]  # the gate fell back to the video twin of t2i_*
    assert results["embed"]["modalities"] == {"video": 24}
    assert results["publish"]["checks"]["rows"] == 24
    clean = pd.read_parquet(video_workspace / "data/clean/vid/manifest.parquet")
    assert sum(json.loads(m)["video"]["has_audio"] for m in clean["metadata"]) == 6
    configs = [json.loads(c.read_text()) for c in video_workspace.rglob("config.json")
               if c.parent.name == PYFUNC_WEIGHTS]
    assert configs and all(c["video_audio"] and c["audio_tower"] == "cnn" for c in configs)  # trained with tracks

    out = mmr("search", "a zero moving up", "--dataset", "vid", "--k", "3", cwd=video_workspace)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("video") == 3 and "best at" in out.stdout
    out = mmr("search", "--image", str(src / "frame.png"), "--dataset", "vid", "--k", "2", "--json",
              cwd=video_workspace)
    assert out.returncode == 0, out.stderr[-3000:]
    hits = {h["id"]: h for h in map(json.loads, out.stdout.splitlines())}
    # clips of the same digit image come first (its mirror, moving right, holds the same frames); the clip itself
    # matched at the frame's own time
    assert "clip_0003_left" in hits and all(i.startswith("clip_0003_") for i in hits)
    assert hits["clip_0003_left"]["best_time_s"] == 0.625
    assert "frames" not in hits["clip_0003_left"]["metadata"]  # per-frame vectors give the time, are not returned


def test_the_shared_sample_videos_decode_by_seeking(tmp_path: Path) -> None:
    """The 23 real clips (CC BY 4.0): every one opens, probes and yields K frames; one has an audio track."""
    from mmretrieval.core.params import ValidateParams
    from mmretrieval.media.video import probe, video_problem

    folder = shared("sample_videos")
    frame = pd.read_csv(folder / "manifest.csv", dtype=str, keep_default_na=False)
    paths = [folder / p for p in frame["path"]]
    assert len(paths) >= 20
    problems = {p.name: video_problem(p, ValidateParams(), 8) for p in paths}
    assert {k: v for k, v in problems.items() if v is not None} == {}
    assert sum(probe(p).has_audio for p in paths) >= 1
    assert len(read_frames(paths[0], k=8, short_side=256).images) == 8


def test_a_clips_audio_track_is_read_from_the_file_and_fused_and_a_clip_without_one_is_its_frames(
        tmp_path: Path) -> None:
    """Three real MP4s with the same frames: a 440 Hz track, a 1760 Hz track, no track. The track is decoded from the
    container (its pitch survives), each one moves the clip's vector its own way, and the clip without one gets the
    frames' vector, as a model that fuses no audio gives it."""
    import dataclasses

    import torch

    from mmretrieval.media.video import probe, read_audio_track
    from mmretrieval.models.dual_encoder import DualEncoder, ModelConfig, RetrievalModel

    t = np.arange(16000 * 3) / 16000
    frames = noise(30, seed=3)
    paths = {f: write_clip(tmp_path / f"{f}.mp4", frames, fps=10, audio=(0.3 * np.sin(2 * np.pi * f * t)))
             for f in (440, 1760)}
    paths[0] = write_clip(tmp_path / "silent_film.mp4", frames, fps=10)
    assert [probe(p).has_audio for p in paths.values()] == [True, True, False]
    for f in (440, 1760):
        wave = read_audio_track(paths[f], 16000)
        assert abs(len(wave) / 16000 - 3.0) < 0.1
        assert abs(np.abs(np.fft.rfft(wave)).argmax() * 16000 / len(wave) - f) < 5
    assert read_audio_track(paths[0], 16000) is None

    config = ModelConfig(text_model="unused", text_dim=16, image_backbone="resnet18", image_size=32, embed_dim=8,
                         text_head="linear", video_pool="attention", video_frames=4, audio_tower="cnn",
                         video_audio=True)
    torch.manual_seed(0)
    model = RetrievalModel(DualEncoder(config), text=None)  # type: ignore[arg-type]
    clips = [model.load_clip(p) for p in paths.values()]
    assert [bool(c.audio) for c in clips] == [True, True, False]
    assert clips[2].wave.abs().max() == 0 and clips[0].wave.shape == (24000,)  # the middle 1.5 s of the track
    vectors = model.encode_video_list(clips)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    frames_only = model.encode_video_list([c._replace(audio=torch.tensor(False)) for c in clips])
    assert np.array_equal(vectors[2], frames_only[2])  # no track: the frames' vector
    assert not np.allclose(vectors[0], frames_only[0], atol=1e-3) and not np.allclose(vectors[1], frames_only[1],
                                                                                        atol=1e-3)
    swapped = model.encode_video_list([clips[0]._replace(wave=clips[1].wave)])  # 440 Hz clip's frames, 1760 Hz track
    assert not np.allclose(swapped[0], vectors[0], atol=1e-3)  # the track's content matters, not just its presence
    with torch.no_grad():
        model.net.video_audio_gate.fill_(-30.0)  # the learned weight is what lets the track in
    assert np.allclose(model.encode_video_list(clips[:2]), frames_only[:2], atol=1e-5)

    deaf = RetrievalModel(DualEncoder(dataclasses.replace(config, video_audio=False)), text=None)  # type: ignore[arg-type]
    clip = deaf.load_clip(paths[440])
    assert clip.wave.numel() == 0 and not bool(clip.audio)  # a model that fuses no audio does not read the track


def test_frame_arrays_hold_the_pixels_of_read_frames_upright_and_preprocess_as_the_image_transform(
        tmp_path: Path) -> None:
    import torch

    from mmretrieval.media.video import read_frame_arrays
    from mmretrieval.models.dual_encoder import ModelConfig, eval_transform, preprocess_frames

    wide = noise(12, h=120, w=200, seed=4)
    for name, rotation in (("plain.mp4", None), ("turned.mp4", 90), ("upside.mkv", 180)):
        path = write_clip(tmp_path / name, wide, fps=6, rotation=rotation)
        for short in (0, 64):
            images = read_frames(path, k=3, short_side=short)
            arrays = read_frame_arrays(path, k=3, short_side=short)
            assert arrays.times == images.times
            assert [np.asarray(im).shape for im in images.images] == [a.shape for a in arrays.pixels], name
            assert all(np.array_equal(np.asarray(im), a) for im, a in zip(images.images, arrays.pixels, strict=True))
    assert read_frame_arrays(tmp_path / "turned.mp4", k=1).pixels.shape == (1, 200, 120, 3)  # upright: portrait
    config = ModelConfig(text_model="unused", text_dim=16, image_backbone="resnet18", image_size=48, embed_dim=8,
                         image_crop_pct=0.75, image_interpolation="bicubic")
    transform = eval_transform(config)
    for short in (64, 0):  # at the resize size (one tensor op), and smaller (the transform enlarges it)
        arrays = read_frame_arrays(tmp_path / "plain.mp4", k=3, short_side=short)
        if short == 0:
            arrays = read_frame_arrays(write_clip(tmp_path / "small.mp4", noise(6, h=40, w=56), fps=6), k=3)
        expected = torch.stack([transform(im) for im in
                                read_frames(tmp_path / ("plain.mp4" if short else "small.mp4"), k=3,
                                            short_side=short).images])
        got = preprocess_frames(config, arrays.pixels, transform)
        assert got.shape == expected.shape == (3, 3, 48, 48)
        assert torch.allclose(got, expected, atol=1e-5)


def test_skipping_non_reference_frames_on_the_way_still_returns_the_frame_on_screen_at_each_target(
        tmp_path: Path) -> None:
    """25 fps H.264 with B-frames, one keyframe or one every 2 s or 0.5 s: the decoder drops non-reference frames
    while far from a target, yet every sampled frame is the one shown at its target (within half a frame), as its
    content (a bright column at x = frame number) says."""
    import av

    from mmretrieval.media.video import read_frame_arrays, sample_times

    frames = np.zeros((250, 48, 256, 3), dtype=np.uint8)
    for i in range(250):
        frames[i, :, i, :2] = 255
    for gop in (250, 50, 12):
        path = write_clip(tmp_path / f"gop{gop}.mp4", frames, fps=25, gop=gop)
        with av.open(str(path)) as c:
            assert av.video.frame.PictureType.B in {f.pict_type for f in c.decode(video=0)}  # something to skip
        for k in (8, 16, 50):
            got = read_frame_arrays(path, k)
            assert [int(a[:, :, 1].sum(axis=0).argmax()) for a in got.pixels] == [round(t * 25) for t in got.times]
            assert all(abs(t - want) <= 0.5 / 25 + 1e-6 for t, want in zip(got.times, sample_times(10.0, k),
                                                                           strict=True)), (gop, k)
