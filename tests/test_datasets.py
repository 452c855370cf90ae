"""Problem loading: formats, gold extraction, malformed rows, the registry, and the real files."""

import codecs
import collections
import json

import pytest

from rl_sharpen.config import ConfigError, SourceError
from rl_sharpen.tasks import SOURCES, Problem, load_problems
from rl_sharpen.tasks.datasets import FORMAT_FIELDS, FORMATS, infer_format


def write_jsonl(path, rows):
    with open(path, "w", encoding="utf-8") as f:
        for row in rows:
            f.write(row if isinstance(row, str) else json.dumps(row))
            f.write("\n")
    return str(path)


def test_gsm8k_gold_after_last_hashes_without_thousands_commas(tmp_path):
    path = write_jsonl(tmp_path / "gsm.jsonl", [
        {"question": "Q1", "answer": "3 * 360 = <<3*360=1080>>1080\n#### 1,080"},
        {"question": "Q2", "answer": "#### 5\nmore work\n#### -7"},
        {"question": "Q3", "answer": "no final line"},
    ])
    problems, stats = load_problems(path, format="gsm8k")
    assert [(p.problem, p.answer) for p in problems] == [("Q1", "1080"), ("Q2", "-7")]
    assert (stats.num_rows, stats.num_loaded, stats.num_skipped) == (3, 2, 1)
    assert problems[0].id == f"{tmp_path.name}/gsm/0" and problems[0].source == f"{tmp_path.name}/gsm"


def test_math_gold_prefers_answer_then_last_nested_boxed(tmp_path):
    path = write_jsonl(tmp_path / "math.jsonl", [
        {"problem": "P1", "solution": r"so \boxed{1} then \boxed{\frac{\sqrt{3}}{2}}.", "level": "Level 4",
         "type": "Geometry"},
        {"problem": "P2", "solution": r"\boxed{9}", "answer": r"\left( 3, \frac{\pi}{2} \right)", "level": 2,
         "subject": "Precalculus", "unique_id": "test/precalculus/807.json"},
        {"problem": "P3", "solution": "no box", "level": "Level ?"},
        {"problem": "P4", "solution": r"\boxed{007}", "level": "Level ?"},
    ])
    problems, stats = load_problems(path)  # format inferred from the "solution" field
    assert [p.answer for p in problems] == [r"\frac{\sqrt{3}}{2}", r"\left( 3, \frac{\pi}{2} \right)", "7"]
    assert [(p.level, p.subject) for p in problems] == [(4, "Geometry"), (2, "Precalculus"), (None, None)]
    assert problems[1].id.endswith("/test/precalculus/807.json")
    assert stats.skipped == {"no \\boxed{} in solution": 1}


def test_aime_answers_are_integers_without_leading_zeros(tmp_path):
    path = write_jsonl(tmp_path / "aime.jsonl", [
        {"id": 60, "problem": "A", "answer": "025"}, {"id": 61, "question": "B", "answer": "204"},
        {"id": 62, "problem": "C", "answer": "1/2"}, {"id": 63, "problem": "D", "answer": 80},
    ])
    problems, stats = load_problems(path, format="aime")
    assert [(p.problem, p.answer) for p in problems] == [("A", "25"), ("B", "204"), ("D", "80")]
    assert stats.skipped == {"non-integer AIME answer": 1}


def test_malformed_rows_are_skipped_and_counted_never_raised(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [
        {"problem": "ok", "answer": "1"},
        "{not json",
        "[1, 2, 3]",
        {"problem": "", "answer": "2"},
        {"question": "no answer field"},
        {"problem": "null answer", "answer": None},
        {"problem": "ok too", "answer": "3"},
    ])
    problems, stats = load_problems(path, format="qa")
    assert [p.answer for p in problems] == ["1", "3"]
    assert stats.num_rows == 7 and stats.num_skipped == 5
    assert stats.skipped == {"invalid JSON": 1, "not a JSON object": 1, "missing problem/question": 1,
                             "missing answer": 2}


