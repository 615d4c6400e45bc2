"""Registry credentials: only what the caller or the Pod's pull secrets provide.

The credential values cross the CRI boundary with ``PullImage``, so they are defined in
:mod:`imagevol.cri` and re-exported here for the registry side, which picks the credentials of each
host it contacts (:meth:`Keyring.for_host`). Unlike oras-py and docker, nothing is ever read from
``~/.docker/config.json`` (oras-py gap 7 in docs/pulling.md): a Pod must not pull with credentials it
was not given.
"""

from __future__ import annotations

from collections.abc import Mapping

from ...cri import ANONYMOUS, DOCKER_CFG, DOCKER_CONFIG_JSON, Credentials, Keyring


def keyring_from_mapping(hosts: Mapping[str, Credentials]) -> Keyring:
    """A keyring with one entry per host (hosts normalised as docker config keys are)."""
    return Keyring(tuple(entry for h, c in hosts.items() for entry in Keyring.single(h, c).entries))


__all__ = ["ANONYMOUS", "DOCKER_CFG", "DOCKER_CONFIG_JSON", "Credentials", "Keyring", "keyring_from_mapping"]
