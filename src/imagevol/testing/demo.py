"""The demo directory: everything the README's quick start needs, written by the installed package
(``imagevol demo DIR``), so that the quick start works from a wheel as from a clone::

    DIR/oci-layout/       the demo images (images.DEMO_IMAGES), built deterministically
    DIR/registries.conf   each demo repository mirrored to the layout; a tag the layout lacks falls
                          through to the real registry, as on a node
    DIR/pod.yaml          the image-volume Pod of the Kubernetes blog (examples/image-volume.yaml)

Then ``imagevol --registries DIR/registries.conf apply -f DIR/pod.yaml`` runs the Pod offline.
"""

from __future__ import annotations

import os
import tempfile

import attrs

from .images import DEMO_IMAGES, build_demo_layout

#: The Pod of the Kubernetes blog post on image volumes: ``quay.io/crio/artifact:v2`` mounted at
#: ``/volume`` with the sub path ``dir`` (the same bytes as examples/image-volume.yaml).
DEMO_POD = """\
apiVersion: v1
kind: Pod
metadata:
  name: image-volume
spec:
  containers:
  - name: shell
    command: ["sleep", "infinity"]
    image: debian
    volumeMounts:
    - name: volume
      mountPath: /volume
      subPath: dir
  volumes:
  - name: volume
    image:
      reference: quay.io/crio/artifact:v2
      pullPolicy: IfNotPresent
"""

#: The name of the layout directory inside a demo directory.
LAYOUT = "oci-layout"


@attrs.frozen
class DemoFiles:
    """The paths :func:`write_demo` wrote."""

    directory: str
    layout: str
    registries: str
    pod: str


def registries_conf(layout: str = LAYOUT) -> str:
    """A containers-registries.conf(5) file mirroring every demo repository to the OCI layout
    ``layout`` (relative to the file, imagevol's ``oci-layout:`` locations)."""
    lines = [
        "# containers-registries.conf(5) shape, written by `imagevol demo`. Pulls of the demo images try",
        "# the OCI image layout next to this file first (so the demo never touches the network); a tag",
        "# the layout lacks falls through to the registry itself, as on a real node. `oci-layout:PATH`",
        "# is imagevol's extension for offline mirrors; PATH is relative to this file.",
    ]
    for repository in dict.fromkeys(reference.rpartition(":")[0] for reference in DEMO_IMAGES):
        lines += ["", "[[registry]]", f'prefix = "{repository}"', f'location = "{repository}"']
        lines += ["", "[[registry.mirror]]", f'location = "oci-layout:{layout}"']
    return "\n".join(lines) + "\n"


def _write(path: str, text: str) -> None:
    """Write by a temporary file and a rename: a symlink already at ``path`` is replaced, never
    written through."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".demo-")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def write_demo(directory: str) -> DemoFiles:
    """Write the demo directory (created if missing); return what was written."""
    directory = os.path.abspath(directory)
    os.makedirs(directory, exist_ok=True)
    files = DemoFiles(
        directory,
        os.path.join(directory, LAYOUT),
        os.path.join(directory, "registries.conf"),
        os.path.join(directory, "pod.yaml"),
    )
    build_demo_layout(files.layout)
    _write(files.registries, registries_conf())
    _write(files.pod, DEMO_POD)
    return files
