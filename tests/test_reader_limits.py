"""Every reader of every task held to the same limits, and messages that send the user the right way:
deeply nested JSON is a row error (NER JSON lines, QA JSON and JSON lines), old-Mac line endings are
line endings (CoNLL, corpora), a binary file is called binary, --resume names a run, pretrain names
its own flag, and the server drops the work of requests whose callers all got their 504."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bertfit.errors import BertfitError, DataError

DEEP = "[" * 100_000 + "]" * 100_000


def test_deep_json_in_ner_jsonl_is_a_row_error(tmp_path):
    from bertfit.tasks.ner.data import read_ner_file

    path = tmp_path / "ner.jsonl"
    good = json.dumps({"tokens": ["Ann", "met", "Bob"], "tags": ["B-PER", "O", "B-PER"]})
    path.write_text(good + "\n" + '{"tokens": ' + DEEP + "}\n" + good + "\n")
    sentences, report = read_ner_file(str(path), {"skip_bad_rows": True})
    assert len(sentences) == 2 and [r.row for r in report.rejected] == [2]
    assert "nested too deeply" in report.rejected[0].reason
    with pytest.raises(DataError, match="nested too deeply"):
        read_ner_file(str(path), {})


def test_deep_json_in_qa_files_is_a_clear_error(tmp_path):
    from bertfit.tasks.qa.data import read_qa

    document = tmp_path / "squad.json"
    document.write_text('{"data": ' + DEEP + "}")
    with pytest.raises(DataError, match="nested too deeply"):
        read_qa(document)
    lines = tmp_path / "qa.jsonl"
    lines.write_text('{"question": "q", "context": ' + DEEP + "}\n")
    with pytest.raises(DataError, match="nested too deeply"):
        read_qa(lines)


def test_conll_with_old_mac_line_endings_reads_its_entities(tmp_path):
    from bertfit.tasks.ner.data import read_ner_file

    rows = ["Ann B-PER", "met O", "Bob B-PER", "", "Paris B-LOC", "is O"]
    unix, mac = tmp_path / "unix.conll", tmp_path / "mac.conll"
    unix.write_text("\n".join(rows) + "\n")
    mac.write_text("\r".join(rows) + "\r")
    want = [(s.words, s.label) for s in read_ner_file(str(unix))[0]]
    assert [(s.words, s.label) for s in read_ner_file(str(mac))[0]] == want and len(want) == 2


def test_a_binary_file_is_called_binary(tmp_path):
    from bertfit.data.labelled import read_examples

    rng = np.random.default_rng(0)
    data = bytes(b for b in rng.integers(1, 256, 4000, dtype=np.uint8).tolist())  # no NUL byte at all
    path = tmp_path / "data.csv"
    path.write_bytes(data)
    with pytest.raises(DataError, match="looks like a binary file"):
        read_examples(path)


def test_resume_of_something_that_is_not_a_run_says_resume(tmp_path):
    from bertfit.train.run_dir import RunDir
    from bertfit.train.setup import check_resume_target

    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("mine")
    (tmp_path / "file").write_text("x")
    for path, message in ((tmp_path / "missing", "no such directory"), (tmp_path / "file", "is a file"),
                          (tmp_path / "notes", "not a bertfit run")):
        with pytest.raises(BertfitError, match=f"--resume .*{message}") as caught:
            check_resume_target(RunDir(path), resume=True, overwrite=False)
        assert "--output-dir" not in str(caught.value)


def test_pretrain_names_its_own_column_flag(tmp_path):
    from bertfit.tasks.pretrain.corpus import read_corpus

    path = tmp_path / "corpus.csv"
    path.write_text("id,body\n1,hello there\n")
    with pytest.raises(DataError) as caught:
        read_corpus([path], column="nope")
    assert "--text-column" not in str(caught.value)


def test_abandoned_work_is_dropped_between_batches():
    from bertfit.batching import Abandoned, engine_logits, stop_when
    from bertfit.tokenizer import Encoded

    class Engine:
        runs = 0

        def batches(self, lengths, max_tokens, max_batch):
            return [[i] for i in range(len(lengths))]

        def run(self, batch):
            Engine.runs += 1
            return np.zeros((len(batch.indices), 2), dtype=np.float32)

    encoded = [Encoded([2, 5, 3], [0, 0, 0], False) for _ in range(5)]
    assert engine_logits(Engine(), encoded, 2, 0, max_tokens=100, max_batch=1).shape == (5, 2)
    Engine.runs = 0
    with stop_when(lambda: Engine.runs >= 2), pytest.raises(Abandoned):
        engine_logits(Engine(), encoded, 2, 0, max_tokens=100, max_batch=1)
    assert Engine.runs == 2  # the other three batches were never computed


def test_the_server_drops_a_batch_whose_callers_all_left(monkeypatch):
    from bertfit.batching import Abandoned, stop_when  # noqa: F401 - the host uses them
    from bertfit.serve.batcher import Job
    from bertfit.serve.config import ServeConfig
    from bertfit.serve.host import ModelHost

    host = ModelHost(ServeConfig(run="x"), None)
    computed = []

    def predict(jobs):
        from bertfit.batching import engine_logits
        from bertfit.tokenizer import Encoded

        class Engine:
            def batches(self, lengths, max_tokens, max_batch):
                return [[i] for i in range(len(lengths))]

            def run(self, batch):
                computed.append(batch.indices)
                jobs[0].abandoned = True  # its caller got a 504 while the first batch ran
                return np.zeros((1, 2), dtype=np.float32)

        engine_logits(Engine(), [Encoded([2, 3], [0, 0], False)] * 4, 2, 0, max_tokens=100, max_batch=1)
        return [b"{}"] * len(jobs)

    monkeypatch.setattr(host, "_predict", predict)
    job = Job(["a"], None, 0.0, 1e9, future=None)  # type: ignore[arg-type]
    out = host.run_batch([job])
    assert isinstance(out[0], Abandoned) and len(computed) == 1
