"""Data where users keep it: Parquet, Arrow/Feather, `datasets` save_to_disk directories, DataFrames and
Datasets, and NER from annotation tools (Label Studio JSON, doccano JSONL), for every task.

Every file here is written by the real library (pyarrow.parquet, pyarrow.feather, datasets.save_to_disk,
pandas) or by the annotation tools' documented schemas; broken ones (wrong column types, bad spans, a
truncated Parquet file) must give a clear error naming the file, row and column, and every row must be
accounted for (rows read = used + rejected).
"""

from __future__ import annotations

import json

import pytest

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")
feather = pytest.importorskip("pyarrow.feather")
datasets = pytest.importorskip("datasets")
pd = pytest.importorskip("pandas")

from bertfit.data import columnar  # noqa: E402
from bertfit.data.labelled import RAW_LABELS, read_examples, read_table, write_table  # noqa: E402
from bertfit.errors import DataError  # noqa: E402

ROWS = [("the food was great", "positive"), ("awful service", "negative"), ("a lovely day", "positive")]


def write_parquet(path, columns: dict, schema=None):
    pq.write_table(pa.table(columns, schema=schema), path)
    return path


def write_csv_rows(path, rows, header=("text", "label")):
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def class_label_dataset(rows, names=("negative", "positive")):
    features = datasets.Features({"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(names))})
    return datasets.Dataset.from_dict({"text": [t for t, _ in rows], "label": [names.index(l) for _, l in rows]},
                                      features=features)


# -- text classification: the same examples from every format ----------------------------------------


def test_every_format_gives_the_examples_the_csv_gives(tmp_path):
    csv_file = write_csv_rows(tmp_path / "d.csv", ROWS)
    parquet = write_parquet(tmp_path / "d.parquet", {"text": [t for t, _ in ROWS], "label": [l for _, l in ROWS]})
    arrow = tmp_path / "d.feather"
    feather.write_feather(pa.table({"text": [t for t, _ in ROWS], "label": [l for _, l in ROWS]}), arrow)
    class_label_dataset(ROWS).save_to_disk(str(tmp_path / "ds"))
    frame = pd.DataFrame(ROWS, columns=["text", "label"])

    want = [(t, l) for t, l in ROWS]
    for source, fmt in ((parquet, "parquet"), (arrow, "arrow"), (tmp_path / "ds", "datasets"), (frame, "dataframe"),
                        (class_label_dataset(ROWS), "dataset"), (str(csv_file), "csv")):
        examples, report = read_examples(source)
        assert [(e.text, e.label) for e in examples] == want, fmt
        assert report.format == fmt and report.rows_read == report.rows_used == 3
    # Rows of a table are numbered by position from 0 (df.iloc[N], dataset[N]); a CSV's by its lines.
    assert [e.row for e in read_examples(parquet)[0]] == [0, 1, 2]
    assert [e.row for e in read_examples(str(csv_file))[0]] == [2, 3, 4]


def test_class_label_ids_become_their_names_and_minus_one_is_missing(tmp_path):
    ds = class_label_dataset(ROWS)
    ds = ds.cast_column("label", datasets.ClassLabel(names=["negative", "positive"]))
    unlabelled = datasets.Dataset.from_dict({"text": ["x y", "z"], "label": [-1, 1]}, features=ds.features)
    unlabelled.save_to_disk(str(tmp_path / "u"))
    examples, report = read_examples(tmp_path / "u", require_labels=False)
    assert [e.label for e in examples] == [None, "positive"]
    with pytest.raises(DataError, match=r"row 0: missing label"):
        read_examples(tmp_path / "u")
    # A Parquet file that datasets wrote carries the ClassLabel names in its schema metadata.
    ds.to_parquet(str(tmp_path / "hf.parquet"))
    assert [e.label for e in read_examples(tmp_path / "hf.parquet")[0]] == [l for _, l in ROWS]


def test_bad_rows_are_rejected_with_their_row_and_every_row_is_accounted_for(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", {"text": ["fine", None, "  ", "ok", "x" * 50],
                                                  "label": ["a", "b", "a", None, "b"]})
    with pytest.raises(DataError) as err:
        read_examples(path)
    assert "d.parquet, row 1: text is missing (null)" in str(err.value) and "--skip-bad-rows" in str(err.value)
    examples, report = read_examples(path, skip_bad_rows=True, max_chars=40)
    assert report.rows_read == 5 == report.rows_used + len(report.rejected)
    assert [e.row for e in examples] == [0]
    assert {r.row: r.reason for r in report.rejected} == {
        1: "text is missing (null)", 2: "empty text", 3: "missing label (column 'label' is empty)",
        4: "text is 50 characters, over the limit of 40 (--max-chars)"}


def test_a_text_column_of_the_wrong_type_is_an_error_naming_the_column(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", {"text": [1, 2], "label": ["a", "b"]})
    with pytest.raises(DataError, match=r"d.parquet: column 'text' holds int64 values, but the text must be text"):
        read_examples(path)
    lists = write_parquet(tmp_path / "l.parquet", {"text": ["a", "b"], "pair": [["x"], ["y"]], "label": ["a", "b"]})
    with pytest.raises(DataError, match=r"column 'pair' holds list<.*string> values.*--pair-column"):
        read_examples(lists, pair_column="pair")
    with pytest.raises(DataError, match=r"no text column 'body'; columns found: 'text', 'pair', 'label'"):
        read_examples(lists, text_column="body")
    with pytest.raises(DataError, match="--no-header and --columns apply to CSV and TSV files only"):
        read_examples(lists, header=False)


def test_a_truncated_or_damaged_parquet_file_is_a_clear_error(tmp_path, capsys):
    good = write_parquet(tmp_path / "d.parquet", {"text": ["a b"] * 100, "label": ["x", "y"] * 50})
    data = good.read_bytes()
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"truncated.parquet is not a readable Parquet file .*truncated or damaged"):
        read_examples(truncated)
    # Pages damaged in the middle: the footer reads, the rows do not.
    damaged = tmp_path / "damaged.parquet"
    middle = bytearray(data)
    for i in range(8, len(data) // 2):
        middle[i] = 0xFF
    damaged.write_bytes(bytes(middle))
    with pytest.raises(DataError, match=r"damaged.parquet"):
        read_examples(damaged)
    # Through the CLI: a message and exit code 2 (a user error), no traceback.
    from bertfit.cli import main

    code = main(["train", "--train-file", str(truncated), "--output-dir", str(tmp_path / "run")])
    out = capsys.readouterr()
    assert code != 0 and "not a readable Parquet file" in out.err and "Traceback" not in out.err


def test_an_arrow_stream_and_a_forced_format(tmp_path):
    table = pa.table({"text": ["a b", "c d"], "label": ["x", "y"]})
    stream = tmp_path / "export.bin"
    with pa.OSFile(str(stream), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    assert read_examples(stream)[1].format == "arrow"  # sniffed from its first bytes
    parquet = tmp_path / "export.dat"
    pq.write_table(table, parquet)
    examples, report = read_examples(f"parquet:{parquet}")
    assert report.path == str(parquet) and [e.text for e in examples] == ["a b", "c d"]
    with pytest.raises(DataError, match="not a readable Arrow IPC"):
        read_examples(f"arrow:{parquet}")
    text = tmp_path / "notes.txt"
    text.write_text("text\tlabel\nhello there\tx\n", encoding="utf-8")
    assert read_examples(f"tsv:{text}")[1].format == "tsv"


def test_a_dataset_dict_directory_is_named_split_by_split(tmp_path):
    d = datasets.DatasetDict(train=class_label_dataset(ROWS), test=class_label_dataset(ROWS[:1]))
    d.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"dd is a saved DatasetDict .*dd/train, .*dd/test"):
        read_examples(tmp_path / "dd")
    assert columnar.dataset_dict_splits(str(tmp_path / "dd")) == {"train": str(tmp_path / "dd" / "train"),
                                                                  "test": str(tmp_path / "dd" / "test")}
    assert len(read_examples(tmp_path / "dd" / "test")[0]) == 1


def test_a_dataset_dict_without_train_is_an_error(tmp_path):
    datasets.DatasetDict(test=class_label_dataset(ROWS)).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match="no 'train' split"):
        columnar.dataset_dict_splits(str(tmp_path / "dd"))


def test_a_datasets_directory_with_a_missing_data_file(tmp_path):
    class_label_dataset(ROWS).save_to_disk(str(tmp_path / "ds"))
    next((tmp_path / "ds").glob("data-*.arrow")).unlink()
    with pytest.raises(DataError, match=r"the data file data-00000-of-00001.arrow that state.json lists is missing"):
        read_examples(tmp_path / "ds")


def test_categorical_columns_of_a_dataframe_read_as_strings(tmp_path):
    frame = pd.DataFrame({"text": pd.Categorical(["a b", "c d", "a b"]), "label": pd.Categorical(["x", "y", "x"])})
    examples, report = read_examples(frame)
    assert [(e.text, e.label) for e in examples] == [("a b", "x"), ("c d", "y"), ("a b", "x")]
    frame.to_parquet(tmp_path / "cat.parquet")
    assert [e.text for e in read_examples(tmp_path / "cat.parquet")[0]] == ["a b", "c d", "a b"]


def test_a_dataframe_with_mixed_types_is_an_error():
    frame = pd.DataFrame({"text": ["a", 3, b"x"], "label": ["p", "q", "r"]})
    with pytest.raises(DataError, match="the DataFrame cannot be read as a table"):
        read_examples(frame)


# -- the other sequence tasks: list and number columns ----------------------------------------------


def test_multi_label_lists_and_regression_numbers(tmp_path):
    from bertfit.tasks.multilabel import MultiLabel
    from bertfit.tasks.regression import Regression
    from bertfit.tasks.sequence import reading_options
    from bertfit.train.config import TrainConfig

    path = write_parquet(tmp_path / "m.parquet", {"text": ["a b", "c d", "e f"],
                                                  "labels": [["joy", "anger"], ["joy"], []]})
    config = TrainConfig(train_file=str(path), label_column="labels")
    examples, report = MultiLabel.read(path, config, reading_options(config))
    assert [sorted(e.label) for e in examples] == [["anger", "joy"], ["joy"], []]
    assert report.rows_read == 3
    numbers = write_parquet(tmp_path / "r.parquet", {"sentence1": ["a", "b"], "sentence2": ["c", "d"],
                                                     "score": [0.5, 4.25]})
    config = TrainConfig(train_file=str(numbers), text_column="sentence1", pair_column="sentence2",
                         label_column="score", problem_type="regression")
    examples, _ = Regression.read(numbers, config, reading_options(config))
    assert [(e.text, e.text_pair, e.label) for e in examples] == [("a", "c", (0.5,)), ("b", "d", (4.25,))]


# -- NER --------------------------------------------------------------------------------------------


def ner_dataset(tokens, tags, names=("O", "B-PER", "I-PER", "B-LOC")):
    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                                  "ner_tags": datasets.List(datasets.ClassLabel(names=list(names)))})
    return datasets.Dataset.from_dict({"tokens": tokens, "ner_tags": tags}, features=features)


