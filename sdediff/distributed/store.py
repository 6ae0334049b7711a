"""Shards on disk: a manifest, one tensor file and one JSON sidecar per index range, atomic writes.

Layout of ``out=DIR``::

    DIR/manifest.json                          format, kind, sdediff/torch versions, the configuration
    DIR/<kind>-<start>-<stop>.pt               torch.save({name: tensor}) of indices start..stop-1
    DIR/<kind>-<start>-<stop>.json             sidecar: range, sha256 and size of the .pt, shapes, dtypes, NFE

Every file is written to a temporary name in ``DIR`` and renamed (``os.replace``, atomic on POSIX),
the tensor file before its sidecar, so a killed writer leaves either nothing or a finished shard (the
manifest is also fsynced; a shard torn by a machine crash fails its check and is recomputed).

A shard is trusted only when its sidecar parses, names this configuration (its SHA-256 digest), this
index range and these shapes, and the tensor file has the recorded size and SHA-256; anything else is
recomputed. Tensor files hold tensors only and are read with ``torch.load(..., weights_only=True)``
from the bytes that were hashed, so a shard directory from elsewhere cannot run code.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

__all__ = ["FORMAT", "MANIFEST", "ShardStore", "config_digest", "jsonable", "plan", "read_manifest"]

FORMAT = 1
MANIFEST = "manifest.json"
TensorSpec = Mapping[str, tuple[tuple[int, ...], torch.dtype]]


def plan(n: int, batch_size: int) -> list[tuple[int, int]]:
    """The index ranges ``[k B, min((k + 1) B, n))``: the same whatever the number of processes."""
    return [(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def jsonable(value: Any) -> Any:
    """A JSON-safe, comparable description of a configuration value (tensors as lists, dtypes and
    callables by name)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, torch.dtype):
        return str(value)
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().tolist()
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in sorted(value.items(), key=lambda kv: str(kv[0]))}
    if isinstance(value, (list, tuple, torch.Size)):
        return [jsonable(v) for v in value]
    name = getattr(value, "__qualname__", None) or getattr(value, "__name__", None)
    if callable(value) and name:
        return f"{getattr(value, '__module__', '?')}.{name}"
    text = repr(value)
    if " at 0x" in text:  # a default repr names the object's address, which changes from run to run
        return f"{type(value).__module__}.{type(value).__qualname__}"
    return text


def config_digest(config: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


def _dtype(name: str) -> torch.dtype:
    dt = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(dt, torch.dtype):
        raise ValueError(f"unknown dtype {name!r} in a shard record")
    return dt


def _atomic_write(path: Path, data: bytes, durable: bool = False) -> None:
    """``data`` to ``path`` via a temporary file and ``os.replace``: readers see the old file or the new one.
    ``durable`` also fsyncs the file and the directory (the manifest); shards skip it, since a shard torn by
    a machine crash fails its size/SHA-256 check and is recomputed."""
    tmp = path.with_name(f".tmp-{os.getpid()}-{path.name}")
    with open(tmp, "wb") as f:
        f.write(data)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if not durable:
        return
    with contextlib.suppress(OSError):  # make the rename durable where the platform allows it
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def read_manifest(root: str | os.PathLike) -> dict[str, Any]:
    """The manifest of a shard directory, validated enough to be used."""
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{str(root)!r} has no {MANIFEST}: not a sample_many/log_likelihood_many output "
                                "directory (or its job never started); run the job with out= this directory")
    try:
        man = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} is unreadable ({e}); it is written atomically, so it was changed by hand: "
                         "restore it or start over in a new directory") from None
    if not isinstance(man, dict) or man.get("format") != FORMAT or not isinstance(man.get("config"), dict):
        raise ValueError(f"{path} is not a format-{FORMAT} sdediff shard manifest; use a new directory")
    return man


