import orjson

from core.jsonl import jsonl_lines, jsonl_row


def test_lines_end_at_a_newline_only():
    assert jsonl_lines("") == []
    assert jsonl_lines('{"a": 1}\n') == ['{"a": 1}']
    assert jsonl_lines('{"a": 1}\r\n{"b": 2}') == ['{"a": 1}', '{"b": 2}']
    assert jsonl_lines('{"a": "x\u2028y\x85z\x1cw"}\n\n{"b": 2}\n') == ['{"a": "x\u2028y\x85z\x1cw"}', "", '{"b": 2}']


def test_a_row_escapes_what_str_splitlines_cuts_at_and_parses_back_the_same():
    row = {"custom_id": "a\u2028b\u2029c\x85d", "n": 1}

    line = jsonl_row(row)

    assert line.decode().splitlines() == [line.decode().rstrip("\n")]
    assert orjson.loads(line) == row
