"""Hyperparameter sweeps on Optuna: gpubox is the scheduler that turns trials into ordinary runs on free GPUs,
and the reader that turns each run's output into Optuna's values.

- :mod:`.record`: this machine's record of each sweep (storage URL, project, scheduler pid, owner id); no Optuna.
- :mod:`.metrics`: a trial's metric per epoch, from its log lines and TensorBoard scalars; no Optuna, no I/O.
- :mod:`.study`: the Optuna side: storage, study, samplers, pruner, a trial as gpubox shows it, the document.
- :mod:`.lane`: one host's slots and the thread doing its SSH work.
- :mod:`.scheduler`: slots filled with trials, values reported, pruning, the end.

The search space and the ``[sweep]`` table are read by :mod:`gpubox.config.sweep`. Only ``study``, ``lane`` and
``scheduler`` import Optuna: this package's ``__init__`` imports nothing, so reading a record stays light.
"""
