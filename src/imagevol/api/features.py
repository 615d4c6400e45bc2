"""Kubernetes versions and feature gates that change image-volume behaviour (R0.1, R0.4, R0.5)."""

from __future__ import annotations

import re
from collections.abc import Mapping

import attrs

from .constants import DEFAULT_VERSION, SUPPORTED_VERSIONS


@attrs.frozen
class _GateSpec:
    since: int  # minor version
    default: bool
    stage: str
    locked: bool = False


#: Per gate, the upstream `defaultVersionedKubernetesFeatureGates` entries (R0.1, R0.5).
_GATES: Mapping[str, tuple[_GateSpec, ...]] = {
    "ImageVolume": (
        _GateSpec(31, False, "Alpha"),
        _GateSpec(33, False, "Beta"),
        _GateSpec(35, True, "Beta"),
        _GateSpec(36, True, "GA", locked=True),
    ),
    "ImageVolumeWithDigest": (_GateSpec(35, False, "Alpha"),),
    "KubeletEnsureSecretPulledImages": (
        _GateSpec(33, False, "Alpha"),
        _GateSpec(35, True, "Beta"),
    ),
}


def _minor(version: str) -> int:
    m = re.fullmatch(r"v?1\.(\d+)(?:\.\d+)?", version.strip())
    if m is None:
        raise ValueError(f"invalid Kubernetes version {version!r}: expected 1.MINOR")
    minor = int(m.group(1))
    low, high = _minor_range()
    if not low <= minor <= high:
        raise ValueError(f"Kubernetes version {version} is not simulated: supported 1.{low} to 1.{high}")
    return minor


def _minor_range() -> tuple[int, int]:
    minors = [int(v.split(".")[1]) for v in SUPPORTED_VERSIONS]
    return min(minors), max(minors)


@attrs.frozen
class FeatureGates:
    """Effective gates for one Kubernetes version, with explicit overrides applied."""

    minor: int
    overrides: Mapping[str, bool] = attrs.field(factory=dict)

    @classmethod
    def for_version(cls, version: str = DEFAULT_VERSION, spec: str = "") -> FeatureGates:
        """Gates of ``version`` with ``spec`` (``--feature-gates`` syntax, ``A=true,B=false``)
        applied. Unknown and locked gates are refused with the component-base wording."""
        minor = _minor(version)
        overrides: dict[str, bool] = {}
        for item in filter(None, (p.strip() for p in spec.split(","))):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or value.strip().lower() not in ("true", "false"):
                raise ValueError(f"invalid value of {item}, err: expected NAME=true|false")
            enabled = value.strip().lower() == "true"
            gate = _spec(key, minor)
            if gate is None:
                raise ValueError(f"unrecognized feature gate: {key}")
            if gate.locked and enabled != gate.default:
                raise ValueError(
                    f"cannot set feature gate {key} to {str(enabled).lower()}, "
                    f"feature is locked to {str(gate.default).lower()}"
                )
            overrides[key] = enabled
        return cls(minor, overrides)

    @property
    def version(self) -> str:
        """``1.MINOR``."""
        return f"1.{self.minor}"

    def enabled(self, name: str) -> bool:
        """Whether the gate ``name`` is on: its override, else its default at this version (off when unknown)."""
        if name in self.overrides:
            return self.overrides[name]
        gate = _spec(name, self.minor)
        return gate.default if gate is not None else False

    def stage(self, name: str) -> str:
        """The gate's stage at this version (``Alpha``, ``Beta``, ``GA``), empty when it does not exist yet."""
        gate = _spec(name, self.minor)
        return gate.stage if gate is not None else ""

    # --- version behaviour that is not a gate ---

    @property
    def image_volume_sub_path_allowed(self) -> bool:
        """R0.4, R2.6: the API server rejects subPath/subPathExpr on image volumes before 1.33."""
        return self.minor >= 33

    @property
    def image_volume_metrics_stability(self) -> str:
        """R6.2: the three counters exist from 1.33, ALPHA until 1.34, BETA from 1.35."""
        if self.minor < 33:
            return ""
        return "ALPHA" if self.minor < 35 else "BETA"

    def describe(self) -> str:
        """The effective value of every gate this version knows, in ``--feature-gates`` syntax."""
        parts = [f"{n}={str(self.enabled(n)).lower()}" for n in sorted(_GATES) if _spec(n, self.minor)]
        return ",".join(parts)


def _spec(name: str, minor: int) -> _GateSpec | None:
    entries = [g for g in _GATES.get(name, ()) if g.since <= minor]
    return entries[-1] if entries else None
