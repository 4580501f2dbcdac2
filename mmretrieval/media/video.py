"""Video files through PyAV: probe the container, check it, and sample K frames by seeking (never a full decode).

Frames are taken at K timestamps, uniform by default (the centres of K equal slices of the clip), so a clip with a
variable frame rate is sampled by time, not by frame number. For each timestamp the reader seeks to the keyframe
before it only when no keyframe lies between the frame it decoded last and the target (else it decodes forward), so
the cost is about K short runs of decoding, not the whole file.

Reason codes of :func:`video_problem` (what validation quarantines):

====================  =====================================================================================
``undecodable``       the container does not open (not a video, unknown format, header cut off)
``no_video_stream``   the container opens but has no video stream (an audio-only file, say)
``no_frames``         a video stream without a single decodable frame
``truncated_video``   the frames stop well before the duration the container declares (a cut-off file)
``video_too_long``    longer than ``validate.max_video_seconds``
``video_too_large``   more pixels per frame than ``validate.max_video_pixels``
``bad_rotation``      rotation metadata that cannot be read as a multiple of 90 degrees
``frozen_video``      every sampled frame is the same picture (a still, or a clip whose duration is unknown)
====================  =====================================================================================

A container that declares no duration (a WebM written live by a browser's MediaRecorder: no Duration element, no
Cues) is measured by demuxing its packets to the end (the last packet's end time, no decoding), so the sample times
spread over the whole clip. Rotation: the display matrix counts degrees counter-clockwise, the legacy ``rotate``
stream tag that older FFmpeg muxers wrote counts them clockwise; both are turned into
:attr:`VideoInfo.rotation` (counter-clockwise), and the matrix wins when a file has both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mmretrieval.core.errors import MediaError
from mmretrieval.media.files import Problem, size_problem

if TYPE_CHECKING:
    from collections.abc import Iterator

    from PIL import Image

    from mmretrieval.core.params import ValidateParams

VIDEO_SUFFIXES = (".mp4", ".m4v", ".mkv", ".webm", ".mov", ".avi")
SEEK_GAP_S = 1.0  # without a keyframe index: decode forward to targets closer than this, seek to farther ones
DECODE_THREADS = "SLICE"  # slice threads: frame threads ("AUTO") cost about a quarter more CPU when seeking
SKIP_MARGIN_S = 0.05  # decoding towards a target t, non-reference frames shown before t - half a frame - this are
# dropped by the decoder (nothing depends on them; they cannot be the frame on screen at t)
TRUNCATION_SLACK = 0.25  # frames ending before (1 - this) of the declared duration mean a truncated file
VFR_SPREAD = 1.5  # packet intervals differing by more than this factor: variable frame rate
FROZEN_MAX_DIFF = 4  # sampled frames (16-pixel short side) whose pixels all differ by at most this: one picture


@dataclass(frozen=True)
class VideoInfo:
    """What probing a video tells without decoding it."""

    duration_s: float  # seconds
    fps: float  # average frames per second (0 when unknown)
    width: int  # pixels, as stored (before rotation)
    height: int
    codec: str
    has_audio: bool
    rotation: int  # degrees counter-clockwise to display upright: 0, 90, 180 or 270
    variable_frame_rate: bool

    def as_dict(self) -> dict[str, Any]:
        return {"duration_s": round(self.duration_s, 3), "fps": round(self.fps, 3), "width": self.width,
                "height": self.height, "codec": self.codec, "has_audio": self.has_audio, "rotation": self.rotation,
                "variable_frame_rate": self.variable_frame_rate}


@dataclass(frozen=True)
class Frames:
    """K frames sampled from a clip: ``images[i]`` was shown at ``times[i]`` seconds."""

    images: list[Image.Image]
    times: list[float]  # seconds from the start of the clip, of the frames actually decoded
    info: VideoInfo


class BadVideo(MediaError):
    """A video that cannot be used; ``reason`` is one of the module's reason codes."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _open(path: Path) -> Any:
    import av

    try:
        return av.open(str(path), metadata_errors="ignore")
    except (av.FFmpegError, OSError, ValueError, UnicodeDecodeError) as e:
        raise BadVideo("undecodable", f"video {path.name} does not open: {e}") from e


