"""Argument types shared by the tenants' management commands."""

import argparse
import math
from collections.abc import Callable


def number_of(unit: str, *, at_least: int, whole: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number of `unit` no less than `at_least`, refused in those words otherwise."""
    kind = "whole number" if whole else "number"

    def parse(value: str) -> float:
        try:
            number = int(value) if whole else float(value)
        except ValueError:
            number = math.nan
        if not (math.isfinite(number) and number >= at_least):
            raise argparse.ArgumentTypeError(f"'{value}' is not a {kind} of {unit} of at least {at_least}")
        return number

    return parse