def test_ner_tokens_and_class_label_tags_from_a_datasets_directory(tmp_path):
    from bertfit.tasks.ner.data import read_ner_file

    ner_dataset([["Ada", "Lovelace", "visited", "Paris"], ["hello"]], [[1, 2, 0, 3], [0]]).save_to_disk(
        str(tmp_path / "ner"))
    sentences, report = read_ner_file(tmp_path / "ner")
    assert [s.tags for s in sentences] == [("B-PER", "I-PER", "O", "B-LOC"), ("O",)]
    assert report.format == "datasets" and report.rows_read == report.rows_used == 2
    # Plain integer tags without ClassLabel names cannot be read as tags: a row error that says so.
    write_parquet(tmp_path / "ids.parquet", {"tokens": [["a", "b"]], "ner_tags": [[0, 1]]})
    with pytest.raises(DataError, match=r"ids.parquet, row 0: ner_tags must be a list of tag strings"):
        read_ner_file(tmp_path / "ids.parquet")
    write_parquet(tmp_path / "bad.parquet", {"tokens": ["a b"], "ner_tags": [["O"]]})
    with pytest.raises(DataError, match=r"column 'tokens' holds string values, but the tokens must be a list of strings"):
        read_ner_file(tmp_path / "bad.parquet")


LABEL_STUDIO = [
    {"id": 11, "data": {"text": "Ada Lovelace was born in London."}, "annotations": [
        {"id": 1, "was_cancelled": False, "result": [
            {"id": "a", "from_name": "label", "to_name": "text", "type": "labels",
             "value": {"start": 0, "end": 12, "text": "Ada Lovelace", "labels": ["PER"]}},
            {"id": "b", "from_name": "label", "to_name": "text", "type": "labels",
             "value": {"start": 25, "end": 31, "text": "London", "labels": ["LOC"]}}]}],
     "predictions": []},
    {"id": 12, "data": {"text": "Grace Hopper met Alan Turing."}, "annotations": [
        {"was_cancelled": True, "result": []},
        {"was_cancelled": False, "result": [
            {"type": "labels", "value": {"start": 0, "end": 12, "text": "Grace Hopper", "labels": ["PER"]}},
            {"type": "labels", "value": {"start": 17, "end": 28, "text": "Alan Turing", "labels": ["PER"]}},
            {"type": "relation", "from_id": "x", "to_id": "y"}]}]},
]


