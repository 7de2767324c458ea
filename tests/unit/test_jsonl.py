from core.jsonl import jsonl_lines


def test_lines_end_at_a_newline_only():
    assert jsonl_lines("") == []
    assert jsonl_lines('{"a": 1}\n') == ['{"a": 1}']
    assert jsonl_lines('{"a": 1}\r\n{"b": 2}') == ['{"a": 1}', '{"b": 2}']
    assert jsonl_lines('{"a": "x\u2028y\x85z\x1cw"}\n\n{"b": 2}\n') == ['{"a": "x\u2028y\x85z\x1cw"}', "", '{"b": 2}']
