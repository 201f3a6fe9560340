"""Input layouts: where the images are, which class each belongs to, official splits.

* ``folder``: ``DIR/<class>/<...>/<file>``; the class is the first folder level (nested
  sub-folders belong to it); classes are ordered by sorted folder name.
* ``food101``: the Food-101 download, ``food-101/images/<class>/<id>.jpg`` plus
  ``food-101/meta/{classes.txt,train.txt,test.txt}``; DIR may be ``food-101`` or its
  parent. Classes follow ``classes.txt``; the official test list is the test split and
  val is carved out of the official train list (see :mod:`data.convert.splits`).

DIR may be a local folder or an S3 URL (``s3://``, ``s3a://``): there the driver lists
the keys once (:func:`data.files.list_sizes`) and the tasks read the objects.
Paths are relative to the layout's image root (DIR, or ``food-101/images``) with
forward slashes. Hidden files and folders (name starting with ``.``) and files
without an image extension are not part of the data set (skipped, not rejected).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Iterable, Mapping

from data.files import join, list_sizes, read_bytes
from data.image_folder import IMAGE_EXTENSIONS, image_files, visible_images
from data.errors import UserError
from data.object_store import is_s3

LAYOUTS = ("auto", "folder", "food101")
ALL = "all"  # the part of an image that has no official split
FOOD101_META = ("classes.txt", "train.txt", "test.txt")


@dataclass(frozen=True)
class Layout:
    """A detected input layout. ``official`` maps Food-101 ``class/id`` to train/test."""

    name: str
    root: str
    classes: tuple[str, ...] | None = None
    official: Mapping[str, str] | None = None
    objects: Mapping[str, int] | None = None  # in an object store: relative key -> size, listed once

    def locate(self, relpath: str) -> tuple[str, str] | None:
        """``(class, part)`` of the file at ``relpath``, or None if it is not a data set
        image (hidden, not an image extension, outside a class folder, not listed)."""
        parts = relpath.split("/")
        if len(parts) < 2 or any(not p or p.startswith(".") for p in parts):
            return None
        stem, ext = os.path.splitext(relpath)
        if ext.lower() not in IMAGE_EXTENSIONS:
            return None
        cls = parts[0]
        if self.official is None:
            return cls, ALL
        part = self.official.get(stem)
        return (cls, part) if part is not None else None

    def class_order(self, found: Iterable[str]) -> list[str]:
        """The ordered class list (index = label), given the class names seen."""
        if self.classes is not None:
            return list(self.classes)
        return sorted(set(found))

    def spark_ignored_folders(self) -> list[str]:
        """Class folders Spark will not read (it skips names starting with ``_``)."""
        if self.objects is not None:
            return sorted({k.split("/", 1)[0] for k in self.objects if "/" in k and k.startswith("_")})
        try:
            return sorted(e.name for e in os.scandir(self.root) if e.is_dir() and e.name.startswith("_"))
        except OSError:
            return []

    def listing(self) -> tuple[list[str], list[str]]:
        """The files the conversion reads (:func:`data.image_folder.image_files`) and, apart, its zero-byte
        data set images (rejected without a read); relative paths, sorted."""
        files, empty = [], []
        objects = self.objects
        for rel in image_files(self.root) if objects is None else visible_images(objects):
            if (objects[rel] if objects is not None else os.path.getsize(os.path.join(self.root, rel))):
                files.append(rel)
            elif self.locate(rel) is not None:
                empty.append(rel)
        return files, empty


def detect(images: str, layout: str = "auto", storage: dict[str, str] | None = None) -> Layout:
    """The layout of the folder ``images`` (``auto``, ``folder`` or ``food101``), local or
    in an object store (``storage``: the AWS variables to reach it)."""
    if layout not in LAYOUTS:
        raise UserError(f"--layout must be one of {', '.join(LAYOUTS)}, got {layout!r}")
    if is_s3(images):
        root, objects = images.rstrip("/"), list_sizes(images, storage or {})
        if not objects:
            raise UserError(f"--images folder not found (no objects under it): {images}")
        exists = lambda rel: any(k.startswith(rel) for k in objects) if rel.endswith("/") else rel in objects  # noqa: E731
    else:
        root, objects = os.path.abspath(images), None
        if not os.path.isdir(root):
            raise UserError(f"--images folder not found: {images}")
        exists = lambda rel: (os.path.isdir if rel.endswith("/") else os.path.isfile)(join(root, rel))  # noqa: E731
    food = _food101_prefix(exists)
    if layout == "food101" and food is None:
        raise UserError(
            f"{images} is not a Food-101 folder: expected images/ and meta/{{{','.join(FOOD101_META)}}} "
            "in it or in its food-101/ sub-folder")
    if layout == "folder" or food is None:
        return Layout("folder", root, objects=objects)
    return _load_food101(root, food, objects, storage)


def _food101_prefix(exists) -> str | None:
    """``""`` or ``"food-101/"`` where Food-101's images/ and meta files are, else None
    (``exists(rel)``: is there such a file, or with a trailing ``/`` such a folder)."""
    for cand in ("", "food-101/"):
        if exists(f"{cand}images/") and all(exists(f"{cand}meta/{m}") for m in FOOD101_META):
            return cand
    return None


def _read_lines(path: str, storage: dict[str, str] | None) -> list[str]:
    text = read_bytes(path, storage).decode("utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _load_food101(root: str, prefix: str, objects: Mapping[str, int] | None,
                  storage: dict[str, str] | None) -> Layout:
    meta = join(root, prefix + "meta")
    images = prefix + "images/"
    classes = tuple(_read_lines(join(meta, "classes.txt"), storage))
    if not classes or len(set(classes)) != len(classes):
        raise UserError(f"{meta}/classes.txt must list each class once")
    official: dict[str, str] = {}
    for part in ("train", "test"):
        for entry in _read_lines(join(meta, f"{part}.txt"), storage):
            cls = entry.split("/", 1)[0]
            if cls not in classes:
                raise UserError(f"{meta}/{part}.txt lists {entry!r}, whose class is not in classes.txt")
            if official.setdefault(entry, part) != part:
                raise UserError(f"{meta}: {entry!r} is in both train.txt and test.txt")
    inside = None if objects is None else {k[len(images):]: n for k, n in objects.items() if k.startswith(images)}
    return Layout("food101", join(root, images.rstrip("/")), classes, official, inside)