def test_label_studio_export_becomes_word_tags(tmp_path):
    from bertfit.tasks.ner.data import read_ner_file

    path = tmp_path / "export.json"
    path.write_text(json.dumps(LABEL_STUDIO), encoding="utf-8")
    sentences, report = read_ner_file(path)
    assert report.format == "label-studio" and report.rows_read == 2
    assert sentences[0].words == ("Ada", "Lovelace", "was", "born", "in", "London", ".")
    assert sentences[0].tags == ("B-PER", "I-PER", "O", "O", "O", "B-LOC", "O")
    assert sentences[1].tags == ("B-PER", "I-PER", "O", "B-PER", "I-PER", "O")  # the cancelled annotation ignored


@pytest.mark.parametrize("value, reason", [
    ({"start": 0, "end": 40, "text": "Bob", "labels": ["PER"]}, r"entity \[0, 40, 'PER'\] is outside the text \(length 8\)"),
    ({"start": 0, "end": 3, "text": "Rob", "labels": ["PER"]}, r"span \[0, 3, 'PER'\] reads 'Bob' in the text, but Label "
                                                                r"Studio recorded 'Rob'"),
    ({"start": 4, "end": 3, "text": "", "labels": ["PER"]}, r"entity \[4, 3, 'PER'\] is outside the text"),
])
def test_label_studio_bad_spans_are_row_errors_naming_the_task_and_span(tmp_path, value, reason):
    from bertfit.tasks.ner.data import read_ner_file

    tasks = LABEL_STUDIO + [{"id": 99, "data": {"text": "Bob ran."}, "annotations": [
        {"result": [{"type": "labels", "value": value}]}]}]
    path = tmp_path / "export.json"
    path.write_text(json.dumps(tasks), encoding="utf-8")
    with pytest.raises(DataError, match=rf"export.json, task 3: {reason}.*\(task id 99\)"):
        read_ner_file(path)
    sentences, report = read_ner_file(path, {"skip_bad_rows": True})
    assert report.rows_read == 3 == report.rows_used + len(report.rejected) and report.rejected[0].row == 3


