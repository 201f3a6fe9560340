"""Which files of an image folder are images: the walk that conversion and batch prediction share."""
from __future__ import annotations

import os

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff")
SPARK_HIDDEN = (".", "_")  # Spark's file listing skips names starting with these


def image_files(root: str) -> list[str]:
    """Image files under ``root`` (relative, ``/``-separated, sorted): image extensions in
    any case; nothing whose name, or a folder's on the way, starts with ``.`` or ``_``
    (Spark's rule for hidden files, kept so a data set converts as it always did)."""
    found = []
    for folder, dirs, names in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(SPARK_HIDDEN)]
        rel = os.path.relpath(folder, root).replace(os.sep, "/")
        for name in names:
            if not name.startswith(SPARK_HIDDEN) and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(name if rel == "." else f"{rel}/{name}")
    return sorted(found)


def visible_images(relpaths) -> list[str]:
    """:func:`image_files`' rule applied to a listing of relative paths."""
    return sorted(rel for rel in relpaths if os.path.splitext(rel)[1].lower() in IMAGE_EXTENSIONS
                  and not any(p.startswith(SPARK_HIDDEN) for p in rel.split("/")))


def image_glob() -> str:
    """A case-insensitive Hadoop glob for image file names (Spark ``pathGlobFilter``)."""
    def anycase(ext: str) -> str:
        return "".join(f"[{c.lower()}{c.upper()}]" if c.isalpha() else c for c in ext[1:])
    return "*.{" + ",".join(anycase(e) for e in IMAGE_EXTENSIONS) + "}"
