"""The calibration preview shows text a person can read: no wiki markup, while the split itself (what the
model reads, and what reference runs were computed on) keeps every character."""

from __future__ import annotations

from pruning_core import data


def test_wiki_preview_has_no_markup_but_the_split_keeps_it():
    shown = data.preview("wiki", "calibration", chars=3000)
    raw = data.load_corpus_text("wiki", "calibration")
    assert "'''" in raw[:3000] and "==" in raw[:3000]  # the markup the journey saw in the preview
    text = shown["text"]
    assert text.startswith("Anarchism is a political philosophy")
    assert "''" not in text and "==" not in text and "\n\n\n" not in text
    assert "\nEtymology and terminology\n" in text  # a heading stays, as a plain line
    assert 2900 <= len(text) <= 3000 and shown["markup_removed"] is True
    assert shown["chars"] == len(raw) and shown["documents"] == data.WIKI_CALIBRATION_ARTICLES


def test_other_corpora_are_shown_as_they_are():
    # pydocs is Python documentation: '' is an empty string there, not markup.
    shown = data.preview("pydocs", "calibration", chars=400)
    assert shown["text"] == data.load_corpus_text("pydocs", "calibration")[:400]
    assert shown["markup_removed"] is False


def test_wikitext_escapes_and_headings_are_made_readable():
    assert data._readable(" = = Early life = = \nA 1 @,@ 000 @-@ year span of 2 @.@ 5 km\n") == \
        "Early life\nA 1,000-year span of 2.5 km\n"