def _rotation(stream: Any, path: Path) -> int:
    """Degrees counter-clockwise that turn the stored frames upright: the display matrix's (counter-clockwise, as
    PyAV exposes it on decoded frames), else the negated legacy ``rotate`` tag (clockwise: FFmpeg's old muxers wrote
    the turn a player applies clockwise). :class:`BadVideo` (``bad_rotation``) when either is unreadable."""
    tags = {str(k).lower(): str(v) for k, v in (stream.metadata or {}).items()}
    raw = tags.get("rotate")
    degrees = _first_frame_rotation(stream)  # the display matrix
    if not degrees and raw is not None:
        try:
            degrees = -float(raw)  # clockwise -> counter-clockwise
        except ValueError:
            raise BadVideo("bad_rotation", f"video {path.name} has rotation metadata {raw!r}, not a number") from None
    if not math.isfinite(degrees) or abs(degrees / 90 - round(degrees / 90)) > 1e-3:
        raise BadVideo("bad_rotation", f"video {path.name} has rotation {degrees} degrees, not a multiple of 90")
    return int(round(degrees)) % 360


def _first_frame_rotation(stream: Any) -> float:
    import av

    container = stream.container
    try:
        frame = next(container.decode(stream), None)
    except (av.FFmpegError, OSError, ValueError):
        frame = None  # decoding trouble is judged by read_frames
    _rewind(container)
    return float(getattr(frame, "rotation", 0) or 0) if frame is not None else 0.0


def _rewind(container: Any) -> None:
    import av

    try:
        container.seek(0)
    except (av.FFmpegError, OSError):
        pass  # read_frames seeks before its first frame anyway


def _duration(container: Any, stream: Any) -> float:
    """Seconds: the stream's declared duration, else the container's, else measured (:func:`_demuxed_duration`)."""
    if stream.duration is not None and stream.time_base:
        return float(stream.duration * stream.time_base)
    if container.duration:
        return float(container.duration / 1_000_000)
    return _demuxed_duration(container, stream)


def _demuxed_duration(container: Any, stream: Any) -> float:
    """The duration (seconds) of a stream whose container declares none (a live WebM from MediaRecorder): from its
    first packet's start to its last packet's end, demuxed to the end of the file (packets read, none decoded; a
    packet without a duration lasts one frame interval); without timestamps, the packet count over the frame rate
    (decoding order). 0.0 when nothing can be read."""
    import av

    tb = stream.time_base or Fraction(1, 1000)
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    step = (1 / (float(rate) * float(tb))) if rate else 0.0  # one frame interval in time-base units
    first = end = None
    count = 0
    try:
        for packet in container.demux(stream):
            if packet.size == 0:  # the demuxer's flush packet
                continue
            count += 1
            if packet.pts is not None:
                stop = packet.pts + (packet.duration or step)
                first = packet.pts if first is None else min(first, packet.pts)
                end = stop if end is None else max(end, stop)
    except (av.FFmpegError, OSError, ValueError):
        pass  # a cut-off file: what could be read (the frame checks judge the rest)
    _rewind(container)
    if end is not None and first is not None:
        origin = stream.start_time if stream.start_time is not None else first
        return max(0.0, float((end - min(origin, first)) * tb))
    return count / float(rate) if rate else 0.0


def _variable_rate(container: Any, stream: Any, packets: int = 120) -> bool:
    """Irregular intervals between the first packets' timestamps (demuxed, not decoded)."""
    pts = []
    for packet in container.demux(stream):
        if packet.pts is not None:
            pts.append(packet.pts)
        if len(pts) >= packets:
            break
    _rewind(container)
    deltas = [b - a for a, b in zip(sorted(pts), sorted(pts)[1:], strict=False) if b > a]
    return bool(deltas) and max(deltas) > VFR_SPREAD * min(deltas)


def probe(path: Path) -> VideoInfo:
    """Container facts of a video file. Raises :class:`BadVideo` (undecodable, no_video_stream, bad_rotation)."""
    with _open(path) as c:
        return _probe(c, path)


def _probe(c: Any, path: Path) -> VideoInfo:
    if not c.streams.video:
        raise BadVideo("no_video_stream", f"{path.name} has no video stream "
                       f"({len(c.streams.audio)} audio stream(s))")
    if c.format.name == "image2" or c.format.name.endswith("_pipe"):  # FFmpeg reads a still image as 1 frame
        raise BadVideo("no_video_stream", f"{path.name} is a still image (container {c.format.name!r}), not a video")
    s = c.streams.video[0]
    s.thread_type = DECODE_THREADS  # set before the codec opens
    rate = s.average_rate or s.guessed_rate or 0
    return VideoInfo(duration_s=_duration(c, s), fps=float(rate), width=int(s.codec_context.width or 0),
                     height=int(s.codec_context.height or 0), codec=s.codec_context.name,
                     has_audio=bool(c.streams.audio),
                     rotation=_rotation(s, path), variable_frame_rate=_variable_rate(c, s))


