"""What every loaded model shares, tensor or text: where it runs, and closing it."""

from __future__ import annotations

from typing import Any

from edgewise.device_runtime._placement import Placement


class PlacedModel:
    """Placement shortcuts and the context-manager protocol over ``_session.close()``."""

    __slots__ = ()
    placement: Placement
    _session: Any

    @property
    def backend(self) -> str:
        return self.placement.backend

    @property
    def device(self) -> str:
        return self.placement.device

    @property
    def accelerator(self) -> str:
        return self.placement.accelerator

    def close(self) -> None:
        self._session.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
