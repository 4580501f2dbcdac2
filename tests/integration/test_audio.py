"""Audio end to end on tiny generated clips: validate/quarantine, train an audio tower, embed, publish, search."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mmretrieval.runner import run_all, run_stage
from mmretrieval.stages.ingest import ingest
from tests.helpers.files import write_manifest

pytestmark = pytest.mark.integration

TONES = {"low": 220.0, "high": 1760.0}


def write_tone(path: Path, freq: float, seconds: float = 0.5, rate: int = 8000, channels: int = 1) -> Path:
    import soundfile as sf

    t = np.arange(int(seconds * rate)) / rate
    wave = (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), np.stack([wave] * channels, axis=1) if channels > 1 else wave, rate)
    return path


@pytest.fixture
def audio_source(workspace: Path) -> Path:
    src = workspace.parent / "src"
    rows = []
    for name, freq in TONES.items():
        for i in range(6):
            rel = f"clips/{name}{i}.wav"
            write_tone(src / rel, freq * (1 + 0.02 * i), rate=8000 if i % 2 else 16000, channels=1 + i % 2)
            rows.append({"id": f"{name}{i}", "modality": "audio", "path": rel, "label": name,
                         "text": f"a {name} tone", "split": "test" if i == 0 else ("val" if i == 1 else "train")})
    (src / "clips/empty.wav").write_bytes(b"")
    (src / "clips/fake.flac").write_bytes(b"this is text, not audio")
    rows += [{"id": "empty", "modality": "audio", "path": "clips/empty.wav", "text": "x"},
             {"id": "fake", "modality": "audio", "path": "clips/fake.flac", "text": "x"}]
    return write_manifest(src, rows)


def test_audio_items_are_validated_trained_published_and_searchable(workspace: Path, audio_source: Path) -> None:
    (workspace / "params.yaml").write_text((workspace / "params.yaml").read_text()
                                          + "\noverrides: {tones: {train: {epochs: 3}, model: {audio_seconds: 0.5},"
                                          " index: {centre_min_items: 2}}}\n")
    ingest(audio_source, "tones")
    results = run_all("tones")
    assert results["validate"]["reasons"] == {"empty_file": 1, "undecodable": 1}
    assert results["clean"]["clean"] == 12 and results["clean"]["quarantined"] == 2
    assert "t2a_recall@1" in results["evaluate"]["metrics"] and "a2t_recall@1" in results["evaluate"]["metrics"]
    assert "raw_a2t_recall@1" in results["evaluate"]["metrics"]  # centred on the test clips, uncentred kept beside
    assert results["publish"]["checks"]["rows"] == 12
    from mmretrieval.core.errors import QueryError
    from mmretrieval.serving.client import RetrievalClient

    with RetrievalClient("tones") as client:
        assert client.info()["centred"] == ["audio"]
        hits = client.search(audio=audio_source.parent / "clips/high3.wav", k=3)
        # the query is centred on the same corpus mean as the stored clip: it finds that clip at cosine ~1
        assert hits[0].id == "high3" and hits[0].modality == "audio" and hits[0].score > 0.999
        assert len(client.search(text="a low tone", k=5, modality="audio")) == 5
        with pytest.raises(QueryError, match="no image tower"):
            client.search(image=audio_source.parent / "clips/high3.wav")
        import soundfile as sf
        from fastapi.testclient import TestClient

        from mmretrieval.serving.http import create_app

        with TestClient(create_app("tones"), base_url="http://127.0.0.1") as http, \
                open(audio_source.parent / "clips/low4.wav", "rb") as f:
            up = http.post("/search/upload", files={"file": ("q.wav", f, "audio/wav")}, data={"k": "1"})
            nan = io.BytesIO()
            sf.write(nan, np.full(8000, np.nan, dtype=np.float32), 8000, format="WAV", subtype="FLOAT")
            header_only = io.BytesIO()
            sf.write(header_only, np.zeros(0, dtype=np.float32), 8000, format="WAV")
            hostile = {"png as audio": b"\x89PNG\r\n\x1a\n" + bytes(200), "NaN samples": nan.getvalue(),
                       "no samples": header_only.getvalue()}
            refused = {name: http.post("/search/upload", files={"file": ("h.wav", data, "audio/wav; codecs=1")})
                       for name, data in hostile.items()}
        assert up.status_code == 200 and up.json()[0]["id"] == "low4"
        for name, r in refused.items():  # through the audio decoder: a 400 with a reason, never a 500
            assert r.status_code == 400 and "audio" in r.json()["detail"], (name, r.text)
    quarantine = pd.read_parquet(workspace / "data/clean/tones/quarantine.parquet")
    assert set(quarantine["id"]) == {"empty", "fake"}


def test_an_audio_only_dataset_gates_on_the_audio_twin_of_the_gate_metric(workspace: Path,
                                                                          audio_source: Path) -> None:
    (workspace / "params.yaml").write_text((workspace / "params.yaml").read_text()
                                          + "\noverrides: {tones2: {train: {epochs: 1}, model: {audio_seconds: 0.5},"
                                          " gate: {metric: t2i_recall@10}}}\n")
    ingest(audio_source, "tones2")
    for verb in ("validate", "clean", "augment", "train", "evaluate"):
        run_stage(verb, "tones2")
    decision = run_stage("promote", "tones2")
    assert decision["promoted"] is True
    assert decision["reasons"][0].startswith("t2a_recall@10=")  # the image metric's audio twin decided
    assert any("chance level" in r for r in decision["reasons"])


def test_bad_audio_files_get_reasons_and_good_odd_ones_are_normalised(workspace: Path) -> None:
    import soundfile as sf

    src = workspace.parent / "src"
    clips = src / "clips"
    write_tone(clips / "ok.wav", 440.0)
    sf.write(str(clips / "nosamples.wav"), np.zeros((0,), dtype=np.float32), 8000)
    nan = np.sin(np.linspace(0, 100, 4000)).astype(np.float32)
    nan[100] = np.nan
    sf.write(str(clips / "nan.wav"), nan, 8000, subtype="FLOAT")
    sf.write(str(clips / "silent.wav"), np.zeros(8000, dtype=np.float32), 8000)
    sf.write(str(clips / "clipped.wav"), np.sign(np.sin(np.linspace(0, 300, 8000))).astype(np.float32), 8000)
    (clips / "codec.ogg").write_bytes(b"OggS" + bytes(range(256)) * 4)
    write_tone(clips / "wav_named.mp3", 330.0)  # wrong extension: decoded by content
    write_tone(clips / "hifi.wav", 440.0, seconds=0.3, rate=96000, channels=8)
    sf.write(str(clips / "long.flac"), (0.1 * np.sin(np.linspace(0, 9e5, 8000 * 610))).astype(np.float32), 8000)
    names = ["ok.wav", "nosamples.wav", "nan.wav", "silent.wav", "clipped.wav", "codec.ogg", "wav_named.mp3",
             "hifi.wav", "long.flac"]
    rows = [{"id": n.split(".")[0], "modality": "audio", "path": f"clips/{n}", "text": f"sound {n}"} for n in names]
    ingest(write_manifest(src, rows), "badaudio")
    run_stage("validate", "badaudio")
    reasons = pd.read_parquet(workspace / "data/validated/badaudio/rows.parquet").set_index("id")["reason"].to_dict()
    assert reasons == {"ok": "", "nosamples": "empty_audio", "nan": "nan_samples", "silent": "silent_audio",
                       "clipped": "clipped_audio", "codec": "undecodable", "wav_named": "", "hifi": "",
                       "long": "audio_too_long"}
    result = run_stage("clean", "badaudio")
    assert result["input"] == result["clean"] + result["quarantined"] + result["merged_duplicates"] == 9
    clean = pd.read_parquet(workspace / "data/clean/badaudio/manifest.parquet").set_index("id")
    info = sf.info(str(workspace / "data/clean/badaudio" / clean.loc["hifi", "media"]))
    assert (info.samplerate, info.channels, info.subtype) == (16000, 1, "PCM_16")


def with_data_size(path: Path, size: int, riff: int | None = None) -> Path:
    """Rewrite the WAV's ``data`` chunk size (and the RIFF size) as a careless or streaming writer leaves them."""
    import struct

    raw = bytearray(path.read_bytes())
    at = raw.index(b"data")
    raw[at + 4:at + 8] = struct.pack("<I", size)
    if riff is not None:
        raw[4:8] = struct.pack("<I", riff)
    path.write_bytes(bytes(raw))
    return path


