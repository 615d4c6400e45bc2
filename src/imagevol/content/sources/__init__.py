"""Where content comes from: registries (:mod:`.registry`, over oras-py's request path rebuilt on
``http.client`` in :mod:`._client`, oras-py's own API in :mod:`._oras`, under the network bounds of
:mod:`._bounds` and :mod:`._transport`, failures worded by :mod:`._neterrors`, authentication
challenges read by :mod:`._challenge`), pull credentials (:mod:`.auth`), OCI image layouts
(:mod:`.layout`) and the registries.conf mirror configuration (:mod:`.mirrors`). A source only moves
bytes (:mod:`.base`); the puller verifies everything it returns.
"""
