"""Where content comes from: registries (oras-py with its gaps closed: :mod:`.client`,
:mod:`.registry`, with the network bounds of :mod:`.bounds` and :mod:`.transport`, failures worded by
:mod:`.neterrors`, credentials by :mod:`.auth` and :mod:`.challenge`), OCI image layouts
(:mod:`.layout`) and the registries.conf mirror configuration (:mod:`.mirrors`). A source only
moves bytes (:mod:`.base`); the puller verifies everything it returns.
"""
