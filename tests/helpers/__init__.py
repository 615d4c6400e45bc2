"""Helpers of the test suite (not tests): real peers (``peers``), network fault injection
(``netfaults``, ``slowserver``), layer-building shorthands (``layerkit``), the sub-path test images
(``subpaths``), a node fed from the project's fixtures (``fixture_node``), umoci runs (``umoci``),
listings, paths and a fake clock. Import them as ``from tests.helpers.peers import require``; the
Pod builder and the hostile-layer-stack generator are public, in :mod:`imagevol.testing`.
"""
