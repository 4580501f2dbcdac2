"""Transitional, for ``serving/service.py`` alone until the service package lands (issue 23, point 5): settings live
in :mod:`mmretrieval.core.settings`, params in :mod:`mmretrieval.core.params`. Delete this module with that change."""

from mmretrieval.core.settings import Settings, get_settings

__all__ = ["Settings", "get_settings"]
