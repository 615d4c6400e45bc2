"""Layer application: OCI changeset semantics and attacks, each asserted on the filesystem.

Every test applies through :class:`layerkit.Sandbox`, which fails if anything outside the root (the
decoys ``etc/passwd``, ``tmp/``, ``root/secret`` next to it) was created, changed or removed.
"""

from __future__ import annotations

import itertools
import os
import stat

import pytest

from imagevol.testing.tarbuild import FIXED_MTIME, TarEntry
from imagevol.trees.layers import ApplyOptions
from tests.helpers.layerkit import D, F, H, S, Sandbox, W


@pytest.fixture
def box(tmp_path: object) -> Sandbox:
    return Sandbox.make(str(tmp_path))


# --- basics -------------------------------------------------------------------------------------


def test_files_dirs_modes_owners_and_times(box: Sandbox) -> None:
    box.apply(
        [
            D("etc", 0o750, uid=10, gid=20, mtime=FIXED_MTIME + 5),
            F("etc/conf", "v", 0o640, uid=1000, gid=100, mtime=FIXED_MTIME + 7),
            S("etc/link", "conf", uid=3, gid=4, mtime=FIXED_MTIME + 9),
            TarEntry("etc/pipe", "fifo", mode=0o620, uid=5, gid=6),
        ]
    )
    st = os.lstat(box.path("etc"))
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == (0o750, 10, 20, FIXED_MTIME + 5)
    st = os.lstat(box.path("etc/conf"))
    assert (stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime) == (0o640, 1000, 100, FIXED_MTIME + 7)
    st = os.lstat(box.path("etc/link"))
    assert (st.st_uid, st.st_gid, st.st_mtime) == (3, 4, FIXED_MTIME + 9)
    st = os.lstat(box.path("etc/pipe"))
    assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o620 and (st.st_uid, st.st_gid) == (5, 6)


def test_owner_not_applied_when_not_asked(box: Sandbox) -> None:
    box.apply([F("f", "x", uid=1234, gid=4321)], options=ApplyOptions(preserve_owner=False))
    st = os.lstat(box.path("f"))
    assert (st.st_uid, st.st_gid) == (os.geteuid(), os.getegid())


def test_setid_stripped_sticky_kept(box: Sandbox) -> None:
    box.apply([F("suid", "x", 0o4755), F("sgid", "x", 0o2711), D("tmp", 0o3777), D("sg", 0o2775)])
    assert box.mode("suid") == 0o755
    assert box.mode("sgid") == 0o711
    assert box.mode("tmp") == 0o1777
    assert box.mode("sg") == 0o775


def test_pax_fractional_mtime_keeps_nanoseconds(box: Sandbox) -> None:
    box.apply([TarEntry("f", "file", b"x", pax={"mtime": "1700000000.123456789"})])
    assert os.lstat(box.path("f")).st_mtime_ns == 1700000000_123456789


def test_dir_mode_0000_across_layers(box: Sandbox) -> None:
    box.apply([D("d", 0o000), F("d/f", "1")], [F("d/g", "2"), D("d/sub", 0o000), F("d/sub/x", "3")], [W("d/.wh.f")])
    assert box.mode("d") == 0o000 and box.mode("d/sub") == 0o000
    assert box.names() == ["d", "d/g", "d/sub", "d/sub/x"]


def test_lower_dir_times_kept_when_layer_does_not_name_it(box: Sandbox) -> None:
    box.apply([D("etc", mtime=FIXED_MTIME - 100), F("etc/a", "1")], [F("etc/b", "2"), W("etc/.wh.a")])
    assert os.lstat(box.path("etc")).st_mtime == FIXED_MTIME - 100


def test_fifo_created_device_skipped_without_side_effects(box: Sandbox) -> None:
    stats = box.apply(
        [F("keep", "lower")],
        [
            TarEntry("keep", "chardev", devmajor=1, devminor=3),
            TarEntry("new/dir/null", "blockdev", devmajor=7, devminor=0),
            TarEntry("p", "fifo"),
        ],
    )
    assert box.read("keep") == "lower"
    assert box.names() == ["keep", "p"]  # no parent created for the skipped device
    assert stats[1].skipped_devices == ["keep", "new/dir/null"]


def test_root_entry_sets_root_attributes(box: Sandbox) -> None:
    box.apply([D("./", 0o711, mtime=FIXED_MTIME + 1), F("f", "x")])
    st = os.stat(box.root)
    assert stat.S_IMODE(st.st_mode) == 0o711 and st.st_mtime == FIXED_MTIME + 1


@pytest.mark.parametrize("entry", [F("./", "x"), S("/", "/etc"), H(".", "f"), TarEntry("", "fifo")])
def test_root_cannot_change_type(box: Sandbox, entry: TarEntry) -> None:
    box.fails("invalid_name", [F("f", "x"), entry])
    assert os.path.isdir(box.root) and not os.path.islink(box.root)


