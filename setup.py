"""Build script for the C extension; all other metadata lives in pyproject.toml."""

from Cython.Distutils import build_ext
from setuptools import Extension, setup


class cython_build_ext(build_ext):
    """Cythonize at build time, writing the generated C under build/ (never beside the sources).

    The Extension lists the .pyx, so the sdist carries the Cython source and no generated C.
    """

    def initialize_options(self) -> None:
        super().initialize_options()
        self.cython_c_in_temp = 1


setup(
    ext_modules=[
        Extension(
            "fastframe._codec",
            ["src/_codec.pyx"],
            include_dirs=["src"],
            depends=["src/hton.h"],
        )
    ],
    cmdclass={"build_ext": cython_build_ext},
)
