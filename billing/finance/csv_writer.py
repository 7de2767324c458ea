"""The CSV writer of every export: a cell a spreadsheet would run as a formula is written as text.

Excel, LibreOffice and Google Sheets read a cell that starts with `=`, `+`, `-` or `@` as a formula
(`=cmd|' /C calc'!A0`, `@SUM(…)`, `+1+1`), and one that starts with a tab or a carriage return may be read so
after the spreadsheet trims it. Any API client can put such a text in the ledger (a requested model name, a tag),
and so in finance's exports. OWASP's rule: prefix such a cell with a single quote, which spreadsheets show as text.

Numbers are exempt: cells that are not strings (the exporter's own counts), and strings that are a plain decimal
number (`-1.5000000000`, a credit's cost as format_cost writes it). A plain number cannot be a formula, whoever
wrote it, and quoting it would turn a credit into text that no longer sums.
"""

import csv
import re

FORMULA_TRIGGERS = frozenset("=+-@\t\r")
PLAIN_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?")


def formula_safe(cell):
    if isinstance(cell, str) and cell and cell[0] in FORMULA_TRIGGERS and not PLAIN_NUMBER.fullmatch(cell):
        return "'" + cell
    return cell


class FormulaSafeWriter:
    """csv.writer, every cell through formula_safe. writerow returns what the file's write returned, as csv's does."""

    def __init__(self, file, **options):
        self._writer = csv.writer(file, **options)

    def writerow(self, row):
        return self._writer.writerow([formula_safe(cell) for cell in row])

    def writerows(self, rows) -> None:
        for row in rows:
            self.writerow(row)
