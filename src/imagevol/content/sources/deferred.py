"""The registry factory a node uses by default, without the cost of the registry stack up front.

:class:`~imagevol.content.sources.registry.RegistryAccess` brings the registry client with it
(``http.client``, ``email``'s header parser and ``ssl``: a few hundredths of a second of imports),
which every CLI command that builds a node would pay even when it pulls nothing (``get pods``,
``describe``, ``sync`` at rest). This factory imports it when the first pull reaches a registry,
and then is that factory.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .auth import Keyring
    from .mirrors import PullSource
    from .registry import RegistryAccess, RegistrySource


class DeferredRegistryAccess:
    """``RegistryAccess(plain_http=...)``, built on the first call."""

    def __init__(self, *, plain_http: bool = False) -> None:
        self.plain_http = plain_http
        self._access: RegistryAccess | None = None

    def __call__(self, spec: PullSource, keyring: Keyring) -> RegistrySource:
        """A source for one pull of ``spec`` (see ``RegistryAccess.__call__``)."""
        if self._access is None:
            from .registry import RegistryAccess

            self._access = RegistryAccess(plain_http=self.plain_http)
        return self._access(spec, keyring)
