"""The registered model as an MLflow ``pyfunc`` model, logged as code: nothing is pickled.

MLflow's "models from code": :func:`save` hands *this file* to ``mlflow.pyfunc.save_model(python_model=<path>)``;
MLflow copies it into the model folder and, when a user calls ``mlflow.pyfunc.load_model("models:/mmr-<ds>@champion")``,
executes it (under a module name of its own, ``code_model_<uuid>``), which registers :class:`RetrievalPyfunc` with
``mlflow.models.set_model``. Its :meth:`~RetrievalPyfunc.load_context` loads the dual encoder from the logged
``artifacts/retrieval_model/`` (``config.json`` + ``weights.safetensors``) with
:func:`mmretrieval.models.dual_encoder.load`, the same loader the platform uses, so the vectors are the platform's.

Model folder (the run's ``model`` artifact, the source of every registered version)::

    MLmodel                       flavor python_function, signature, input example, requirements
    pyfunc.py                     this file (the model's code)
    artifacts/retrieval_model/    config.json + weights.safetensors (what tracking.download hands the platform)
    input_example.json, serving_input_example.json, requirements.txt, python_env.yaml, conda.yaml

Input: a DataFrame, one query per row, each row with exactly one non-empty column of the model's signature:
``text`` (str), ``image`` (bytes of an image file: PNG, JPEG, ...; decoded by
:func:`mmretrieval.media.image.open_image`),
``audio`` (bytes of an audio file; resampled and cut like the platform's queries). Only the columns of the model's
towers are in its signature. Output: a (rows, embed_dim) float32 array of unit vectors.
"""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow
import numpy as np
import pandas as pd

from mmretrieval.backends.tracking import MODEL_ARTIFACT, PYFUNC_FILES, log_artifacts
from mmretrieval.core.errors import ModelError, QueryError

if TYPE_CHECKING:
    from mlflow.models import ModelSignature

    from mmretrieval.models.dual_encoder import RetrievalModel

ARTIFACT = PYFUNC_FILES  # artifacts/<ARTIFACT>/ holds config.json + weights.safetensors
MEDIA_COLUMNS = ("image", "audio")  # the query columns besides "text", each the bytes of a file


def columns_of(model: RetrievalModel) -> list[str]:
    """The input columns a model takes: ``text`` and the media of its towers (video is not a pyfunc input yet)."""
    return ["text"] + [m for m in MEDIA_COLUMNS if m in model.modalities]


def signature(model: RetrievalModel) -> ModelSignature:
    """text / image bytes / audio bytes (each optional per row) -> (-1, embed_dim) float32 unit vectors."""
    from mlflow.models import ModelSignature
    from mlflow.types import ColSpec, DataType, Schema, TensorSpec

    kinds = {"text": DataType.string, "image": DataType.binary, "audio": DataType.binary}
    inputs = Schema([ColSpec(kinds[c], c, required=False) for c in columns_of(model)])
    return ModelSignature(inputs=inputs, outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, model.dim))]))


def input_example(model: RetrievalModel) -> pd.DataFrame:
    """One row per input column: a caption, a 32x32 PNG, a 1 s 440 Hz WAV (only those the model takes)."""
    rows: list[dict[str, Any]] = [{"text": "a red square"}]
    if "image" in model.modalities:
        from PIL import Image

        buf = io.BytesIO()
        Image.new("RGB", (32, 32), (220, 30, 30)).save(buf, format="PNG")
        rows.append({"image": buf.getvalue()})
    if "audio" in model.modalities:
        import soundfile as sf

        rate = model.config.audio_sample_rate
        buf = io.BytesIO()
        sf.write(buf, (0.3 * np.sin(2 * np.pi * 440 * np.arange(rate) / rate)).astype(np.float32), rate,
                 format="WAV")
        rows.append({"audio": buf.getvalue()})
    return pd.DataFrame(rows, columns=columns_of(model))


