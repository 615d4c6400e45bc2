"""Filesystem trees: everything that reads or writes below a tree root, through file descriptors.

The in-root walker (:mod:`~imagevol.trees._inroot`, over ``openat2`` from
:mod:`~imagevol.trees._openat2`, or a userspace walk) and recursive removal
(:mod:`~imagevol.trees._remove_tree`); layer application (:mod:`~imagevol.trees.layers`, the public
entry, over :mod:`~imagevol.trees._decompress`, :mod:`~imagevol.trees._tarstream` and the
``_layer_*`` modules); the artifact layout (:mod:`~imagevol.trees.artifacts`); the shared read-only
snapshots (:mod:`~imagevol.trees.snapshots`); and sub-path resolution
(:mod:`~imagevol.trees.subpath`). It may import :mod:`imagevol.content` (snapshots read verified
blobs from the content store and take its locks), :mod:`imagevol.oci`, :mod:`imagevol.errors` and
text helpers; it knows nothing of the CRI, the kubelet or Pods.
"""
