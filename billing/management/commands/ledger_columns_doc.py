from pathlib import Path

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from billing.ledger.columns import columns_markdown

BEGIN = "<!-- ledger columns: written by `manage.py ledger_columns_doc` from billing/ledger/columns.py -->\n"
END = "<!-- end of ledger columns -->\n"


def docs_path() -> Path:
    return Path(settings.BASE_DIR) / "docs" / "finance.md"


def documented_columns(text: str) -> str:
    """The column tables between the markers of docs/finance.md."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise CommandError(f"docs/finance.md has no '{BEGIN.strip()}' … '{END.strip()}' section")
    return text[start + len(BEGIN) : end]


class Command(BaseCommand):
    help = "Write the CSV and usage API column tables of docs/finance.md from billing/ledger/columns.py."

    def handle(self, *args, **options):
        path = docs_path()
        text = path.read_text()
        documented = documented_columns(text)
        if documented == columns_markdown():
            self.stdout.write("docs/finance.md: the column tables are current")
            return
        path.write_text(text.replace(BEGIN + documented + END, BEGIN + columns_markdown() + END))
        self.stdout.write("docs/finance.md: column tables written")