def test_float_audio_above_full_scale_and_wavs_whose_header_lies_are_read_not_quarantined(workspace: Path) -> None:
    import soundfile as sf

    src = workspace.parent / "src"
    clips = src / "clips"
    clips.mkdir(parents=True)
    t = np.arange(8000) / 8000
    sine = np.sin(2 * np.pi * 440 * t)
    sf.write(str(clips / "hot.wav"), (3.0 * sine).astype(np.float32), 8000, subtype="FLOAT")  # the case
    noise = np.random.default_rng(0).normal(0, 0.6, (8000, 2))  # stereo, peaks near 2.5
    sf.write(str(clips / "hot_noise.wav"), noise, 8000, subtype="DOUBLE")
    sf.write(str(clips / "square_pcm.wav"), np.sign(sine).astype(np.float32), 8000, subtype="PCM_16")
    for name, size, riff in (("zero.wav", 0, None), ("streamed.wav", 0xFFFFFFFF, 0xFFFFFFFF)):
        sf.write(str(clips / name), (0.5 * sine).astype(np.float32), 8000, subtype="PCM_16")  # one second
        with_data_size(clips / name, size, riff)
    sf.write(str(clips / "hollow.wav"), np.zeros(0, dtype=np.float32), 8000, subtype="PCM_16")
    with_data_size(clips / "hollow.wav", 0)  # declares nothing and holds nothing: still empty
    names = ["hot.wav", "hot_noise.wav", "square_pcm.wav", "zero.wav", "streamed.wav", "hollow.wav"]
    rows = [{"id": n.split(".")[0], "modality": "audio", "path": f"clips/{n}", "text": f"sound {n}"} for n in names]
    ingest(write_manifest(src, rows), "oddaudio")
    run_stage("validate", "oddaudio")
    reasons = pd.read_parquet(workspace / "data/validated/oddaudio/rows.parquet").set_index("id")["reason"].to_dict()
    assert reasons == {"hot": "", "hot_noise": "", "square_pcm": "clipped_audio", "zero": "", "streamed": "",
                       "hollow": "empty_audio"}
    result = run_stage("clean", "oddaudio")
    assert result["input"] == result["clean"] + result["quarantined"] + result["merged_duplicates"] == 6
    clean = pd.read_parquet(workspace / "data/clean/oddaudio/manifest.parquet").set_index("id")
    for name in ("zero", "streamed", "hot"):  # the whole second is there, at the clean rate (16 kHz)
        wave, rate = sf.read(str(workspace / "data/clean/oddaudio" / clean.loc[name, "media"]))
        assert rate == 16000 and abs(len(wave) - 16000) < 800 and np.abs(wave).max() <= 0.99


