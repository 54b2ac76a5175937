"""lm-eval on the in-memory model: local tasks built from the embedded corpora, offline, with a small limit."""

from __future__ import annotations

import os
import socket

import pytest

from pruning_core.errors import ConfigError
from pruning_core.outputs.lm_eval_bridge import (
    LOCAL_TASKS,
    NEWS_ENDING,
    WIKI_ROLLING,
    evaluate_lm_eval,
    news_ending_docs,
    parse_tasks,
)
from pruning_core.models import load_model


def test_news_ending_docs_are_deterministic_and_labelled():
    docs = news_ending_docs()
    assert len(docs) > 50
    assert docs == news_ending_docs()
    for doc in docs[:20]:
        assert len(doc["choices"]) == 4 and len(set(doc["choices"])) == 4
        assert 0 <= doc["label"] < 4
    labels = {doc["label"] for doc in docs}
    assert labels == {0, 1, 2, 3}  # the true ending is not always in the same place


def test_parse_tasks():
    assert parse_tasks("local") == list(LOCAL_TASKS)
    assert parse_tasks("arc_easy, local") == ["arc_easy", *LOCAL_TASKS]
    with pytest.raises(ConfigError):
        parse_tasks(" , ")


def test_local_tasks_run_offline_on_tiny_model(monkeypatch):
    def no_network(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6):
            raise AssertionError(f"network access attempted: {address}")
        return real_connect(self, address)

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.delenv("HF_DATASETS_OFFLINE", raising=False)
    loaded = load_model("tiny-llama")
    out = evaluate_lm_eval(loaded, [WIKI_ROLLING, NEWS_ENDING], limit=2)
    assert os.environ.get("HF_DATASETS_OFFLINE") is None  # restored
    metrics = {(r["task"], r["metric"]): r for r in out["rows"]}
    assert {(WIKI_ROLLING, "word_perplexity"), (WIKI_ROLLING, "byte_perplexity"), (WIKI_ROLLING, "bits_per_byte"),
            (NEWS_ENDING, "acc"), (NEWS_ENDING, "acc_norm")} <= set(metrics)
    assert metrics[(WIKI_ROLLING, "byte_perplexity")]["value"] > 1.0
    assert 0.0 <= metrics[(NEWS_ENDING, "acc")]["value"] <= 1.0
    assert "per UTF-8 byte" in metrics[(WIKI_ROLLING, "byte_perplexity")]["unit"]
    assert out["limit"] == 2