def test_label_studio_overlapping_spans_and_unannotated_tasks(tmp_path):
    from bertfit.tasks.ner.data import read_ner_file

    tasks = [{"id": 5, "data": {"text": "New York City"}, "annotations": [{"result": [
        {"type": "labels", "value": {"start": 0, "end": 8, "text": "New York", "labels": ["LOC"]}},
        {"type": "labels", "value": {"start": 4, "end": 13, "text": "York City", "labels": ["LOC"]}}]}]},
        {"id": 6, "data": {"text": "nothing here"}, "annotations": [], "predictions": [{"result": []}]},
        {"id": 7, "data": {"text": "Bob"}, "annotations": [{"result": [
            {"type": "labels", "value": {"start": 0, "end": 3, "text": "Bob", "labels": ["PER"]}}]}]}]
    path = tmp_path / "tasks.txt"  # any name: the content says what it is
    path.write_text(json.dumps(tasks), encoding="utf-8")
    sentences, report = read_ner_file(path, {"skip_bad_rows": True})
    assert report.format == "label-studio" and report.rows_read == 3 and report.rows_used == 1
    reasons = {r.row: r.reason for r in report.rejected}
    assert "entities [0, 8, 'LOC'] and [4, 13, 'LOC'] overlap" in reasons[1] and "(task id 5)" in reasons[1]
    assert "the task has no annotation" in reasons[2] and "(task id 6)" in reasons[2]
    assert "tasks: 3 tasks read, 1 used, 2 rejected (task 1:" in report.summary().replace(".txt", "")


