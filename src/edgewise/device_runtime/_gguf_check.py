"""Read and bounds-check a GGUF file's header before llama.cpp ever sees it.

llama.cpp trusts the header of the file it maps: a truncated download or a damaged tensor
table can crash the whole process, which on a device is the app. So every length, count,
type and tensor extent is checked here against the file size first, in plain Python, and a
bad file becomes an ``ArtifactError`` naming the field. The same pass collects what the
runtime needs without loading the model (architecture, context length, chat template,
per-layer tensor bytes for GPU offload).

Layout (GGUF v2/v3, little-endian): magic "GGUF", u32 version, u64 tensor count, u64 kv count,
kv pairs, tensor infos (name, u32 n_dims, u64 dims, u32 type, u64 offset), padding to
``general.alignment`` (default 32), tensor data.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from edgewise.errors import ArtifactError

MAGIC = b"GGUF"
SUPPORTED_VERSIONS = (2, 3)
_MAX_STRING = 64 << 20  # no key, value or tensor name in a sane file comes near this
_MAX_DIMS = 4

# value type -> struct format (scalars) ; 8 = string, 9 = array
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_BLOCK = re.compile(r"^blk\.(\d+)\.")


@dataclass(frozen=True)
class TensorInfo:
    name: str
    type_id: int
    shape: tuple[int, ...]  # ggml order (fastest-varying first)
    offset: int  # relative to the start of the data section
    nbytes: int


@dataclass
class GgufInfo:
    """What the header says, after every extent was checked against ``file_size``."""

    version: int
    file_size: int
    data_offset: int
    metadata: dict[str, Any] = field(default_factory=dict)  # scalars and strings; arrays -> their length
    tensors: list[TensorInfo] = field(default_factory=list)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", ""))

    def arch_value(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{key}", default)

    @property
    def context_length(self) -> int | None:
        value = self.arch_value("context_length")
        return int(value) if value is not None else None

    @property
    def block_count(self) -> int:
        return int(self.arch_value("block_count", 0) or 0)

    @property
    def add_bos(self) -> bool:
        """Whether prompts start with BOS (llama.cpp's default when the file does not say)."""
        value = self.metadata.get("tokenizer.ggml.add_bos_token")
        return bool(value) if value is not None else True

    @property
    def chat_template(self) -> str | None:
        value = self.metadata.get("tokenizer.chat_template")
        return value if isinstance(value, str) else None

    def layer_bytes(self) -> tuple[list[int], int]:
        """Bytes of each repeating block ``blk.N.*`` and of everything else (embeddings, output)."""
        layers = [0] * self.block_count
        other = 0
        for tensor in self.tensors:
            match = _BLOCK.match(tensor.name)
            index = int(match.group(1)) if match else -1
            if 0 <= index < len(layers):
                layers[index] += tensor.nbytes
            else:
                other += tensor.nbytes
        return layers, other


def read_gguf_info(path: Path) -> GgufInfo:
    """Parse and check ``path``; raise ArtifactError for anything llama.cpp should not be handed."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            return _parse(_Reader(handle, size, path.name), size)
    except OSError as exc:
        raise ArtifactError(f"cannot read {path.name}: {exc.strerror or exc}") from exc


class _Reader:
    """Sequential reads that refuse to go past the end of the file (a truncated header)."""

    def __init__(self, handle: BinaryIO, size: int, name: str) -> None:
        self.handle, self.size, self.name = handle, size, name

    @property
    def pos(self) -> int:
        return self.handle.tell()

    def bytes(self, n: int, what: str) -> bytes:
        if n < 0 or self.pos + n > self.size:
            raise ArtifactError(
                f"{self.name} is truncated or corrupt: {what} needs {n} bytes at offset {self.pos}, "
                f"the file has {self.size}",
            )
        return self.handle.read(n)

    def unpack(self, fmt: str, what: str) -> Any:
        return struct.unpack(fmt, self.bytes(struct.calcsize(fmt), what))[0]

    def string(self, what: str) -> str:
        length = self.unpack("<Q", what)
        if length > _MAX_STRING:
            raise ArtifactError(f"{self.name} is corrupt: {what} claims a {length}-byte string")
        raw = self.bytes(length, what)
        return raw.decode("utf-8", errors="replace")

    def skip(self, n: int, what: str) -> None:
        if n < 0 or self.pos + n > self.size:
            raise ArtifactError(f"{self.name} is truncated or corrupt: {what} runs past the end of the file")
        self.handle.seek(n, 1)


def _parse(reader: _Reader, size: int) -> GgufInfo:
    name = reader.name
    if size < 24 or reader.bytes(4, "magic") != MAGIC:
        raise ArtifactError(f"{name} is not a GGUF file (no 'GGUF' magic at its start)",
                            hint="Convert the model with `edgewise convert` (format = \"gguf\").")
    version = reader.unpack("<I", "version")
    if version not in SUPPORTED_VERSIONS:
        raise ArtifactError(f"{name} is GGUF version {version}; this runtime reads versions 2 and 3",
                            hint="Re-convert the model with a current converter.")
    tensor_count = reader.unpack("<Q", "tensor count")
    kv_count = reader.unpack("<Q", "metadata count")
    # Each kv pair takes >= 13 bytes and each tensor info >= 24: counts beyond that are lies.
    if kv_count * 13 > size or tensor_count * 24 > size:
        raise ArtifactError(f"{name} is corrupt: it claims {kv_count} metadata entries and {tensor_count} tensors")
    info = GgufInfo(version=version, file_size=size, data_offset=0)
    for index in range(kv_count):
        key = reader.string(f"metadata key #{index}")
        value_type = reader.unpack("<I", f"type of {key}")
        info.metadata[key] = _value(reader, value_type, key)
    alignment = int(info.metadata.get("general.alignment", 32) or 0)
    if alignment <= 0 or alignment & (alignment - 1):
        raise ArtifactError(f"{name} is corrupt: general.alignment {alignment} is not a power of two")
    sizes = _type_sizes()
    raw_tensors = []
    for index in range(tensor_count):
        tensor_name = reader.string(f"tensor #{index} name")
        n_dims = reader.unpack("<I", f"tensor {tensor_name} rank")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise ArtifactError(f"{name} is corrupt: tensor {tensor_name} has rank {n_dims}")
        shape = tuple(reader.unpack("<Q", f"tensor {tensor_name} shape") for _ in range(n_dims))
        type_id = reader.unpack("<I", f"tensor {tensor_name} type")
        offset = reader.unpack("<Q", f"tensor {tensor_name} offset")
        raw_tensors.append((tensor_name, shape, type_id, offset))
    data_offset = -(-reader.pos // alignment) * alignment
    info.data_offset = data_offset
    data_size = size - data_offset
    for tensor_name, shape, type_id, offset in raw_tensors:
        if type_id not in sizes:
            raise ArtifactError(f"{name}: tensor {tensor_name} has unknown type id {type_id}",
                                hint="The file may need a newer llama.cpp, or it is damaged.")
        block, type_size = sizes[type_id]
        if shape[0] % block:
            raise ArtifactError(f"{name} is corrupt: tensor {tensor_name} row of {shape[0]} is not a multiple "
                                f"of its type's block size {block}")
        elements = 1
        for dim in shape:
            if dim <= 0:
                raise ArtifactError(f"{name} is corrupt: tensor {tensor_name} has a dimension of {dim}")
            elements *= dim
        nbytes = elements // block * type_size
        if offset % alignment or offset + nbytes > data_size:
            raise ArtifactError(
                f"{name} is truncated or corrupt: tensor {tensor_name} ({nbytes} bytes at data offset {offset}) "
                f"lies outside the file's {data_size} data bytes",
                hint="Download or convert the file again; it was cut short.",
            )
        info.tensors.append(TensorInfo(tensor_name, type_id, shape, offset, nbytes))
    return info


def _value(reader: _Reader, value_type: int, key: str) -> Any:
    if value_type in _SCALARS:
        return reader.unpack(_SCALARS[value_type], key)
    if value_type == 8:
        return reader.string(key)
    if value_type == 9:
        item_type = reader.unpack("<I", f"{key} item type")
        count = reader.unpack("<Q", f"{key} length")
        if item_type in _SCALARS:
            reader.skip(count * struct.calcsize(_SCALARS[item_type]), key)
        elif item_type == 8:
            if count * 8 > reader.size:
                raise ArtifactError(f"{reader.name} is corrupt: {key} claims {count} strings")
            for _ in range(count):
                reader.skip(reader.unpack("<Q", key), key)
        else:
            raise ArtifactError(f"{reader.name} is corrupt: {key} is an array of type {item_type}")
        return count
    raise ArtifactError(f"{reader.name} is corrupt: metadata {key} has unknown type {value_type}")


def _type_sizes() -> dict[int, tuple[int, int]]:
    """ggml tensor type id -> (elements per block, bytes per block), from gguf-py's table."""
    try:
        from gguf.constants import GGML_QUANT_SIZES
    except ImportError:  # pragma: no cover - the gguf extra installs it
        from edgewise.errors import BackendUnavailableError

        raise BackendUnavailableError("checking GGUF files needs the gguf package",
                                      hint="pip install 'edgewise[gguf]'") from None
    return {int(kind): (int(block), int(size)) for kind, (block, size) in GGML_QUANT_SIZES.items()}
