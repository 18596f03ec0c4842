"""The bundle manifest: plain data, parsed and validated without touching the disk.

A manifest describes one artifact in any of the four formats (ONNX, TFLite, Core ML,
GGUF) well enough that every part of edgewise can act on it without opening the model:

* converters write it (files, signature, quantization, source digest, gate metrics);
* device_runtime reads the signature and picks the backend from ``format``;
* sync publishes ``name``/``version``/``requirements`` as TUF custom metadata and runs
  ``sample`` after install;
* fallback reads ``limits`` (context length, input size) to decide what the device can serve.

Schema changes bump ``SCHEMA_VERSION``; readers refuse a newer schema with a clear error
instead of misreading it.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from typing import Any

from edgewise.errors import ManifestError

SCHEMA_VERSION = 1
MANIFEST_NAME = "manifest.json"

FORMATS = ("onnx", "tflite", "coreml", "gguf")
TASKS = ("classification", "embedding", "regression", "text-generation", "generic")
FILE_ROLES = ("model", "weights", "sample", "tokenizer", "metadata", "extra")
DTYPES = (
    "float32", "float16", "bfloat16", "float64",
    "int8", "uint8", "int16", "uint16", "int32", "uint32", "int64", "uint64", "bool", "string",
)
_SHA256 = re.compile(r"^[0-9a-f]{64}$")

Dim = int | str  # a fixed size, or the name of a dynamic dimension ("batch", "sequence")


@dataclass(frozen=True)
class TensorSpec:
    """One named tensor of a signature. A ``str`` dimension is dynamic (any size)."""

    name: str
    dtype: str
    shape: tuple[Dim, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}

    @classmethod
    def from_dict(cls, data: Any, where: str) -> TensorSpec:
        _require_mapping(data, where)
        name = _require(data, "name", str, where)
        dtype = _require(data, "dtype", str, where)
        if dtype not in DTYPES:
            raise ManifestError(f"{where}.dtype: unknown dtype {dtype!r}; expected one of {', '.join(DTYPES)}")
        shape = _require(data, "shape", list, where)
        for i, dim in enumerate(shape):
            if isinstance(dim, bool) or not isinstance(dim, int | str) or (isinstance(dim, int) and dim < 0):
                raise ManifestError(f"{where}.shape[{i}]: {dim!r} is neither a size >= 0 nor a dimension name")
        return cls(name=name, dtype=dtype, shape=tuple(shape))


@dataclass(frozen=True)
class Signature:
    """Inputs and outputs of a tensor model (text-generation models have none)."""

    inputs: tuple[TensorSpec, ...] = ()
    outputs: tuple[TensorSpec, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        return {"inputs": [t.to_dict() for t in self.inputs], "outputs": [t.to_dict() for t in self.outputs]}

    @classmethod
    def from_dict(cls, data: Any, where: str = "signature") -> Signature:
        _require_mapping(data, where)
        inputs = _require(data, "inputs", list, where)
        outputs = _require(data, "outputs", list, where)
        return cls(
            inputs=tuple(TensorSpec.from_dict(t, f"{where}.inputs[{i}]") for i, t in enumerate(inputs)),
            outputs=tuple(TensorSpec.from_dict(t, f"{where}.outputs[{i}]") for i, t in enumerate(outputs)),
        )


@dataclass(frozen=True)
class FileEntry:
    """A file of the bundle, relative to its root, with the bytes it must have."""

    path: str
    sha256: str
    size: int
    role: str = "model"

    @classmethod
    def from_dict(cls, data: Any, where: str) -> FileEntry:
        _require_mapping(data, where)
        path = _require(data, "path", str, where)
        check_relative_path(path, f"{where}.path")
        sha = _require(data, "sha256", str, where)
        if not _SHA256.match(sha):
            raise ManifestError(f"{where}.sha256: {sha!r} is not a lowercase hex sha256")
        size = _require(data, "size", int, where)
        if size < 0:
            raise ManifestError(f"{where}.size: negative size {size}")
        role = data.get("role", "model")
        if role not in FILE_ROLES:
            raise ManifestError(f"{where}.role: unknown role {role!r}; expected one of {', '.join(FILE_ROLES)}")
        return cls(path=path, sha256=sha, size=size, role=role)


@dataclass(frozen=True)
class Quantization:
    """How the weights/activations were reduced. ``scheme`` is "none" for the float export.

    ``float_nodes`` lists the nodes an accuracy-driven quantizer kept in float, so the
    manifest explains where the size went.
    """

    scheme: str = "none"
    weight_dtype: str | None = None
    activation_dtype: str | None = None
    per_channel: bool | None = None
    calibration: dict[str, Any] | None = None
    float_nodes: tuple[str, ...] = ()
    details: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["float_nodes"] = list(self.float_nodes)
        return data

    @classmethod
    def from_dict(cls, data: Any, where: str = "quantization") -> Quantization:
        _require_mapping(data, where)
        scheme = _require(data, "scheme", str, where)
        return cls(
            scheme=scheme,
            weight_dtype=data.get("weight_dtype"),
            activation_dtype=data.get("activation_dtype"),
            per_channel=data.get("per_channel"),
            calibration=data.get("calibration"),
            float_nodes=tuple(data.get("float_nodes") or ()),
            details=dict(data.get("details") or {}),
        )


@dataclass(frozen=True)
class Source:
    """Where the artifact came from: kind of source and a digest of its weights."""

    kind: str  # pytorch | onnx | huggingface | bundle
    digest: str  # "sha256:<hex>"
    name: str = ""

    @classmethod
    def from_dict(cls, data: Any, where: str = "source") -> Source:
        _require_mapping(data, where)
        return cls(
            kind=_require(data, "kind", str, where),
            digest=_require(data, "digest", str, where),
            name=data.get("name", ""),
        )


@dataclass(frozen=True)
class Sample:
    """A small input with its expected output, stored as .npy files in the bundle.

    After an over-the-air install, sync runs ``inputs`` and compares with ``outputs``
    within ``rtol``/``atol`` before it switches to the new model.
    """

    inputs: dict[str, str]
    outputs: dict[str, str]
    rtol: float = 1e-3
    atol: float = 1e-4

    @classmethod
    def from_dict(cls, data: Any, where: str = "sample") -> Sample:
        _require_mapping(data, where)
        inputs = _require(data, "inputs", dict, where)
        outputs = _require(data, "outputs", dict, where)
        for name, rel in [*inputs.items(), *outputs.items()]:
            if not isinstance(rel, str):
                raise ManifestError(f"{where}: path for {name!r} must be a string")
            check_relative_path(rel, f"{where}[{name}]")
        return cls(
            inputs=dict(inputs), outputs=dict(outputs),
            rtol=float(data.get("rtol", 1e-3)), atol=float(data.get("atol", 1e-4)),
        )


@dataclass(frozen=True)
class Requirements:
    """What a device needs to run the bundle; sync filters updates with it."""

    min_runtime_version: str = "0.1.0"
    backends: tuple[str, ...] = ()
    min_ram_bytes: int | None = None

    @classmethod
    def from_dict(cls, data: Any, where: str = "requirements") -> Requirements:
        _require_mapping(data, where)
        return cls(
            min_runtime_version=str(data.get("min_runtime_version", "0.1.0")),
            backends=tuple(data.get("backends") or ()),
            min_ram_bytes=data.get("min_ram_bytes"),
        )


@dataclass(frozen=True)
class Manifest:
    """Everything known about one artifact. ``to_dict``/``from_dict`` round-trip exactly."""

    name: str
    version: str
    format: str
    task: str
    entrypoint: str
    files: tuple[FileEntry, ...]
    signature: Signature
    quantization: Quantization
    source: Source
    edgewise_version: str
    schema_version: int = SCHEMA_VERSION
    metrics: dict[str, Any] = field(default_factory=dict)
    sample: Sample | None = None
    requirements: Requirements = field(default_factory=Requirements)
    limits: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
    # Optional: reference distributions of input summaries and outputs on the converter's eval data,
    # binned for the runtime's drift signal (edgewise.device_runtime._drift). Absent in older manifests.
    reference: dict[str, Any] | None = None

    def file(self, path: str) -> FileEntry:
        for entry in self.files:
            if entry.path == path:
                return entry
        raise ManifestError(f"manifest lists no file {path!r}")

    @property
    def size_bytes(self) -> int:
        """Bytes of the model itself (model + weights roles), what a device must store and load."""
        return sum(f.size for f in self.files if f.role in ("model", "weights"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "edgewise_version": self.edgewise_version,
            "name": self.name,
            "version": self.version,
            "format": self.format,
            "task": self.task,
            "entrypoint": self.entrypoint,
            "files": [asdict(f) for f in self.files],
            "signature": self.signature.to_dict(),
            "quantization": self.quantization.to_dict(),
            "source": asdict(self.source),
            "metrics": self.metrics,
            "sample": asdict(self.sample) if self.sample else None,
            "requirements": {**asdict(self.requirements), "backends": list(self.requirements.backends)},
            "limits": self.limits,
            "created": self.created,
            "extra": self.extra,
            **({"reference": self.reference} if self.reference is not None else {}),
        }

    @classmethod
    def from_dict(cls, data: Any) -> Manifest:
        """Validate and parse; every problem raises ManifestError naming the field."""
        _require_mapping(data, "manifest")
        schema = _require(data, "schema_version", int, "manifest")
        if schema > SCHEMA_VERSION:
            raise ManifestError(
                f"manifest schema_version {schema} is newer than this edgewise understands ({SCHEMA_VERSION})",
                hint="Upgrade edgewise on this device.",
            )
        if schema < 1:
            raise ManifestError(f"manifest schema_version {schema} is not valid")
        fmt = _require(data, "format", str, "manifest")
        if fmt not in FORMATS:
            raise ManifestError(f"manifest.format: unknown format {fmt!r}; expected one of {', '.join(FORMATS)}")
        task = _require(data, "task", str, "manifest")
        if task not in TASKS:
            raise ManifestError(f"manifest.task: unknown task {task!r}; expected one of {', '.join(TASKS)}")
        files_raw = _require(data, "files", list, "manifest")
        if not files_raw:
            raise ManifestError("manifest.files is empty: a bundle needs at least its model file")
        files = tuple(FileEntry.from_dict(f, f"manifest.files[{i}]") for i, f in enumerate(files_raw))
        seen: set[str] = set()
        for entry in files:
            if entry.path in seen:
                raise ManifestError(f"manifest.files lists {entry.path!r} twice")
            seen.add(entry.path)
        entrypoint = _require(data, "entrypoint", str, "manifest")
        check_relative_path(entrypoint, "manifest.entrypoint")
        if entrypoint not in seen and not any(p.startswith(entrypoint.rstrip("/") + "/") for p in seen):
            raise ManifestError(f"manifest.entrypoint {entrypoint!r} is not among manifest.files")
        sample_raw = data.get("sample")
        sample = Sample.from_dict(sample_raw) if sample_raw is not None else None
        if sample is not None:
            for rel in [*sample.inputs.values(), *sample.outputs.values()]:
                if rel not in seen:
                    raise ManifestError(f"manifest.sample refers to {rel!r}, which manifest.files does not list")
        metrics = data.get("metrics", {})
        limits = data.get("limits", {})
        for key, value in (("metrics", metrics), ("limits", limits), ("extra", data.get("extra", {}))):
            if not isinstance(value, dict):
                raise ManifestError(f"manifest.{key} must be an object, not {type(value).__name__}")
        return cls(
            schema_version=schema,
            edgewise_version=_require(data, "edgewise_version", str, "manifest"),
            name=_require(data, "name", str, "manifest"),
            version=_require(data, "version", str, "manifest"),
            format=fmt,
            task=task,
            entrypoint=entrypoint,
            files=files,
            signature=Signature.from_dict(_require(data, "signature", dict, "manifest"), "manifest.signature"),
            quantization=Quantization.from_dict(
                _require(data, "quantization", dict, "manifest"), "manifest.quantization"
            ),
            source=Source.from_dict(_require(data, "source", dict, "manifest"), "manifest.source"),
            metrics=metrics,
            sample=sample,
            requirements=Requirements.from_dict(data.get("requirements") or {}, "manifest.requirements"),
            limits=limits,
            created=str(data.get("created", "")),
            extra=dict(data.get("extra") or {}),
            reference=_check_reference(data.get("reference")),
        )


def _check_reference(data: Any) -> dict[str, Any] | None:
    """The drift reference is optional; when present each feature needs a name and bin fractions."""
    if data is None:
        return None
    _require_mapping(data, "manifest.reference")
    features = _require(data, "features", list, "manifest.reference")
    for i, feature in enumerate(features):
        where = f"manifest.reference.features[{i}]"
        _require_mapping(feature, where)
        _require(feature, "name", str, where)
        fractions = _require(feature, "fractions", list, where)
        edges = feature.get("edges", [])
        if not isinstance(edges, list) or not all(isinstance(x, int | float) for x in [*fractions, *edges]):
            raise ManifestError(f"{where}: edges and fractions must be lists of numbers")
        if not feature.get("categorical") and len(fractions) != len(edges) + 1:
            raise ManifestError(f"{where}: {len(edges)} edges make {len(edges) + 1} bins, "
                                f"not the {len(fractions)} fractions given")
    return dict(data)


def check_relative_path(path: str, where: str) -> None:
    """Refuse absolute paths and ``..``: a manifest must never point outside its bundle."""
    pure = PurePosixPath(path)
    if not path or pure.is_absolute() or ".." in pure.parts or "\\" in path:
        raise ManifestError(f"{where}: {path!r} must be a relative path inside the bundle")


def _require_mapping(data: Any, where: str) -> None:
    if not isinstance(data, dict):
        raise ManifestError(f"{where} must be an object, not {type(data).__name__}")


def _require(data: dict[str, Any], key: str, kind: type, where: str) -> Any:
    if key not in data:
        raise ManifestError(f"{where} is missing required field {key!r}")
    value = data[key]
    if kind is int and isinstance(value, bool):
        raise ManifestError(f"{where}.{key} must be an integer, not a boolean")
    if not isinstance(value, kind):
        raise ManifestError(f"{where}.{key} must be {kind.__name__}, not {type(value).__name__}")
    return value
