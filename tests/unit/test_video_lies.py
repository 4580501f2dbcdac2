"""Videos that lie about themselves (mmretrieval.media.video): a live WebM without a duration, the two rotation
conventions (display matrix counter-clockwise, legacy ``rotate`` tag clockwise), clips that show one picture."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mmretrieval.core.params import ValidateParams
from mmretrieval.media.video import probe, read_frame_arrays, read_frames, video_problem, write_clip

W, H = 64, 48


def write_live_webm(path: Path, frames: np.ndarray, codec: str = "libvpx", fps: int = 10) -> Path:
    """A WebM as a browser's MediaRecorder writes it: muxed live, so no Duration element and no Cues."""
    import av

    with av.open(str(path), "w", format="webm", options={"live": "1"}) as c:
        s = c.add_stream(codec, rate=fps)
        s.width, s.height, s.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        s.options = {"deadline": "realtime", "cpu-used": "8"}  # fast: the test needs the container, not quality
        for i, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts = i
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def wipe(n: int, black: int = 3) -> np.ndarray:
    """``n`` frames: black for the first ``black`` (a camera starting up), then a red bar growing left to right."""
    out = np.zeros((n, H, W, 3), np.uint8)
    for i in range(black, n):
        out[i, :, : 1 + i * W // n] = (200, 50, 50)
    return out


@pytest.mark.parametrize("codec", ["libvpx", "libvpx-vp9"])
def test_a_webm_without_a_declared_duration_is_measured_and_sampled_over_the_whole_clip(tmp_path: Path,
                                                                                        codec: str) -> None:
    import av

    path = write_live_webm(tmp_path / "recorded.webm", wipe(40), codec)
    with av.open(str(path)) as c:  # the case: nothing in the file says how long it is
        assert c.streams.video[0].duration is None and not c.duration
    assert probe(path).duration_s == pytest.approx(4.0, abs=0.11)
    frames = read_frames(path, k=8)
    assert frames.times == pytest.approx([0.2 + 0.5 * i for i in range(8)], abs=0.06)
    widths = [int((np.asarray(im)[H // 2, :, 0] > 100).sum()) for im in frames.images]
    assert widths == sorted(widths) and widths[0] < widths[-1] and len(set(widths)) == 8  # eight moments
    assert video_problem(path, ValidateParams()) is None


@pytest.mark.parametrize("suffix", ["webm", "mp4"])
def test_a_clip_that_shows_one_picture_is_quarantined_frozen(tmp_path: Path, suffix: str) -> None:
    still = np.zeros((30, H, W, 3), np.uint8)
    still[:, 10:30, 10:40] = (30, 160, 220)
    path = write_live_webm(tmp_path / "still.webm", still) if suffix == "webm" else \
        write_clip(tmp_path / "still.mp4", still, fps=10)
    problem = video_problem(path, ValidateParams())
    assert problem is not None and problem.reason == "frozen_video" and "same picture" in problem.message
    moving = write_live_webm(tmp_path / "moving.webm", wipe(30, black=0)) if suffix == "webm" else \
        write_clip(tmp_path / "moving.mp4", wipe(30, black=0), fps=10)
    assert video_problem(moving, ValidateParams()) is None


def upright() -> np.ndarray:
    """A portrait picture with a red marker in its top-left corner (asymmetric under every turn)."""
    out = np.full((64, 48, 3), 40, np.uint8)
    out[:16, :16] = (250, 20, 20)
    return out


def marker_corner(pixels: np.ndarray) -> tuple[int, tuple[int, int]]:
    """(quadrant holding the red marker: 0 top-left .. 3 bottom-right, (height, width))."""
    h, w = pixels.shape[:2]
    quads = [pixels[:h // 2, :w // 2], pixels[:h // 2, w // 2:], pixels[h // 2:, :w // 2], pixels[h // 2:, w // 2:]]
    red = [float(q[..., 0].mean()) - float(q[..., 1].mean()) for q in quads]
    return int(np.argmax(red)), (h, w)


@pytest.mark.parametrize("degrees", [90, 180, 270])
@pytest.mark.parametrize("how", ["matrix", "tag"])
def test_rotation_metadata_turns_every_frame_upright(tmp_path: Path, degrees: int, how: str) -> None:
    if how == "matrix":  # the display matrix counts counter-clockwise: stored turned clockwise by as much
        stored = np.rot90(upright(), k=-degrees // 90)
        path = write_clip(tmp_path / "m.mp4", np.stack([stored] * 6), fps=6, rotation=degrees)
    else:  # the legacy tag counts clockwise (what a player turns the stored frames by): stored turned the other way
        stored = np.rot90(upright(), k=degrees // 90)
        path = write_clip(tmp_path / "t.mkv", np.stack([stored] * 6), fps=6, tags={"rotate": str(degrees)})
    assert marker_corner(stored) != (0, (64, 48))  # the file itself is not upright
    for pixels in [np.asarray(im) for im in read_frames(path, k=2).images] + list(read_frame_arrays(path, k=2).pixels):
        assert marker_corner(pixels) == (0, (64, 48))