def sample_times(duration_s: float, k: int) -> list[float]:
    """K timestamps (seconds): the centres of K equal slices of ``[0, duration_s)``."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return [(i + 0.5) * duration_s / k for i in range(k)]


def _decode_at(c: Any, path: Path, k: int, times: list[float] | None) -> tuple[list[Any], list[float], VideoInfo]:
    """The decoded frames on screen at the K sample times (or ``times``) of the open container ``c``, by seeking;
    their times (seconds) and the clip's :class:`VideoInfo`. Raises :class:`BadVideo`."""
    import av

    info = _probe(c, path)
    s = c.streams.video[0]
    tb = s.time_base or Fraction(1, 1000)
    start = float(s.start_time * tb) if s.start_time is not None else 0.0
    targets = times if times is not None else sample_times(info.duration_s, k)
    keyframes = sorted(float(e.timestamp * tb) - start for e in s.index_entries if e.is_keyframe) \
        if len(s.index_entries) > 1 else []
    half = 0.5 / info.fps if info.fps else 0.0
    chosen: list[Any] = []
    bound = [-math.inf]  # packets shown before this (seconds) may drop non-reference frames
    decoder, last, pos = None, None, -math.inf
    try:
        for t in targets:
            if last is not None and t <= pos + half:
                chosen.append(last)  # the frame on screen at t was decoded already
                continue
            if keyframes:
                seek = decoder is None or any(pos < kf <= t for kf in keyframes)
            else:
                seek = decoder is None or t - pos > SEEK_GAP_S
            if seek:
                c.seek(int((t + start) / tb), stream=s, backward=True, any_frame=False)
                decoder = _decoded(c, s, start, tb, bound)
            found = None
            bound[0] = t - half - SKIP_MARGIN_S
            for frame in decoder:
                ft = (float(frame.time) - start) if frame.time is not None else pos + 2 * half
                last, pos = frame, ft
                if ft + half >= t:
                    found = frame
                    break
            chosen.append(found if found is not None else last)
    except (av.FFmpegError, OSError, ValueError) as e:
        if last is None:
            raise BadVideo("no_frames", f"video {path.name} has no decodable frame: {e}") from e
        raise BadVideo("truncated_video", f"video {path.name} stops decoding at {max(pos, 0):.2f} s of "
                       f"{info.duration_s:.2f} s: {e}") from e
    if last is None or any(f is None for f in chosen):
        raise BadVideo("no_frames", f"video {path.name} has no decodable frame")
    if info.duration_s > 0 and targets and pos < max(targets) - max(1.0, TRUNCATION_SLACK * info.duration_s):
        raise BadVideo("truncated_video", f"video {path.name} declares {info.duration_s:.2f} s but its frames "
                       f"stop at {pos:.2f} s (truncated?)")
    frame_times = [max(0.0, (float(f.time) - start) if f.time is not None else t)
                   for f, t in zip(chosen, targets, strict=True)]
    return chosen, frame_times, info


def _decoded(c: Any, s: Any, start: float, tb: Fraction, bound: list[float]) -> Iterator[Any]:
    """The frames of stream ``s`` from the container's position on, decoded packet by packet; a packet shown before
    ``bound[0]`` seconds (read at each packet, so the caller moves it from target to target) is decoded with
    ``skip_frame = NONREF``: a non-reference frame there (nothing depends on it) is dropped, about a third of
    H.264's decoding work, while every frame that can be on screen at a target is decoded."""
    cc = s.codec_context
    for packet in c.demux(s):
        if packet.pts is not None:
            want = "NONREF" if float(packet.pts * tb) - start < bound[0] else "DEFAULT"
            if cc.skip_frame != want:
                cc.skip_frame = want
        yield from packet.decode()


def read_frames(path: Path, k: int = 8, short_side: int = 0, times: list[float] | None = None) -> Frames:
    """K RGB frames of a video at :func:`sample_times` (or at ``times``, seconds), by seeking; each scaled so its
    short side is ``short_side`` pixels (0: as stored) and turned upright. Raises :class:`BadVideo`."""
    with _open(path) as c:
        chosen, frame_times, info = _decode_at(c, path, k, times)
        images = [_to_image(f, short_side, info.rotation) for f in chosen]
    return Frames(images, frame_times, info)