def test_byte_order_marks_and_bad_bytes_lose_one_row_at_most(tmp_path):
    rows = [{"problem": "p0", "answer": "0"}, {"problem": "p1", "answer": "1"}]
    lines = b"\n".join(json.dumps(r).encode() for r in rows)
    (tmp_path / "bom.jsonl").write_bytes(codecs.BOM_UTF8 + lines + b'\n{"problem": "caf\xe9", "answer": "2"}\n')
    problems, stats = load_problems(str(tmp_path / "bom.jsonl"), format="qa")
    assert [p.answer for p in problems] == ["0", "1"] and stats.skipped == {"invalid UTF-8": 1}
    (tmp_path / "cr.jsonl").write_bytes(lines.replace(b"\n", b"\r"))  # old-Mac line ends
    assert [p.answer for p in load_problems(str(tmp_path / "cr.jsonl"), format="qa")[0]] == ["0", "1"]
    (tmp_path / "bom.json").write_bytes(codecs.BOM_UTF8 + json.dumps(rows).encode())
    problems, stats = load_problems(str(tmp_path / "bom.json"), format="qa")
    assert [p.answer for p in problems] == ["0", "1"] and stats.num_skipped == 0
    # A JSON array with one bad byte loses only the row that holds it.
    array = [{"problem": f"p{i}", "answer": str(i)} for i in range(5)]
    data = json.dumps(array, indent=1).encode().replace(b'"p3"', b'"p3\xff"')
    (tmp_path / "bad_byte.json").write_bytes(data)
    problems, stats = load_problems(str(tmp_path / "bad_byte.json"))
    assert [p.answer for p in problems] == ["0", "1", "2", "4"] and stats.skipped == {"invalid UTF-8": 1}


def test_repeated_ids_keep_the_first_row(tmp_path):
    rows = [{"unique_id": "u0", "problem": "first", "answer": "1"}, {"unique_id": "u1", "problem": "p", "answer": "2"},
            {"unique_id": "u0", "problem": "second", "answer": "3"}]
    problems, stats = load_problems(write_jsonl(tmp_path / "ids.jsonl", rows), format="qa")
    assert [p.problem for p in problems] == ["first", "p"] and stats.skipped == {"repeated id": 1}


def test_an_unreachable_hub_names_the_source_and_the_local_way(monkeypatch):
    import datasets

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'openai/gsm8k' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(ValueError, match=r"problem source 'gsm8k' \(split 'test'\) could not be loaded .*"
                                         r"ConnectionError.*set data.train / data.validation to a local "
                                         r".*jsonl.* file"):
        load_problems("gsm8k", "test")
    with pytest.raises(ValueError, match=r"set data.validation to a local"):
        load_problems("gsm8k", "test", field="data.validation")


def test_limit_counts_valid_problems(tmp_path):
    rows = [{"problem": f"p{i}", "answer": str(i)} if i % 2 else "garbage" for i in range(20)]
    problems, stats = load_problems(write_jsonl(tmp_path / "x.jsonl", rows), limit=3, format="qa")
    assert [p.answer for p in problems] == ["1", "3", "5"]
    assert stats.num_rows == 6


def test_parquet_through_datasets(tmp_path):
    import datasets

    path = str(tmp_path / "deepscaler.parquet")
    datasets.Dataset.from_list([
        {"problem": "P", "answer": "", "solution": r"\boxed{2}"},
        {"problem": "Q", "answer": r"\frac{1}{2}", "solution": ""},
    ]).to_parquet(path)
    problems, stats = load_problems(path, format="math")
    assert [p.answer for p in problems] == ["2", r"\frac{1}{2}"]
    assert stats.num_skipped == 0


