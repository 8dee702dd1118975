"""The one shape every local service here has: ``start()`` / ``stop()``, usable as ``with``."""

from __future__ import annotations

from abc import ABC, abstractmethod
from types import TracebackType
from typing import TypeVar

_S = TypeVar("_S", bound="Service")


class Service(ABC):
    @abstractmethod
    def start(self: _S) -> _S:
        """Start serving; returns self so ``with Service().start()`` style reads naturally."""

    @abstractmethod
    def stop(self) -> None:
        """Stop and release everything; safe to call twice."""

    def __enter__(self: _S) -> _S:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
