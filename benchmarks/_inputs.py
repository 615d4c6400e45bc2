"""Benchmark inputs, generated (seeded, so the same bytes every run) and never timed: the unpack
layer, its compressed forms, and a one-layer OCI image layout around a layer file (for umoci, and
for pushing to a registry with skopeo). Built with the standard library and the CLI compressors only,
not with imagevol, so that what is measured never produced its own input."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import random
import shutil
import subprocess
import tarfile

FIXED_MTIME = 1700000000
MiB = 1024 * 1024


# --- input ----------------------------------------------------------------------------------------


def generate(tar_path: str, scale: float = 1.0, seed: int = 4639) -> int:
    """Write the benchmark tar; return its number of entries."""
    rng = random.Random(seed)
    letters = "etaoinshrdlcumwfgypbvkjxqz"
    vocab = ["".join(rng.choices(letters, weights=range(26, 0, -1), k=rng.randint(1, 9))) for _ in range(8000)]
    weights = [1.0 / (i + 1) for i in range(len(vocab))]
    pool = " ".join(rng.choices(vocab, weights=weights, k=2_000_000)).encode()
    entries = 0
    n_dirs = max(1, int(200 * scale))
    big = int(50 * MiB * scale)
    with open(tar_path, "wb") as f, tarfile.open(fileobj=f, mode="w", format=tarfile.PAX_FORMAT) as tf:

        def add(name: str, data: bytes | None = None, kind: bytes = tarfile.REGTYPE, mode: int = 0o644) -> None:
            nonlocal entries
            info = tarfile.TarInfo(name)
            info.mtime, info.type, info.mode = FIXED_MTIME, kind, mode
            if data is None:
                tf.addfile(info)
            else:
                info.size = len(data)
                tf.addfile(info, Bytes(data))
            entries += 1

        add("small/", kind=tarfile.DIRTYPE, mode=0o755)
        for d in range(n_dirs):
            add(f"small/d{d:03d}/", kind=tarfile.DIRTYPE, mode=0o755)
            for i in range(100):
                size = rng.randint(512, 4096)
                off = rng.randrange(len(pool) - size)
                add(f"small/d{d:03d}/f{i:03d}.txt", pool[off : off + size])
        add("random.bin", rng.randbytes(big))
        add("base64.txt", base64.b64encode(rng.randbytes(big * 3 // 4))[:big])
        parts, total = [], 0
        while total < big:
            off = rng.randrange(len(pool) - 65536)
            parts.append(pool[off : off + 65536])
            total += 65536
        add("words.txt", b"".join(parts)[:big])
    return entries


class Bytes:
    """A file-like reader over bytes (for tarfile.addfile)."""

    def __init__(self, data: bytes) -> None:
        self.data = memoryview(data)
        self.pos = 0

    def read(self, n: int = -1) -> bytes:
        end = len(self.data) if n < 0 else self.pos + n
        out = bytes(self.data[self.pos : end])
        self.pos += len(out)
        return out


def zstd_file(src: str, dst: str) -> None:
    if shutil.which("zstd"):
        subprocess.run(["zstd", "-q", "-3", "-f", src, "-o", dst], check=True)
        return
    import zstandard

    with open(src, "rb") as fin, open(dst, "wb") as fout:
        zstandard.ZstdCompressor(level=3).copy_stream(fin, fout)


def gzip_file(src: str, dst: str) -> None:
    if shutil.which("gzip"):
        with open(dst, "wb") as out:
            subprocess.run(["gzip", "-6", "-n", "-c", src], stdout=out, check=True)
        return
    import gzip

    with open(src, "rb") as fin, gzip.GzipFile(dst, "wb", compresslevel=6, mtime=0) as fout:
        shutil.copyfileobj(fin, fout, MiB)


def sha256_file(path: str) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(MiB):
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


def oci_layout(
    layout: str,
    blob: str,
    diff_id: str,
    media_type: str = "application/vnd.oci.image.layer.v1.tar+gzip",
    tag: str = "big",
) -> str:
    """A one-layer OCI image layout (tag ``tag``) around the layer file ``blob`` (hard-linked in),
    whose uncompressed content hashes to ``diff_id`` (hex). Returns the layer's digest (hex)."""
    blobs = os.path.join(layout, "blobs", "sha256")
    os.makedirs(blobs)

    def put(data: bytes) -> tuple[str, int]:
        digest = hashlib.sha256(data).hexdigest()
        with open(os.path.join(blobs, digest), "wb") as f:
            f.write(data)
        return digest, len(data)

    layer_digest, layer_size = sha256_file(blob)
    os.link(blob, os.path.join(blobs, layer_digest))
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [f"sha256:{diff_id}"]},
    }
    cfg_digest, cfg_size = put(json.dumps(config).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": f"sha256:{cfg_digest}",
            "size": cfg_size,
        },
        "layers": [
            {
                "mediaType": media_type,
                "digest": f"sha256:{layer_digest}",
                "size": layer_size,
            }
        ],
    }
    m_digest, m_size = put(json.dumps(manifest).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": f"sha256:{m_digest}",
                "size": m_size,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    with open(os.path.join(layout, "index.json"), "w") as f:
        json.dump(index, f)
    with open(os.path.join(layout, "oci-layout"), "w") as f:
        f.write('{"imageLayoutVersion":"1.0.0"}')
    return layer_digest