def test_format_inference():
    gsm = {"question": "q", "answer": "x\n#### 3"}
    cut = {"question": "q", "answer": "a solution cut off before its final line"}
    assert infer_format([gsm]) == infer_format([cut, gsm, gsm]) == infer_format([None, cut, gsm, gsm]) == "gsm8k"
    assert infer_format([{"problem": "p", "solution": "s"}]) == "math"
    assert infer_format([{"question": "q", "answer": r"\frac{1}{2}"}]) == infer_format([cut, cut, gsm]) == "qa"
    assert infer_format([]) == "qa"
    assert infer_format([cut, gsm]) == "qa"  # one of two marked is not "most"


def test_math_rows_without_a_usable_boxed_answer_are_skipped_and_qa_integers_are_canonical(tmp_path):
    path = write_jsonl(tmp_path / "math.jsonl", [
        {"problem": "p0", "solution": r"so \boxed{4}", "level": "Level 1"},
        {"problem": "p1", "solution": r"empty \boxed{}", "level": "Level 1"},
        {"problem": "p2", "solution": r"blank \boxed{ }", "level": "Level 1"},
    ])
    problems, stats = load_problems(path)
    assert [p.answer for p in problems] == ["4"] and stats.skipped == {"no \\boxed{} in solution": 2}
    qa, _ = load_problems(write_jsonl(tmp_path / "qa.jsonl", [{"problem": "p", "answer": "007"}]), format="qa")
    assert qa[0].answer == "7"


def test_format_is_inferred_once_and_rows_that_do_not_fit_are_skipped(tmp_path):
    # The first row lacks its "####" line: it is skipped, not read as `qa` with the solution as gold.
    path = write_jsonl(tmp_path / "gsm.jsonl", [
        {"question": "Q0", "answer": "a solution cut off before its final line"},
        {"question": "Q1", "answer": "3 + 4 = 7\n#### 7"},
        {"question": "Q2", "answer": "x\n#### 1,080"},
    ])
    problems, stats = load_problems(path)
    assert [(p.problem, p.answer) for p in problems] == [("Q1", "7"), ("Q2", "1080")]
    assert stats.skipped == {"no '####' in answer": 1}


def test_numeric_answers_are_accepted_and_other_types_named(tmp_path):
    path = write_jsonl(tmp_path / "num.jsonl", [
        {"problem": "int", "answer": 12}, {"problem": "integral float", "answer": 3.0},
        {"problem": "float", "answer": 0.5}, {"problem": "tiny", "answer": 1e-7},
        {"problem": "negative", "answer": -2.25},
        {"problem": "bool", "answer": True}, {"problem": "list", "answer": [1, 2]}, '{"problem": "nan", "answer": NaN}',
    ])
    problems, stats = load_problems(path, format="qa")
    assert [p.answer for p in problems] == ["12", "3", "0.5", "0.0000001", "-2.25"]
    assert stats.skipped == {"answer of type bool": 1, "answer of type list": 1, "answer is nan": 1}
    aime, _ = load_problems(path, format="aime", limit=2)
    assert [p.answer for p in aime] == ["12", "3"]


def test_text_a_tokenizer_cannot_take_and_numbers_as_problems_are_skipped_and_counted(tmp_path):
    path = tmp_path / "odd.jsonl"
    path.write_text("\n".join([
        '{"problem": "emoji cut in half \\ud83d", "answer": "1"}',  # valid JSON, but no UTF-8 encodes it
        '{"problem": 12345, "answer": "2"}', '{"question": 7.5, "answer": "3"}',
        '{"problem": "kept", "answer": "4", "level": 3.0, "subject": "Algebra "}',
    ]))
    problems, stats = load_problems(str(path), format="math")
    assert [(p.problem, p.level, p.subject) for p in problems] == [("kept", 3, "Algebra")]
    assert stats.skipped == {"invalid UTF-8": 1, "problem of type int": 1, "missing problem": 1}
    qa, stats = load_problems(str(path), format="qa")
    assert [p.problem for p in qa] == ["kept"]
    assert stats.skipped == {"invalid UTF-8": 1, "problem of type int": 1, "question of type float": 1}


