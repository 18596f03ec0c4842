"""Over-the-air model updates on The Update Framework (python-tuf).

Planned surface (see the project's sync issue): a publisher that writes a TUF repository of
bundles, and a device client that checks, verifies, installs atomically and rolls back.
It moves ``edgewise.bundle.Bundle`` directories and runs their stored ``sample`` after install.
Nothing is implemented yet; importing this package is safe.
"""

__all__: list[str] = []
