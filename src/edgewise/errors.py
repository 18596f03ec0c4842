"""Every failure edgewise reports, in one tree.

Each leaf is a failure a caller handles differently; each message says what went wrong
*and what to do next* (``EdgewiseError.hint``). Engine exceptions (onnxruntime, torch,
onnx, ...) are caught at the boundary and re-raised as one of these with the original
attached as ``__cause__``, so an app never has to import an engine to handle errors.

    EdgewiseError
    ├── BundleError                 a bundle on disk is unusable
    │   ├── BundleNotFoundError     no bundle/manifest at that path
    │   ├── ManifestError           manifest.json missing fields, wrong types, unknown schema
    │   └── IntegrityError          a file's size or sha256 differs from the manifest
    ├── ArtifactError               a model file the engine cannot read (corrupt, truncated, wrong format)
    ├── RuntimeBackendError         device_runtime could not serve
    │   ├── BackendUnavailableError the engine for this format is not installed
    │   ├── PlacementError          the requested device/accelerator cannot run it (strict mode)
    │   ├── InputError              inputs do not match the model signature (name, dtype, shape)
    │   ├── InferenceError          the engine failed while running
    │   ├── ContextOverflowError    a prompt (+ requested tokens) does not fit the model's context
    │   └── PredictionLogError      the on-device prediction log cannot be opened or written
    ├── ConversionError             a converter could not produce an artifact
    │   ├── RecipeError             the recipe (TOML) is invalid or names a missing file
    │   ├── DataError               calibration / evaluation data unusable
    │   ├── UnsupportedModelError   an architecture, operator or tokenizer a target format cannot take
    │   └── GateFailedError         an artifact missed its accuracy budget (carries the table)
    ├── SyncError                   over-the-air update problems (edgewise.sync)
    │   ├── RepositoryUnreachableError  the update server cannot be reached or answers with an HTTP error
    │   ├── SlowRetrievalError      the server sends too slowly (a stalled or trickling connection)
    │   ├── UntrustedMetadataError  TUF refused the metadata: bad signatures, expired, rolled back, ...
    │   ├── ArtifactVerificationError  a downloaded file's length or hash differs from signed metadata
    │   ├── PostInstallCheckError   a new version failed to load or to reproduce its sample (marked bad)
    │   ├── CorruptStoreError       the on-device store's pointer file is unreadable
    │   ├── NoUsableModelError      no installed version of a model loads
    │   └── PromotionRefusedError   a staged (shadow) version did not earn its switch
    └── FallbackError               cloud routing problems (edgewise.fallback)
        ├── FallbackConfigError     endpoint configuration invalid (URL, protocol, missing endpoint)
        ├── CloudUnavailableError   the endpoint cannot be reached (connect failure, reset) after retries
        ├── CircuitOpenError        the endpoint's circuit breaker is open: failing fast, device cannot serve
        ├── DeadlineExceededError   the request's deadline passed (queued, on device or in the cloud)
        ├── CloudResponseError      the endpoint answered with an HTTP error or an unreadable body (status)
        └── OnDeviceRefusedError    only_on_device, and the device cannot serve this request (reason)
"""

from __future__ import annotations


class EdgewiseError(Exception):
    """Base of every edgewise error.

    ``hint`` tells the user what to try; it is appended to ``str(err)`` so that a CLI or a
    log line shows it without extra code.
    """

    default_hint: str = ""

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint if hint is not None else self.default_hint
        super().__init__(message)

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  hint: {self.hint}"
        return self.message


class BundleError(EdgewiseError):
    """A bundle directory cannot be used."""


class BundleNotFoundError(BundleError):
    default_hint = "Pass a bundle directory (it contains manifest.json) or a model file."


class ManifestError(BundleError):
    default_hint = "Re-create the bundle with `edgewise convert`, or fix manifest.json by hand."


