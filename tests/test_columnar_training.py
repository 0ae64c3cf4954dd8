"""Training from Parquet, `datasets` and a DataFrame is training from the same rows: bit-identical weights
to the CSV run (fp32, bf16=False, as the other exactness tests pin), and a DatasetDict's splits are the run's."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
datasets = pytest.importorskip("datasets")
pd = pytest.importorskip("pandas")

from bertfit.train.config import TrainConfig  # noqa: E402
from bertfit.train.finetune import fine_tune, prepare_data  # noqa: E402
from conftest import synthetic_rows, write_csv  # noqa: E402


def run(tmp_path, name, model_dir, train_file, **overrides):
    values = dict(train_file=train_file, model=str(model_dir), output_dir=str(tmp_path / name), max_length=32,
                  batch_size=16, lr=5e-4, max_steps=6, eval_each_epoch=False, save_every=100, seed=0, bf16=False)
    values.update(overrides)
    return fine_tune(TrainConfig(**values))


def weights(result):
    return load_file(str(result.run_dir / "model.safetensors"))


def test_csv_parquet_datasets_and_dataframe_runs_give_bit_identical_weights(tmp_path, tiny_model_dir):
    rows = synthetic_rows(120, seed=3)
    csv_file = write_csv(tmp_path / "d.csv", rows)
    pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [l for _, l in rows]}), tmp_path / "d.parquet")
    names = ["negative", "positive"]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})
    datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [names.index(l) for _, l in rows]},
                               features=features).save_to_disk(str(tmp_path / "ds"))
    reference = run(tmp_path, "csv", tiny_model_dir, str(csv_file))
    base = weights(reference)
    for name, source in (("parquet", str(tmp_path / "d.parquet")), ("datasets", str(tmp_path / "ds")),
                         ("dataframe", pd.DataFrame(rows, columns=["text", "label"]))):
        result = run(tmp_path, name, tiny_model_dir, source)
        other = weights(result)
        assert other.keys() == base.keys()
        assert all(torch.equal(base[k], other[k]) for k in base), name
        assert result.metrics == reference.metrics, name
    # The comparison has teeth: a run on other rows ends elsewhere.
    changed = run(tmp_path, "changed", tiny_model_dir, str(write_csv(tmp_path / "e.csv", rows[1:] + rows[:1])))
    assert not all(torch.equal(base[k], weights(changed)[k]) for k in base)


def test_a_dataset_dict_directory_gives_the_runs_splits(tmp_path):
    rows = synthetic_rows(60, seed=5)
    names = ["negative", "positive"]
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=names)})

    def part(chunk):
        return datasets.Dataset.from_dict({"text": [t for t, _ in chunk], "label": [names.index(l) for _, l in chunk]},
                                          features=features)

    unique = list(dict(rows).items())
    datasets.DatasetDict(train=part(unique[:30]), validation=part(unique[30:40]), test=part(unique[40:48])).save_to_disk(
        str(tmp_path / "dd"))
    prepared = prepare_data(TrainConfig(train_file=str(tmp_path / "dd")))
    assert (len(prepared.train), len(prepared.validation), len(prepared.test)) == (30, 10, 8)
    assert prepared.labels == names
    # A file named for validation or test replaces the DatasetDict's own; the train split is not split.
    write_csv(tmp_path / "v.csv", unique[48:])
    prepared = prepare_data(TrainConfig(train_file=str(tmp_path / "dd"), validation_file=str(tmp_path / "v.csv")))
    assert (len(prepared.train), len(prepared.validation), len(prepared.test)) == (30, len(unique[48:]), 0)
    # Only a train split: split it as one file.
    datasets.DatasetDict(train=part(unique[:40])).save_to_disk(str(tmp_path / "only"))
    prepared = prepare_data(TrainConfig(train_file=str(tmp_path / "only")))
    assert len(prepared.train) + len(prepared.validation) + len(prepared.test) == 40 and prepared.test


def test_the_cli_trains_from_a_forced_format(tmp_path, tiny_model_dir, capsys):
    from bertfit.cli import main

    rows = synthetic_rows(60, seed=7)
    pq.write_table(pa.table({"text": [t for t, _ in rows], "label": [l for _, l in rows]}), tmp_path / "export.bin")
    code = main(["train", "--train-file", str(tmp_path / "export.bin"), "--data-format", "parquet",
                 "--model", str(tiny_model_dir), "--max-steps", "2", "--max-length", "32", "--no-bf16",
                 "--output-dir", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    saved = json.loads((tmp_path / "run" / "train_config.json").read_text())
    assert saved["train_file"] == f"parquet:{tmp_path / 'export.bin'}"


def test_ner_from_conll_datasets_and_label_studio_gives_bit_identical_weights(tmp_path):
    import random

    from conftest import build_tiny_model_dir
    from test_ner_task import WORDS, synthetic_sentence

    model_dir = build_tiny_model_dir(tmp_path / "ner-bert", words=WORDS, max_position_embeddings=128)
    rng = random.Random(1)
    sentences = [synthetic_sentence(rng) for _ in range(120)]
    conll = tmp_path / "train.conll"
    conll.write_text("".join("".join(f"{w}\t{t}\n" for w, t in zip(words, tags)) + "\n" for words, tags in sentences),
                     encoding="utf-8")
    names = sorted({t for _, tags in sentences for t in tags})
    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                                  "ner_tags": datasets.List(datasets.ClassLabel(names=names))})
    datasets.Dataset.from_dict({"tokens": [w for w, _ in sentences],
                                "ner_tags": [[names.index(t) for t in tags] for _, tags in sentences]},
                               features=features).save_to_disk(str(tmp_path / "ner_ds"))
    tasks = []
    for i, (words, tags) in enumerate(sentences):
        text, starts, pos = " ".join(words), [], 0
        for w in words:
            starts.append(pos)
            pos += len(w) + 1
        result, k = [], 0
        while k < len(words):
            if tags[k].startswith("B-"):
                end = k + 1
                while end < len(words) and tags[end] == "I-" + tags[k][2:]:
                    end += 1
                a, b = starts[k], starts[end - 1] + len(words[end - 1])
                result.append({"type": "labels", "value": {"start": a, "end": b, "text": text[a:b],
                                                           "labels": [tags[k][2:]]}})
                k = end
            else:
                k += 1
        tasks.append({"id": i, "data": {"text": text}, "annotations": [{"result": result}]})
    (tmp_path / "ls.json").write_text(json.dumps(tasks), encoding="utf-8")
    common = dict(problem_type="ner", model=str(model_dir), max_steps=6, batch_size=16, lr=3e-3, max_length=32,
                  eval_each_epoch=False, save_every=100, seed=0, bf16=False)
    base = weights(fine_tune(TrainConfig(train_file=str(conll), output_dir=str(tmp_path / "conll"), **common)))
    for name, source in (("datasets", str(tmp_path / "ner_ds")), ("label-studio", str(tmp_path / "ls.json"))):
        other = weights(fine_tune(TrainConfig(train_file=source, output_dir=str(tmp_path / name), **common)))
        assert all(torch.equal(base[k], other[k]) for k in base), name