def test_label_studio_min_export_and_a_broken_file(tmp_path):
    from bertfit.tasks.ner.data import read_ner_file

    path = tmp_path / "min.json"
    path.write_text(json.dumps([{"id": 1, "text": "Bob ran.", "label": [
        {"start": 0, "end": 3, "text": "Bob", "labels": ["PER"]}]}]), encoding="utf-8")
    assert read_ner_file(path)[0][0].tags == ("B-PER", "O", "O")
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(LABEL_STUDIO)[:-40], encoding="utf-8")
    with pytest.raises(DataError, match=r"broken.json: not valid JSON .*a Label Studio export is one JSON array"):
        read_ner_file(broken)


def test_doccano_jsonl_both_export_styles(tmp_path):
    from bertfit.tasks.ner.data import read_ner_file

    path = tmp_path / "doccano.jsonl"
    path.write_text("\n".join(json.dumps(o) for o in [
        {"id": 1, "text": "Ada met Bob.", "label": [[0, 3, "PER"], [8, 11, "PER"]]},
        {"id": 2, "text": "Paris is big.", "entities": [{"id": 7, "label": "LOC", "start_offset": 0, "end_offset": 5}],
         "relations": []},
        {"id": 3, "text": "Oops.", "label": [[0, 3, "PER"], [2, 5, "LOC"]]},
        {"id": 4, "text": "Short.", "label": [[3, 60, "PER"]]},
    ]) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"doccano.jsonl, line 3: entities \[0, 3, 'PER'\] and \[2, 5, 'LOC'\] overlap"):
        read_ner_file(path)
    sentences, report = read_ner_file(f"doccano:{path}", {"skip_bad_rows": True})
    assert [s.tags for s in sentences] == [("B-PER", "O", "B-PER", "O"), ("B-LOC", "O", "O", "O")]
    assert report.rows_read == 4 and [r.row for r in report.rejected] == [3, 4]
    assert "entity [3, 60, 'PER'] is outside the text (length 6)" in report.rejected[1].reason


# -- question answering and multiple choice ---------------------------------------------------------


def squad_dataset(rows):
    return datasets.Dataset.from_dict({
        "id": [r[0] for r in rows], "title": ["t"] * len(rows), "context": [r[1] for r in rows],
        "question": [r[2] for r in rows],
        "answers": [{"text": [r[3]], "answer_start": [r[4]]} for r in rows]})


def test_qa_answers_struct_from_datasets_and_parquet(tmp_path):
    from bertfit.tasks.qa.data import read_qa

    rows = [("q1", "Paris is the capital of France.", "What is the capital?", "Paris", 0),
            ("q2", "The sky is blue.", "What colour is the sky?", "blue", 11),
            ("q3", "Water is wet.", "Is water wet?", "dry", 9)]
    squad_dataset(rows).save_to_disk(str(tmp_path / "squad"))
    with pytest.raises(DataError, match=r"squad, row 2 \(id q3\): the answer 'dry' does not match the context at answer_start 9"):
        read_qa(tmp_path / "squad")
    examples, report = read_qa(tmp_path / "squad", skip_bad_rows=True)
    assert [(e.id, e.answers) for e in examples] == [("q1", (("Paris", 0),)), ("q2", (("blue", 11),))]
    assert report.rows_read == 3 and report.rejected[0].row == 2
    squad_dataset(rows[:2]).to_parquet(str(tmp_path / "squad.parquet"))
    assert [e.question for e in read_qa(tmp_path / "squad.parquet")[0]] == ["What is the capital?",
                                                                             "What colour is the sky?"]
    write_parquet(tmp_path / "bad.parquet", {"question": ["q"], "context": [3], "answers": [None]})
    with pytest.raises(DataError, match=r"column 'context' holds int64 values"):
        read_qa(tmp_path / "bad.parquet")


