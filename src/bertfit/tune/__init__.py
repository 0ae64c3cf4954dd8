"""`bertfit tune`: a hyperparameter search over `train`'s settings (Optuna), within a time budget.

    space.py   the search space: defaults, and the override file named with train's flags
    budget.py  the time budget: whether the next trial can still finish
    study.py   the Optuna study, its trials (each a normal run directory), resume, --nproc workers, the best
    lengths.py max_length from the training texts' length quantiles
    final.py   --final-seeds: the best settings trained again with fresh seeds, mean ± std
    analysis.py parameter importances (fANOVA) and the parallel-coordinates plot
    report.py  tune_report.md: the trials table and the best trial
"""
