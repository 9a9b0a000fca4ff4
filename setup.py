"""Build the Cython hot paths of engine/_core (the only place compiler directives live).

ENGINE_NO_EXTENSIONS=1   pure-Python install, no compiler needed.
ENGINE_DEBUG_BUILD=1     bounds checks on, -O0 -g, `cython -a` annotation HTML next to each .pyx.
Without a working compiler (and without ENGINE_NO_EXTENSIONS=1) the build fails loudly.
"""

import os

from setuptools import Extension, setup

TRUTHY = {"1", "true", "yes", "on"}  # same parser as engine/_core/__init__.py


def flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in TRUTHY


NO_EXTENSIONS = flag("ENGINE_NO_EXTENSIONS")
DEBUG = flag("ENGINE_DEBUG_BUILD")
CORE_MODULES = ["codec", "kvput", "log", "quorum"]

ext_modules = []
if not NO_EXTENSIONS:
    from Cython.Build import cythonize

    extensions = [
        Extension(
            f"engine._core.{name}_c",
            [f"engine/_core/{name}_c.pyx"],
            extra_compile_args=["-O0", "-g"] if DEBUG else ["-O2"],
        )
        for name in CORE_MODULES
    ]
    ext_modules = cythonize(
        extensions,
        annotate=DEBUG,
        compiler_directives={
            "language_level": 3,
            "embedsignature": True,
            "boundscheck": DEBUG,
            "initializedcheck": DEBUG,
            "wraparound": False,
            "cdivision": True,
        },
    )

setup(ext_modules=ext_modules)
