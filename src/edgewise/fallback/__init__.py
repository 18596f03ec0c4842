"""Route requests the device cannot serve to a cloud endpoint (OpenAI-compatible, KServe v2).

Planned surface (see the project's fallback issue): a router that reads a bundle's
``limits`` and the device runtime's errors to decide device vs cloud, and httpx-based
clients with timeouts, retries and a circuit breaker. Nothing is implemented yet.
"""

__all__: list[str] = []
