"""The bundle: one artifact (any of ONNX, TFLite, Core ML, GGUF) plus its manifest.

Every other part meets here: converters write bundles, device_runtime loads them, sync
publishes and installs them, fallback reads their limits.
"""

from edgewise.bundle._bundle import Bundle, BundleBuilder
from edgewise.bundle._hashing import sha256_file, sha256_tree
from edgewise.bundle.manifest import (
    FORMATS,
    MANIFEST_NAME,
    SCHEMA_VERSION,
    TASKS,
    FileEntry,
    Manifest,
    Quantization,
    Requirements,
    Sample,
    Signature,
    Source,
    TensorSpec,
)

__all__ = [
    "FORMATS",
    "MANIFEST_NAME",
    "SCHEMA_VERSION",
    "TASKS",
    "Bundle",
    "BundleBuilder",
    "FileEntry",
    "Manifest",
    "Quantization",
    "Requirements",
    "Sample",
    "Signature",
    "Source",
    "TensorSpec",
    "sha256_file",
    "sha256_tree",
]
