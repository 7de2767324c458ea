"""Every file a template loads with {% static %} exists: a path left behind by a move is a 404 (a 500 under a
manifest storage) on the page, which no view test notices."""

import re

from django.conf import settings
from django.contrib.staticfiles import finders

STATIC_TAG = re.compile(r"""{%\s*static\s+['"]([^'"]+)['"]\s*%}""")


def test_every_static_file_a_template_names_is_found():
    named = {
        (template.relative_to(directory).as_posix(), path)
        for directory in settings.TEMPLATES[0]["DIRS"]
        for template in directory.rglob("*.html")
        for path in STATIC_TAG.findall(template.read_text())
    }
    assert named, "the scan found no {% static %} tag"
    assert [(template, path) for template, path in sorted(named) if finders.find(path) is None] == []
