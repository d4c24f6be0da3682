"""OCR prompts for French land-registry documents, one per document type.

Both prompts ask for a page marker line before each page (`--- page N ---`,
N counted in the whole document), so a chunked document joins back in order and
the text of any page can be found again. The Gemini emulator honours the same
convention: `first_page_in_prompt` is how it reads the chunk's first page number.
"""

from __future__ import annotations

import re

PAGE_MARKER = "--- page {n} ---"
# The emulator (and tests) find the chunk's first page number with this pattern.
_FIRST_PAGE_RE = re.compile(r"starts at page (\d+) of the document")

_COMMON = """You are an OCR engine for scanned French land-registry documents \
(service de la publicité foncière). Transcribe, do not summarise, translate or correct.
Rules:
- Keep the original French spelling, accents, abbreviations, numbers and dates exactly \
as printed or handwritten (dates stay DD/MM/YYYY).
- Write [illisible] for a word you cannot read; never guess names, numbers or parcel \
references.
- Ignore stamps and marginal doodles unless they carry text; transcribe that text in place.
- Output plain text only: no commentary, no code fences.
- This excerpt has {count} page(s); it starts at page {first} of the document and ends \
at page {last} of {total}. Before the text of each page write one line \
"{marker_example}" with N the page number in the whole document \
(so the first line you write is "{first_marker}")."""

_INDEX = """
Document type: INDEX DES IMMEUBLES (the register of deeds per parcel).
- Keep the register as a table: one Markdown pipe table per page, one table row per \
register row, the columns in printed order (typically Date | Nature de l'acte | \
Parties | Volume | Numéro).
- Copy the column headers as printed; repeat them on every page.
- Put the heading lines above a table (commune, section and parcel, feuillet) as plain \
lines before it.
- An empty cell stays empty (| |); a value that spans rows is repeated on each row."""

_ACTE = """
Document type: ACTE (a notarial deed or a registered act).
- Transcribe the full text in reading order: headings, body, lists, signatures and \
mentions in the margin at the place they refer to.
- Mark headings (e.g. DÉSIGNATION, CONDITIONS, ORIGINE DE PROPRIÉTÉ) with "## " at the \
start of the line.
- Keep paragraphs; join words hyphenated across a line break.
- Tables inside the deed (cadastral references, prices) become Markdown pipe tables."""

_BY_TYPE = {"index": _INDEX, "acte": _ACTE}


def prompt_for(document_type: str, first_page: int, last_page: int, total_pages: int) -> str:
    """The OCR instruction for pages first_page..last_page (1-based, inclusive) of a document."""
    if document_type not in _BY_TYPE:
        raise ValueError(f"unknown document type {document_type!r}")
    if not 1 <= first_page <= last_page <= total_pages:
        raise ValueError(
            f"bad page range {first_page}..{last_page} of {total_pages} (1-based, inclusive)"
        )
    common = _COMMON.format(
        count=last_page - first_page + 1,
        first=first_page,
        last=last_page,
        total=total_pages,
        marker_example=PAGE_MARKER.format(n="N"),
        first_marker=PAGE_MARKER.format(n=first_page),
    )
    return common + _BY_TYPE[document_type]


def first_page_in_prompt(prompt: str) -> int | None:
    """The first page number a prompt announces (None when it has no page convention)."""
    found = _FIRST_PAGE_RE.search(prompt)
    return int(found.group(1)) if found else None


_MARKER_RE = re.compile(r"^--- page (\d+) ---$", re.MULTILINE)


def split_pages(text: str) -> dict[int, str]:
    """Page number -> that page's text, from an answer that follows the marker convention."""
    parts = _MARKER_RE.split(text)
    # parts = [before, n1, text1, n2, text2, ...]
    return {int(parts[i]): parts[i + 1].strip("\n") for i in range(1, len(parts) - 1, 2)}
