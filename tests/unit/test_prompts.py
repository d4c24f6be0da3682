"""Prompts: per-type instructions, page-range wording, and the page-marker convention."""

from __future__ import annotations

import pytest

from control_plane.gemini.prompts import PAGE_MARKER, first_page_in_prompt, prompt_for, split_pages

pytestmark = pytest.mark.unit


def test_index_prompt_asks_for_the_register_as_a_table() -> None:
    prompt = prompt_for("index", 1, 2, 2)
    assert "INDEX DES IMMEUBLES" in prompt
    assert "pipe table" in prompt and "Nature de l'acte" in prompt
    assert "Transcribe, do not summarise" in prompt


def test_acte_prompt_asks_for_reading_order_and_headings() -> None:
    prompt = prompt_for("acte", 21, 40, 120)
    assert "reading order" in prompt and "## " in prompt
    assert "starts at page 21 of the document and ends at page 40 of 120" in prompt
    assert 'first line you write is "--- page 21 ---"' in prompt


@pytest.mark.parametrize("document_type", ["index", "acte"])
@pytest.mark.parametrize(("first", "last", "total"), [(1, 1, 1), (21, 40, 120), (120, 120, 120)])
def test_first_page_round_trips_through_the_prompt(document_type, first, last, total) -> None:
    assert first_page_in_prompt(prompt_for(document_type, first, last, total)) == first


def test_prompts_differ_by_type_and_are_deterministic() -> None:
    assert prompt_for("index", 1, 3, 3) != prompt_for("acte", 1, 3, 3)
    assert prompt_for("acte", 1, 3, 3) == prompt_for("acte", 1, 3, 3)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("registre", 1, 1, 1), "unknown document type"),
        (("acte", 0, 1, 1), "bad page range"),
        (("acte", 3, 2, 5), "bad page range"),
        (("acte", 1, 6, 5), "bad page range"),
    ],
)
def test_bad_arguments_are_refused(args: tuple, fragment: str) -> None:
    with pytest.raises(ValueError, match=fragment):
        prompt_for(*args)


def test_first_page_absent_without_the_convention() -> None:
    assert first_page_in_prompt("OCR this document") is None


def test_split_pages_recovers_each_page() -> None:
    text = "\n\n".join(f"{PAGE_MARKER.format(n=n)}\nline {n}\nmore" for n in (7, 8, 9))
    assert split_pages(text) == {7: "line 7\nmore", 8: "line 8\nmore", 9: "line 9\nmore"}
