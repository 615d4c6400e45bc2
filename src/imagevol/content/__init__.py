"""Content: the node's content store and where its content comes from.

:mod:`~imagevol.content.store` (``ContentStore``: an OCI image layout, every blob verified before it
is visible), :mod:`~imagevol.content.locks` (named ``flock`` locks), the image database in the
store's ``index.json`` (:mod:`~imagevol.content.image_db`), the puller that fetches references into
the store (:mod:`~imagevol.content.pull`, ``ImagePuller``) with its progress bar, and
:mod:`~imagevol.content.sources` (registries, mirrors, OCI layouts). It may import
:mod:`imagevol.cri` (pull credentials), :mod:`imagevol.oci`, :mod:`imagevol.errors` and text
helpers; nothing here builds a tree, runs a container or knows about Pods.
"""
