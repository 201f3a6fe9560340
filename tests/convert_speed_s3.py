"""Conversion speed from S3 vs from disk on the same images, in one run.

    python -m data.synthetic --out /tmp/speed_images --classes 10 --per-class 300
    python tests/convert_speed_s3.py --images /tmp/speed_images

Starts the tests' S3 API server (moto on 127.0.0.1, credentials checked:
:mod:`tests.s3_server`), uploads the folder, then converts in one Spark session
(``local[*]``): disk -> disk, S3 -> disk, S3 -> S3, disk -> disk again. Prints each
conversion's seconds, images/s and stage seconds, and what one S3 read costs (objects
read one by one with s3fs, as a task reads them) against the same files from disk.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def per_read_ms(paths: list[str], storage) -> float:
    from data.files import read_bytes

    started = time.perf_counter()
    for path in paths:
        read_bytes(path, storage)
    return 1000 * (time.perf_counter() - started) / len(paths)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", required=True)
    images = os.path.abspath(p.parse_args().images)
    from data.convert import convert
    from data.files import join
    from data.image_folder import image_files
    from data.spark import get_spark
    from tests.s3_server import S3Server

    with tempfile.TemporaryDirectory() as tmp:
        server = S3Server(tmp)
        try:
            os.environ.update(server.env)
            started = time.perf_counter()
            url = server.upload(images, "speed", "images")
            print(f"upload: {time.perf_counter() - started:.1f} s")
            spark = get_spark("local[*]")
            runs = (("disk -> disk", images, f"{tmp}/a"), ("s3 -> disk", url, f"{tmp}/b"),
                    ("s3 -> s3", url, "s3://speed/out"), ("disk -> disk again", images, f"{tmp}/c"))
            for name, src, out in runs:
                m = convert(src, out, spark=spark, progress=False)
                print(f"{name:20s} {m.stats['seconds']:6.1f} s {m.stats['images_per_s']:7.0f} images/s  "
                      f"stages {m.stats['stage_seconds']}", flush=True)
            sample = image_files(images)[::15]
            disk = per_read_ms([join(images, r) for r in sample], None)
            s3 = per_read_ms([join(url, r) for r in sample], server.env)
            print(f"one read, one process ({len(sample)} files): disk {disk:.2f} ms, s3 {s3:.2f} ms")
            spark.stop()
        finally:
            server.stop()


if __name__ == "__main__":
    main()
