"""Static files (the dashboard page), loaded once and served from memory.

Only files present at start-up are served, by exact name: no path is ever
joined with what a client sent, so there is no traversal to guard against.
Nothing hidden is loaded (a dot-file or anything under a dot-directory, such
as ``.git/config``), nor anything a symlink leads to outside the root.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

PACKAGED_WEB_ROOT = Path(__file__).parent / "web"
_TYPES = {".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8"}


class StaticFiles:
    def __init__(self, root: Path | None) -> None:
        self.files: dict[str, tuple[bytes, str]] = {}
        if root is None or not root.is_dir():
            return
        real_root = root.resolve()
        for path in sorted(root.rglob("*")):
            relative = path.relative_to(root)
            if any(part.startswith(".") for part in relative.parts) or not path.is_file():
                continue
            if not path.resolve().is_relative_to(real_root):
                continue  # a symlink out of the web root
            name = "/" + relative.as_posix()
            content_type = (
                _TYPES.get(path.suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
            )
            if content_type.startswith("text/") and "charset" not in content_type:
                content_type += "; charset=utf-8"
            self.files[name] = (path.read_bytes(), content_type)
        if "/index.html" in self.files:
            self.files["/"] = self.files["/index.html"]

    def get(self, path: str) -> tuple[bytes, str] | None:
        return self.files.get(path)
