"""Constants of the API that need none of its machinery, so that the CLI's parser can name them
without importing the models or the decoder: the simulated Kubernetes versions and the pull
policies. :mod:`~imagevol.api.features` and :mod:`~imagevol.api.models` export them too."""

from __future__ import annotations

#: Versions this simulator has profiles for; any minor in between takes the closest lower entry.
SUPPORTED_VERSIONS = ("1.31", "1.32", "1.33", "1.34", "1.35", "1.36")
DEFAULT_VERSION = "1.33"
#: ``imagePullPolicy`` and ``image.pullPolicy`` values.
PULL_POLICIES = ("Always", "IfNotPresent", "Never")
