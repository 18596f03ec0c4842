"""The one compiled part of edgewise: the observed model's request path (see its C source for why).

Metadata lives in pyproject.toml; setuptools reads extension modules from here. The extension is
optional: where no C compiler is found the install goes on and ``ObservedModel`` uses its
pure-Python request path (same behaviour, ~1 % more overhead on a 30 µs model call).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "edgewise.device_runtime._observed_call",
            sources=["src/edgewise/device_runtime/_observed_call.c"],
            optional=True,
        ),
    ],
)
