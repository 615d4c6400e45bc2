"""What a container sees: the ``exec`` view (:mod:`~imagevol.exec.view`: ``cat``, ``ls``, ``stat``,
``readlink`` against a container's image-volume mounts, without mounting anything) and ``exec
--real`` (:mod:`~imagevol.exec.namespace`: a real command in a private mount namespace with the
volumes bind-mounted read-only).

Both re-open each mount through the runtime's ``open_mount`` (an fd handed over the CRI seam), and
resolve paths inside it with the sub-path resolver of :mod:`imagevol.trees.subpath`, a library of
fd operations that holds no node state. Apart from that one module the package may import only
:mod:`imagevol.cri`, :mod:`imagevol.errors` and text helpers: never the runtime or the content
store.
"""
