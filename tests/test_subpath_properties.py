"""Property tests for the sub-path rules: on random trees (directories, files, symlinks with relative,
absolute, escaping and looping targets) and random paths, the kernel backend (openat2) and the
userspace walker agree exactly under both policies, and every successful result is a handle on an
entry inside the root."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence

from hypothesis import given, settings
from hypothesis import strategies as st

from imagevol.errors import SubPathError
from imagevol.trees import subpath as sp
from tests.helpers.subpaths import walk_inodes

NAMES = ["a", "b", "c", "l", "m", "é"]
COMPONENT = st.sampled_from([*NAMES, ".", "..", ""])


@st.composite
def link_targets(draw: st.DrawFn) -> str:
    parts = draw(st.lists(COMPONENT, min_size=1, max_size=4))
    text = "/".join(parts)
    kind = draw(st.sampled_from(["relative", "absolute", "escaping"]))
    if kind == "absolute":
        text = "/" + text
    elif kind == "escaping":
        text = "../" * draw(st.integers(1, 4)) + text
    if draw(st.booleans()):
        text += "/"
    return text if text.strip("/") or text.startswith("/") else "."  # symlink("") is impossible


Op = tuple[int, str, str, str]
TREES = st.lists(
    st.tuples(
        st.integers(0, 12),
        st.sampled_from(NAMES),
        st.sampled_from(["dir", "dir", "file", "link", "link"]),
        link_targets(),
    ),
    max_size=16,
)


@st.composite
def sub_paths(draw: st.DrawFn) -> str:
    parts = draw(st.lists(st.sampled_from([*NAMES, ".", ""]), max_size=5))
    return "/".join(parts) + ("/" if draw(st.booleans()) else "")


@st.composite
def raw_paths(draw: st.DrawFn) -> str:
    """What the container view hands to ``lookup``: ``..`` and a leading ``/`` included."""
    text = "/".join(draw(st.lists(COMPONENT, min_size=1, max_size=6)))
    return ("/" + text) if draw(st.booleans()) else (text or ".")


def build(root: str, ops: Sequence[Op]) -> None:
    dirs = [root]
    for parent_index, name, kind, target in ops:
        path = os.path.join(dirs[parent_index % len(dirs)], name)
        if os.path.lexists(path):
            continue
        if kind == "dir":
            os.mkdir(path)
            dirs.append(path)
        elif kind == "file":
            with open(path, "w") as f:
                f.write(path)
        else:
            os.symlink(target, path)


def outcome(root_fd: int, path: str, policy: sp.Policy, backend: sp.Backend, *, raw: bool) -> tuple[object, ...]:
    try:
        r = sp.lookup(root_fd, path, policy, backend) if raw else sp.resolve(root_fd, path, policy, backend)
    except SubPathError as exc:
        return ("error", exc.kind)
    try:
        return ("ok", r.relative_path(root_fd), r.dev, r.ino, r.is_dir)
    finally:
        r.close()


def check(ops: Sequence[Op], paths: Sequence[str], *, raw: bool) -> None:
    with tempfile.TemporaryDirectory(prefix="imagevol-prop-") as base:
        root = os.path.join(base, "root")
        os.mkdir(root)
        # A decoy next to the root: escaping links that were followed would find it.
        for name in NAMES:
            os.mkdir(os.path.join(base, name))
        build(root, ops)
        inside = set(walk_inodes(root))
        root_fd = sp.open_root(root)
        try:
            for path in paths:
                results = {}
                for policy in sp.Policy:
                    kernel = outcome(root_fd, path, policy, sp.Backend.KERNEL, raw=raw)
                    user = outcome(root_fd, path, policy, sp.Backend.USERSPACE, raw=raw)
                    assert kernel == user, (path, policy, ops)
                    if kernel[0] == "ok":
                        assert (kernel[2], kernel[3]) in inside, (path, policy, ops)
                    results[policy] = kernel
                beneath, in_root = results[sp.Policy.BENEATH], results[sp.Policy.IN_ROOT]
                # Re-rooting only changes what BENEATH calls an escape.
                if beneath != ("error", "escape"):
                    assert in_root == beneath, (path, ops)
        finally:
            os.close(root_fd)


@settings(max_examples=300)
@given(TREES, st.lists(sub_paths(), min_size=1, max_size=8))
def test_kernel_and_userspace_agree_on_sub_paths(ops: list[Op], paths: list[str]) -> None:
    check(ops, paths, raw=False)


@settings(max_examples=150)
@given(TREES, st.lists(raw_paths(), min_size=1, max_size=8))
def test_kernel_and_userspace_agree_on_raw_paths(ops: list[Op], paths: list[str]) -> None:
    """``lookup`` (used by the container view) lets ``..`` and absolute paths through to the
    policy, like a link target: still identical, still inside."""
    check(ops, paths, raw=True)


@given(st.lists(st.sampled_from(["a", "..", ".", "", "b..", "..c", "\\", " "]), max_size=6), st.booleans())
def test_validate_classifies_before_any_io(parts: list[str], absolute: bool) -> None:
    text = ("/" if absolute else "") + "/".join(parts)
    try:
        sp.validate(text)
    except SubPathError as exc:
        assert exc.kind == "invalid"
        assert text.startswith("/") or ".." in text.split("/")
    else:
        assert not text.startswith("/") and ".." not in text.split("/")


@given(st.integers(1, 300))
def test_name_length_limit(n: int) -> None:
    name = "n" * n
    if n > sp.NAME_MAX:
        try:
            sp.validate(name)
        except SubPathError as exc:
            assert exc.kind == "toolong"
        else:
            raise AssertionError("a name over 255 bytes must be toolong")
    else:
        assert sp.validate(name) == name


def test_length_limits_count_bytes_not_characters() -> None:
    assert sp.validate("é" * 127)  # 254 bytes
    for text in ("é" * 128, "/".join(["é" * 100] * 21)):  # 256 bytes in a name; 4220 bytes in all
        try:
            sp.validate(text)
        except SubPathError as exc:
            assert exc.kind == "toolong"
        else:
            raise AssertionError(text[:10])


def test_whole_volume_spellings() -> None:
    for text in ("", ".", "./", ".//./", "/."):
        assert sp.is_whole_volume(text), text
    for text in ("a", "./a", "..", ".a"):
        assert not sp.is_whole_volume(text), text


@given(st.lists(st.sampled_from(["a", "é", "/", ".", "\x00", "\\", "n" * 40]), max_size=150))
def test_validate_shortcut_agrees_with_the_rules(pieces: list[str]) -> None:
    text = "".join(pieces)
    # validate() decides short ASCII paths without splitting them; every path, short or not, gets
    # the answer the rules give.
    elements = text.split("/")
    if "\x00" in text or text.startswith("/") or ".." in elements:
        expected = "invalid"
    elif len(os.fsencode(text)) >= sp.PATH_MAX or any(len(os.fsencode(e)) > sp.NAME_MAX for e in elements):
        expected = "toolong"
    else:
        expected = ""
    try:
        assert sp.validate(text) == text
        got = ""
    except SubPathError as exc:
        got = exc.kind
    assert got == expected
