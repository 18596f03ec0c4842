"""edgewise: convert, verify, run, update and fall back — models on devices, with the cloud behind them.

Parts (each importable on its own):

* ``edgewise.bundle``          the artifact + manifest format every part shares
* ``edgewise.converters``      PyTorch / ONNX / Hugging Face -> device artifacts, quantized and gated
* ``edgewise.device_runtime``  load a bundle or model file and run it on the best local hardware
* ``edgewise.sync``            over-the-air model updates (The Update Framework)
* ``edgewise.fallback``        route requests the device cannot serve to a cloud endpoint
"""

from edgewise._version import __version__

__all__ = ["__version__"]
