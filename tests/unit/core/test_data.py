"""Corpora (embedded, user files, offline hub) and the calibration/evaluation windows of pruning_core.data."""

from __future__ import annotations

import hashlib
import json
import logging

import pandas as pd
import pytest
import torch

from pruning_core import data
from pruning_core.errors import ConfigError, CorpusError

from pruning_core.models.tiny import build_test_tokenizer


def documents(name, split, column=None):
    return data._load_split(name, split, column).documents


# ---------------------------------------------------------------------------------------------------------------
# Embedded corpora
# ---------------------------------------------------------------------------------------------------------------


def test_wiki_has_80_and_20_disjoint_articles_in_file_order():
    calibration, evaluation = documents("wiki", "calibration"), documents("wiki", "evaluation")
    assert (len(calibration), len(evaluation)) == (80, 20)
    assert not set(calibration) & set(evaluation)
    assert calibration[0].startswith("'''Anarchism'''")  # the first article of the dump over 2000 characters
    assert evaluation[0].startswith("The '''foreign relations of Angola'''")
    assert all(article == article.strip() and len(article) > 1000 for article in calibration + evaluation)
    text = data.load_corpus_text("wiki", "calibration")
    assert text == "\n\n".join(calibration)
    assert evaluation[0] not in text


def test_news_splits_first_200_lines_and_the_rest():
    calibration, evaluation = documents("news", "calibration"), documents("news", "evaluation")
    assert (len(calibration), len(evaluation)) == (200, 100)
    assert calibration[0].startswith("Hundreds of people have been forced to vacate their homes")
    assert data.load_corpus_text("news", "evaluation") == "\n\n".join(evaluation)


def test_pydocs_splits_80_20_by_sorted_topic():
    from pydoc_data.topics import topics

    calibration, evaluation = documents("pydocs", "calibration"), documents("pydocs", "evaluation")
    n = len(topics)
    assert (len(calibration), len(evaluation)) == (int(0.8 * n), n - int(0.8 * n))
    keys = sorted(topics)
    assert calibration[0] == topics[keys[0]].strip()
    assert evaluation[-1] == topics[keys[-1]].strip()


def test_corpus_identity_hashes_the_split_text():
    identity = data.corpus_identity("news", "calibration", column="ignored")
    text = data.load_corpus_text("news", "calibration")
    assert identity == {
        "name": "news",
        "split": "calibration",
        "column": None,
        "sha256": hashlib.sha256(text.encode()).hexdigest(),
        "chars": len(text),
    }
    assert data.corpus_identity("news", "evaluation")["sha256"] != identity["sha256"]


def test_preview_reports_total_chars_and_documents():
    shown = data.preview("pydocs", "evaluation", chars=100)
    assert len(shown["text"]) == 100
    assert shown["chars"] == len(data.load_corpus_text("pydocs", "evaluation")) > 100
    assert shown["documents"] == len(documents("pydocs", "evaluation"))


def test_unknown_split_and_unknown_name_are_corpus_errors():
    with pytest.raises(CorpusError, match="calibration"):
        data.load_corpus_text("news", "train")
    with pytest.raises(CorpusError, match="wiki, news, pydocs"):
        data.load_corpus_text("wikipedia", "calibration")


# ---------------------------------------------------------------------------------------------------------------
# Tokens and windows
# ---------------------------------------------------------------------------------------------------------------

TEXT = data.DOCUMENT_SEPARATOR.join(
    f"Paragraph {i}: the pruned model keeps {i % 7} of every {i % 5 + 3} weights in layer {i % 11}." for i in range(60)
)


def test_tokenize_text_is_1d_long_without_special_tokens_and_cached_per_tokenizer():
    small, large = build_test_tokenizer(), build_test_tokenizer(400)
    ids = data.tokenize_text(small, TEXT)
    assert ids.dtype == torch.long and ids.dim() == 1
    assert small.decode(ids.tolist()) == TEXT
    assert small.bos_token_id not in ids.tolist() and small.eos_token_id not in ids.tolist()
    ids[0] = -1  # the caller's copy: must not poison the cache
    expected = torch.tensor(small(TEXT, add_special_tokens=False)["input_ids"])
    assert torch.equal(data.tokenize_text(small, TEXT), expected)
    # Both tokenizers have an empty name_or_path: the cache must still keep them apart.
    assert data.tokenize_text(large, TEXT).numel() < data.tokenize_text(small, TEXT).numel()


def test_tokenize_text_does_not_warn_about_long_sequences():
    import transformers

    # Another test (the CLI) may have lowered transformers' verbosity; this test needs warnings to be emitted.
    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_warning()
    try:
        _check_no_long_sequence_warning()
    finally:
        transformers.logging.set_verbosity(verbosity)


