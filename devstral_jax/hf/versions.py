"""Versioned exports: `<out>/<name>/<version>/` holds one fine-tune in every format asked for, plus a
`manifest.json` that says what it is and where it came from, so versions can be served side by side (an A/B)
and traced back to their base, adapter, data and training run.

manifest.json:
    name, version, created (UTC, ISO 8601)
    base        {name, path, fingerprint}: sha256 over every tensor's name, dtype, shape, first and last row
    adapter     {source, rank, alpha, targets, modules, sha256 of its A/B values}
    data        {path, sha256} of the training data manifest, or null
    training    {workdir, base_source, base_fingerprint, config} of the run the adapter came from (from its
                checkpoint's record), or null (a PEFT directory)
    evaluation  the evaluation results given at export, or null
    formats     {format: {files: [{path, bytes, sha256}], bytes}}, paths relative to the version folder
"""

from __future__ import annotations

import datetime
import hashlib
import json
import math
import os
import re
from typing import Any, Iterable

import numpy as np
from safetensors import safe_open

from devstral_jax.errors import ExportError
from devstral_jax.hf.model_dir import ModelDir
from devstral_jax.hf.peft import Adapter

MANIFEST = "manifest.json"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NUMBERED = re.compile(r"v(\d+)")


def check_name(what: str, value: str) -> str:
    """A model name or version usable as a folder name (and an Ollama tag)."""
    if not _NAME.fullmatch(value):
        raise ExportError(f"{what} {value!r} must be letters, digits, '.', '_' or '-' (not starting with one of "
                          "the last three).")
    return value


def next_version(out: str | os.PathLike, name: str) -> str:
    """`v<n+1>`, n being the highest `v<n>` already exported under `<out>/<name>` (v1 for the first)."""
    folder = os.path.join(out, name)
    taken = [int(m[1]) for entry in (os.listdir(folder) if os.path.isdir(folder) else [])
             if (m := _NUMBERED.fullmatch(entry))]
    return f"v{max(taken, default=0) + 1}"


def model_fingerprint(model: ModelDir) -> str:
    """sha256 over every tensor's name, dtype, shape and first and last rows: reads a few KB per tensor, yet
    tells apart checkpoints that differ in any layer's edges (a full hash would read the whole model). A GGUF
    base's tensors are dequantized one at a time to find their rows (GGUF bases are small models)."""
    digest = hashlib.sha256()
    for name in model.names:
        info = model.stored[name.hf_name]
        if model.format == "gguf":
            tensor = model.read(name)
            edges = [tensor[0:1], tensor[-1:]]
        else:
            with safe_open(info.file, framework="numpy") as f:
                rows = f.get_slice(info.name)
                edges = [rows[0:1], rows[info.shape[0] - 1:info.shape[0]]]
        digest.update(f"{info.name}|{info.dtype}|{info.shape}|".encode())
        for edge in edges:
            digest.update(np.ascontiguousarray(edge).tobytes())
    return digest.hexdigest()


def adapter_digest(adapter: Adapter) -> str:
    """sha256 over the adapter's modules and A/B values (float32), in module order."""
    digest = hashlib.sha256(f"{adapter.rank}|{adapter.alpha}|".encode())
    for module in sorted(adapter.weights):
        a, b = adapter.weights[module]
        digest.update(module.encode())
        digest.update(np.ascontiguousarray(a, np.float32).tobytes())
        digest.update(np.ascontiguousarray(b, np.float32).tobytes())
    return digest.hexdigest()


def file_sha256(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def format_entry(root: str, paths: Iterable[str]) -> dict[str, Any]:
    """The files of one format (files, or folders taken whole) under `root`, with sizes and sha256."""
    files = []
    for path in paths:
        full = os.path.join(root, path)
        found = [full] if os.path.isfile(full) else sorted(
            os.path.join(folder, f) for folder, _, names in os.walk(full) for f in names)
        files += [{"path": os.path.relpath(f, root), "bytes": os.path.getsize(f), "sha256": file_sha256(f)}
                  for f in found]
    return {"files": files, "bytes": sum(f["bytes"] for f in files)}


def write_manifest(version_dir: str, manifest: dict[str, Any]) -> None:
    with open(os.path.join(version_dir, MANIFEST), "w") as f:
        json.dump(manifest, f, indent=2)
        f.write("\n")


def utc_now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def list_versions(out: str | os.PathLike) -> list[dict[str, Any]]:
    """Every exported version under `out` (its manifest.json), by name, then creation time."""
    manifests = []
    for name in sorted(os.listdir(out)) if os.path.isdir(out) else []:
        folder = os.path.join(out, name)
        for version in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
            path = os.path.join(folder, version, MANIFEST)
            if os.path.isfile(path):
                with open(path) as f:
                    manifests.append(json.load(f))
    return sorted(manifests, key=lambda m: (m["name"], m["created"]))


def versions_table(manifests: list[dict[str, Any]]) -> str:
    """One line per version: name, version, created, base, formats with sizes, the evaluation's numbers."""
    rows = [["name", "version", "created", "base", "formats", "evaluation"]]
    for m in manifests:
        formats = ", ".join(f"{kind} {_size(entry['bytes'])}" for kind, entry in m["formats"].items())
        rows.append([m["name"], m["version"], m["created"].replace("T", " ")[:16], m["base"]["name"], formats,
                     _headline(m.get("evaluation"))])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows)


def _size(nbytes: int) -> str:
    """1234567 -> '1.2 MB'."""
    units = ("B", "KB", "MB", "GB", "TB")
    power = min(int(math.log10(max(nbytes, 1)) // 3), len(units) - 1)
    return f"{nbytes / 1000 ** power:.1f} {units[power]}"


def _headline(evaluation: dict[str, Any] | None, limit: int = 3) -> str:
    """The first few numbers of the evaluation results, as `path=value`."""
    numbers: list[str] = []

    def walk(value: Any, path: str) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f"{path}.{key}" if path else str(key))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            numbers.append(f"{path}={value:.4g}")

    walk(evaluation or {}, "")
    return " ".join(numbers[:limit])