class IntegrityError(BundleError):
    """A file's bytes do not match the manifest: corruption, truncation or tampering."""

    default_hint = "Do not use this bundle; fetch or build it again."

    def __init__(self, message: str, *, path: str, expected: str, actual: str, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.path = path
        self.expected = expected
        self.actual = actual


class ArtifactError(EdgewiseError):
    """The engine cannot parse a model file."""

    default_hint = "The file may be truncated or not a model of this format; re-export it."


class RuntimeBackendError(EdgewiseError):
    """device_runtime could not serve a request."""


class BackendUnavailableError(RuntimeBackendError):
    """The engine needed for a format is not installed here."""


class PlacementError(RuntimeBackendError):
    """The requested device cannot run the model and the caller asked for strict placement."""

    default_hint = "Use device='auto' (or strict=False) to fall back to the CPU, or check `edgewise devices`."


class InputError(RuntimeBackendError, ValueError):
    """Inputs do not match the model's signature."""

    default_hint = "Check the model's signature with `edgewise inspect`."


class InferenceError(RuntimeBackendError):
    """The engine raised while running the model."""


class ContextOverflowError(RuntimeBackendError, ValueError):
    """A text request does not fit the on-device context window.

    Carries the exact counts, so a router can decide to send the request to the cloud and a
    user can see how much to cut: ``prompt_tokens + requested_tokens > context_size``.
    """

    default_hint = "Shorten the prompt, ask for fewer tokens, load with a larger n_ctx, or route it to the cloud."

    def __init__(self, message: str, *, prompt_tokens: int, requested_tokens: int, context_size: int,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.prompt_tokens = prompt_tokens
        self.requested_tokens = requested_tokens
        self.context_size = context_size


class PredictionLogError(RuntimeBackendError):
    """The sampled prediction log (sqlite) cannot be opened or written: corrupt file, full disk."""

    default_hint = "Free disk space, or delete the prediction log file to start a new one; serving is unaffected."


class ConversionError(EdgewiseError):
    """A converter could not produce an artifact."""


class RecipeError(ConversionError):
    default_hint = "See the recipe reference in README.md."


class DataError(ConversionError):
    default_hint = "Calibration and evaluation data must match the model's inputs (names, dtypes, shapes)."


class UnsupportedModelError(ConversionError):
    """The source model uses something the target format or converter cannot express."""

    default_hint = "Choose another target format for this model, or change the unsupported part."


class GateFailedError(ConversionError):
    """One or more artifacts missed an accuracy budget. ``table`` says which, by how much."""

    default_hint = "Relax the budget in the recipe, or choose a less aggressive quantization variant."

    def __init__(self, message: str, *, table: str, failures: list[dict], hint: str | None = None):
        super().__init__(message, hint=hint)
        self.table = table
        self.failures = failures

    def __str__(self) -> str:
        return f"{self.message}\n{self.table}\n  hint: {self.hint}"


class SyncError(EdgewiseError):
    """Over-the-air update failures (see edgewise.sync)."""


class RepositoryUnreachableError(SyncError):
    default_hint = "Check the repository URL and the network; the installed model keeps serving."

    def __init__(self, message: str, *, status_code: int | None = None, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.status_code = status_code


class SlowRetrievalError(SyncError):
    default_hint = "The server or network is too slow (or hostile); retry later. The installed model keeps serving."


class UntrustedMetadataError(SyncError):
    """TUF verification refused the repository's metadata. ``kind`` is the TUF failure name
    (``ExpiredMetadataError``, ``UnsignedMetadataError``, ``BadVersionNumberError``, ...)."""

    default_hint = "Do not trust this repository state; the installed model keeps serving. Tell the publisher."

    def __init__(self, message: str, *, kind: str, hint: str | None = None):
        super().__init__(message, hint=hint)
        self.kind = kind


class ArtifactVerificationError(SyncError):
    default_hint = "The download was corrupted or tampered with and was discarded; the installed model keeps serving."


class PostInstallCheckError(SyncError):
    """A freshly installed version failed to load or to reproduce its stored sample output.

    The version is marked bad and the pointer is untouched: the device keeps serving what it served.
    """

    default_hint = "The release is broken for this device; report it to the publisher. The previous model stays active."

    def __init__(self, message: str, *, model: str, version: str, reason: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.model = model
        self.version = version
        self.reason = reason


class CorruptStoreError(SyncError):
    """Store metadata (a pointer file) is unreadable: disk corruption or an outside edit."""

    default_hint = "ModelStore.load() recovers from this by serving the newest good version; installing repairs it."


class NoUsableModelError(SyncError):
    """No installed version of a model can be loaded: serve from the cloud or install again."""

    default_hint = "Install a release of this model (or use the cloud fallback) - every local version failed."


class PromotionRefusedError(SyncError):
    """The shadow evaluation of a staged version says wait or reject; the served version stays."""

    default_hint = "Let the shadow run on more traffic (action 'wait'), or publish a better release ('reject')."

    def __init__(self, message: str, *, model: str, version: str, action: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.model = model
        self.version = version
        self.action = action


class FallbackError(EdgewiseError):
    """Cloud routing failures (see edgewise.fallback)."""


class FallbackConfigError(FallbackError):
    default_hint = "See the fallback configuration in README.md (endpoint url, protocol, model, token)."


class CloudUnavailableError(FallbackError):
    """The cloud endpoint could not be reached (connect refused/timeout, connection reset, stream cut)."""

    default_hint = "Check the endpoint URL and the network; prefer_on_device / prefer_cloud modes use the device."

    def __init__(self, message: str, *, endpoint: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.endpoint = endpoint


class CircuitOpenError(FallbackError):
    """The endpoint failed repeatedly; its circuit breaker refuses calls until ``retry_in_s`` has passed."""

    default_hint = "The endpoint is failing; requests the device can serve still run there. Retry later."

    def __init__(self, message: str, *, endpoint: str = "", retry_in_s: float = 0.0, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.endpoint = endpoint
        self.retry_in_s = retry_in_s


class DeadlineExceededError(FallbackError):
    """The request's deadline passed before an answer arrived; ``where`` says at which stage."""

    default_hint = "Give the request a longer deadline (deadline_s), ask for fewer tokens, or check the endpoint."

    def __init__(self, message: str, *, deadline_s: float, where: str = "", hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.deadline_s = deadline_s
        self.where = where


class CloudResponseError(FallbackError):
    """The endpoint answered, but with an HTTP error (``status``) or a body that is not the protocol's."""

    default_hint = "Check the model name, the token and the request against the endpoint's API."

    def __init__(self, message: str, *, status: int | None = None, endpoint: str = "",
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status
        self.endpoint = endpoint


class OnDeviceRefusedError(FallbackError):
    """Mode only_on_device, and the device cannot serve the request; ``reason`` is the routing code."""

    default_hint = "Shorten the request, or allow the cloud (mode prefer_on_device)."

    def __init__(self, message: str, *, reason: str, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reason = reason