class ShardStore:
    """The shard directory of one job: ``kind`` (``"samples"``/``"likelihood"``) and its configuration."""

    def __init__(self, root: str | os.PathLike, kind: str, config: Mapping[str, Any], version: str) -> None:
        self.root = Path(root)
        self.kind = kind
        self.config = json.loads(json.dumps(jsonable(dict(config)), sort_keys=True))
        self.digest = config_digest(self.config)
        self.version = version

    # ------------------------------------------------------------------------------- names
    def stem(self, start: int, stop: int) -> str:
        return f"{self.kind}-{start:010d}-{stop:010d}"

    # ----------------------------------------------------------------------------- manifest
    def prepare(self) -> str | None:
        """Rank 0, before any shard is written: create the directory, drop stale temporaries, check an
        existing manifest against this job (the mismatch as a message) or write a new one."""
        if self.root.exists() and not self.root.is_dir():
            return f"out={str(self.root)!r} exists and is not a directory; pass a directory path"
        self.root.mkdir(parents=True, exist_ok=True)
        for tmp in self.root.glob(".tmp-*"):
            with contextlib.suppress(OSError):
                tmp.unlink()
        if (self.root / MANIFEST).exists():
            try:
                man = read_manifest(self.root)
            except (ValueError, FileNotFoundError) as e:
                return str(e)
            return self._mismatch(man)
        for side in self.root.glob(f"{self.kind}-*.json"):
            try:
                other = json.loads(side.read_text()).get("config_sha256")
            except (OSError, ValueError, AttributeError):
                continue
            if other != self.digest:
                return (f"out={str(self.root)!r} holds shards of another configuration ({side.name}: config digest "
                        f"{str(other)[:12]}..., this job {self.digest[:12]}...) and no {MANIFEST} saying which; "
                        "use a new directory or remove those shards")
        self.write_manifest(complete=False, nfe=None)
        return None

    def _mismatch(self, man: Mapping[str, Any]) -> str | None:
        where = f"out={str(self.root)!r}"
        if man.get("kind") != self.kind:
            return f"{where} holds {man.get('kind')!r} shards, not {self.kind!r}; use another directory"
        if man.get("sdediff_version") != self.version:
            return (f"{where} was written by sdediff {man.get('sdediff_version')}, this is {self.version}: "
                    "numbers may differ between versions, so shards are not mixed; finish the job with the "
                    "original version or use a new directory")
        old = man["config"]
        diffs = [f"{k}: {old.get(k)!r} in the directory, {self.config.get(k)!r} now"
                 for k in sorted(set(old) | set(self.config)) if old.get(k) != self.config.get(k)]
        if diffs:
            return (f"{where} holds shards of a different configuration ({'; '.join(diffs)}); rerun with the "
                    "directory's settings to resume, or pass a new directory")
        return None

    def write_manifest(self, *, complete: bool, nfe: int | None) -> None:
        man = {"format": FORMAT, "kind": self.kind, "sdediff_version": self.version,
               "torch_version": torch.__version__, "config": self.config, "config_sha256": self.digest,
               "complete": complete, "nfe": nfe}
        _atomic_write(self.root / MANIFEST, (json.dumps(man, indent=1, sort_keys=True) + "\n").encode(), durable=True)

    # ------------------------------------------------------------------------------- shards
    def write(self, start: int, stop: int, tensors: Mapping[str, torch.Tensor], nfe: int) -> None:
        """Shard ``[start, stop)`` written atomically: the tensor file, then its sidecar."""
        cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
        buf = io.BytesIO()
        torch.save(cpu, buf)
        data = buf.getvalue()
        stem = self.stem(start, stop)
        _atomic_write(self.root / f"{stem}.pt", data)
        side = {"format": FORMAT, "kind": self.kind, "start": start, "stop": stop, "config_sha256": self.digest,
                "file": f"{stem}.pt", "size": len(data), "sha256": hashlib.sha256(data).hexdigest(),
                "tensors": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in cpu.items()},
                "nfe": int(nfe), "device": str(next(iter(tensors.values())).device) if tensors else "cpu"}
        _atomic_write(self.root / f"{stem}.json", (json.dumps(side, sort_keys=True) + "\n").encode())

    def check(self, start: int, stop: int, spec: TensorSpec) -> tuple[dict[str, Any] | None, str]:
        """``(sidecar, "")`` when shard ``[start, stop)`` is finished and intact, else ``(None, why)``."""
        stem = self.stem(start, stop)
        side_path, data_path = self.root / f"{stem}.json", self.root / f"{stem}.pt"
        if not side_path.is_file():
            return None, "missing"
        try:
            side = json.loads(side_path.read_text())
            if not isinstance(side, dict):
                raise ValueError("not an object")
        except (OSError, ValueError) as e:
            return None, f"unreadable sidecar ({e})"
        want = {k: {"shape": list(s), "dtype": str(d)} for k, (s, d) in spec.items()}
        if side.get("config_sha256") != self.digest:
            return None, "sidecar of another configuration"
        if (side.get("start"), side.get("stop"), side.get("kind")) != (start, stop, self.kind) or \
                side.get("tensors") != want or side.get("file") != data_path.name:
            return None, "sidecar does not describe this shard"
        try:
            size = data_path.stat().st_size
        except OSError:
            return None, "tensor file missing"
        if size != side.get("size"):
            return None, f"tensor file truncated or extended ({size} bytes, {side.get('size')} recorded)"
        try:
            with open(data_path, "rb") as f:
                digest = hashlib.sha256(f.read()).hexdigest()
        except OSError as e:
            return None, f"tensor file unreadable ({e})"
        if digest != side.get("sha256"):
            return None, "tensor file corrupted (SHA-256 differs from its sidecar)"
        return side, ""

    def read(self, start: int, stop: int, spec: TensorSpec, side: Mapping[str, Any] | None = None
             ) -> dict[str, torch.Tensor]:
        """The tensors of shard ``[start, stop)``, verified (size, SHA-256, names, shapes, dtypes); ``side``:
        its sidecar as :meth:`check` just returned it (the bytes read are hashed again either way)."""
        stem = self.stem(start, stop)
        if side is None:
            side, why = self.check(start, stop, spec)
            if side is None:
                raise ValueError(f"shard {stem} of {str(self.root)!r} cannot be used: {why}")
        data = (self.root / side["file"]).read_bytes()
        if hashlib.sha256(data).hexdigest() != side["sha256"]:  # changed since check(): never trust it
            raise ValueError(f"shard {stem} of {str(self.root)!r} changed while being read; rerun the job")
        try:
            obj = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
        except Exception as e:  # weights_only refuses anything but tensors and plain containers
            raise ValueError(f"shard {stem} of {str(self.root)!r} is not tensors-only data and was refused "
                             f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        if not isinstance(obj, dict) or set(obj) != set(spec):
            raise ValueError(f"shard {stem} holds {sorted(obj) if isinstance(obj, dict) else type(obj).__name__}, "
                             f"expected tensors {sorted(spec)}")
        for k, (shape, dtype) in spec.items():
            v = obj[k]
            if not isinstance(v, torch.Tensor) or tuple(v.shape) != tuple(shape) or v.dtype != dtype:
                raise ValueError(f"shard {stem}: {k} is not a {dtype} tensor of shape {tuple(shape)}")
        return obj


def parse_dtype(name: str) -> torch.dtype:
    """The ``torch.dtype`` named in a manifest (``"torch.float32"``)."""
    return _dtype(name)