def test_audio_reranker_attends_over_the_tower_frames_is_stored_served_and_distilled(workspace: Path,
                                                                                    audio_source: Path) -> None:
    """Point 7 of the re-ranking issue on generated tones: the rerank stage trains a re-ranker over the audio tower's
    frame sequence (item-asking lists), embed writes the audio rows' regions, publish checks them, the client
    re-ranks text queries over the clips by default, and distil makes an item-asking student."""
    rerank = {"enabled": True, "modality": "audio", "concepts": False, "layers": 1, "region_dim": 16, "heads": 2,
              "folds": 0, "queries": "item", "negatives": 1, "epochs": 2, "bootstrap": 100, "depth": 4,
              "metric": "a2t_hit_rate@1", "min_gain": -1.0,
              "min_test_items": 2}  # any re-ranker passes (a handful of test tones): the plumbing is tested
    (workspace / "params.yaml").write_text(
        (workspace / "params.yaml").read_text() + "\noverrides: {tones: {train: {epochs: 2}, model: {audio_seconds: "
        f"1.0}}, index: {{centre_min_items: 2}}, rerank: {json.dumps(rerank)}, distill: {{epochs: 2}}}}}}\n")
    ingest(audio_source, "tones")
    results = run_all("tones")
    assert results["rerank"]["passed"] is True
    from mmretrieval.core.settings import get_settings

    report = json.loads(Path(results["rerank"]["report"]).read_text())
    assert report["modality"] == "audio" and report["reranker"]["config"]["regions"] == 3  # 1 s: 3 frames
    assert {"dual_t2a_recall@1", "rerank_a2t_recall@1", "rerank_t2a_precision@10"} <= set(report["metrics"])
    clips = results["embed"]["modalities"]["audio"]
    assert results["embed"]["regions"]["modality"] == "audio" and results["embed"]["regions"]["rows"] == clips
    assert results["embed"]["regions"]["bytes_per_item"] == 3 * 16 * 2
    assert results["publish"]["checks"]["regions"]["items"] == clips

    from mmretrieval.core.errors import QueryError
    from mmretrieval.serving.client import RetrievalClient

    with RetrievalClient("tones") as client:
        default = client.search(text="a low tone", k=3)  # audio-only collection with a gated re-ranker: on
        assert len(default) == 3 and all(h.dual_score is not None and h.modality == "audio" for h in default)
        assert all(h.dual_score is None for h in client.search(text="a low tone", k=3, rerank=0))
        with pytest.raises(QueryError, match="modality 'audio'"):
            client.search(text="a low tone", k=3, rerank=4, modality="image")

    from mmretrieval.stages.distill import run as distill

    student = distill("tones")
    settings = get_settings()
    from mmretrieval.backends import tracking
    assert tracking.require_alias(settings, "tones", tracking.CHALLENGER).version == student["model_version"]
    assert student["teacher_version"] == results["train"]["model_version"] and len(student["losses"]) == 2
    assert "a2t_recall@1" in run_stage("evaluate", "tones")["metrics"]
