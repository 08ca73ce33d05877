"""Reading every file format, the loaders, and the errors that name file, line, field and expectation."""

import csv
import gzip
import json
import logging
from pathlib import Path

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rlhfkit.data import (
    DataError,
    Preference,
    load_demonstrations,
    load_preferences,
    load_prompts,
    load_rankings,
    read_rows,
)

FORMATS = ["jsonl", "jsonl.gz", "json", "json.gz", "csv", "parquet", "hf", "hf-dict"]


def user(content: str) -> dict:
    return {"role": "user", "content": content}


def assistant(content: str) -> dict:
    return {"role": "assistant", "content": content}


# ---------------------------------------------------------------- writing fixtures


def with_all_fields(records: list[dict]) -> list[dict]:
    """The records with every field of any record, null where absent (as tables store them)."""
    fields = list(dict.fromkeys(field for record in records for field in record))
    return [{field: record.get(field) for field in fields} for record in records]


def json_array_text(records: list[dict]) -> str:
    """A pretty-printed JSON array: record i starts on line 2 + i * (lines per record)."""
    return json.dumps(records, indent=2) + "\n"


def write_csv(path: Path, records: list[dict]) -> None:
    """Records as CSV: lists as JSON text in the cell, absent fields as empty cells."""
    rows = with_all_fields(records)
    with path.open("w", newline="", encoding="utf-8") as file:
        writer = csv.writer(file)
        writer.writerow(list(rows[0]))
        for row in rows:
            writer.writerow(
                ["" if v is None else json.dumps(v) if isinstance(v, list) else v for v in row.values()]
            )


def write_records(tmp_path: Path, file_format: str, records: list[dict], name: str = "data") -> str:
    """``records`` written in ``file_format`` under ``tmp_path``; returns the path to load."""
    path = tmp_path / f"{name}.{file_format}"
    if file_format == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    elif file_format == "jsonl.gz":
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in records).encode()))
    elif file_format == "json":
        path.write_text(json_array_text(records), encoding="utf-8")
    elif file_format == "json.gz":
        path.write_bytes(gzip.compress(json_array_text(records).encode()))
    elif file_format == "csv":
        write_csv(path, records)
    elif file_format == "parquet":
        pq.write_table(pa.Table.from_pylist(with_all_fields(records)), path)
    elif file_format == "hf":
        path = tmp_path / name
        datasets.Dataset.from_list(with_all_fields(records)).save_to_disk(str(path))
    elif file_format == "hf-dict":
        path = tmp_path / name
        table = datasets.Dataset.from_list(with_all_fields(records))
        other = datasets.Dataset.from_list(with_all_fields(records[:1]))
        datasets.DatasetDict({"train": other, "test": table}).save_to_disk(str(path))
        return f"{path}:test"
    return str(path)


def first_location(path: str, file_format: str) -> str:
    """Where the first record of a file written by write_records is said to be."""
    return {
        "jsonl": f"{path}:1",
        "jsonl.gz": f"{path}:1",
        "json": f"{path}: record 0 (line 2)",
        "json.gz": f"{path}: record 0 (line 2)",
        "csv": f"{path}:2",
        "parquet": f"{path}: row 0",
        "hf": f"{path}: row 0",
        "hf-dict": f"{path}: row 0",
    }[file_format]


# ---------------------------------------------------------------- every loader on every format

PROMPTS = [
    {"prompt": [user("Hi")], "id": 1},
    {"prompt": [{"role": "system", "content": "Be kind."}, user("Bye")], "id": 2},
]

CHAT_DEMONSTRATIONS = [
    {"messages": [user("2+2?"), assistant("4")]},
    {"messages": [user("a"), assistant("b"), user("c"), assistant("d")]},
]

PREFERENCES_AND_RANKINGS = [
    {"prompt": "Q1", "chosen": "good", "rejected": "bad", "margin": 1.5, "source": "web"},
    {"prompt": "Q2", "responses": ["x", "y", "z"], "ranks": [3, 1, 2]},
]