def _check_no_long_sequence_warning():
    tokenizer = build_test_tokenizer(model_max_length=16)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("transformers")
    logger.addHandler(handler)
    try:
        assert data.tokenize_text(tokenizer, TEXT + " silent").numel() > 16
        assert not [r for r in records if "longer than the specified maximum" in r.getMessage()]
        tokenizer(TEXT + " loud")  # the default call does warn: the check above can fail
        assert [r for r in records if "longer than the specified maximum" in r.getMessage()]
    finally:
        logger.removeHandler(handler)


def test_calibration_windows_shape_range_and_determinism():
    tokenizer = build_test_tokenizer()
    ids = data.tokenize_text(tokenizer, TEXT)
    windows = data.calibration_windows(tokenizer, TEXT, nsamples=8, seqlen=32, seed=0)
    assert windows.shape == (8, 32) and windows.dtype == torch.long
    assert torch.equal(windows, data.calibration_windows(tokenizer, TEXT, nsamples=8, seqlen=32, seed=0))
    assert not torch.equal(windows, data.calibration_windows(tokenizer, TEXT, nsamples=8, seqlen=32, seed=1))
    # Every window is a contiguous run of the token sequence starting in [0, ntokens - seqlen - 1].
    sequence = ids.tolist()
    for window in windows.tolist():
        starts = [s for s in range(len(sequence) - 32) if sequence[s : s + 32] == window]
        assert starts, "a window is not a contiguous slice of the tokenized text"


def test_calibration_windows_follow_the_seeded_generator():
    ids = torch.arange(1000)
    windows = data.random_token_windows(ids, nsamples=4, seqlen=10, seed=7)
    expected_starts = torch.randint(0, 1000 - 10, (4,), generator=torch.Generator().manual_seed(7))
    assert torch.equal(windows[:, 0], expected_starts)
    assert torch.equal(windows, expected_starts[:, None] + torch.arange(10))


def test_too_short_text_gives_token_counts():
    tokenizer = build_test_tokenizer()
    short = "A few words only."
    ntokens = data.tokenize_text(tokenizer, short).numel()
    with pytest.raises(CorpusError, match=rf"has {ntokens} tokens .*seqlen=64 needs at least 65"):
        data.calibration_windows(tokenizer, short, nsamples=1, seqlen=64, seed=0)
    with pytest.raises(CorpusError, match=rf"has {ntokens} tokens, fewer than one window of seqlen=64"):
        data.evaluation_windows(tokenizer, short, seqlen=64, eval_windows=None)


def test_nsamples_times_seqlen_larger_than_split_is_an_error():
    tokenizer = build_test_tokenizer()
    ntokens = data.tokenize_text(tokenizer, TEXT).numel()
    nsamples = ntokens // 32 + 1
    with pytest.raises(CorpusError, match=rf"{nsamples} x 32 = {nsamples * 32} tokens .*\({ntokens} tokens\)"):
        data.calibration_windows(tokenizer, TEXT, nsamples=nsamples, seqlen=32, seed=0)
    with pytest.raises(ConfigError, match="nsamples"):
        data.calibration_windows(tokenizer, TEXT, nsamples=0, seqlen=32, seed=0)


def test_evaluation_windows_are_the_first_non_overlapping_windows():
    tokenizer = build_test_tokenizer()
    ids = data.tokenize_text(tokenizer, TEXT)
    available = ids.numel() // 16
    assert available >= 4
    first_three = data.evaluation_windows(tokenizer, TEXT, seqlen=16, eval_windows=3)
    assert torch.equal(first_three, ids[:48].reshape(3, 16))
    everything = data.evaluation_windows(tokenizer, TEXT, seqlen=16, eval_windows=None)
    assert everything.shape == (available, 16)
    assert data.evaluation_windows(tokenizer, TEXT, seqlen=16, eval_windows=available + 50).shape == (available, 16)


# ---------------------------------------------------------------------------------------------------------------
# User files
# ---------------------------------------------------------------------------------------------------------------

DOCS = [f"Document number {i} talks about pruning." for i in range(10)]


def split_sizes(path, column=None):
    return len(documents(str(path), "calibration", column)), len(documents(str(path), "evaluation", column))


def test_txt_paragraphs_split_80_20(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(DOCS) + "\n", encoding="utf-8")
    assert split_sizes(path) == (8, 2)
    assert data.load_corpus_text(str(path), "evaluation") == "\n\n".join(DOCS[8:])