# --- names ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["../x", "a/../../x", "/../x", "a/..", "..", "./../etc/passwd"])
def test_dotdot_names_rejected(box: Sandbox, name: str) -> None:
    box.fails("invalid_name", [F(name, "pwn")])
    assert box.names() == []


@pytest.mark.parametrize("name", ["..wh", "...", "a..", "..a/b", ".wh", "x.wh.y"])
def test_names_that_only_look_dangerous_are_fine(box: Sandbox, name: str) -> None:
    box.apply([F(name, "ok")])
    assert box.read(name) == "ok"


def test_gnu_long_name_decoded_then_validated(box: Sandbox) -> None:
    long = "d" * 120 + "/" + "f" * 150
    box.apply([TarEntry(long, "file", b"x", format="gnu")])
    assert box.read(long) == "x"
    box.fails("invalid_name", [TarEntry("../" + "e" * 120, "file", b"x", format="gnu")])


def test_gnu_long_link_target_verbatim(box: Sandbox) -> None:
    target = "/" + "/".join(["t" * 50] * 6)
    box.apply([TarEntry("l", "symlink", linkname=target, format="gnu")])
    assert os.readlink(box.path("l")) == target


def test_pax_linkpath_overrides_header_for_hardlinks(box: Sandbox) -> None:
    box.fails(
        "invalid_link",
        [F("safe", "x"), TarEntry("h", "hardlink", linkname="safe", pax={"linkpath": "../../etc/passwd"})],
    )


def test_pax_path_with_nul_rejected(box: Sandbox) -> None:
    box.fails("invalid_name", [TarEntry("safe", "file", b"x", pax={"path": "a\x00b"})])


@pytest.mark.parametrize("bad", ["a" * 256, "d/" + "b" * 256])
def test_component_over_name_max(box: Sandbox, bad: str) -> None:
    box.fails("toolong", [F(bad, "x")])


def test_path_max_boundary(box: Sandbox) -> None:
    parts = ["p" * 200] * 20  # 20 * 201 - 1 = 4019 bytes
    ok = "/".join(parts) + "/" + "q" * (4095 - 4020)
    assert len(ok) == 4095
    box.apply([F(ok, "deep")])
    assert box.read(ok) == "deep"
    box.fails("toolong", [F(ok + "r", "x")])


def test_real_path_too_long_through_symlinks(box: Sandbox) -> None:
    deep = "/".join(["p" * 200] * 15)  # ~3000 bytes
    box.fails("toolong", [D(deep), S("l", deep), F("l/" + "/".join(["q" * 200] * 6) + "/f", "x")])


@pytest.mark.parametrize("target", ["", "a\x00b"])
def test_symlink_target_invalid(box: Sandbox, target: str) -> None:
    entry = TarEntry("l", "symlink", linkname="x", pax={"linkpath": target})
    box.fails("invalid_link", [entry])


def test_unicode_and_raw_byte_names(box: Sandbox) -> None:
    raw = os.fsdecode(b"caf\xe9")  # not UTF-8: kept as the same bytes
    box.apply([F("über/naïve.txt", "u"), F(raw, "b")])
    assert box.read("über/naïve.txt") == "u"
    assert os.path.exists(os.path.join(os.fsencode(box.root), b"caf\xe9"))


# --- parents and symlinks -----------------------------------------------------------------------


@pytest.mark.parametrize("target", ["/", "/etc", "../../..", "../../../../etc", "/../../tmp", "..", "."])
def test_writes_through_escaping_symlinks_stay_inside(box: Sandbox, target: str) -> None:
    box.apply([S("esc", target)], [F("esc/passwd", "pwn"), F("esc/tmp/new", "pwn")])
    found = [p for p in box.names() if p.endswith("passwd")]
    assert len(found) == 1 and box.read(found[0]) == "pwn"


def test_symlink_chain_budget(box: Sandbox) -> None:
    # 40 follows (the kernel's MAXSYMLINKS) resolve; 41 are a loop.
    chain = [S(f"l{i}", f"l{i + 1}") for i in range(39)]
    box.apply([D("d"), *chain, S("l39", "d"), F("l0/x", "ok")])
    assert box.read("d/x") == "ok"
    box.fails("loop", [D("d2"), *[S(f"m{i}", f"m{i + 1}") for i in range(40)], S("m40", "d2"), F("m0/x", "no")])


def test_parent_symlink_to_file_is_notdir(box: Sandbox) -> None:
    box.fails("notdir", [F("f", "x"), S("l", "f"), F("l/x", "y")])


