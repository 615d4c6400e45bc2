"""Decode YAML (and JSON, which YAML reads too) within the bounds kubectl and the API server put on
it, without ever building the expanded document.

PyYAML's own loader composes a whole node graph first and shares aliased nodes, so nothing stops a
100 KB file from describing a 200 MB object (a long string aliased 2,000 times) or a billion-node
one (aliases of aliases), which only explodes later, when it is encoded; and its composer recurses
once per nesting level, so deep nesting ends in a ``RecursionError``. Here the parser's event stream
(libyaml's, else PyYAML's pure-Python parser, both iterative) is turned into plain Python values by
an explicit stack, and while it is:

* nesting deeper than :data:`MAX_DEPTH` flow collections (``[``, ``{``), or :data:`MAX_DEPTH` block
  collections, is refused with go-yaml's wording ("exceeded max depth of 10000": its
  ``max_flow_level`` and ``max_indents``, which count the two kinds apart);
* every node is counted the way go-yaml's decoder counts it (``decodeCount``, and ``aliasCount`` for
  the nodes reached through an alias): an alias costs the whole subtree it names, worked out once
  per anchor, so the count of an alias bomb is known without expanding it; a document whose alias
  share exceeds go-yaml's ``allowedAliasRatio`` is refused ("document contains excessive
  aliasing");
* the size of each document's compact JSON encoding (what kubectl would send) is summed the same
  way, an alias adding its anchor's full size, and a document over the API server's body limit is
  refused as the API server would refuse the request.

Aliased values are shared Python objects, never copies, so memory stays proportional to the input.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import yaml
from yaml.constructor import SafeConstructor
from yaml.events import (
    AliasEvent,
    DocumentEndEvent,
    DocumentStartEvent,
    Event,
    MappingEndEvent,
    MappingStartEvent,
    ScalarEvent,
    SequenceEndEvent,
    SequenceStartEvent,
    StreamEndEvent,
    StreamStartEvent,
)
from yaml.nodes import ScalarNode

from ..errors import DecodeError, RequestEntityTooLargeError
from .limits import MAX_REQUEST_BODY_BYTES

#: go-yaml's ``max_flow_level`` and ``max_indents``; here one limit on collection nesting.
MAX_DEPTH = 10000
#: go-yaml's ``alias_ratio_range_low`` / ``_high``: below the first, 99% of decode operations may
#: come from aliases; above the second, 10%; linear in between.
ALIAS_RATIO_RANGE_LOW = 400_000
ALIAS_RATIO_RANGE_HIGH = 4_000_000

_Loader: type[Any] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _raise_libyaml_nesting_limit() -> None:
    """libyaml 0.2.6 refuses nesting beyond its own process-wide limit (1000 by default), counting
    flow and block levels together. Raise it above twice :data:`MAX_DEPTH` so that the limits
    enforced are go-yaml's (each kind apart), reported by the composer below in go-yaml's words.
    (PyYAML's own libyaml-based composer copes with that depth too: tested.)"""
    if _Loader is yaml.SafeLoader:
        return
    try:
        import ctypes

        lib = ctypes.CDLL(yaml._yaml.__file__)
        setter, getter = lib.yaml_set_max_nest_level, lib.yaml_get_max_nest_level
    except (OSError, AttributeError):
        return  # an older libyaml: no limit of its own
    if getter() < 2 * MAX_DEPTH + 2:
        setter(2 * MAX_DEPTH + 2)


_raise_libyaml_nesting_limit()
_MERGE_TAG = "tag:yaml.org,2002:merge"
_STR_TAG = "tag:yaml.org,2002:str"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
_PREFIX = "error converting YAML to JSON: yaml: "


def allowed_alias_ratio(decodes: int) -> float:
    """go-yaml's ``allowedAliasRatio``: the share of decode operations aliases may account for."""
    if decodes <= ALIAS_RATIO_RANGE_LOW:
        return 0.99
    if decodes >= ALIAS_RATIO_RANGE_HIGH:
        return 0.10
    span = ALIAS_RATIO_RANGE_HIGH - ALIAS_RATIO_RANGE_LOW
    return 0.99 - 0.89 * ((decodes - ALIAS_RATIO_RANGE_LOW) / span)


def _fail(line: int | None, problem: str) -> DecodeError:
    where = f"line {line}: " if line else ""
    return DecodeError(f"{_PREFIX}{where}{problem}")


class _Budget:
    """go-yaml's per-document counters. go-yaml checks after every single decode operation; this
    checks after every real node and once after each whole alias. That is the same verdict: within
    an alias both counters grow by one per step, so the alias share only rises while the allowed
    share can only fall, and if the limit is crossed anywhere inside an alias it is still crossed at
    its end."""

    __slots__ = ("aliases", "decodes")

    def __init__(self) -> None:
        self.decodes = 0
        self.aliases = 0

    def spend(self, line: int, n: int = 1, *, alias: bool = False) -> None:
        self.decodes += n
        if alias:
            self.aliases += n
        if (
            self.aliases > 100
            and self.decodes > 1000
            and self.aliases / self.decodes > allowed_alias_ratio(self.decodes)
        ):
            raise _fail(line, "document contains excessive aliasing")


class _Anchored:
    """What an anchor names: its value, its go-yaml decode count and its JSON size. ``open`` while
    the anchored collection is still being read (an alias to it then would contain itself)."""

    __slots__ = ("decodes", "is_map", "open", "size", "value")

    def __init__(self) -> None:
        self.value: Any = None
        self.decodes = 0
        self.size = 0
        self.is_map = False
        self.open = True


class _Item:
    """A finished node, ready to be attached to its parent."""

    __slots__ = ("decodes", "hashable", "is_map", "size", "value")

    def __init__(self, value: Any, decodes: int, size: int, *, is_map: bool = False, hashable: bool = True) -> None:
        self.value = value
        self.decodes = decodes
        self.size = size
        self.is_map = is_map
        self.hashable = hashable


_NO_KEY: Any = object()
_MERGE: Any = object()


class _Frame:
    """A collection being read. ``size`` is its JSON size so far, brackets included."""

    __slots__ = ("anchor", "count", "decodes", "flow", "is_map", "is_merge_list", "key", "key_size", "line", "merges",
                 "size", "value")  # fmt: skip

    def __init__(
        self, is_map: bool, flow: bool, anchor: _Anchored | None, line: int, *, is_merge_list: bool = False
    ) -> None:
        self.is_map = is_map
        self.flow = flow
        self.anchor = anchor
        self.line = line
        self.value: Any = {} if is_map else []
        self.size = 2
        self.count = 0
        # go-yaml does not decode the sequence of a `<<: [*a, *b]` merge itself, only its items.
        self.decodes = 0 if is_merge_list else 1
        self.key: Any = _NO_KEY
        self.key_size = 0
        self.merges: list[dict[Any, Any]] = []
        self.is_merge_list = is_merge_list


def _json_string_size(text: str) -> int:
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return len(text) + 2
    return len(json.dumps(text, ensure_ascii=False).encode())


def _scalar_size(value: Any, raw: str) -> int:
    if isinstance(value, str):
        return _json_string_size(value)
    if value is None:
        return 4
    if isinstance(value, bool):
        return 5
    if isinstance(value, int | float):
        return len(repr(value))
    return len(raw) + 2


class _Document:
    """Reads one document's events into a value (see the module docstring for the bounds)."""

    def __init__(self, loader: Any, constructor: SafeConstructor) -> None:
        self.loader = loader
        self.constructor = constructor
        self.anchors: dict[str, _Anchored] = {}
        self.stack: list[_Frame] = []
        self.flow_depth = 0  # flow collections on the stack; the others are block collections
        self.budget = _Budget()

    def read(self) -> Any:
        self.budget.spend(line=0)  # the document node itself
        while True:
            event = self.loader.get_event()
            line = event.start_mark.line + 1 if event.start_mark is not None else 0
            if isinstance(event, (SequenceStartEvent, MappingStartEvent)):
                self._open(event, line)
                continue
            if isinstance(event, ScalarEvent):
                item = self._scalar(event, line)
            elif isinstance(event, AliasEvent):
                item = self._alias(event, line)
            elif isinstance(event, (SequenceEndEvent, MappingEndEvent)):
                frame = self.stack.pop()
                self.flow_depth -= frame.flow
                item = self._close(frame)
            else:  # pragma: no cover - the parser guarantees well-formed event streams
                raise _fail(line, f"unexpected {type(event).__name__}")
            if not self.stack:
                return item.value
            self._attach(self.stack[-1], item, line)

    def _anchor(self, name: str | None) -> _Anchored | None:
        if name is None:
            return None
        # Like go-yaml, a later anchor of the same name replaces the earlier one from here on.
        anchored = self.anchors[name] = _Anchored()
        return anchored

    def _open(self, event: SequenceStartEvent | MappingStartEvent, line: int) -> None:
        flow = bool(event.flow_style)
        depth = self.flow_depth if flow else len(self.stack) - self.flow_depth
        if depth >= MAX_DEPTH:
            raise _fail(line, f"exceeded max depth of {MAX_DEPTH}")
        self.flow_depth += flow
        parent = self.stack[-1] if self.stack else None
        is_map = isinstance(event, MappingStartEvent)
        merge_list = parent is not None and parent.is_map and parent.key is _MERGE and not is_map
        frame = _Frame(is_map, flow, self._anchor(event.anchor), line, is_merge_list=merge_list)
        if not merge_list:
            self.budget.spend(line)
        self.stack.append(frame)

    def _scalar(self, event: ScalarEvent, line: int) -> _Item:
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.loader.resolve(ScalarNode, event.value, event.implicit)
        parent = self.stack[-1] if self.stack else None
        if tag == _MERGE_TAG and parent is not None and parent.is_map and parent.key is _NO_KEY:
            item = _Item(_MERGE, 0, 4)  # go-yaml does not decode the `<<` key itself
        else:
            self.budget.spend(line)
            value = self._construct(tag, event, line)
            item = _Item(value, 1, _scalar_size(value, event.value))
        anchored = self._anchor(event.anchor)
        if anchored is not None:
            anchored.value, anchored.decodes, anchored.size, anchored.open = item.value, item.decodes, item.size, False
        return item

    def _construct(self, tag: str, event: ScalarEvent, line: int) -> Any:
        if tag in (_STR_TAG, _TIMESTAMP_TAG, _MERGE_TAG):
            # Timestamps stay text (as in JSON); a `<<` that is not a key is a plain string.
            return event.value
        node = ScalarNode(tag, event.value, None, None, event.style)
        construct = self.constructor.yaml_constructors.get(tag) or self.constructor.yaml_constructors[None]
        try:
            return construct(self.constructor, node)
        except yaml.YAMLError as exc:
            raise _fail(line, getattr(exc, "problem", None) or str(exc).splitlines()[0]) from None
        except ValueError as exc:  # e.g. an integer of more than 4300 digits
            raise _fail(line, f"cannot decode {event.value[:32]!r}: {exc}") from None

    def _alias(self, event: AliasEvent, line: int) -> _Item:
        anchored = self.anchors.get(event.anchor or "")
        if anchored is None:
            raise _fail(line, f"unknown anchor '{event.anchor}' referenced")
        if anchored.open:
            raise _fail(line, f"anchor '{event.anchor}' value contains itself")
        self.budget.spend(line)  # the alias node
        self.budget.spend(line, anchored.decodes, alias=True)  # everything it stands for
        hashable = not isinstance(anchored.value, (dict, list))
        return _Item(anchored.value, 1 + anchored.decodes, anchored.size, is_map=anchored.is_map, hashable=hashable)

    def _attach(self, frame: _Frame, item: _Item, line: int) -> None:
        frame.decodes += item.decodes
        comma = 1 if frame.count else 0
        if not frame.is_map:
            if frame.is_merge_list and not item.is_map:
                raise _fail(line, "map merge requires map or sequence of maps as the value")
            frame.value.append(item.value)
            frame.count += 1
            frame.size += comma + item.size
        elif frame.key is _NO_KEY:
            if not item.hashable:
                raise _fail(line, "invalid map key: a sequence or mapping cannot be a key")
            frame.key, frame.key_size = item.value, item.size
            return
        elif frame.key is _MERGE:
            if item.is_map:
                frame.merges.append(item.value)
            elif isinstance(item.value, list) and all(isinstance(m, dict) for m in item.value):
                frame.merges.extend(item.value)
            else:
                raise _fail(line, "map merge requires map or sequence of maps as the value")
            frame.key = _NO_KEY
            frame.count += 1
            frame.size += comma + 5 + item.size
        else:
            frame.value[frame.key] = item.value
            frame.key = _NO_KEY
            frame.count += 1
            frame.size += comma + frame.key_size + 1 + item.size
        if frame.size > MAX_REQUEST_BODY_BYTES:
            # What kubectl would send for this document is over the API server's body limit.
            raise RequestEntityTooLargeError(MAX_REQUEST_BODY_BYTES)

    def _close(self, frame: _Frame) -> _Item:
        value = frame.value
        if frame.merges:
            # Explicit keys win over merged ones; among merged maps, the earlier one wins.
            merged: dict[Any, Any] = {}
            for source in reversed(frame.merges):
                merged.update(source)
            merged.update(value)
            value = merged
        item = _Item(value, frame.decodes, frame.size, is_map=frame.is_map, hashable=False)
        if frame.anchor is not None:
            a = frame.anchor
            a.value, a.decodes, a.size, a.is_map, a.open = value, frame.decodes, frame.size, frame.is_map, False
        return item


def _problem(exc: yaml.YAMLError) -> DecodeError:
    mark = getattr(exc, "problem_mark", None)
    problem = getattr(exc, "problem", None)
    if problem == "exceeded maximum nesting depth":  # libyaml's own limit, set just above ours
        problem = f"exceeded max depth of {MAX_DEPTH}"
    if problem is None:
        problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return _fail(mark.line + 1 if mark is not None else None, problem)


def _expect(loader: Any, kind: type[Event]) -> Event:
    event = loader.get_event()
    if not isinstance(event, kind):  # pragma: no cover - the parser guarantees the stream's shape
        raise _fail(None, f"expected {kind.__name__}, got {type(event).__name__}")
    return event


def load_all(text: str) -> Iterator[Any]:
    """Yield the value of every document in ``text`` (empty documents as ``None``), in order.

    Raises :class:`DecodeError` for syntax errors, nesting deeper than :data:`MAX_DEPTH`, excessive
    aliasing or an alias to its own ancestor, and :class:`RequestEntityTooLargeError` for a
    document whose JSON encoding would exceed the API server's body limit."""
    loader = _Loader(text)
    constructor = SafeConstructor()
    try:
        _expect(loader, StreamStartEvent)
        while not loader.check_event(StreamEndEvent):
            _expect(loader, DocumentStartEvent)
            value = _Document(loader, constructor).read()
            _expect(loader, DocumentEndEvent)
            yield value
    except yaml.YAMLError as exc:
        raise _problem(exc) from None
    finally:
        loader.dispose()
