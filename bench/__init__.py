"""The input benchmark: ``python -m bench --images DIR --out-json FILE [options]``.

How many images per second each way of reading the same image folder delivers, and
how much of a training step waits for data. Results and what to choose: ``bench/README.md``.

* :mod:`bench.run`: the command line and the run (conversions, paths, rounds, outputs);
* :mod:`bench.paths`: each input path as an endless stream of batches;
* :mod:`bench.measure`: delivered images per wall-clock and per CPU second;
* :mod:`bench.against`: ``--against REV``, another revision's own benchmark, from a git worktree;
* :mod:`bench.train_step`: real training steps fed by each path (``--train-step``);
* :mod:`bench.report`: ratios, goal checks, the printed table and the bar chart.

It imports the trainer (for ``--train-step``); ``data/`` never imports ``bench``.
"""
