"""The one image decoder (mmretrieval.media.image.open_image) on real files of every mode, bit depth and size kind."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mmretrieval.core.errors import MediaError
from mmretrieval.core.params import MAX_IMAGE_PIXELS, ValidateParams
from mmretrieval.media.image import MAX_IMAGE_SIDE, decode_image, image_problem, open_image
from tests.helpers.files import png_declaring
from tests.helpers.imagekinds import KINDS, RAMP8, RAMP16, H, W, write_kind, write_oriented


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_every_mode_decodes_to_the_pixels_its_range_and_transparency_promise(kind: str, tmp_path: Path) -> None:
    path, expected = write_kind(kind, tmp_path)
    got = open_image(path)
    assert got.mode == "RGB"
    assert np.array_equal(np.asarray(got), expected)
    assert np.array_equal(np.asarray(open_image(path.read_bytes())), expected)  # an upload: the same pixels


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_decoding_a_decoded_image_changes_nothing(kind: str, tmp_path: Path) -> None:
    """An entry point that decodes once more (the HTTP upload hands the decoded image to the client) gets the same
    pixels: no orientation or transparency is applied twice."""
    path, expected = write_kind(kind, tmp_path)
    once = open_image(path)
    assert np.array_equal(np.asarray(open_image(once)), expected)
    assert np.array_equal(np.asarray(open_image(open_image(once))), expected)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_no_mode_counts_as_flattened_when_it_decodes_faithfully(kind: str, tmp_path: Path) -> None:
    path, _ = write_kind(kind, tmp_path)
    assert decode_image(path).flattened is False
    assert image_problem(path, ValidateParams()) is None


@pytest.mark.parametrize("deep", [False, True], ids=["rgb_png", "16bit_be_tiff"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_is_undone_whatever_the_bit_depth(tmp_path: Path, orientation: int,
                                                                 deep: bool) -> None:
    path = tmp_path / ("o.tif" if deep else "o.png")
    upright = write_oriented(path, orientation, deep)
    assert np.array_equal(np.asarray(open_image(path)), upright)
    assert np.array_equal(np.asarray(open_image(path.read_bytes())), upright)


def test_a_16_bit_and_an_8_bit_copy_of_one_picture_decode_alike(tmp_path: Path) -> None:
    """Scaled by the mode's range: v and v*257 are the same brightness (not stretched to the image's own maximum)."""
    dim = (RAMP8 // 2).astype(np.uint8)  # a dark picture: its own maximum is far from full scale
    Image.fromarray(dim, "L").save(tmp_path / "eight.png")
    Image.frombytes("I;16B", (W, H), (dim.astype(np.uint16) * 257).astype(">u2").tobytes()).save(tmp_path / "be.tif")
    Image.fromarray(dim.astype(np.uint16) * 257).save(tmp_path / "sixteen.png")
    eight = np.asarray(open_image(tmp_path / "eight.png"))
    assert np.array_equal(np.asarray(open_image(tmp_path / "sixteen.png")), eight)
    assert np.array_equal(np.asarray(open_image(tmp_path / "be.tif")), eight)
    assert eight.max() == 127


def test_transparent_pixels_become_white_whatever_colour_they_hide(tmp_path: Path) -> None:
    rgba = np.zeros((H, W, 4), dtype=np.uint8)
    rgba[..., 3] = np.where(np.arange(W) < 10, 0, 255)[None]
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    pixels = np.asarray(open_image(tmp_path / "a.png"))
    assert (pixels[:, :10] == 255).all() and (pixels[:, 10:] == 0).all()


@pytest.mark.parametrize(("name", "write", "source"), [
    ("float_0_255.tif", lambda p: Image.fromarray((RAMP8.astype(np.float32)), "F").save(p), "F 0..255"),
    ("tiny_16bit.png", lambda p: Image.fromarray((RAMP16 // 1000).astype(np.uint16)).save(p), "I;16 0..50"),
    ("int32_wide.tif", lambda p: Image.fromarray((RAMP16.astype(np.int32) * 3 - 5), "I").save(p), "I -5..149995"),
    ("invisible.png", lambda p: Image.fromarray(
        np.dstack([RAMP8, RAMP8[:, ::-1], RAMP8, np.zeros_like(RAMP8)]), "RGBA").save(p), "RGBA with alpha 0..0"),
])
def test_a_varied_source_that_decodes_to_a_constant_picture_is_quarantined_as_flattened(
        name: str, write, source: str, tmp_path: Path) -> None:  # noqa: ANN001
    path = tmp_path / name
    write(path)
    decoded = decode_image(path)
    assert decoded.flattened and decoded.source == source
    problem = image_problem(path, ValidateParams())
    assert problem is not None and problem.reason == "flattened_image" and name in problem.message


def test_constant_sources_are_not_flattened_but_blank(tmp_path: Path) -> None:
    Image.new("I;16", (W, H), 40000).save(tmp_path / "flat16.png")
    Image.new("RGBA", (W, H), (9, 9, 9, 0)).save(tmp_path / "clear.png")
    for name in ("flat16.png", "clear.png"):
        assert decode_image(tmp_path / name).flattened is False  # decoding lost nothing: the source is constant
        problem = image_problem(tmp_path / name, ValidateParams())
        assert problem is not None and problem.reason == "blank_image" and name in problem.message


@pytest.mark.parametrize(("width", "height", "words"), [
    (8000, 6000, "48000000 pixels, above the 40000000-pixel limit"),  # pixel count (below PIL's own 89 M warning)
    (70000, 10, "a side above the 65535-pixel limit"),  # one side, few pixels
    (10, 70000, "a side above the 65535-pixel limit"),
])
def test_the_header_size_is_refused_before_decoding_naming_it(tmp_path: Path, width: int, height: int,
                                                               words: str) -> None:
    data = png_declaring(width, height)
    (tmp_path / "big.png").write_bytes(data)
    before = Image.MAX_IMAGE_PIXELS
    for source in (tmp_path / "big.png", data):
        with pytest.raises(MediaError, match=f"{width}x{height}.*{words}"):
            open_image(source)
    assert Image.MAX_IMAGE_PIXELS == before  # no process-wide state is changed
    problem = image_problem(tmp_path / "big.png", ValidateParams())
    assert problem is not None and problem.reason == "decompression_bomb"


def test_the_pixel_limit_is_one_constant_shared_with_validation_and_a_parameter(tmp_path: Path) -> None:
    assert ValidateParams().max_image_pixels == MAX_IMAGE_PIXELS and MAX_IMAGE_SIDE == 65_535
    Image.new("RGB", (100, 100)).save(tmp_path / "a.png")
    with pytest.raises(MediaError, match="100x100 = 10000 pixels, above the 9999-pixel limit"):
        open_image(tmp_path / "a.png", max_pixels=9999)
    assert open_image(tmp_path / "a.png", max_pixels=10_000).size == (100, 100)


def test_a_pil_image_gets_the_same_treatment_as_its_file(tmp_path: Path) -> None:
    path, expected = write_kind("EXIF_6", tmp_path)
    with Image.open(path) as im:
        im.load()
        assert np.array_equal(np.asarray(open_image(im)), expected)
    deep = np.asarray(open_image(Image.fromarray(RAMP16)))  # an in-memory 16-bit image: by the mode's range too
    assert np.array_equal(deep[..., 0], np.rint(RAMP16 / 65535 * 255).astype(np.uint8))


@pytest.mark.parametrize("kind", ["EXIF_6", "EXIF_8_png"])
def test_a_lazily_opened_pil_image_is_turned_once(kind: str, tmp_path: Path) -> None:
    path, expected = write_kind(kind, tmp_path)
    with Image.open(path) as lazy:  # not loaded yet: Pillow's TIFF reader turns it while loading
        assert np.array_equal(np.asarray(open_image(lazy)), expected)


def test_undecodable_bytes_name_the_upload() -> None:
    with pytest.raises(MediaError, match="the uploaded image does not decode"):
        open_image(b"not an image at all")


@pytest.mark.parametrize("data", [b"\x89PNG\r\n\x1a\n" + bytes(30), b"GIF89a" + bytes(20), b"hello"])
def test_undecodable_uploaded_bytes_get_a_reason_without_python_object_reprs(data: bytes) -> None:
    with pytest.raises(MediaError, match="the uploaded image does not decode: unrecognised or damaged") as caught:
        open_image(data)
    assert "object at 0x" not in str(caught.value)


def _riff(*chunks: bytes) -> bytes:
    import struct

    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body)) + body


def _chunk(name: bytes, payload: bytes, declared: int | None = None) -> bytes:
    import struct

    return name + struct.pack("<I", len(payload) if declared is None else declared) + payload


FMT = bytes.fromhex("0100010080bb000000770100020010 00".replace(" ", ""))  # PCM, mono, 48 kHz, 16-bit


@pytest.mark.parametrize("data", [
    _riff(_chunk(b"fmt ", FMT[:2], declared=16)),  # fmt chunk cut short after 2 of its 16 bytes
    _riff(_chunk(b"fmt ", FMT[:2], declared=16), _chunk(b"data", b"", declared=0)),
    _riff(_chunk(b"data", bytes(64), declared=0)),  # data with no fmt before it
    _riff(_chunk(b"fmt ", FMT), _chunk(b"data", bytes(7), declared=0xFFFFFFF0)),  # data larger than the file
    b"RIFF\x04\x00\x00\x00WAVE",  # header only
    b"RIFF\xff\xff\xff\xffWAVEfmt ",  # a chunk name and nothing else
], ids=["fmt-cut-short", "fmt-cut-then-data", "data-without-fmt", "data-overlong", "header-only", "bare-chunk-name"])
def test_wav_files_with_broken_chunk_structure_are_a_media_error(tmp_path: Path, data: bytes) -> None:
    from mmretrieval.media.audio import read_audio

    path = tmp_path / "broken.wav"
    path.write_bytes(data)
    try:
        audio = read_audio(path, 10.0)
    except MediaError as e:
        assert "broken.wav" in str(e)
    else:  # a decoder may recover what is there; then it is real audio
        assert audio.data.ndim == 2


@pytest.mark.parametrize("kind", ["opposite-phase stereo", "constant (DC) signal"])
def test_audio_that_is_silent_once_mixed_to_mono_is_quarantined_as_silent(tmp_path: Path, kind: str) -> None:
    import soundfile as sf

    from mmretrieval.media.audio import audio_problem

    t = np.arange(16000) / 16000
    tone = 0.5 * np.sin(2 * np.pi * 440 * t)
    wave = np.stack([tone, -tone], axis=1) if kind.startswith("opposite") else np.full(16000, 0.5)
    sf.write(str(tmp_path / "a.wav"), wave.astype(np.float32), 16000, subtype="PCM_16")
    problem = audio_problem(tmp_path / "a.wav", ValidateParams())
    assert problem is not None and problem.reason == "silent_audio" and "mono" in problem.message
    sf.write(str(tmp_path / "b.wav"), np.stack([tone, tone], axis=1).astype(np.float32), 16000, subtype="PCM_16")
    assert audio_problem(tmp_path / "b.wav", ValidateParams()) is None  # the same tone in phase is fine