RANKINGS = [
    {"prompt": "Q", "responses": ["a", "b"], "ranks": [1, 2], "source": "team"},
    {"prompt": "R", "responses": ["c", "d", "e"], "ranks": [2, 2, 1]},
]


@pytest.mark.parametrize("file_format", FORMATS)
def test_load_prompts(tmp_path, file_format):
    path = write_records(tmp_path, file_format, PROMPTS)
    prompts = load_prompts(path)
    assert [p.prompt for p in prompts] == [r["prompt"] for r in PROMPTS]
    assert prompts[0].location == first_location(path, file_format)


@pytest.mark.parametrize("file_format", FORMATS)
def test_load_chat_demonstrations(tmp_path, file_format):
    path = write_records(tmp_path, file_format, CHAT_DEMONSTRATIONS)
    demonstrations = load_demonstrations(path)
    assert [d.messages for d in demonstrations] == [r["messages"] for r in CHAT_DEMONSTRATIONS]
    assert demonstrations[1].trainable == [False, True, False, True]
    assert demonstrations[0].location == first_location(path, file_format)


@pytest.mark.parametrize("file_format", FORMATS)
def test_load_text_demonstrations(tmp_path, file_format):
    records = [{"prompt": "2+2=", "completion": "4"}, {"prompt": "Hello", "completion": " world"}]
    demonstrations = load_demonstrations(write_records(tmp_path, file_format, records))
    assert [(d.prompt, d.completion, d.is_chat) for d in demonstrations] == [
        ("2+2=", "4", False),
        ("Hello", " world", False),
    ]


@pytest.mark.parametrize("file_format", FORMATS)
def test_load_preferences_mixes_pairs_and_rankings(tmp_path, file_format):
    path = write_records(tmp_path, file_format, PREFERENCES_AND_RANKINGS)
    preferences = load_preferences(path)
    assert [(p.prompt, p.chosen, p.rejected) for p in preferences] == [
        ("Q1", "good", "bad"),
        ("Q2", "y", "x"),
        ("Q2", "z", "x"),
        ("Q2", "y", "z"),
    ]
    assert (preferences[0].margin, preferences[0].source) == (1.5, "web")
    assert preferences[1].margin is None
    assert preferences[0].location == first_location(path, file_format)


@pytest.mark.parametrize("file_format", FORMATS)
def test_load_rankings(tmp_path, file_format):
    path = write_records(tmp_path, file_format, RANKINGS)
    rankings = load_rankings(path)
    assert [(r.prompt, r.responses, r.ranks, r.source) for r in rankings] == [
        ("Q", ["a", "b"], [1, 2], "team"),
        ("R", ["c", "d", "e"], [2, 2, 1], None),
    ]


@pytest.mark.parametrize("file_format", ["jsonl", "csv", "parquet", "hf"])
def test_load_message_preferences(tmp_path, file_format):
    records = [
        {"chosen": [user("q"), assistant("good")], "rejected": [user("q"), assistant("bad")]},
        {"chosen": [user("r"), assistant("yes")], "rejected": [user("r"), assistant("no")]},
    ]
    preferences = load_preferences(write_records(tmp_path, file_format, records))
    assert preferences[0].prompt == [user("q")]
    assert (preferences[1].chosen, preferences[1].rejected) == ([assistant("yes")], [assistant("no")])


# ---------------------------------------------------------------- locations in errors


def test_invalid_json_line(tmp_path):
    path = tmp_path / "prefs.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b",}\n')
    with pytest.raises(DataError) as caught:
        load_prompts(path)
    assert str(caught.value).startswith(f"{path}:3: invalid JSON (Expecting property name")


