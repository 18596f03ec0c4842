"""Route requests the device cannot serve to a cloud endpoint (OpenAI-compatible, KServe v2).

    from edgewise.fallback import Endpoint, Router, RouterConfig

    router = Router(RouterConfig(text=Endpoint("https://llm.example.com", protocol="openai", model="m")),
                    text_model=device_runtime.load("m.gguf"))
    answer = router.chat([{"role": "user", "content": prompt}], max_tokens=64)
    print(answer.text, answer.served.describe())   # served by device/cloud, why, how long

Modes: ``prefer_on_device`` (default), ``only_on_device``, ``prefer_cloud``, ``only_cloud``. The
device is left when the prompt plus requested tokens exceed its context, inputs exceed the bundle's
limits, no model is installed, memory is short, the host app reports battery/thermal trouble, or
the device fails or misses its deadline. Cloud calls have a deadline, safe retries, a circuit
breaker per endpoint and a concurrency limit; every call answers or raises an edgewise error.
"""

from edgewise.fallback._client import CloudClient, CloudCompletion, TensorCloudClient, TextCloudClient, client_for
from edgewise.fallback._decision import (
    BreakerState,
    DeviceFacts,
    HostPolicy,
    HostState,
    Mode,
    Reason,
    RequestFacts,
    Route,
    decide,
)
from edgewise.fallback._resilience import BreakerPolicy, CircuitBreaker, Deadline, RetryPolicy
from edgewise.fallback.config import Endpoint, RouterConfig, load_config
from edgewise.fallback.router import Router, Served, TensorResponse, TextResponse, TextStream

__all__ = [
    "BreakerPolicy",
    "BreakerState",
    "CircuitBreaker",
    "CloudClient",
    "CloudCompletion",
    "Deadline",
    "DeviceFacts",
    "Endpoint",
    "HostPolicy",
    "HostState",
    "Mode",
    "Reason",
    "RequestFacts",
    "RetryPolicy",
    "Route",
    "Router",
    "RouterConfig",
    "Served",
    "TensorCloudClient",
    "TensorResponse",
    "TextCloudClient",
    "TextResponse",
    "TextStream",
    "client_for",
    "decide",
    "load_config",
]
