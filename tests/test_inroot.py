"""The in-root walker itself (``imagevol.trees._inroot``), below both of its users.

* On random trees (directories, files, symlinks with relative, absolute, escaping and looping
  targets) and random path strings, the kernel (openat2) and the userspace walk agree exactly,
  under both policies, following the final component or not; the userspace walk's real path is
  the one the kernel prints; ``IN_ROOT`` differs from ``BENEATH`` only where ``BENEATH`` says
  ``escape``.
* Walks that create missing directories (what layer application does) only ever create inside the
  root, with exactly the requested mode, and what they made is what a plain lookup then finds.
* The depth and real-length bounds count the real path (after symlinks and ``..``) and refuse
  before creating anything.
* Recursive removal (``imagevol.trees._remove_tree``) empties 0000-mode trees, deep ones too, and never
  follows a symlink out.

Every test keeps decoys next to the root and checks afterwards that nothing outside it changed.
"""

from __future__ import annotations

import errno
import os
import stat
import tempfile
from collections.abc import Iterator, Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from imagevol.trees import _inroot, _remove_tree
from imagevol.trees._inroot import Backend, Policy, WalkError
from tests.helpers.subpaths import open_fds, walk_inodes

NAMES = ["a", "b", "c", "l", "m"]
COMPONENT = st.sampled_from([*NAMES, ".", "..", ""])


@st.composite
def link_targets(draw: st.DrawFn) -> str:
    text = "/".join(draw(st.lists(COMPONENT, min_size=1, max_size=4)))
    kind = draw(st.sampled_from(["relative", "absolute", "escaping"]))
    if kind == "absolute":
        text = "/" + text
    elif kind == "escaping":
        text = "../" * draw(st.integers(1, 3)) + text
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
    max_size=14,
)


@st.composite
def paths(draw: st.DrawFn) -> str:
    """Path strings as a user or a link would write them: ``..``, ``//``, a leading ``/``."""
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


def listing(top: str, skip: str) -> dict[str, tuple[int, int, str]]:
    """Everything under ``top`` except the subtree ``skip``: (type and mode, size, link text)."""
    out: dict[str, tuple[int, int, str]] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        if dirpath == skip:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            if path == skip:
                continue
            st_ = os.lstat(path)
            link = os.readlink(path) if stat.S_ISLNK(st_.st_mode) else ""
            out[os.path.relpath(path, top)] = (st_.st_mode, st_.st_size, link)
    return out


