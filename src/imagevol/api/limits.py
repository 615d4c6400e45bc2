"""The API server's bounds on what it accepts, with upstream's numbers (docs/security.md,
"Resource bounds").

A request body is read up to :data:`MAX_REQUEST_BODY_BYTES` (kube-apiserver's
``MaxRequestBodyBytes``, 3 MiB; one byte more is HTTP 413) and an object is stored only if its
encoding fits :data:`MAX_STORED_OBJECT_BYTES` (etcd's default ``--max-request-bytes``, 1.5 MiB;
the API server passes etcd's "request is too large" through). Decoding bounds (nesting, aliases)
live with the decoder in ``bounded_yaml``.
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO

from ..errors import RequestEntityTooLargeError, StorageTooLargeError

#: kube-apiserver's ``MaxRequestBodyBytes`` (``k8s.io/apiserver/pkg/server/config.go``): 3 MiB,
#: twice etcd's limit because a JSON body shrinks when it is stored as protobuf.
MAX_REQUEST_BODY_BYTES = 3 * 1024 * 1024
#: etcd's default ``--max-request-bytes``: 1.5 MiB.
MAX_STORED_OBJECT_BYTES = 3 * 512 * 1024
#: ``TotalAnnotationSizeLimitB``: keys plus values of ``metadata.annotations``.
TOTAL_ANNOTATION_SIZE_LIMIT = 256 * 1024
#: ``core.MaxSecretSize``: the sum of a Secret's data values.
MAX_SECRET_SIZE = 1024 * 1024
#: ``DNS1123SubdomainMaxLength`` (Pod and Secret names) and ``DNS1123LabelMaxLength`` (namespaces).
DNS1123_SUBDOMAIN_MAX_LENGTH = 253
DNS1123_LABEL_MAX_LENGTH = 63


def check_body_size(size: int) -> None:
    """Refuse a request body of more than :data:`MAX_REQUEST_BODY_BYTES` (a body of exactly the
    limit is accepted, as ``limitedReadBody`` does)."""
    if size > MAX_REQUEST_BODY_BYTES:
        raise RequestEntityTooLargeError(MAX_REQUEST_BODY_BYTES)


def read_body(stream: BinaryIO) -> bytes:
    """Read a request body from ``stream``, never more than the limit plus one byte: a larger
    input (a 10 GB file, an endless pipe) is refused without being read into memory."""
    data = stream.read(MAX_REQUEST_BODY_BYTES + 1)
    check_body_size(len(data))
    return data


def encoded_size(obj: Any) -> int:
    """Bytes of the compact JSON encoding of ``obj`` (the stored form)."""
    return len(json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode())


def check_stored_size(obj: Any) -> None:
    """Refuse to store an object whose encoding exceeds :data:`MAX_STORED_OBJECT_BYTES`.

    etcd counts its whole request (key, protobuf value and framing); the compact JSON counted here
    is somewhat larger than the protobuf of the same object, so the limit is reached a little
    earlier than on a real cluster, never later."""
    if encoded_size(obj) > MAX_STORED_OBJECT_BYTES:
        raise StorageTooLargeError()
