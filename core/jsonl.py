"""JSON Lines: a text split into its lines, and a row written as one."""

import orjson


def jsonl_lines(text: str) -> list[str]:
    """The lines of a JSONL text: split at "\\n" only (a "\\r" before it dropped), since JSON writers leave U+2028, NEL
    and the other separators str.splitlines cuts at unescaped inside strings."""
    return [line.removesuffix("\r") for line in text.removesuffix("\n").split("\n")] if text else []


# The characters str.splitlines cuts at that JSON allows raw inside strings (and orjson writes raw), escaped.
LINE_BREAKS_IN_STRINGS = ((b"\xe2\x80\xa8", b"\\u2028"), (b"\xe2\x80\xa9", b"\\u2029"), (b"\xc2\x85", b"\\u0085"))


def jsonl_row(row: dict) -> bytes:
    """One line of a JSONL file the gateway writes (output and error files for clients, a delegated batch's input
    for a provider): orjson's, with U+2028, U+2029 and NEL escaped (the same string once parsed), so a reader
    splitting the file with str.splitlines (``files.content(id).text.splitlines()``) gets one row a line."""
    line = orjson.dumps(row)
    for raw, escaped in LINE_BREAKS_IN_STRINGS:
        line = line.replace(raw, escaped)
    return line + b"\n"
