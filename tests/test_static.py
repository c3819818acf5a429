"""The dashboard's files: what is loaded from the web root, and what never is (no sockets)."""

from __future__ import annotations

from pathlib import Path

from fastrelay.static import PACKAGED_WEB_ROOT, StaticFiles


def test_hidden_files_and_symlinks_out_of_the_root_are_never_served(tmp_path: Path) -> None:
    """Dot-files and dot-directories at any depth, and links leading outside, are not loaded."""
    root = tmp_path / "web"
    (root / "js" / ".cache").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "index.html").write_text("<html>")
    (root / "js" / "app.js").write_text("app")
    (root / ".git" / "config").write_text("[core]")
    (root / ".env").write_text("MASSIVE_API_KEY=secret")
    (root / "js" / ".cache" / "x.js").write_text("x")
    (root / "js" / ".hidden.js").write_text("h")
    secret = tmp_path / "secret.txt"
    secret.write_text("outside")
    (root / "leak.txt").symlink_to(secret)
    (root / "linked").symlink_to(tmp_path)
    (root / "inside.txt").symlink_to(root / "index.html")  # a link within the root is fine
    files = StaticFiles(root)
    assert sorted(files.files) == ["/", "/index.html", "/inside.txt", "/js/app.js"]
    assert files.get("/.git/config") is None and files.get("/leak.txt") is None


def test_the_packaged_dashboard_is_served_with_types() -> None:
    """The shipped page and its scripts load, with their content types."""
    files = StaticFiles(PACKAGED_WEB_ROOT)
    page = files.get("/")
    script = files.get("/dashboard.js")
    assert page is not None and page[1] == "text/html; charset=utf-8"
    assert script is not None and script[1] == "text/javascript; charset=utf-8"
