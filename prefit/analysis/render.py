"""Reports and summaries are Jinja2 templates (prefit/analysis/templates/*.md.j2) filled with what Python decided.

Python computes every number, table and verdict; a template only places them and words them, so that the
wording of a report can be read (and changed) in one file instead of inside string concatenations.
"""

from __future__ import annotations

from functools import cache

import jinja2

from prefit.schema import cell_label

from .tables import describe, fmt, fmt_p


@cache
def environment() -> jinja2.Environment:
    """The package's templates; an undefined name is an error rather than an empty string."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("prefit.analysis", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=False,  # markdown, not HTML
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters.update(
        fmt=fmt,
        signed=lambda v: fmt(v, sign=True),
        p=fmt_p,
        describe=describe,
        cell=lambda c: cell_label(*c[:2]),
        cells=lambda cs: ", ".join(cell_label(*c[:2]) for c in cs) or "none",
    )
    return env


def render(template: str, **context: object) -> str:
    """Render one template (e.g. `summary.md.j2`) with the given context; blank runs collapse to one line."""
    text = environment().get_template(template).render(**context)
    lines, blank = [], False
    for line in text.splitlines():
        if not line.strip():
            if not blank and lines:
                lines.append("")
            blank = True
            continue
        lines.append(line.rstrip())
        blank = False
    return "\n".join(lines).rstrip() + "\n"
