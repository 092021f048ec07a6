"""A tiny third-party backend: the memory engine under another name and URL scheme.

It exists so pymodels' tests can check plug-in discovery through a real
installed distribution's entry point, not a mocked lookup.
"""

from __future__ import annotations

from typing import Any, ClassVar

from pymodels.ext import memory
from pymodels.features import Features
from pymodels.storage import BaseSettings

features = memory.features.replace(persistent=False)
Query = memory.Query


class Settings(memory.Settings):
    """Accepts one extra key so tests can see settings reach the plug-in."""

    greeting: str = "hello"


class Storage(memory.Storage):
    features: ClassVar[Features] = features
    settings_class: ClassVar[type[BaseSettings]] = Settings
    url_schemes: ClassVar[tuple[str, ...]] = ("testbackend",)

    @classmethod
    def settings_from_url(cls, url: str) -> dict[str, Any]:
        return memory.Storage.settings_from_url(url.replace("testbackend://", "memory://", 1))