def test_multiple_choice_lists_and_the_commonsenseqa_struct(tmp_path):
    from bertfit.tasks.multiple_choice import read_choices

    write_parquet(tmp_path / "mc.parquet", {"question": ["Which is red?", "Which is blue?"],
                                            "choices": [["apple", "sky"], ["sea"]], "label": [0, 0]})
    with pytest.raises(DataError, match=r"mc.parquet, row 1: a question needs at least 2 choices"):
        read_choices(tmp_path / "mc.parquet", {})
    examples, report = read_choices(tmp_path / "mc.parquet", {"skip_bad_rows": True})
    assert [e.choices for e in examples] == [("apple", "sky")] and report.rows_read == 2
    csqa = datasets.Dataset.from_dict({
        "id": ["a", "b"], "question": ["Where is a lantern kept?", "What hurts?"],
        "question_concept": ["lantern", "pain"],
        "choices": [{"label": ["A", "B", "C"], "text": ["shop", "house", "sky"]},
                    {"label": ["A", "B"], "text": ["laughter", "headache"]}],
        "answerKey": ["B", "E"]})
    csqa.save_to_disk(str(tmp_path / "csqa"))
    with pytest.raises(DataError, match=r"csqa, row 1: the answerKey 'E' is not one of the choices' keys \(A, B\)"):
        read_choices(tmp_path / "csqa", {})
    examples, _ = read_choices(tmp_path / "csqa", {"skip_bad_rows": True})
    assert [(e.choices, e.label) for e in examples] == [(("shop", "house", "sky"), 1)]


# -- pretraining corpora, prediction tables, the Python API -----------------------------------------


def test_pretraining_corpus_from_parquet_and_datasets(tmp_path):
    from bertfit.tasks.pretrain.corpus import read_corpus

    write_parquet(tmp_path / "c.parquet", {"text": ["First one. Second one.", None, "Third here."]})
    datasets.Dataset.from_dict({"text": ["Another doc. With two."]}).save_to_disk(str(tmp_path / "c_ds"))
    documents, report = read_corpus([str(tmp_path / "c.parquet"), str(tmp_path / "c_ds")])
    assert [d.sentences for d in documents] == [["First one.", "Second one."], ["Third here."],
                                                ["Another doc.", "With two."]]
    assert report.lines == 4 and report.empty_lines == 1  # the null text counted, not lost


def test_prediction_tables_read_and_write_parquet(tmp_path):
    path = write_parquet(tmp_path / "in.parquet", {"id": [1, 2], "text": ["a", "b"], "tags": [["x"], []]})
    table = read_table(path)
    assert table.format == "parquet" and table.rows == [{"id": 1, "text": "a", "tags": ["x"]},
                                                        {"id": 2, "text": "b", "tags": []}]
    written = write_table(table, tmp_path / "out.parquet", ["label", "text"], [{"label": "p", "text": "t1"},
                                                                               {"label": "q", "text": "t2"}])
    assert written == ["label", "predicted_text"]
    out = pq.read_table(tmp_path / "out.parquet").to_pylist()
    assert out == [{"id": 1, "text": "a", "tags": ["x"], "label": "p", "predicted_text": "t1"},
                   {"id": 2, "text": "b", "tags": [], "label": "q", "predicted_text": "t2"}]
    write_table(table, tmp_path / "out.csv", ["label"], [{"label": "p"}, {"label": "q"}])
    assert (tmp_path / "out.csv").read_text(encoding="utf-8").splitlines()[1] == '1,a,"[""x""]",p'


def test_a_dataframe_or_dataset_in_train_config_is_saved_by_content(tmp_path):
    from bertfit.train.config import TrainConfig

    frame = pd.DataFrame(ROWS, columns=["text", "label"])
    config = TrainConfig(train_file=frame, test_file=class_label_dataset(ROWS))
    assert isinstance(config.train_file, str) and config.train_file.endswith(".arrow")
    assert TrainConfig(train_file=frame.copy()).train_file == config.train_file  # the same rows, the same file
    assert TrainConfig(train_file=frame.iloc[:2]).train_file != config.train_file
    assert [(e.text, e.label) for e in read_examples(config.test_file)[0]] == ROWS  # ClassLabel names kept
    json.dumps(config.to_dict())  # the run's settings stay JSON


def test_raw_labels_keep_numbers_from_a_table(tmp_path):
    path = write_parquet(tmp_path / "d.parquet", {"text": ["a", "b"], "label": [1, 2]})
    assert [e.label for e in read_examples(path, label_map=RAW_LABELS)[0]] == [1, 2]


def test_without_pyarrow_the_error_says_what_to_install(tmp_path, monkeypatch):
    import builtins

    path = write_parquet(tmp_path / "d.parquet", {"text": ["a"], "label": ["b"]})
    real_import = builtins.__import__

    def no_pyarrow(name, *args, **kwargs):
        if name == "pyarrow" or name.startswith("pyarrow."):
            raise ImportError(name)
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_pyarrow)
    with pytest.raises(DataError, match=r"needs pyarrow: pip install 'bertfit\[data\]'"):
        read_examples(path)
