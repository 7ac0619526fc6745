"""Experiments: several runs read together, as papers report them.

    vaekit.experiments.collect  run folders found from the paths a user names: runs, folders of runs, seed groups
    vaekit.experiments.stats    mean and standard error over the seeds of a group
    vaekit.experiments.compare  the comparison: settings that differ, numbers by protocol, text table and JSON
    vaekit.experiments.page     the comparison as one self-contained HTML page
    vaekit.experiments.seeds    ``vaekit train --seeds``: one run per seed, then their mean and standard error

Comparing reads run folders through :mod:`vaekit.run.folder`'s bounded readers and never loads weights or data, so
comparing a hundred runs is quick and a damaged run folder is one warning, not a crash. Only ``seeds`` trains: it
drives :func:`vaekit.training.train` once per seed and summarises the seed folders as a comparison reads them.
"""
