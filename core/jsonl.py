"""JSON Lines text split into its lines."""


def jsonl_lines(text: str) -> list[str]:
    """The lines of a JSONL text: split at "\\n" only (a "\\r" before it dropped), since JSON writers leave U+2028, NEL
    and the other separators str.splitlines cuts at unescaped inside strings."""
    return [line.removesuffix("\r") for line in text.removesuffix("\n").split("\n")] if text else []