def test_txt_without_blank_lines_falls_back_to_lines(tmp_path):
    path = tmp_path / "lines.txt"
    path.write_text("\r\n".join(DOCS[:5]), encoding="utf-8")
    assert split_sizes(path) == (4, 1)


def test_jsonl_text_field_and_custom_column(tmp_path):
    path = tmp_path / "corpus.jsonl"
    path.write_text("\n".join(json.dumps({"text": d, "body": d.upper(), "id": i}) for i, d in enumerate(DOCS)))
    assert split_sizes(path) == (8, 2)
    assert documents(str(path), "calibration", "body")[0] == DOCS[0].upper()


def test_json_list_of_objects_and_object_of_lists(tmp_path):
    records = tmp_path / "records.json"
    records.write_text(json.dumps([{"text": d} for d in DOCS]))
    assert split_sizes(records) == (8, 2)
    columns = tmp_path / "columns.json"
    columns.write_text(json.dumps({"content": DOCS, "id": list(range(10))}))
    assert split_sizes(columns, "content") == (8, 2)


def test_csv_single_text_column_is_chosen_and_several_need_a_choice(tmp_path):
    single = tmp_path / "single.csv"
    pd.DataFrame({"id": range(10), "body": DOCS}).to_csv(single, index=False)
    assert split_sizes(single) == (8, 2)
    several = tmp_path / "several.csv"
    pd.DataFrame({"title": [f"t{i}" for i in range(10)], "body": DOCS}).to_csv(several, index=False)
    with pytest.raises(CorpusError, match=r"several text columns \('title', 'body'\)"):
        data.load_corpus_text(str(several), "calibration")
    assert documents(str(several), "evaluation", "body") == tuple(DOCS[8:])


def test_parquet_with_column(tmp_path):
    path = tmp_path / "corpus.parquet"
    pd.DataFrame({"title": [f"t{i}" for i in range(10)], "body": DOCS}).to_parquet(path)
    assert split_sizes(path, "body") == (8, 2)
    with pytest.raises(CorpusError, match=r"no field 'text' .*'title', 'body'"):
        data.load_corpus_text(str(path), "calibration", column="text")


def test_edited_file_is_read_again(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n\n".join(DOCS))
    first = data.load_corpus_text(str(path), "evaluation")
    path.write_text("\n\n".join(DOCS + ["One more document, appended later."]))
    assert data.load_corpus_text(str(path), "evaluation") != first


@pytest.mark.parametrize(
    ("filename", "content", "message"),
    [
        ("empty.txt", b"", "is empty"),
        ("blank.txt", b" \n\n \n", "is empty"),
        ("binary.txt", b"text\x00\x01\x02 more", "looks binary"),
        ("latin1.csv", "text\ncaf\xe9\n".encode("latin-1"), "not valid UTF-8"),
        ("missing.jsonl", b'{"body": "a"}\n{"body": "b"}\n', r"no field 'text' on line 1 \(available: 'body'\)"),
        ("broken.jsonl", b'{"text": "a"}\n{"text": \n', "Line 2 of 'broken.jsonl' is not valid JSON"),
        ("lines.json", b'{"text": "a"}\n{"text": "b"}\n', "rename the file to .jsonl"),
        ("one.txt", b"Only one paragraph here.", "holds 1 document"),
        ("numbers.csv", b"a,b\n1,2\n3,4\n", "has no text column"),
        ("corpus.docx", b"PK\x03\x04", "looks binary"),
        ("image.png", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "looks binary"),
        ("blob", bytes(range(1, 32)) * 8, "looks binary"),
        ("latin1", "caf\xe9 au lait\n\nsecond".encode("latin-1"), "not valid UTF-8"),
        ("fake.parquet", b"not parquet at all", "not a readable Parquet file"),
    ],
)
def test_bad_user_files_give_corpus_errors(tmp_path, filename, content, message):
    path = tmp_path / filename
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=message):
        data.load_corpus_text(str(path), "calibration")


