"""The quick job's yardstick (baseline.py): the stored TF-IDF baseline belongs to one test split."""

from __future__ import annotations


def test_stored_baseline_is_shown_only_for_its_own_test_split(tweets_csv):
    from bertfit.train.baseline import TWEETS_BASELINE, baseline_for, split_fingerprint
    from bertfit.train.finetune import prepare_data
    from bertfit.train.config import TrainConfig

    data = prepare_data(TrainConfig(train_file=str(tweets_csv), seed=0))
    assert split_fingerprint(data.test) == TWEETS_BASELINE["test_fingerprint"]  # the split it was measured on
    assert baseline_for(data.test) is TWEETS_BASELINE and len(data.test) == TWEETS_BASELINE["test_examples"]
    assert baseline_for(data.test[:-1]) is None and baseline_for(data.validation) is None
