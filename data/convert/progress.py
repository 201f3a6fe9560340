"""A progress bar for Spark work (:func:`data.progress.progress_bar`): a thread polls the status tracker for one job group."""
from __future__ import annotations

import contextlib
import itertools
import threading
from typing import Iterator

from tqdm import tqdm

from data.progress import progress_bar

POLL_SECONDS = 0.5
_GROUP_KEYS = ("spark.jobGroup.id", "spark.job.description")
_counter = itertools.count()


@contextlib.contextmanager
def spark_progress(spark, desc: str, enabled: bool = True) -> Iterator[None]:
    """Run the block's Spark jobs in their own job group, showing finished/total tasks."""
    sc = spark.sparkContext
    group = f"sparkdp-{next(_counter)}-{desc}"
    saved = [sc.getLocalProperty(k) for k in _GROUP_KEYS]
    sc.setLocalProperty(_GROUP_KEYS[0], group)
    sc.setLocalProperty(_GROUP_KEYS[1], desc)
    stop = threading.Event()
    bar = progress_bar(total=0, desc=desc, unit="task", disable=not enabled, leave=False)
    poller = threading.Thread(target=_poll, args=(sc.statusTracker(), group, bar, stop), daemon=True)
    if enabled:
        poller.start()
    try:
        yield
    finally:
        stop.set()
        if enabled:
            poller.join()
        bar.close()
        for key, value in zip(_GROUP_KEYS, saved):
            sc.setLocalProperty(key, value)


def _poll(tracker, group: str, bar: tqdm, stop: threading.Event) -> None:
    while not stop.wait(POLL_SECONDS):
        try:
            done, total = _task_counts(tracker, group)
        except Exception:  # the tracker is best effort; never break the job for a bar
            continue
        if total != bar.total or done != bar.n:
            bar.total, bar.n = total, done
            bar.refresh()


def _task_counts(tracker, group: str) -> tuple[int, int]:
    """Finished and total tasks of the group's stages that have started (stages Spark
    skips because their output already exists never start and are not counted)."""
    done = total = 0
    active = set(tracker.getActiveStageIds())
    for job in tracker.getJobIdsForGroup(group):
        info = tracker.getJobInfo(job)
        for stage_id in info.stageIds if info else ():
            stage = tracker.getStageInfo(stage_id)
            if stage and (stage_id in active or stage.numCompletedTasks + stage.numActiveTasks > 0):
                done += stage.numCompletedTasks
                total += stage.numTasks
    return done, total
