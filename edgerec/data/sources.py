"""Where a loader's raw files come from: a pinned package (default) or a user-given folder."""

from __future__ import annotations

from pathlib import Path

from edgerec.data.assets import PackageAsset
from edgerec.errors import DataFormatError


class FileSource:
    """Reads `relpath` from <root>/<relpath> if root is given, else from the package folder."""

    def __init__(self, asset: PackageAsset, folder: str, root: str | Path | None = None):
        self.asset, self.folder, self.root = asset, folder, Path(root) if root is not None else None

    def read(self, relpath: str) -> tuple[bytes, str]:
        """(bytes, source name used in error messages)."""
        if self.root is not None:
            path = self.root / relpath
            if not path.is_file():
                raise DataFormatError(f"{path}: file not found (expected {relpath} under {self.root}).")
            return path.read_bytes(), str(path)
        inner = f"{self.folder}/{relpath}"
        return self.asset.read_bytes(inner), f"{self.asset.requirement}:{self.asset.module}/{inner}"
