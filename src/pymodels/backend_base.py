"""The former name of :mod:`pymodels.backend` (kept so existing imports work)."""

from .backend import *  # noqa: F403
from .backend import __all__ as __all__
