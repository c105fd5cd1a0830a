"""Build script for the C extension; all other metadata lives in pyproject.toml.

``FASTFRAME_NO_EXTENSIONS=1`` at build time (as msgpack's ``MSGPACK_PUREPYTHON`` and yarl's
``YARL_NO_EXTENSIONS``) builds the pure-Python package: no compiler is needed and the wheel is
``py3-none-any``.  Every build writes ``fastframe/_build_info.py`` into the built package (an editable
install: into the source package, where git ignores it; it is never committed): ``EXTENSIONS = False`` there
is how an installed copy knows it is pure by choice, imports without a warning, and passes the guard test,
while an ordinary build that lost its extension still warns and still fails that test.  Without the
variable, a failed compile is an error that names it: a silent pure build would hand users a codec several
times slower without telling them.
"""

from __future__ import annotations

import os
from importlib.machinery import EXTENSION_SUFFIXES

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py
from setuptools.errors import CCompilerError, CompileError, ExecError, LinkError, PlatformError

NO_EXTENSIONS = os.environ.get("FASTFRAME_NO_EXTENSIONS", "").strip().lower() not in ("", "0", "false", "no", "off")
BUILD_INFO = os.path.join("fastframe", "_build_info.py")


class build_py_with_info(build_py):
    """Build the package as usual, and write ``_build_info.py`` where the installed package will read it."""

    def run(self) -> None:
        if self.editable_mode:
            # An editable install runs the package from the source tree, so the record goes there (ignored by
            # git, like the in-place .so), before build_py lists the package's modules.
            package = self.get_package_dir("fastframe")
            self._drop_stale_extension(package)
            self._write_build_info(os.path.join(package, "_build_info.py"))
            super().run()
        else:
            super().run()
            self._drop_stale_extension(os.path.join(self.build_lib, "fastframe"))
            self._write_build_info(os.path.join(self.build_lib, BUILD_INFO))

    def get_outputs(self, include_bytecode: bool = True) -> list[str]:
        outputs = super().get_outputs(include_bytecode)
        target = os.path.join(self.build_lib, BUILD_INFO)
        return outputs if self.editable_mode or target in outputs else [*outputs, target]

    @staticmethod
    def _drop_stale_extension(package: str) -> None:
        """A pure build must not ship (or, editable, run) the .so an earlier build left behind."""
        if not NO_EXTENSIONS or not os.path.isdir(package):
            return
        for name in os.listdir(package):
            if name.startswith("_codec.") and name.endswith(tuple(EXTENSION_SUFFIXES)):
                os.unlink(os.path.join(package, name))

    @staticmethod
    def _write_build_info(target: str) -> None:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(target, "w", encoding="utf-8") as f:
            f.write(
                '"""Written by setup.py at build time (never committed): how this copy of fastframe was built."""\n\n'
                "#: False when built with FASTFRAME_NO_EXTENSIONS=1: the pure-Python codec by choice, no warning.\n"
                f"EXTENSIONS = {not NO_EXTENSIONS}\n"
            )


class build_ext_or_explain(build_ext):
    """Cythonize at build time, writing the generated C under build/ (never beside the sources); drop debug
    info from the extension; turn a compiler failure into one message that names the way out.

    The Extension lists the .pyx, so the sdist carries the Cython source and no generated C.
    """

    def initialize_options(self) -> None:
        super().initialize_options()
        self.cython_c_in_temp = 1

    def build_extensions(self) -> None:
        if self.compiler.compiler_type == "unix":
            for ext in self.extensions:
                # -g0 comes after CFLAGS' -g (extra args go last), in pip, build and cibuildwheel alike: the
                # wheel's .so has no .debug_* sections (about 1 MB -> 0.2 MB) but keeps its symbol table, so
                # perf and gdb still name its functions.
                ext.extra_compile_args = [*ext.extra_compile_args, "-g0"]
        try:
            super().build_extensions()
        except (CCompilerError, CompileError, ExecError, LinkError, PlatformError) as exc:
            raise SystemExit(
                f"error: fastframe: building the C extension failed ({type(exc).__name__}; the compiler's own "
                "output is above).\n"
                "Install a C compiler and the Python headers (Debian/Ubuntu: apt install gcc python3-dev), or build "
                "the pure-Python package on purpose (a slower codec, same API):\n"
                "    FASTFRAME_NO_EXTENSIONS=1 pip install fastframe"
            ) from None


setup(
    ext_modules=[]
    if NO_EXTENSIONS
    else [Extension("fastframe._codec", ["src/_codec.pyx"], include_dirs=["src"], depends=["src/hton.h"])],
    cmdclass={"build_py": build_py_with_info, "build_ext": build_ext_or_explain},
)