def test_numeric_answers_from_parquet(tmp_path):
    import datasets

    path = str(tmp_path / "num.parquet")
    datasets.Dataset.from_list([{"problem": "P", "answer": 2.0}, {"problem": "Q", "answer": 0.125}]).to_parquet(path)
    problems, stats = load_problems(path, format="qa")
    assert [p.answer for p in problems] == ["2", "0.125"] and stats.num_skipped == 0


def test_json_array_and_json_lines_under_a_json_name(tmp_path):
    rows = [{"problem": "p", "answer": "5"}, {"problem": "q", "answer": "6"}]
    (tmp_path / "array.json").write_text(json.dumps(rows, indent=1))
    problems, stats = load_problems(str(tmp_path / "array.json"))
    assert [p.answer for p in problems] == ["5", "6"] and stats.num_rows == 2
    problems, _ = load_problems(write_jsonl(tmp_path / "lines.json", rows))
    assert [p.answer for p in problems] == ["5", "6"]


def test_unreadable_paths_and_empty_loads_raise(tmp_path):
    (tmp_path / "x.csv").write_text("question,answer\nq,5\n")
    with pytest.raises(SourceError, match=r"data.validation='.*x\.csv': unsupported file type; allowed extensions: "
                                          r"\.jsonl, \.json, \.parq"):
        load_problems(str(tmp_path / "x.csv"), field="data.validation")
    write_jsonl(tmp_path / "train.jsonl", [{"problem": "p", "answer": "1"}])
    with pytest.raises(SourceError, match=r"data.train / data.validation='.*' is a directory; allowed: one file of "
                                          r"problems, e.g. one of \['train.jsonl'\]"):
        load_problems(str(tmp_path))
    path = write_jsonl(tmp_path / "none.jsonl", [{"problem": "p"}, "garbage"])
    with pytest.raises(ConfigError, match=r"^data.train='.*none.jsonl': none of its 2 rows loads as format 'qa'; "
                                          r"skipped: .*missing answer"):
        load_problems(path, field="data.train")
    with pytest.raises(ValueError, match="none of its 0 rows"):
        load_problems(write_jsonl(tmp_path / "empty.jsonl", []))
    assert load_problems(path, limit=0)[0] == []
    other_names = write_jsonl(tmp_path / "renamed.jsonl", [{"question": "1 + 1?", "final": "2"}])
    with pytest.raises(ValueError, match=r"Its rows have the fields \['final', 'question'\]; 'qa' reads problem or "
                                         r"question, and answer\. Rename .*register a reader in tasks.datasets.FORMATS$"):
        load_problems(other_names)
    (tmp_path / "wrapped.json").write_text(json.dumps({"version": "1.1", "data": [{"problem": "p", "answer": "1"}]}))
    with pytest.raises(ValueError, match=r"A file holds a list of row objects .*; this one holds one object with "
                                         r"the rows under 'data'$"):
        load_problems(str(tmp_path / "wrapped.json"))
    (tmp_path / "one.json").write_text(json.dumps({"question": "What is 1 + 1?"}))  # one row, no answer
    with pytest.raises(ValueError, match=r"fields \['question'\]; 'qa' reads problem or question, and answer\. "
                                         r"Rename .*FORMATS$"):
        load_problems(str(tmp_path / "one.json"))
    empty_gold = write_jsonl(tmp_path / "gsm.jsonl", [{"question": "q", "answer": "x\n#### "}])
    with pytest.raises(ValueError, match=r"skipped: \{'empty gold answer': 1\}$"):  # its fields are right
        load_problems(empty_gold, format="gsm8k")
    assert set(FORMAT_FIELDS) == set(FORMATS)  # every format says what it reads


