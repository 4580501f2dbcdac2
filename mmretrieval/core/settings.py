"""Where things live: the ``MMR_*`` environment as :class:`Settings` (pydantic-settings), with the params loaded.

All variables are optional (an empty one counts as unset); the defaults are the embedded single-machine stack:

=========================  ===========================================================  ==========================
variable                   meaning                                                       default
=========================  ===========================================================  ==========================
MMR_HOME                   workspace root: holds ``data/``, ``params.yaml``, ``var/``    current directory
MMR_PARAMS                 path of the params file                                       ``$MMR_HOME/params.yaml``
MMR_MILVUS_URI             Milvus Lite file or server URI (``http://host:19530``)        ``$MMR_HOME/var/milvus.db``
MMR_MILVUS_TOKEN           token for a Milvus server (``user:password``)                 empty
MMR_MLFLOW_TRACKING_URI    MLflow tracking/registry URI (``MLFLOW_TRACKING_URI`` too)    ``sqlite:///$MMR_HOME/var/mlflow.db``
MMR_MLFLOW_ARTIFACTS       artifact root for new experiments (a path or ``s3://…``)      ``$MMR_HOME/var/mlartifacts``
                                                                                         (server's choice for http URIs)
MMR_DEVICE                 ``auto``, ``cpu`` or ``cuda``                                  ``auto``
MMR_DATA_URL               shared data store of the stage outputs (``s3://bucket/prefix``;  empty: this machine only
                           :mod:`mmretrieval.backends.store`); ``data/`` is then a cache
MMR_LOCK_URL               shared coordinator of the per-dataset locks                   empty: file locks under
                           (``postgresql://user@host:port/db``; :mod:`.locks`)            ``var/locks/``
MMR_REHASH                 ``1``: read every file's bytes; no digest is remembered by      ``0``: remembered
                           (inode, size, mtime) (:mod:`mmretrieval.core.digests`)
=========================  ===========================================================  ==========================

How stages behave is :mod:`mmretrieval.core.params` (``params.yaml``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import AliasChoices, Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from mmretrieval.core.errors import ConfigError
from mmretrieval.core.params import Params, load_params
from mmretrieval.core.schema import check_dataset_name

if TYPE_CHECKING:
    from mmretrieval.core.digests import FileDigests
    from mmretrieval.core.layout import Layout


def _artifacts(data: dict[str, Any]) -> str:
    """Artifact root for new experiments; empty for a tracking server, which chooses (``--artifacts-destination``)."""
    return "" if data["mlflow_uri"].startswith(("http://", "https://")) else str(data["home"] / "var" / "mlartifacts")


class Settings(BaseSettings):
    """Where everything lives. Build with :func:`get_settings`; every stage takes one. Each field is read from the
    variable its ``validation_alias`` names (the table above), and only from that one."""

    model_config = SettingsConfigDict(env_ignore_empty=True, extra="ignore", frozen=True)

    home: Path = Field(default_factory=Path.cwd, validation_alias="MMR_HOME")  # made absolute
    params: Annotated[Params, NoDecode] = Field(  # MMR_PARAMS names the file; load_params reads it
        default_factory=lambda data: load_params(data["home"] / "params.yaml"), validation_alias="MMR_PARAMS")
    milvus_uri: str = Field(default_factory=lambda data: str(data["home"] / "var" / "milvus.db"),
                            validation_alias="MMR_MILVUS_URI")
    milvus_token: str = Field("", validation_alias="MMR_MILVUS_TOKEN")
    mlflow_uri: str = Field(default_factory=lambda data: f"sqlite:///{data['home'] / 'var' / 'mlflow.db'}",
                            validation_alias=AliasChoices("MMR_MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_URI"))
    mlflow_artifacts: str = Field(default_factory=_artifacts, validation_alias="MMR_MLFLOW_ARTIFACTS")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", validation_alias="MMR_DEVICE")
    data_url: str = Field("", validation_alias="MMR_DATA_URL")  # "" = local only; s3://bucket/prefix = shared store
    lock_url: str = Field("", validation_alias="MMR_LOCK_URL")  # "" = file locks; postgresql://… = advisory locks
    rehash: bool = Field(False, validation_alias="MMR_REHASH")  # read every file, remember no digest (core.digests)

    @field_validator("home")
    @classmethod
    def _absolute(cls, home: Path) -> Path:
        return home.resolve()

    @field_validator("data_url", "lock_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if value and "://" not in value:
            raise ValueError(f"{value!r} is not a URL (scheme://…), e.g. s3://bucket/prefix or postgresql://host/db")
        return value.rstrip("/")

    @field_validator("params", mode="before")
    @classmethod
    def _read(cls, value: Any) -> Any:
        return load_params(Path(value)) if isinstance(value, (str, Path)) else value

    @property
    def data_dir(self) -> Path:
        return self.home / "data"

    @property
    def var_dir(self) -> Path:
        return self.home / "var"

    def layout(self, dataset: str) -> Layout:
        """Every path of ``dataset``'s stages (:mod:`mmretrieval.core.layout`); raises :class:`ConfigError` for a bad
        dataset name."""
        from mmretrieval.core.layout import Layout

        return Layout(self.data_dir, self.var_dir, dataset)

    def file_digests(self) -> FileDigests:
        """The digests memo of this machine (:mod:`mmretrieval.core.digests`; ``var/cache/file-digests.sqlite``), or
        one that remembers nothing under ``MMR_REHASH=1``. Close it (a context manager) to keep what it learned."""
        from mmretrieval.core.digests import FileDigests

        return FileDigests(None if self.rehash else self.var_dir / "cache" / "file-digests.sqlite")

    def alias(self, dataset: str) -> str:
        """The serving alias of a dataset's collection."""
        return self.params.index.alias_prefix + check_dataset_name(dataset)

    def registered_model(self, dataset: str) -> str:
        """The MLflow registered model of a dataset (one per dataset, with its own champion)."""
        return f"mmr-{check_dataset_name(dataset)}"

    def params_for(self, dataset: str) -> Params:
        """The params of ``dataset``: its ``overrides`` applied."""
        return self.params.for_dataset(dataset)


def get_settings(home: str | Path | None = None) -> Settings:
    """Settings from the environment; ``home`` (when given) instead of ``MMR_HOME``. Reads and checks the params
    file. Raises :class:`ConfigError`: the params file's own (naming ``section.key``), or ``MMR_<VAR>=<value>: ...``."""
    try:
        return Settings(**({"MMR_HOME": home} if home else {}))
    except ValidationError as e:
        problems = []
        for err in e.errors():
            cause = err.get("ctx", {}).get("error")
            if isinstance(cause, ConfigError):  # the params file's, already naming the file and the key
                raise cause from None
            problems.append(f"{'.'.join(map(str, err['loc']))}={err['input']!r}: {err['msg']}")
        raise ConfigError("; ".join(problems)) from None
