"""The HTML report escapes whatever the data, run names or text hold, and renders its text as Markdown."""

from __future__ import annotations

from bcat.report.render import Card, write_document
from bcat.report.tables import Table

EVIL = '<script>alert("x")</script>'


def _page(tmp_path, sections, title="t", cards=()) -> str:
    _, html_path = write_document(sections, tmp_path, title, "test", cards=cards)
    return html_path.read_text(encoding="utf-8")


def test_script_in_any_field_is_escaped(tmp_path):
    table = Table([f"run {EVIL}", f"two\nlines {EVIL}"], [[EVIL, f"0.5 {EVIL}"], ["correct", f"also names {EVIL}"]],
                  notes=f"note {EVIL}", text_columns=(1,))
    sections = [(f"heading {EVIL}", [
        f"paragraph {EVIL} and <img src=x onerror=alert(1)>", "cards", f"### {EVIL}", f"- **a** {EVIL}\n- b",
        f"```\n{EVIL}\n```", "[click](javascript:alert(1))", table, ("c.png", b"\x89PNG", f"alt {EVIL}")])]
    page = _page(tmp_path, sections, title=f"title {EVIL}", cards=[Card(f"run {EVIL}", "+0.100", "[0, 1]")])
    assert "<script" not in page and "<img src=x" not in page and "href=\"javascript" not in page
    assert page.count("&lt;script&gt;") >= 12  # every field above, shown as text
    assert "<strong>a</strong>" in page and "<br>" in page and '<span class="pill good">correct</span>' in page


def test_text_parts_are_rendered_as_markdown(tmp_path):
    page = _page(tmp_path, [("S", ["Run `bcat eval` then *look*.", "### Sub", "- one\n- **two**"])])
    assert "<code>bcat eval</code>" in page and "<em>look</em>" in page and "<h3>Sub</h3>" in page
    assert "<li>one</li>" in page and "<li><strong>two</strong></li>" in page