@dataclass(frozen=True)
class FrameArrays:
    """K frames as one array: ``pixels[i]`` ((H, W, 3) uint8 RGB, upright) was shown at ``times[i]`` seconds."""

    pixels: Any  # (K, H, W, 3) uint8 numpy array
    times: list[float]
    info: VideoInfo


def read_frame_arrays(path: Path, k: int = 8, short_side: int = 0, times: list[float] | None = None) -> FrameArrays:
    """The frames of :func:`read_frames` as one (K, H, W, 3) uint8 array, without PIL images in between: each frame
    is scaled by the decoder's scaler straight to the size :func:`read_frames` gives (the same pixels) and turned
    upright. Raises :class:`BadVideo`."""
    import numpy as np

    with _open(path) as c:
        chosen, frame_times, info = _decode_at(c, path, k, times)
        arrays = [_to_array(f, short_side, info.rotation) for f in chosen]
    return FrameArrays(np.stack(arrays), frame_times, info)


def _target_size(frame: Any, short_side: int) -> tuple[int, int]:
    """(width, height) a frame is scaled to: short side ``short_side`` when larger (0: as stored)."""
    w, h = frame.width, frame.height
    if short_side and min(w, h) > short_side:
        scale = short_side / min(w, h)
        w, h = max(1, round(w * scale)), max(1, round(h * scale))
    return w, h


def _to_image(frame: Any, short_side: int, rotation: int) -> Image.Image:
    w, h = _target_size(frame, short_side)
    im = frame.to_image(width=w, height=h) if (w, h) != (frame.width, frame.height) else frame.to_image()
    return im.rotate(rotation, expand=True) if rotation else im


