"""mmretrieval: multimodal (text, image, audio, video) retrieval as a versioned, gated batch data platform.

Heavy dependencies load lazily; importing this package is cheap. Public entry points::

    from mmretrieval import RetrievalClient, get_settings, run_stage
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"
__all__ = ["RetrievalClient", "__version__", "get_settings", "run_all", "run_stage"]


def __getattr__(name: str) -> Any:
    if name == "RetrievalClient":
        from mmretrieval.serving.client import RetrievalClient

        return RetrievalClient
    if name == "get_settings":
        from mmretrieval.core.settings import get_settings

        return get_settings
    if name in ("run_stage", "run_all"):
        from mmretrieval import runner as stages
        return getattr(stages, name)
    raise AttributeError(name)
