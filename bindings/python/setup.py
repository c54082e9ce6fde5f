"""Builds libdiffugpt with cargo and bundles it into the package (``pip install ./bindings/python``).

The Python code is plain ctypes; what makes the package platform-specific is the bundled shared
library. ``build_py`` runs ``cargo build --release --lib`` in the repository this directory belongs
to (reusing ``$CARGO_TARGET_DIR`` when set, so an earlier build is not repeated) and copies the
library next to ``__init__.py``, where ``diffugpt._lib.load_library`` looks after ``$DIFFUGPT_LIB``.
The wheel is tagged ``py3-none-<platform>``: any Python 3, this OS and CPU.

Set ``DIFFUGPT_BUNDLE_LIB=/path/to/libdiffugpt.so`` to bundle an already built library instead
(no cargo needed).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

try:  # setuptools >= 70.1 ships bdist_wheel itself
    from setuptools.command.bdist_wheel import bdist_wheel
except ImportError:  # older setuptools: the `wheel` package
    from wheel.bdist_wheel import bdist_wheel

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent


def lib_name() -> str:
    if sys.platform == "win32":
        return "diffugpt.dll"
    if sys.platform == "darwin":
        return "libdiffugpt.dylib"
    return "libdiffugpt.so"


def build_native() -> Path:
    """The library to bundle: $DIFFUGPT_BUNDLE_LIB, or a fresh `cargo build --release --lib`."""
    given = os.environ.get("DIFFUGPT_BUNDLE_LIB")
    if given:
        lib = Path(given)
        if not lib.is_file():
            sys.exit(f"diffugpt: DIFFUGPT_BUNDLE_LIB={given} is not a file")
        return lib
    if not (REPO / "Cargo.toml").is_file():
        sys.exit(
            f"diffugpt: no Cargo.toml at {REPO}: build from the repository checkout "
            "(pip install ./bindings/python), or set DIFFUGPT_BUNDLE_LIB=/path/to/libdiffugpt.so"
        )
    cargo = os.environ.get("CARGO", "cargo")
    if shutil.which(cargo) is None:
        sys.exit(
            "diffugpt: `cargo` not found: install Rust (https://rustup.rs) to build the native "
            "library, or set DIFFUGPT_BUNDLE_LIB=/path/to/libdiffugpt.so"
        )
    cmd = [cargo, "build", "--release", "--lib", "--manifest-path", str(REPO / "Cargo.toml")]
    print("diffugpt: " + " ".join(cmd), file=sys.stderr)
    subprocess.run(cmd, check=True)
    target = Path(os.environ.get("CARGO_TARGET_DIR") or REPO / "target")
    if not target.is_absolute():
        target = REPO / target
    lib = target / "release" / lib_name()
    if not lib.is_file():
        sys.exit(f"diffugpt: cargo finished but {lib} is missing")
    return lib


class BuildPyWithLib(build_py):
    def run(self) -> None:
        super().run()
        dest = Path(self.build_lib) / "diffugpt" / lib_name()
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(build_native(), dest)


class PlatformWheel(bdist_wheel):
    def finalize_options(self) -> None:
        super().finalize_options()
        self.root_is_pure = False  # a native library inside

    def get_tag(self):
        _, _, plat = super().get_tag()
        return "py3", "none", plat


setup(cmdclass={"build_py": BuildPyWithLib, "bdist_wheel": PlatformWheel})
