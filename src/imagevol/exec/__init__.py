"""What a container sees without running it: the ``exec`` view (:mod:`~imagevol.exec.view`:
``cat``, ``ls``, ``stat``, ``readlink`` against a container's image-volume mounts, without mounting
anything). ``exec --real`` runs inside a real container and belongs to the runtime
(``Runtime.exec_real``, :mod:`imagevol.runtime.real`).

The view re-opens each mount through the runtime's ``open_mount`` (an fd handed over the CRI seam),
and resolves paths inside it with the sub-path resolver of :mod:`imagevol.trees.subpath`, a library
of fd operations that holds no node state. Apart from that one module the package may import only
:mod:`imagevol.cri`, :mod:`imagevol.errors` and text helpers: never the runtime or the content
store.
"""