def test_missing_path_gives_corpus_error(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        data.load_corpus_text(str(tmp_path / "nowhere.txt"), "calibration")
    with pytest.raises(CorpusError, match="is not a file"):
        data.load_corpus_text(str(tmp_path), "calibration")


# ---------------------------------------------------------------------------------------------------------------
# Hub corpora, offline
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", data.HUB_CORPORA)
def test_offline_hub_corpus_fails_fast_with_advice(monkeypatch, name):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tried = []  # fast means: no connection is even attempted (counted, not timed)
    monkeypatch.setattr(data, "_tcp_reachable", lambda *a: tried.append(a) or False)
    monkeypatch.setattr(data, "_load_hub_split", lambda *a: tried.append(a))
    with pytest.raises(CorpusError, match=r"seems offline \(HF_HUB_OFFLINE is set\).*wiki, news, pydocs"):
        data.load_corpus_text(name, "evaluation")
    assert tried == []


def test_unreachable_hub_and_connection_errors_read_as_offline(monkeypatch):
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", *data._PROXY_VARIABLES):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(data, "_tcp_reachable", lambda host, port, timeout_s: False)
    with pytest.raises(CorpusError, match="seems offline .*no connection to huggingface.co"):
        data.load_corpus_text("c4", "calibration")

    def refuse(name, split):
        raise RuntimeError("download failed") from ConnectionError("connection refused")

    monkeypatch.setattr(data, "_tcp_reachable", lambda host, port, timeout_s: True)
    monkeypatch.setattr(data, "_load_hub_split", refuse)
    with pytest.raises(CorpusError, match="seems offline"):
        data.load_corpus_text("ptb", "evaluation")


# ---------------------------------------------------------------------------------------------------------------
# Text files as users have them: no extension, or an unfamiliar one
# ---------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("filename", ["README", "notes.md", "corpus.text", "log.v2"])
def test_extensionless_or_unfamiliar_text_file_reads_as_plain_text(tmp_path, filename):
    reference = tmp_path / "reference.txt"
    reference.write_text("\n\n".join(DOCS))
    path = tmp_path / filename
    path.write_text("\n\n".join(DOCS))
    for split in data.SPLITS:
        assert data.load_corpus_text(str(path), split) == data.load_corpus_text(str(reference), split)


def test_extensionless_text_file_calibrates_a_tiny_model(tmp_path):
    from pruning_core.models import load_model
    from pruning_core.protocol import Protocol, calibration_ids
    from pruning_core.prune import PruneConfig, prune_model

    path = tmp_path / "my_corpus"  # no extension, as files saved by many tools are
    path.write_text("\n\n".join(f"Paragraph {i}: the quick brown fox jumps over the lazy dog while a language "
                                f"model predicts the next token, and pruning removes weights." for i in range(60)))
    tiny = load_model("tiny-llama")
    ids = calibration_ids(tiny, Protocol(calib=str(path), nsamples=4, seqlen=32))
    assert ids.shape == (4, 32)
    result = prune_model(tiny, ids, PruneConfig("wanda", "unstructured", 0.5))
    assert result.sparsity == pytest.approx(0.5, abs=0.01)


def test_windows_longer_than_the_models_context_are_refused_in_one_sentence():
    from pruning_core.errors import ConfigError
    from pruning_core.models import load_model
    from pruning_core.protocol import Protocol, calibration_ids, evaluation_ids

    loaded = load_model("tiny-gpt2")  # 512 positions: past them GPT-2 fails with an IndexError
    protocol = Protocol(calib="news", nsamples=2, seqlen=1024, eval_windows=2)
    for build in (lambda: calibration_ids(loaded, protocol), lambda: evaluation_ids(loaded, "news", protocol)):
        with pytest.raises(ConfigError, match="seqlen 1024 is longer than .* context of 512 positions; use --seqlen 512"):
            build()
    assert calibration_ids(loaded, Protocol(calib="news", nsamples=2, seqlen=512)).shape == (2, 512)


def test_long_texts_are_tokenized_piece_by_piece_with_the_same_ids(monkeypatch):
    from pruning_core.models import load_model

    tokenizer = load_model("tiny-llama").tokenizer
    text = data.load_corpus_text("news", "calibration")
    whole = data.tokenize_text(tokenizer, text)
    monkeypatch.setattr(data, "TOKENIZE_CHARS", 5_000)
    data._token_cache.clear()
    pieces = list(data.text_pieces(text, 5_000))
    assert len(pieces) > 10 and "".join(pieces) == text
    assert torch.equal(data.tokenize_text(tokenizer, text), whole)
    evaluation = data.evaluation_windows(tokenizer, text, 64, 3)  # reads only the first pieces
    assert torch.equal(evaluation, whole[: 3 * 64].reshape(3, 64))


def test_a_tokenizer_whose_ids_change_at_the_cuts_reads_the_text_whole(monkeypatch):
    class PrefixingTokenizer:  # like SentencePiece's dummy prefix: every call's first word gets a marker
        def __call__(self, text, **kwargs):
            return {"input_ids": [0] + [len(word) for word in text.split()]}

    tokenizer = PrefixingTokenizer()
    assert not data.pieces_are_exact(tokenizer)
    monkeypatch.setattr(data, "TOKENIZE_CHARS", 10)
    text = "one two.\n\nthree four.\n\nfive six seven.\n\neight."
    assert data._encode(tokenizer, text).tolist() == tokenizer(text)["input_ids"]