def test_stale_directory_cache_after_replacement(box: Sandbox) -> None:
    # `a` is resolved (and cached) as a directory, then replaced by a symlink: later entries must go
    # through the new symlink (in root), never into the deleted directory or out of the tree.
    box.apply([D("a"), F("a/1", "x"), S("a", "../../../tmp"), F("a/2", "y"), W(".wh.nothing")])
    assert box.read("tmp/2") == "y"
    assert box.kind("a") == "symlink"
    box.apply([D("b"), F("b/1", "x")], [S("b", "/etc"), F("b/passwd", "mine")])
    assert box.read("etc/passwd") == "mine"


def test_dir_over_symlink_replaces_link(box: Sandbox) -> None:
    box.apply([D("real"), F("real/keep", "k"), S("d", "real")], [D("d"), F("d/new", "n")])
    assert box.kind("d") == "dir" and box.names() == ["d", "d/new", "real", "real/keep"]


# --- type changes --------------------------------------------------------------------------------

KINDS = ["file", "dir", "symlink", "fifo", "hardlink"]


def _make(kind: str, name: str, tag: str) -> list[TarEntry]:
    if kind == "file":
        return [F(name, tag)]
    if kind == "dir":
        return [D(name), F(f"{name}/child-{tag}", tag)]
    if kind == "symlink":
        return [S(name, f"target-{tag}")]
    if kind == "fifo":
        return [TarEntry(name, "fifo")]
    return [F(f"src-{tag}", tag), H(name, f"src-{tag}")]


@pytest.mark.parametrize(("old", "new"), list(itertools.product(KINDS, KINDS)))
@pytest.mark.parametrize("same_layer", [False, True])
def test_type_changes_in_every_direction(box: Sandbox, old: str, new: str, same_layer: bool) -> None:
    first, second = _make(old, "x", "1"), _make(new, "x", "2")
    if same_layer:
        box.apply([*first, *second])
    else:
        box.apply(first, second)
    want = "file" if new == "hardlink" else new
    assert box.kind("x") == want
    if new == "dir":
        assert os.listdir(box.path("x")) == (["child-1", "child-2"] if old == "dir" else ["child-2"])
    if new in ("file", "hardlink"):
        assert box.read("x") == "2"
    if new == "hardlink":
        assert os.lstat(box.path("x")).st_ino == os.lstat(box.path("src-2")).st_ino
    if old == "hardlink" and new != "hardlink":
        assert box.read("src-1") == "1" and os.lstat(box.path("src-1")).st_nlink == 1


# --- whiteouts -----------------------------------------------------------------------------------


def test_whiteout_through_symlinked_parents(box: Sandbox) -> None:
    box.apply(
        [D("etc"), F("etc/a", "1"), F("etc/b", "2"), S("abs", "/etc"), S("rel", "../../../etc")],
        [W("abs/.wh.a"), W("rel/.wh.b")],
    )
    assert box.names() == ["abs", "etc", "rel"]


def test_whiteout_of_symlink_removes_link_only(box: Sandbox) -> None:
    box.apply([D("d"), F("d/f", "x"), S("l", "d"), S("up", "/")], [W(".wh.l"), W(".wh.up")])
    assert box.names() == ["d", "d/f"]


def test_opaque_through_symlink_and_at_root(box: Sandbox) -> None:
    box.apply([D("real"), F("real/old", "o"), S("l", "/real"), F("top", "t")], [W("l/.wh..wh..opq"), F("l/new", "n")])
    assert box.names() == ["l", "real", "real/new", "top"]
    box.apply([W(".wh..wh..opq"), F("fresh", "f")])
    assert box.names() == ["fresh"]


def test_opaque_after_deep_same_layer_entries(box: Sandbox) -> None:
    box.apply(
        [D("a"), D("a/b"), F("a/b/old", "o"), F("a/x", "x"), D("a/b/c"), F("a/b/c/lower", "l")],
        [F("a/b/c/f", "new"), W("a/.wh..wh..opq")],
    )
    assert box.names() == ["a", "a/b", "a/b/c", "a/b/c/f"]


def test_whiteout_after_same_layer_dir_keeps_new_children(box: Sandbox) -> None:
    box.apply([D("d"), F("d/lower", "l")], [F("d/new", "n"), W(".wh.d"), F("other", "o"), W(".wh.other")])
    assert box.names() == ["d", "d/new", "other"]


def test_whiteouts_in_first_layer_remove_nothing(box: Sandbox) -> None:
    box.apply([F("a", "1"), W(".wh.a"), D("d"), F("d/x", "x"), W("d/.wh..wh..opq"), W(".wh.d")])
    assert box.names() == ["a", "d", "d/x"]


def test_whiteout_never_creates_anything(box: Sandbox) -> None:
    box.apply([F("f", "x")], [W("missing/deep/.wh.x"), W("gone/.wh..wh..opq"), W(".wh.absent")])
    assert box.names() == ["f"]


