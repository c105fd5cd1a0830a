"""Build script for the C extension; all other metadata lives in pyproject.toml."""

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext


class cython_build_ext(build_ext):
    """Cythonize at build time, writing the generated C under build/ (never beside the sources).

    Doing it here rather than at import of setup.py keeps the .pyx (not a generated .c) in the sdist.
    """

    def finalize_options(self) -> None:
        from Cython.Build import cythonize

        self.distribution.ext_modules[:] = cythonize(
            self.distribution.ext_modules,
            build_dir="build/cython",
            compiler_directives={"language_level": 3},
        )
        super().finalize_options()


setup(
    ext_modules=[Extension("fastframe._codec", ["src/_codec.pyx"], include_dirs=["src"])],
    cmdclass={"build_ext": cython_build_ext},
)