def test_row_that_is_not_an_object(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "a"}\n["a", "b"]\n')
    with pytest.raises(
        DataError, match=r"prompts.jsonl:2: expected a JSON object, got list \(\['a', 'b'\]\)"
    ):
        load_prompts(path)
    with pytest.raises(DataError, match=r"prompts.jsonl:2: expected a JSON object"):
        list(read_rows(path))


def test_wrong_field_in_jsonl(tmp_path):
    path = tmp_path / "prefs.jsonl"
    lines = [{"prompt": "q", "chosen": "a", "rejected": "b"}] * 6 + [
        {"prompt": "q", "chosen": 42, "rejected": "b"}
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    with pytest.raises(DataError) as caught:
        load_preferences(path)
    assert str(caught.value) == (
        f"{path}:7: field 'chosen': expected a string or a list of "
        '{"role", "content"} messages, got int (42)'
    )


def test_json_array_errors_name_record_and_line(tmp_path):
    records = [{"prompt": "q", "chosen": "a", "rejected": "b"}] * 2 + [{"prompt": "q", "chosen": "a"}]
    path = tmp_path / "prefs.json"
    path.write_text(json_array_text(records))
    # indent=2 writes 5 lines per record after the opening "[" line: record 2 starts on line 12.
    with pytest.raises(DataError, match=r"prefs.json: record 2 \(line 12\): field 'rejected': missing"):
        load_preferences(path)


def test_json_array_with_compact_and_odd_layout(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text('[{"prompt": "a"},\n\n  {"prompt": "b"}, {"prompt": 3}]')
    with pytest.raises(DataError, match=r"prompts.json: record 2 \(line 3\): field 'prompt': expected"):
        load_prompts(path)
    path.write_text('[\n  {"prompt": "a"},\n  "oops"\n]')
    with pytest.raises(
        DataError, match=r"prompts.json: record 1 \(line 3\): expected a JSON object, got str"
    ):
        load_prompts(path)


def test_json_array_syntax_error(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text('[\n  {"prompt": "a"},\n  {"prompt": "b" "c"}\n]')
    with pytest.raises(DataError, match=r"prompts.json:3: invalid JSON"):
        load_prompts(path)
    path.write_text('[\n  {"prompt": "a"}\n  {"prompt": "b"}\n]')
    with pytest.raises(DataError, match=r"prompts.json:3: invalid JSON \(expected ',' or ']'"):
        load_prompts(path)
    path.write_text('[{"prompt": "a"}] x')
    with pytest.raises(DataError, match=r"prompts.json:1: invalid JSON \(extra text after"):
        load_prompts(path)


def test_json_file_holding_json_lines_or_one_object(tmp_path):
    path = tmp_path / "prompts.json"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n')
    assert [p.prompt for p in load_prompts(path)] == ["a", "b"]
    path.write_text('\n{\n  "prompt": "only"\n}\n')
    prompts = load_prompts(path)
    assert [(p.prompt, p.location) for p in prompts] == [("only", f"{path}:2")]
    path.write_text("42")
    with pytest.raises(DataError, match="expected a top-level array of objects or JSON lines, got int"):
        load_prompts(path)


def test_csv_json_cells_and_line_numbers(tmp_path):
    path = tmp_path / "ranks.csv"
    path.write_text(
        "prompt,responses,ranks,source\n"
        '"multi\nline prompt","[""a"", ""b""]","[1, 2]",\n'
        'Q2,"[""c"", ""d""]","[1, 2",team\n'
    )
    with pytest.raises(DataError) as caught:
        load_rankings(path)
    assert str(caught.value).startswith(f"{path}:4: field 'ranks': invalid JSON in the cell (")
    rankings = load_rankings(path, skip_invalid=True)
    assert [(r.prompt, r.responses, r.ranks, r.source) for r in rankings] == [
        ("multi\nline prompt", ["a", "b"], [1, 2], None)
    ]
    assert rankings[0].location == f"{path}:2"


def test_csv_margin_cells(tmp_path):
    path = tmp_path / "prefs.csv"
    path.write_text("prompt,chosen,rejected,margin\nq,a,b,0.5\nq,a,b,\nq,a,b,high\n")
    preferences = load_preferences(path, skip_invalid=True)
    assert [p.margin for p in preferences] == [0.5, None]
    with pytest.raises(
        DataError, match=r"prefs.csv:4: field 'margin': expected a number, got str \('high'\)"
    ):
        load_preferences(path)


def test_csv_row_with_wrong_cell_count(tmp_path):
    path = tmp_path / "prompts.csv"
    path.write_text("prompt,id\nhello,1\nhi,2,extra\n")
    with pytest.raises(DataError, match=r"prompts.csv:3: expected 2 cells as in the header, got 3"):
        load_prompts(path)


def test_csv_messages_cell_with_bad_role(tmp_path):
    path = tmp_path / "sft.csv"
    write_csv(path, [{"messages": [user("q"), {"role": "bot", "content": "a"}]}])
    with pytest.raises(DataError, match=r"sft.csv:2: field 'messages\[1\]\.role': expected one of"):
        load_demonstrations(path)


def test_parquet_row_location(tmp_path):
    records = [
        {"prompt": "q", "responses": ["a", "b"], "ranks": [1, 2]},
        {"prompt": "q", "responses": ["a", "b"], "ranks": [0, 2]},
    ]
    path = write_records(tmp_path, "parquet", records)
    with pytest.raises(DataError) as caught:
        load_rankings(path)
    assert str(caught.value) == (
        f"{path}: row 1: field 'ranks[0]': expected a positive integer (1 = best), got int (0)"
    )


def test_hf_dataset_row_location_and_splits(tmp_path):
    records = [{"prompt": "q", "completion": "a"}, {"prompt": "q", "completion": None}]
    path = write_records(tmp_path, "hf-dict", records)
    with pytest.raises(DataError, match=rf"{path}: row 1: field 'completion': missing"):
        load_demonstrations(path)
    folder = path.rsplit(":", 1)[0]
    assert len(load_demonstrations(folder)) == 1  # the "train" split by default
    with pytest.raises(DataError, match=r"no split 'dev' in the dataset \(it has: train, test\)"):
        load_demonstrations(f"{folder}:dev")
    single = write_records(tmp_path, "hf", records[:1], name="single")
    with pytest.raises(DataError, match="holds a single Dataset, not a DatasetDict"):
        load_demonstrations(f"{single}:test")


def test_folder_that_is_not_a_dataset(tmp_path):
    with pytest.raises(DataError, match=rf"{tmp_path}: cannot load the folder as a Hugging Face dataset"):
        load_prompts(tmp_path)


# ---------------------------------------------------------------- file-level errors


def test_missing_file(tmp_path):
    path = tmp_path / "nope.jsonl"
    with pytest.raises(DataError, match=rf"{path}: no such file or directory"):
        load_prompts(path)


def test_unknown_extension(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text('{"prompt": "a"}\n')
    with pytest.raises(DataError) as caught:
        load_prompts(path)
    assert str(caught.value).startswith(f"{path}: unknown file format '.txt' (expected .jsonl, .jsonl.gz")


@pytest.mark.parametrize(
    ("name", "text"), [("a.jsonl", ""), ("b.jsonl", "\n  \n"), ("c.json", "[]"), ("d.csv", "prompt\n")]
)
def test_empty_file(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(DataError, match=rf"{path}: the file has no records"):
        load_prompts(path)
    with pytest.raises(DataError, match=rf"{path}: the file has no records"):
        list(read_rows(path))


def test_empty_parquet(tmp_path):
    path = tmp_path / "empty.parquet"
    pq.write_table(pa.table({"prompt": pa.array([], pa.string())}), path)
    with pytest.raises(DataError, match="the file has no records"):
        load_prompts(path)


def test_read_rows_yields_locations_and_raw_records(tmp_path):
    path = write_records(tmp_path, "jsonl", PROMPTS)
    assert list(read_rows(path)) == [(f"{path}:1", PROMPTS[0]), (f"{path}:2", PROMPTS[1])]


# ---------------------------------------------------------------- skipping invalid records


def test_skip_invalid_logs_count_and_locations(tmp_path, caplog):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": 1}\nnot json\n{"prompt": "b"}\n')
    with caplog.at_level(logging.WARNING, logger="rlhfkit.data"):
        prompts = load_prompts(path, skip_invalid=True)
    assert [p.prompt for p in prompts] == ["a", "b"]
    assert len(caplog.records) == 1
    warning = caplog.records[0].getMessage()
    assert warning.startswith(f"{path}: skipped 2 of 4 records that are invalid:")
    assert f"{path}:2: field 'prompt': expected" in warning
    assert f"{path}:3: invalid JSON" in warning


def test_skip_invalid_lists_ten_then_counts_the_rest(tmp_path, caplog):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "ok"}\n' + '{"prompt": 7}\n' * 13)
    with caplog.at_level(logging.WARNING, logger="rlhfkit.data"):
        assert len(load_prompts(path, skip_invalid=True)) == 1
    warning = caplog.records[0].getMessage()
    assert "skipped 13 of 14 records" in warning
    assert f"{path}:11:" in warning and f"{path}:12:" not in warning
    assert warning.endswith("and 3 more")


def test_all_invalid_raises_even_when_skipping(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": 1}\n{"text": "a"}\n')
    with pytest.raises(
        DataError, match=rf"{path}: all 2 records are invalid; the first: {path}:1: field 'prompt'"
    ):
        load_prompts(path, skip_invalid=True)


def test_no_warning_when_nothing_is_skipped(tmp_path, caplog):
    path = write_records(tmp_path, "jsonl", PROMPTS)
    with caplog.at_level(logging.WARNING, logger="rlhfkit.data"):
        assert len(load_prompts(path, skip_invalid=True)) == 2
    assert caplog.records == []


# ---------------------------------------------------------------- preferences specifics


def test_ties_in_loaded_rankings(tmp_path, caplog):
    records = [
        {"prompt": "q", "responses": ["a", "b", "c"], "ranks": [1, 1, 2]},
        {"prompt": "r", "responses": ["a", "b"], "ranks": [1, 1]},
    ]
    path = write_records(tmp_path, "jsonl", records)
    with caplog.at_level(logging.WARNING, logger="rlhfkit.data"):
        preferences = load_preferences(path)
    assert [(p.prompt, p.chosen, p.rejected) for p in preferences] == [("q", "a", "c"), ("q", "b", "c")]
    assert f"1 rankings gave no pairs (all their responses are tied), e.g. {path}:2" in caplog.text
    with pytest.raises(DataError, match=rf"{path}:1: field 'ranks': responses 0 and 1 are tied"):
        load_preferences(path, skip_ties=False)


def test_hh_records_are_detected(tmp_path):
    record = {
        "chosen": "\n\nHuman: Hi there\n\nAssistant: Hello! How can I help?",
        "rejected": "\n\nHuman: Hi there\n\nAssistant: Go away.",
    }
    path = write_records(tmp_path, "jsonl.gz", [record])
    assert load_preferences(path) == [
        Preference(
            prompt=[user("Hi there")],
            chosen=[assistant("Hello! How can I help?")],
            rejected=[assistant("Go away.")],
            location=f"{path}:1",
        )
    ]


def test_line_separator_characters_inside_json_strings(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "a\u2028b\u0085c"}\n{"prompt": 2}\n', encoding="utf-8")
    assert [p.prompt for p in load_prompts(path, skip_invalid=True)] == ["a\u2028b\u0085c"]
    with pytest.raises(DataError, match=rf"{path}:2: field 'prompt'"):
        load_prompts(path)