def requirements() -> list[str]:
    """Pinned pip requirements of the model's environment (given, so MLflow never loads the model to infer them)."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("mmretrieval", "mlflow", "torch", "torchvision", "sentence-transformers", "safetensors",
                 "soundfile", "pillow", "numpy", "pandas"):
        try:
            out.append(f"{name}=={version(name).split('+')[0]}")
        except PackageNotFoundError:
            out.append(name)
    return out


def save(model: RetrievalModel, folder: Path) -> None:
    """Write the MLflow model folder described in the module docstring (``folder`` must not exist yet).

    Raises :class:`ModelError` when MLflow refuses the model (e.g. the input example does not fit the signature).
    """
    from mlflow.exceptions import MlflowException

    with tempfile.TemporaryDirectory() as tmp:
        files = Path(tmp) / ARTIFACT
        model.save(files)
        try:
            mlflow.pyfunc.save_model(path=str(folder), python_model=str(Path(__file__).resolve()),
                                     artifacts={ARTIFACT: str(files)}, signature=signature(model),
                                     input_example=input_example(model), pip_requirements=requirements())
        except MlflowException as e:
            raise ModelError(f"MLflow refused to save the model in {folder}: {e}") from e


class RetrievalPyfunc(mlflow.pyfunc.PythonModel):
    """The dual encoder behind MLflow's ``predict``: query rows -> the platform's unit vectors."""

    def load_context(self, context: Any) -> None:
        """Load the towers from the logged files (safetensors, no unpickling) on ``MMR_DEVICE`` (default auto)."""
        from mmretrieval.models.dual_encoder import load, pick_device

        self.model = load(Path(context.artifacts[ARTIFACT]), device=pick_device(os.environ.get("MMR_DEVICE", "auto")))

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> np.ndarray:
        """(rows,) queries -> (rows, embed_dim) float32 unit vectors, in row order.

        Raises :class:`QueryError` for a row with no or several non-empty columns, or a column the model has no
        tower for; :class:`~mmretrieval.core.errors.MediaError` for bytes that do not decode.
        """
        from mmretrieval.media.image import open_image
        from mmretrieval.media.text import normalize_text

        frame = pd.DataFrame(model_input)
        known = columns_of(self.model)
        if frame.shape[1] == 0:  # MLflow's schema enforcement dropped every column it did not know (and the rows)
            raise QueryError(f"no input column is one of the model's inputs {known}")
        unknown = [c for c in frame.columns if c not in known]
        if unknown:
            raise QueryError(f"input columns {unknown} are not among the model's inputs {known}")
        kinds: list[str] = []
        for i, row in enumerate(frame.itertuples(index=False)):
            given = [c for c, v in zip(frame.columns, row, strict=True) if _present(v)]
            if len(given) != 1:
                raise QueryError(f"row {i} has {len(given)} non-empty columns {given}; give exactly one of {known}")
            kinds.append(given[0])
        out = np.zeros((len(frame), self.model.dim), dtype=np.float32)
        for kind in known:
            rows = [i for i, k in enumerate(kinds) if k == kind]
            if not rows:
                continue
            values = [frame[kind].iloc[i] for i in rows]
            if kind == "text":  # normalised as captions and library queries are
                texts = [normalize_text(str(v)) for v in values]
                if "" in texts:
                    raise QueryError(f"row {rows[texts.index('')]}: the text is empty once control and invisible "
                                     "characters are removed")
                out[rows] = self.model.encode_texts(texts)
            elif kind == "image":
                out[rows] = self.model.encode_images([open_image(_raw(v, kind, i)) for v, i in zip(values, rows,
                                                                                                   strict=True)])
            else:
                out[rows] = self.model.encode_wave_list([self.model.load_wave_bytes(_raw(v, kind, i))
                                                         for v, i in zip(values, rows, strict=True)])
        return out


def _raw(value: Any, column: str, row: int) -> bytes:
    """The file bytes of an ``image``/``audio`` cell; raises :class:`QueryError` for anything else (a path, text)."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value)
    raise QueryError(f"row {row}: column {column!r} takes the file's bytes, got {type(value).__name__}")


def _present(value: Any) -> bool:
    """A cell that holds a query: not None/NaN, not an empty string or empty bytes."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return False
    return len(value) > 0 if isinstance(value, (str, bytes, bytearray)) else True


if not __name__.startswith("mmretrieval."):  # executed by MLflow as the model's code, not imported by the library
    mlflow.models.set_model(RetrievalPyfunc())


def log_model(model: RetrievalModel) -> None:
    """Log ``model`` as the active run's ``model`` artifact (the pyfunc folder of :func:`save`), which
    :func:`mmretrieval.backends.tracking.register` makes a version. Raises :class:`TrackingError` without an
    active run."""
    with tempfile.TemporaryDirectory() as tmp:
        save(model, Path(tmp) / MODEL_ARTIFACT)
        log_artifacts(Path(tmp) / MODEL_ARTIFACT, MODEL_ARTIFACT)