class Sandbox:
    """``base/root`` is the tree; ``base`` also holds decoys with the names a walk might look
    for, so a walk that left the root would find (or create in) them."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.root = os.path.join(base, "root")
        os.mkdir(self.root)
        for name in NAMES:
            os.mkdir(os.path.join(base, name))
            with open(os.path.join(base, name, "decoy"), "w") as f:
                f.write("outside\n")
        self.fd = os.open(self.root, _inroot.PATH_DIR)

    def outside(self) -> dict[str, tuple[int, int, str]]:
        return listing(self.base, self.root)

    def close(self) -> None:
        os.close(self.fd)


@pytest.fixture
def box() -> Iterator[Sandbox]:
    with tempfile.TemporaryDirectory(prefix="imagevol-inroot-") as base:
        sandbox = Sandbox(base)
        before = sandbox.outside()
        try:
            yield sandbox
            assert sandbox.outside() == before
        finally:
            sandbox.close()


def kind_of(exc: OSError) -> str:
    kind = exc.kind if isinstance(exc, WalkError) else _inroot.errno_kind(exc.errno)
    return kind or f"errno {exc.errno}"


def outcome(root_fd: int, path: str, policy: Policy, backend: Backend, follow: bool) -> tuple[object, ...]:
    try:
        fd = _inroot.open_entry(root_fd, path, policy, backend, follow_final=follow)
    except OSError as exc:
        return ("error", kind_of(exc))
    try:
        st_ = os.fstat(fd)
        return ("ok", st_.st_dev, st_.st_ino, _inroot.path_below(root_fd, fd))
    finally:
        os.close(fd)


# --- the two backends agree ----------------------------------------------------------------------


@settings(max_examples=250)
@given(TREES, st.lists(paths(), min_size=1, max_size=8))
def test_kernel_and_userspace_agree(ops: list[Op], texts: list[str]) -> None:
    with tempfile.TemporaryDirectory(prefix="imagevol-inroot-") as base:
        box = Sandbox(base)
        try:
            build(box.root, ops)
            inside = set(walk_inodes(box.root))
            before = box.outside()
            for text in texts:
                for follow in (True, False):
                    results = {}
                    for policy in Policy:
                        kernel = outcome(box.fd, text, policy, Backend.KERNEL, follow)
                        user = outcome(box.fd, text, policy, Backend.USERSPACE, follow)
                        assert kernel == user, (text, policy, follow, ops)
                        if kernel[0] == "ok":
                            assert (kernel[1], kernel[2]) in inside
                            # The walk's names are the real path the kernel prints.
                            fd, names = _inroot.walk(box.fd, text, policy, follow_final=follow)
                            os.close(fd)
                            assert ("/".join(names) or ".") == kernel[3]
                        results[policy] = kernel
                    beneath, in_root = results[Policy.BENEATH], results[Policy.IN_ROOT]
                    if beneath != ("error", "escape"):
                        assert in_root == beneath, (text, follow, ops)
            assert box.outside() == before
        finally:
            box.close()


@settings(max_examples=150)
@given(TREES, st.lists(paths(), min_size=1, max_size=6))
def test_creating_walks_stay_inside_and_make_what_lookups_find(ops: list[Op], texts: list[str]) -> None:
    """The layer applier's walk: IN_ROOT, every component a directory, missing ones created. It
    never creates outside the root, and after it succeeded the kernel resolves the same path to
    the same directory (what was created is real, the names are its real path)."""
    with tempfile.TemporaryDirectory(prefix="imagevol-inroot-") as base:
        box = Sandbox(base)
        try:
            build(box.root, ops)
            before = box.outside()
            for text in texts:
                made: list[tuple[tuple[str, ...], str]] = []
                try:
                    fd, names = _inroot.walk(
                        box.fd,
                        text,
                        Policy.IN_ROOT,
                        directory=True,
                        create_mode=0o751,
                        on_create=lambda _fd, real, name: made.append((real, name)),  # noqa: B023
                        check_below=False,
                    )
                except WalkError as exc:
                    assert exc.kind in ("notdir", "loop"), (text, exc.kind)
                    continue
                try:
                    assert stat.S_ISDIR(os.fstat(fd).st_mode)
                    again = _inroot.open_entry(box.fd, text, Policy.IN_ROOT, Backend.KERNEL)
                    try:
                        assert os.path.samestat(os.fstat(again), os.fstat(fd))
                    finally:
                        os.close(again)
                    assert ("/".join(names) or ".") == _inroot.path_below(box.fd, fd)
                    for real, name in made:
                        st_ = os.lstat(os.path.join(box.root, *real, name))
                        assert stat.S_ISDIR(st_.st_mode) and stat.S_IMODE(st_.st_mode) == 0o751
                finally:
                    os.close(fd)
            assert box.outside() == before
        finally:
            box.close()


# --- the walk's own rules ---------------------------------------------------------------------


def test_errors_are_oserrors_with_the_kernels_errno(box: Sandbox) -> None:
    os.symlink("loop", os.path.join(box.root, "loop"))
    os.symlink("/a", os.path.join(box.root, "abs"))
    with open(os.path.join(box.root, "file"), "w"):
        pass
    cases = [
        ("loop", Policy.IN_ROOT, "loop", errno.ELOOP),
        ("abs", Policy.BENEATH, "escape", errno.EXDEV),
        ("..", Policy.BENEATH, "escape", errno.EXDEV),
        ("nope", Policy.IN_ROOT, "notfound", errno.ENOENT),
        ("file/", Policy.IN_ROOT, "notdir", errno.ENOTDIR),
        ("file/..", Policy.IN_ROOT, "notdir", errno.ENOTDIR),
    ]
    for path, policy, kind, code in cases:
        with pytest.raises(WalkError) as info:
            _inroot.walk(box.fd, path, policy)
        assert (info.value.kind, info.value.errno) == (kind, code), path
        assert _inroot.errno_kind(code) == kind
        with pytest.raises(OSError) as kernel:
            _inroot.open_entry(box.fd, path, policy, Backend.KERNEL)
        assert kernel.value.errno == code, path


def test_in_root_restarts_absolute_links_at_the_root_from_any_depth(box: Sandbox) -> None:
    os.makedirs(os.path.join(box.root, "x", "y", "b"))
    os.makedirs(os.path.join(box.root, "b"))
    os.symlink("/b", os.path.join(box.root, "x", "y", "abs"))
    os.symlink("../../../../b", os.path.join(box.root, "x", "y", "up"))
    want = os.stat(os.path.join(box.root, "b"))
    for path in ["x/y/abs", "x/y/up", "x/y/abs/../x/y/../../b", "/x/../../b"]:
        for backend in (Backend.KERNEL, Backend.USERSPACE):
            fd = _inroot.open_entry(box.fd, path, Policy.IN_ROOT, backend)
            try:
                assert os.path.samestat(os.fstat(fd), want), (path, backend)
            finally:
                os.close(fd)
        fd, names = _inroot.walk(box.fd, path, Policy.IN_ROOT, directory=True, create_mode=0o755)
        os.close(fd)
        assert names == ("b",), path
        with pytest.raises(WalkError) as info:
            _inroot.walk(box.fd, path, Policy.BENEATH)
        assert info.value.kind == "escape"


def test_the_final_link_is_returned_itself_unless_followed(box: Sandbox) -> None:
    os.mkdir(os.path.join(box.root, "d"))
    os.symlink("d", os.path.join(box.root, "l"))
    for backend in (Backend.KERNEL, Backend.USERSPACE):
        fd = _inroot.open_entry(box.fd, "l", Policy.BENEATH, backend, follow_final=False)
        try:
            assert stat.S_ISLNK(os.fstat(fd).st_mode)
        finally:
            os.close(fd)
        for path in ("l/", "l/.", "./l"):  # a trailing slash or a component after it follows it
            fd = _inroot.open_entry(box.fd, path, Policy.BENEATH, backend, follow_final=path == "./l")
            try:
                assert stat.S_ISDIR(os.fstat(fd).st_mode), path
            finally:
                os.close(fd)
    with pytest.raises(WalkError) as info:
        _inroot.walk(box.fd, "l", Policy.BENEATH, follow_final=False, directory=True)
    assert info.value.kind == "notdir"


def test_creation_mode_is_exact_whatever_the_umask(box: Sandbox) -> None:
    old = os.umask(0o077)
    try:
        calls: list[tuple[tuple[str, ...], str]] = []
        fd, names = _inroot.walk(
            box.fd,
            ("x", "y", "z"),
            Policy.IN_ROOT,
            directory=True,
            create_mode=0o755,
            on_create=lambda dir_fd, real, name: calls.append((real, name)),
        )
        os.close(fd)
    finally:
        os.umask(old)
    assert names == ("x", "y", "z")
    assert calls == [((), "x"), (("x",), "y"), (("x", "y"), "z")]
    for made in ("x", "x/y", "x/y/z"):
        assert stat.S_IMODE(os.stat(os.path.join(box.root, made)).st_mode) == 0o755, made


def test_creation_through_escaping_links_lands_in_the_root(box: Sandbox) -> None:
    """``esc -> ../../a`` and ``abs -> /b`` point at decoys next to the root; creating below them
    under IN_ROOT creates ``<root>/a/...`` and ``<root>/b/...`` (the box fixture checks that the
    decoys are unchanged)."""
    os.symlink("../../a", os.path.join(box.root, "esc"))
    os.symlink("/b", os.path.join(box.root, "abs"))
    for path, real in [("esc/new", ("a", "new")), ("abs/new/deeper", ("b", "new", "deeper"))]:
        fd, names = _inroot.walk(box.fd, path, Policy.IN_ROOT, directory=True, create_mode=0o700)
        os.close(fd)
        assert names == real
        assert os.path.isdir(os.path.join(box.root, *real))
    with pytest.raises(WalkError) as info:
        _inroot.walk(box.fd, "esc/new", Policy.BENEATH, directory=True, create_mode=0o700)
    assert info.value.kind == "escape"


def test_depth_bound_counts_the_real_path(box: Sandbox) -> None:
    os.makedirs(os.path.join(box.root, "a", "b", "c", "d"))
    os.symlink("a/b/c", os.path.join(box.root, "s"))
    ok = ["a/b/c", "a/b/c/../../b/c", "s", "s/../c"]
    for path in ok:
        fd, _ = _inroot.walk(box.fd, path, Policy.IN_ROOT, max_depth=3)
        os.close(fd)
    # "s/d" is two names but four directories deep; the bound holds at every step of the walk.
    for path in ["a/b/c/d", "s/d", "a/b/c/d/../.."]:
        with pytest.raises(WalkError) as info:
            _inroot.walk(box.fd, path, Policy.IN_ROOT, max_depth=3)
        assert info.value.kind == "toolong", path
    # Refused before anything is made.
    with pytest.raises(WalkError):
        _inroot.walk(box.fd, "s/new", Policy.IN_ROOT, create_mode=0o755, max_depth=3)
    assert not os.path.lexists(os.path.join(box.root, "a", "b", "c", "new"))


def test_length_bound_counts_bytes_of_the_real_path(box: Sandbox) -> None:
    """A "/" before each name: ``aaaa/bbbb/cccc`` is 15 bytes, one more name is 20."""
    os.makedirs(os.path.join(box.root, "aaaa", "bbbb", "cccc", "dddd"))
    os.symlink("aaaa/bbbb/cccc", os.path.join(box.root, "s"))
    for path in ["aaaa/bbbb/cccc", "s", "aaaa/bbbb/cccc/../../bbbb/cccc"]:
        fd, _ = _inroot.walk(box.fd, path, Policy.IN_ROOT, max_real_len=20)
        os.close(fd)
    for path in ["aaaa/bbbb/cccc/dddd", "s/dddd", "/s/dddd"]:
        with pytest.raises(WalkError) as info:
            _inroot.walk(box.fd, path, Policy.IN_ROOT, max_real_len=20)
        assert info.value.kind == "toolong", path
    with pytest.raises(WalkError) as info:
        _inroot.walk(box.fd, "s/é", Policy.IN_ROOT, create_mode=0o755, max_real_len=18)  # é: 2 bytes
    assert info.value.kind == "toolong"
    assert os.listdir(os.path.join(box.root, "aaaa", "bbbb", "cccc")) == ["dddd"]
    # The real limit: 15 names of 255 bytes are 3840 bytes; a 16th passes PATH_MAX.
    names = tuple("n" * 255 for _ in range(16))
    fd, _ = _inroot.walk(box.fd, names[:15], Policy.IN_ROOT, create_mode=0o700, max_real_len=_inroot.PATH_MAX)
    os.close(fd)
    with pytest.raises(WalkError) as info:
        _inroot.walk(box.fd, names, Policy.IN_ROOT, create_mode=0o700, max_real_len=_inroot.PATH_MAX)
    assert info.value.kind == "toolong"


def test_no_descriptor_leaks_on_any_outcome(box: Sandbox) -> None:
    os.makedirs(os.path.join(box.root, "a", "b"))
    os.symlink("loop", os.path.join(box.root, "loop"))
    with open(os.path.join(box.root, "a", "f"), "w"):
        pass
    before = open_fds()
    for path in ["a/b", "a/f", "a/f/x", "loop", "a/b/../../..", "/a/nope", "a/b/c/d"]:
        for policy in Policy:
            try:
                fd, _ = _inroot.walk(box.fd, path, policy, max_depth=3)
            except OSError:
                continue
            os.close(fd)
    with pytest.raises(WalkError):
        _inroot.walk(box.fd, "a/b/c/d/e", Policy.IN_ROOT, create_mode=0o755, max_depth=3)
    assert open_fds() == before


# --- removal ----------------------------------------------------------------------------------


def _hostile_tree(root: str, outside: str) -> None:
    """0000 directories with files in them, a deep chain, and links that point outside."""
    os.makedirs(os.path.join(root, "t", "locked", "inner"))
    for d in ("t/locked/inner", "t/locked", "t"):
        with open(os.path.join(root, d, "file"), "w") as f:
            f.write("x")
    os.makedirs(os.path.join(root, "t", "readonly"))
    with open(os.path.join(root, "t", "readonly", "file"), "w") as f:
        f.write("x")
    os.chmod(os.path.join(root, "t", "readonly"), 0o555)  # listable, but nothing can be unlinked
    os.symlink(outside, os.path.join(root, "t", "locked", "out"))
    os.symlink("../../..", os.path.join(root, "t", "locked", "inner", "up"))
    deep = os.open(os.path.join(root, "t"), os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(600):  # deeper than any recursion would go
        os.mkdir("d", 0o700, dir_fd=deep)
        nxt = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=deep)
        os.close(deep)
        deep = nxt
    os.close(deep)
    for d in ("t/locked/inner", "t/locked", "t"):
        os.chmod(os.path.join(root, d), 0)


def test_removal_empties_0000_trees_and_follows_no_link(box: Sandbox) -> None:
    outside = os.path.join(box.base, "a")
    _hostile_tree(box.root, outside)
    _remove(box.root, "t")
    assert os.listdir(box.root) == []
    assert os.listdir(outside) == ["decoy"]


def _remove(root: str, name: str) -> None:
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _remove_tree.remove_tree_at(fd, name)
    finally:
        os.close(fd)


def test_removal_as_an_unprivileged_owner(box: Sandbox) -> None:
    """Without CAP_DAC_OVERRIDE a 0000 directory cannot be listed: removal must lift the mode
    first (through a handle on that very inode). As root, the tree is handed to ``nobody`` and
    removed by a child that became ``nobody``."""
    if os.geteuid() != 0:
        _hostile_tree(box.root, os.path.join(box.base, "a"))
        _remove(box.root, "t")
        assert os.listdir(box.root) == []
        return
    nobody = 65534
    os.chmod(box.base, 0o755)
    os.chown(box.root, nobody, nobody)
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through its exit status
        code = 1
        try:
            os.setgroups([])
            os.setgid(nobody)
            os.setuid(nobody)
            _hostile_tree(box.root, os.path.join(box.base, "a"))
            with pytest.raises(PermissionError):
                os.listdir(os.path.join(box.root, "t"))
            _remove(box.root, "t")
            code = 0 if os.listdir(box.root) == [] else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert os.listdir(box.root) == []


def test_rmtree_takes_a_path_and_a_missing_one_is_nothing(box: Sandbox) -> None:
    _hostile_tree(box.root, os.path.join(box.base, "b"))
    _remove_tree.rmtree(os.path.join(box.root, "t"))
    _remove_tree.rmtree(os.path.join(box.root, "t"))
    os.symlink(os.path.join(box.base, "c"), os.path.join(box.root, "link"))
    _remove_tree.rmtree(os.path.join(box.root, "link"))  # the link goes, never its target
    assert os.listdir(box.root) == []


def test_mkdir_exact_and_lstat_at(box: Sandbox) -> None:
    fd = os.open(box.root, os.O_RDONLY | os.O_DIRECTORY)
    old = os.umask(0o777)
    try:
        _inroot.mkdir_exact(fd, "d", 0o1750)
        os.symlink("d", "l", dir_fd=fd)
        assert stat.S_IMODE(os.stat(os.path.join(box.root, "d")).st_mode) == 0o1750
        st_ = _inroot.lstat_at(fd, "l")
        assert st_ is not None and stat.S_ISLNK(st_.st_mode)
        assert _inroot.lstat_at(fd, "nope") is None
    finally:
        os.umask(old)
        os.close(fd)


def test_protected_symlinks_rule_is_for_trailing_links_of_a_lookup(
    box: Sandbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The kernel's ``fs.protected_symlinks`` rule is switched on for the walker only (this host's
    sysctl is left alone). A lookup refuses a trailing link owned by somebody else in a sticky
    world-writable directory; the walk to an entry's parent (layers) has no trailing link."""
    if os.geteuid() != 0:
        pytest.skip("needs root to give the link another owner")
    monkeypatch.setattr(_inroot, "_protected_symlinks", lambda: True)
    tmp = os.path.join(box.root, "tmp")
    os.makedirs(os.path.join(box.root, "d"))
    os.mkdir(tmp)
    os.chmod(tmp, 0o1777)
    os.symlink("../d", os.path.join(tmp, "link"))
    os.lchown(os.path.join(tmp, "link"), 4321, 4321)
    with pytest.raises(WalkError) as info:
        _inroot.walk(box.fd, "tmp/link", Policy.IN_ROOT)
    assert info.value.kind == "denied"
    fd, names = _inroot.walk(box.fd, ("tmp", "link"), Policy.IN_ROOT, protect_trailing=False, directory=True)
    os.close(fd)
    assert names == ("d",)