def test_whiteout_of_aufs_metadata_name_is_noop(box: Sandbox) -> None:
    box.apply([F("f", "x")], [W(".wh..wh.plnk"), W(".wh..wh.aufs")])
    assert box.names() == ["f"]


@pytest.mark.parametrize("name", [".wh.", "d/.wh.", ".wh..", ".wh..."])
def test_invalid_whiteouts(box: Sandbox, name: str) -> None:
    box.fails("invalid_whiteout", [D("d"), F("d/f", "x")], [W(name)])
    assert box.names() == ["d", "d/f"]


def test_whiteout_prefixed_directory_component(box: Sandbox) -> None:
    box.fails("invalid_name", [F(".wh.dir/file", "x")])
    box.fails("invalid_name", [W(".wh.d/.wh.x")])


def test_whiteout_under_a_file_parent_is_notdir(box: Sandbox) -> None:
    # Same rule as any parent (C2.3); umoci ignores it (docs/security.md).
    box.fails("notdir", [F("f", "x")], [W("f/.wh.x")])


def test_whiteout_of_unreadable_directory(box: Sandbox) -> None:
    box.apply([D("d", 0o000), D("d/sub", 0o000), F("d/sub/f", "x")], [W(".wh.d")])
    assert box.names() == []


def test_whiteout_by_name_whatever_the_type(box: Sandbox) -> None:
    box.apply([F("a", "1"), F("b", "2")], [TarEntry(".wh.a", "dir"), TarEntry(".wh.b", "symlink", linkname="x")])
    assert box.names() == []


# --- hardlinks -----------------------------------------------------------------------------------


def test_hardlink_chain_survives_whiteout_of_first(box: Sandbox) -> None:
    box.apply([F("a", "data"), H("b", "a"), H("c", "b")], [W(".wh.a")])
    assert box.names() == ["b", "c"]
    assert os.lstat(box.path("b")).st_ino == os.lstat(box.path("c")).st_ino
    assert box.read("c") == "data"


def test_hardlink_to_symlink_links_the_symlink(box: Sandbox) -> None:
    box.apply([D("d"), S("l", "d"), S("esc", "../../../etc/passwd"), H("hl", "l"), H("sub/h2", "esc")])
    assert box.kind("hl") == "symlink" and os.readlink(box.path("hl")) == "d"
    assert os.readlink(box.path("sub/h2")) == "../../../etc/passwd"


def test_hardlink_target_through_escaping_symlink(box: Sandbox) -> None:
    box.apply([D("etc"), F("etc/passwd", "tree"), S("up", "../../.."), H("h", "up/etc/passwd")])
    assert os.lstat(box.path("h")).st_ino == os.lstat(box.path("etc/passwd")).st_ino


@pytest.mark.parametrize(
    ("target", "kind"),
    [
        ("missing", "notfound"),
        ("d", "invalid_link"),
        ("../x", "invalid_link"),
        ("/", "invalid_link"),
        ("dev", "notfound"),
    ],
)
def test_bad_hardlinks(box: Sandbox, target: str, kind: str) -> None:
    box.fails(kind, [D("d"), TarEntry("dev", "chardev", devmajor=1, devminor=1), H("h", target)])
    assert box.kind("h") == "missing"


def test_hardlink_over_existing_directory(box: Sandbox) -> None:
    box.apply([F("f", "x"), D("d"), F("d/inner", "i")], [H("d", "f")])
    assert box.kind("d") == "file" and box.names() == ["d", "f"]


def test_hardlink_into_what_it_replaces_is_notfound(box: Sandbox) -> None:
    box.fails("notfound", [D("d"), F("d/f", "x")], [H("d", "d/f")])


# --- publication helpers --------------------------------------------------------------------------


def test_apply_returns_stats(box: Sandbox) -> None:
    (stats,) = box.apply([D("d"), F("d/a", "12345"), F("b", "")])
    assert (stats.entries, stats.files, stats.bytes) == (3, 2, 5)


@pytest.mark.parametrize("whiteout", [W(".wh.d"), W(".wh..wh..opq")])
def test_whiteout_position_does_not_change_attributes(tmp_path: object, whiteout: TarEntry) -> None:
    """A lower directory that the layer writes below and then whites out (or hides with an opaque
    marker above it) ends up exactly as with the whiteout first: an implicit 0755 directory."""
    results = []
    for i, upper in enumerate(([F("d/new", "n"), whiteout], [whiteout, F("d/new", "n")])):
        box = Sandbox.make(os.path.join(str(tmp_path), str(i)))
        box.apply([D("d", 0o700, uid=7, gid=8, mtime=FIXED_MTIME - 9), F("d/old", "o")], upper)
        st = os.lstat(box.path("d"))
        results.append((box.names(), stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, st.st_mtime > FIXED_MTIME))
    assert results[0] == results[1] == (["d", "d/new"], 0o755, os.geteuid(), os.getegid(), True)