def _to_array(frame: Any, short_side: int, rotation: int) -> Any:
    """(H, W, 3) uint8: the pixels :func:`_to_image` gives (one swscale call to RGB at the target size)."""
    import numpy as np

    w, h = _target_size(frame, short_side)
    arr = frame.to_ndarray(width=w, height=h, format="rgb24") if (w, h) != (frame.width, frame.height) else \
        frame.to_ndarray(format="rgb24")
    return np.ascontiguousarray(np.rot90(arr, rotation // 90)) if rotation else arr


def read_audio_track(path: Path, sample_rate: int, max_seconds: float = 60.0) -> Any:
    """The first audio track of a video as a mono float32 waveform at ``sample_rate`` Hz (its first
    ``max_seconds``); ``None`` when the file has no audio track. Raises :class:`BadVideo` (``undecodable``) when
    the container does not open, :class:`~mmretrieval.core.errors.MediaError` when the track does not decode."""
    import av
    import numpy as np

    with _open(path) as c:
        if not c.streams.audio:
            return None
        stream = c.streams.audio[0]
        resampler = av.AudioResampler(format="flt", layout="mono", rate=sample_rate)
        parts: list[Any] = []
        limit = int(max_seconds * sample_rate)
        try:
            for frame in c.decode(stream):
                parts += [out.to_ndarray().reshape(-1) for out in resampler.resample(frame)]
                if sum(len(p) for p in parts) >= limit:
                    break
            parts += [out.to_ndarray().reshape(-1) for out in resampler.resample(None)]
        except (av.FFmpegError, OSError, ValueError) as e:
            raise MediaError(f"the audio track of {path.name} does not decode: {e}") from e
    wave = np.concatenate(parts)[:limit] if parts else np.zeros(0, np.float32)
    return wave.astype(np.float32)


def video_problem(path: Path, params: ValidateParams, k: int = 8) -> Problem | None:
    """None when the file is a usable video (its K frames decode), else the :class:`Problem` (module reasons)."""
    if (problem := size_problem(path, params)) is not None:
        return problem
    try:
        info = probe(path)
        if info.duration_s > params.max_video_seconds:
            return Problem("video_too_long", f"video {path.name} lasts {info.duration_s:.1f} s, above "
                           f"validate.max_video_seconds {params.max_video_seconds}")
        if info.width * info.height > params.max_video_pixels:
            return Problem("video_too_large", f"video {path.name} is {info.width}x{info.height}, above "
                           f"validate.max_video_pixels {params.max_video_pixels}")
        frames = read_frames(path, k, short_side=16)
    except BadVideo as e:
        return Problem(e.reason, str(e))
    if frozen(frames.images):
        return Problem("frozen_video", f"video {path.name}: all {len(frames.images)} frames sampled over its "
                       f"{frames.info.duration_s:.2f} s are the same picture (a still, or a clip that shows nothing "
                       "new); quarantined rather than indexed as one repeated frame")
    return None


def frozen(images: list[Image.Image]) -> bool:
    """Whether ``images`` (two or more frames of one clip) are all the same picture: no pixel differs from the first
    frame's by more than :data:`FROZEN_MAX_DIFF` (0-255). One frame proves nothing: False."""
    import numpy as np

    if len(images) < 2:
        return False
    first = np.asarray(images[0].convert("RGB"), dtype=np.int16)
    return all(np.asarray(im.convert("RGB"), dtype=np.int16).shape == first.shape
               and int(np.abs(np.asarray(im.convert("RGB"), dtype=np.int16) - first).max()) <= FROZEN_MAX_DIFF
               for im in images[1:])


def write_clip(path: Path, frames: Any, fps: float = 8.0, codec: str = "libx264", times: list[float] | None = None,
               audio: Any = None, audio_rate: int = 16_000, gop: int = 0, tags: dict[str, str] | None = None,
               rotation: int | None = None) -> Path:
    """Encode ``frames`` ((N, H, W, 3) uint8 RGB, H and W even) into ``path`` (format from the suffix).

    ``times`` (seconds, increasing) gives each frame its own timestamp (a variable frame rate); ``audio`` a mono
    float waveform at ``audio_rate`` Hz muxed as AAC (MP4/MOV/MKV) or Opus (WebM); ``gop`` the keyframe interval in
    frames (0: the encoder's); ``tags``/``rotation`` stream metadata and a display-matrix rotation (degrees).
    Used by tests, the demo sample and the benchmarks to make real files.
    """
    import av
    import numpy as np

    frames = np.asarray(frames, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as c:
        tb = Fraction(1, 1000) if times is not None else Fraction(1, int(round(fps)))
        s = c.add_stream(codec, rate=int(round(fps)))
        s.width, s.height = int(frames.shape[2]), int(frames.shape[1])
        s.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        s.time_base = tb
        s.codec_context.time_base = tb
        if gop:
            s.codec_context.gop_size = gop
        if tags:
            s.metadata.update(tags)
        if rotation is not None:
            s.set_display_rotation(rotation)
        a = None
        if audio is not None:
            a = c.add_stream("libopus" if path.suffix == ".webm" else "aac", rate=48_000 if path.suffix == ".webm"
                             else audio_rate)
        for i, arr in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(arr, format="rgb24")
            frame.pts = int(round(times[i] * 1000)) if times is not None else i
            frame.time_base = tb
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
        if a is not None:
            wave = np.asarray(audio, dtype=np.float32)
            if path.suffix == ".webm":  # Opus takes 48 kHz
                wave = np.interp(np.arange(0, len(wave), audio_rate / 48_000), np.arange(len(wave)), wave)
            rate = a.codec_context.sample_rate
            chunk = a.codec_context.frame_size or 1024
            for start in range(0, len(wave), chunk):
                piece = np.zeros((1, chunk), dtype=np.float32)
                part = wave[start:start + chunk]
                piece[0, :len(part)] = part
                af = av.AudioFrame.from_ndarray(piece, format="fltp", layout="mono")
                af.sample_rate, af.pts = rate, start
                for packet in a.encode(af):
                    c.mux(packet)
            for packet in a.encode():
                c.mux(packet)
    return path


FRAMES_KEY = "frames"  # hit metadata: {"times": [seconds], "vectors": base64 of (K, dim) float16 frame vectors}


def pack_frames(times: Any, vectors: Any, dim: int) -> dict[str, Any]:
    """Per-frame times (seconds) and flat (K * dim,) frame vectors as JSON-able metadata (float16, base64)."""
    import base64

    import numpy as np

    flat = np.asarray(vectors, dtype=np.float16).reshape(len(times), dim)
    return {"times": [round(float(t), 3) for t in times], "vectors": base64.b64encode(flat.tobytes()).decode()}


def best_time(packed: dict[str, Any], query: Any) -> float | None:
    """The time (seconds) of the frame whose vector is nearest (cosine) to the unit ``query`` vector (dim,)."""
    import base64

    import numpy as np

    times = packed.get("times") or []
    if not times:
        return None
    vectors = np.frombuffer(base64.b64decode(packed["vectors"]), dtype=np.float16).astype(np.float32)
    vectors = vectors.reshape(len(times), -1)
    if vectors.shape[1] != len(query):
        return None
    return float(times[int(np.argmax(vectors @ np.asarray(query, dtype=np.float32)))])