def test_registry_and_argument_errors(tmp_path):
    assert set(SOURCES) == {"gsm8k", "math", "math500", "minerva", "aime24", "aime25", "deepscaler"}
    assert SOURCES["gsm8k"].hub_name == "openai/gsm8k" and SOURCES["gsm8k"].config == "main"
    assert SOURCES["math"].hub_name == "DigitalLearningGmbH/MATH-lighteval"
    with pytest.raises(ValueError, match="aime24.*deepscaler.*gsm8k"):
        load_problems("gsm9k")
    with pytest.raises(ValueError, match=r"split of 'math500' must be one of \['test'\]"):
        load_problems("math500", split="train")
    with pytest.raises(ValueError, match="format must be one of"):
        load_problems(write_jsonl(tmp_path / "a.jsonl", []), format="csv")


@pytest.mark.parametrize("name, split, hub_call, source, answer", [
    ("gsm8k", None, ("openai/gsm8k", "main", "test"), "gsm8k/test", "12"),
    ("aime24", "test", ("HuggingFaceH4/aime_2024", None, "train"), "aime24/test", "25"),
    ("math", "train", ("DigitalLearningGmbH/MATH-lighteval", "default", "train"), "math/train", "25"),
    ("deepscaler", None, ("agentica-org/DeepScaleR-Preview-Dataset", None, "train"), "deepscaler/train", "25"),
])
def test_hub_sources_call_datasets_with_their_name_config_and_split(monkeypatch, tmp_path, name, split, hub_call,
                                                                     source, answer):
    import datasets

    calls = []
    rows = {"gsm8k": [{"question": "q", "answer": "#### 12"}]}.get(
        name, [{"problem": "p", "answer": "025", "solution": r"\boxed{025}", "level": "Level 1"}])

    def fake_load_dataset(path, config=None, split=None):
        calls.append((path, config, split))
        return rows

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    monkeypatch.chdir(tmp_path)
    (tmp_path / name).mkdir()  # a folder named like the source (a download of it) does not hide the source
    problems, _ = load_problems(name, split=split)
    assert calls == [hub_call]
    assert (problems[0].answer, problems[0].source) == (answer, source)


def test_problem_is_frozen():
    p = Problem("id", "text", "1")
    with pytest.raises(AttributeError):
        p.answer = "2"


# --- The real files in shared/data (see their READMEs). ---------------------------------------


def test_real_gsm8k(math_data_dir):
    train, train_stats = load_problems(str(math_data_dir / "gsm8k" / "train.jsonl"))
    test, test_stats = load_problems(str(math_data_dir / "gsm8k" / "test.jsonl"))
    assert (len(train), len(test)) == (7473, 1319)
    assert train_stats.num_skipped == test_stats.num_skipped == 0
    assert all(p.answer.lstrip("-").replace(".", "", 1).isdigit() for p in train + test)  # commas removed
    assert train[0].answer == "72" and test[0].answer == "18"


def test_real_math500_and_math5000_agree(math_data_dir):
    m500, _ = load_problems(str(math_data_dir / "math" / "test500.jsonl"))
    m5000, stats = load_problems(str(math_data_dir / "math" / "test5000.jsonl"))
    assert (len(m500), len(m5000), stats.num_skipped) == (500, 5000, 0)
    assert collections.Counter(p.level for p in m5000) == {1: 437, 2: 894, 3: 1131, 4: 1214, 5: 1324}
    assert collections.Counter(p.subject for p in m500)["Intermediate Algebra"] == 97
    # Gold from the last \boxed{} of the full solutions equals the answer field of MATH-500.
    by_text = {p.problem: p for p in m5000}
    assert all(by_text[p.problem].answer == p.answer for p in m500)


def test_real_aime24(math_data_dir):
    problems, _ = load_problems(str(math_data_dir / "aime24" / "test.jsonl"), format="aime")
    assert len(problems) == 30
    assert sorted(int(p.answer) for p in problems)[:3] == [23, 25, 33]
    assert problems[0].answer == "204" and all(not p.answer.startswith("0") for p in problems)
