"""The public test kit, for imagevol's own tests and for users' suites: the Pod builder
(:mod:`~imagevol.testing.pods`), Hypothesis strategies with the hostile-layer-stack generator
(:mod:`~imagevol.testing.strategies`), a pure reference model of layer application and sub-path
resolution (:mod:`~imagevol.testing.model`), deterministic tar layers and OCI layouts
(:mod:`~imagevol.testing.tarbuild`, :mod:`~imagevol.testing.images`), tree listings
(:mod:`~imagevol.testing.listing`) and the vector runner (:mod:`~imagevol.testing.vectors`). It sits
above the node and below the CLI (whose ``fixtures`` command writes its layouts); it may import
every package but the CLI, and nothing but the CLI imports it.
"""
