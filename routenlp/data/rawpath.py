"""Resolving the path a user passes to a loader: a raw file, or the dataset folder holding it."""

from __future__ import annotations

from pathlib import Path


def resolve_file(path: str | Path, default_name: str, pattern: str) -> Path:
    """A file as is; a folder -> its default_name file, else its only file matching pattern."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if (path / default_name).is_file():
        return path / default_name
    matches = sorted(p for p in path.glob(pattern) if p.is_file())
    if len(matches) == 1:
        return matches[0]
    raise FileNotFoundError(
        f"{path} is a folder without {default_name} and with {len(matches)} files matching {pattern};"
        " pass the file itself"
    )


def find_pair_dirs(path: str | Path, first: str, second: str) -> list[Path]:
    """Folders at or under path that hold both subfolders first/ and second/, in sorted order."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"not a folder: {path}")
    candidates = [path, *sorted(p for p in path.rglob("*") if p.is_dir())]
    return [d for d in candidates if (d / first).is_dir() and (d / second).is_dir()]


def read_text(path: Path) -> str:
    # Raw corpora carry the odd invalid byte (CUAD); replacing it beats failing the whole build.
    return path.read_text(encoding="utf-8", errors="replace")
