"""TF-IDF + logistic regression on exactly the split `bertfit train` makes (the quality baseline).

    .venv/bin/python benchmarks/baseline_tfidf.py [--train-file FILE] [--seed 0] [--out FILE.json]

Prints test accuracy and macro-F1, and the test split's fingerprint (src/bertfit/baseline.py stores both). Uses bertfit's own data preparation (read, deduplicate,
stratified 80/10/10 split with the same seed), so the numbers sit beside a fine-tuned run's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import accuracy_score, f1_score

from bertfit.train.baseline import split_fingerprint
from bertfit.train.finetune import prepare_data
from bertfit.train.config import TrainConfig


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--train-file", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=None, help="also write the figures, split and machine as JSON")
    args = parser.parse_args()
    data = prepare_data(TrainConfig(train_file=args.train_file, seed=args.seed))
    best = None
    # C chosen on the validation split, as a fine-tuned model's checkpoint is.
    for c in (0.5, 1.0, 2.0, 4.0, 8.0):
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
        x_train = vectorizer.fit_transform([e.text for e in data.train])
        model = LogisticRegression(C=c, max_iter=2000).fit(x_train, [e.label for e in data.train])
        val_pred = model.predict(vectorizer.transform([e.text for e in data.validation]))
        val_f1 = f1_score([e.label for e in data.validation], val_pred, average="macro")
        if best is None or val_f1 > best[0]:
            best = (val_f1, c, vectorizer, model)
    _, c, vectorizer, model = best
    y = [e.label for e in data.test]
    pred = model.predict(vectorizer.transform([e.text for e in data.test]))
    print(f"split: train {len(data.train)}, validation {len(data.validation)}, test {len(data.test)} (seed {args.seed})")
    print(f"TF-IDF (1-2 grams) + logistic regression, C={c} chosen on validation macro-F1")
    print(f"test accuracy {accuracy_score(y, pred):.4f}  macro-F1 {f1_score(y, pred, average='macro'):.4f}")
    # what src/bertfit/baseline.py stores, so `bertfit train --quick` shows these figures on this split only
    print(f"test split fingerprint {split_fingerprint(data.test)}")
    if args.out:
        import sklearn

        commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                                cwd=Path(__file__).resolve().parent).stdout.strip()
        record = {"command": " ".join([os.path.basename(sys.executable)] + sys.argv), "commit": commit,
                  "sklearn": sklearn.__version__, "seed": args.seed,
                  "split": {"train": len(data.train), "validation": len(data.validation), "test": len(data.test)},
                  "C": c, "validation_macro_f1": best[0], "test_accuracy": accuracy_score(y, pred),
                  "test_macro_f1": f1_score(y, pred, average="macro"), "test_fingerprint": split_fingerprint(data.test)}
        args.out.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
