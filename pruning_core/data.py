"""Corpora and the calibration/evaluation windows of the Wanda/SparseGPT protocol.

Corpora
-------
A corpus has two disjoint splits, "calibration" (statistics for pruning) and "evaluation" (perplexity). Each
split is a sequence of documents joined into one text. No dataset hub is reachable on a fresh machine without
internet, so the embedded corpora come from files that installed packages ship (see DESIGN.md, "Corpora"):

- ``wiki``: the shortened English Wikipedia dump in gensim's wheel
  (``gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``), read with
  gensim's own ``extract_pages`` and ``filter_wiki``. The articles are the pages, in file order, whose
  ``filter_wiki`` text is over 2000 characters, the first 100 of them (the dump holds 206 pages, of which
  exactly 100 qualify, so the cap never bites with gensim 4.4). No namespace filter is applied: the definition
  is the length filter alone (redirects and stubs fall out by length). Calibration = articles 0-79,
  evaluation = articles 80-99. Each article is stripped of leading/trailing whitespace (``filter_wiki`` leaves
  blank lines where templates were) before joining; the qualification test uses the unstripped text.
  Measured (gensim 4.4): 80 articles, 2,337,884 characters / 20 articles, 757,830 characters.
- ``news``: ``gensim/test/test_data/lee_background.cor`` (the Lee news corpus, one article per line).
  Calibration = lines 0-199, evaluation = lines 200-299 (300 lines). Measured: 200 articles, 241,898
  characters / 100 articles, 118,182 characters.
- ``pydocs``: CPython's ``pydoc_data.topics.topics`` (the help() topics: technical prose), sorted by topic key.
  Calibration = the first ``int(0.8 * n)`` topics, evaluation = the rest. The topic set depends on the Python
  version; CPython 3.11: 79 topics -> 63 / 16 topics, 330,518 / 134,527 characters.
- user files (a path): ``.txt``, any other extension or none (plain UTF-8 text: documents = paragraphs
  separated by blank lines; a file without blank lines falls back to non-empty lines; binary content, i.e. NUL
  bytes or over 5 % control characters, and text that is not UTF-8 are refused with one sentence),
  ``.jsonl`` (one JSON object per line, field ``text`` or ``column``),
  ``.json`` (a list of objects, a list of strings, or an object of lists), ``.csv`` and ``.parquet`` (a text
  column; ``column`` is required when the table has more than one text column). Calibration = the first
  80 % of the documents, evaluation = the last 20 %, at least one document each.
- hub corpora, online only, through ``datasets.load_dataset``: ``wikitext2`` (Salesforce/wikitext,
  wikitext-2-raw-v1: train / test), ``c4`` (allenai/c4, en validation shard 0: documents 1100+ / documents
  0-1099, as SparseGPT's C4 evaluation uses the first 1100), ``ptb`` (ptb_text_only: train / test). They are
  joined as the reference code joins them (wikitext2: " " for train, "\\n\\n" for test; c4, ptb: " ").
  With ``HF_HUB_OFFLINE=1`` / ``HF_DATASETS_OFFLINE=1``, or when the hub cannot be reached within a few
  seconds, a ``CorpusError`` says so at once and suggests an embedded corpus or a file.

Embedded and user documents are joined with a blank line ("\\n\\n"). Texts are cached in memory per process
(the wiki dump is parsed once, about 2 s); user files are re-read when their size or modification time change.

Protocol (as in the Wanda/SparseGPT papers)
-------------------------------------------
The text of a split is tokenized once, without special tokens, into one 1-D sequence of token ids.
Calibration: ``nsamples`` windows of ``seqlen`` tokens whose starts are drawn uniformly from
[0, ntokens - seqlen - 1] by a ``torch.Generator`` seeded with ``seed`` (deterministic; windows may overlap).
Evaluation: the first ``eval_windows`` non-overlapping windows of ``seqlen`` tokens (all that fit if None);
perplexity over them is computed in ``metrics.py``.
"""

from __future__ import annotations

import bz2
import functools
import hashlib
import importlib.util
import io
import json
import os
import re
import socket
import threading
import urllib.parse
import weakref
from collections import OrderedDict
from pathlib import Path
from typing import Any, Iterator, NamedTuple, Sequence

import torch

from pruning_core.errors import ConfigError, CorpusError

EMBEDDED_CORPORA = ("wiki", "news", "pydocs")
HUB_CORPORA = ("wikitext2", "c4", "ptb")
SPLITS = ("calibration", "evaluation")
# Extensions with a format of their own besides plain text; a file with any other extension (or none) is read
# as plain UTF-8 text, like a .txt file.
USER_FILE_EXTENSIONS = (".txt", ".jsonl", ".json", ".csv", ".parquet")

DOCUMENT_SEPARATOR = "\n\n"
WIKI_FILE = "enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
WIKI_MIN_CHARS = 2000  # an article qualifies when its filter_wiki text is longer than this (characters)
WIKI_ARTICLES = 100  # the first 100 qualifying articles, in file order
WIKI_CALIBRATION_ARTICLES = 80  # articles 0-79 calibrate, 80-99 evaluate
NEWS_FILE = "lee_background.cor"
NEWS_CALIBRATION_LINES = 200  # lines 0-199 calibrate, the rest evaluate
CALIBRATION_FRACTION = 0.8  # pydocs and user files: first 80 % of documents calibrate
HUB_PROBE_TIMEOUT_S = 3.0  # seconds to wait for a TCP connection to the hub before declaring it offline
C4_EVALUATION_DOCUMENTS = 1100  # SparseGPT evaluates C4 on the first 1100 validation documents

_SUPPORTED_FILES_TEXT = "plain-text (.txt, another extension or none), .jsonl, .json, .csv or .parquet"
_BINARY_CONTROL_SHARE = 0.05  # a decoded text whose first 64 K characters hold more control characters is binary
_FALLBACK_ADVICE = "use an embedded corpus (wiki, news, pydocs) or upload a .txt/.jsonl/.json/.csv/.parquet file"


class _Split(NamedTuple):
    """One split of a corpus: its documents and the separator that joins them into the split's text."""

    documents: tuple[str, ...]
    separator: str

    @property
    def text(self) -> str:
        return self.separator.join(self.documents)


# --------------------------------------------------------------------------------------------------------------
# Public API: texts
# --------------------------------------------------------------------------------------------------------------


def load_corpus_text(name: str | os.PathLike, split: str, column: str | None = None) -> str:
    """Return the text of one split of a corpus, documents joined as described in the module docstring.

    name: an embedded corpus (``EMBEDDED_CORPORA``), a hub corpus (``HUB_CORPORA``, online only), or the path of
        a user file (.txt, .jsonl, .json, .csv, .parquet). A name in the tuples wins over a file of that name.
    split: "calibration" or "evaluation".
    column: for user .jsonl/.json/.csv/.parquet files, the field holding the text (default ``text`` for JSON,
        the only text column for tables); ignored for embedded and hub corpora.
    Returns a str (characters). Raises ``CorpusError`` with an actionable message on any problem.
    """
    return _load_split(name, split, column).text


def corpus_identity(name: str | os.PathLike, split: str, column: str | None = None) -> dict[str, Any]:
    """Describe a corpus split for content hashing: {"name", "split", "column", "sha256", "chars"}.

    sha256 is the hex digest of the split's text encoded as UTF-8; chars is its length in characters. column is
    recorded only for user files (None for embedded and hub corpora, where it has no effect).
    """
    text = load_corpus_text(name, split, column)
    return {
        "name": os.fspath(name),
        "split": split,
        "column": column if _is_user_file(name) else None,
        "sha256": _sha256(text),
        "chars": len(text),
    }


#: Wiki markup that gensim's filter_wiki keeps (bold/italic quote runs, "==Heading==" lines) and wikitext's
#: escapes (" @-@ ", "= = Heading = ="): removed from previews only. The split itself keeps them, byte for
#: byte, so that it stays the split of the reference runs.
_WIKI_QUOTES = re.compile(r"'{2,}")
_WIKI_HEADING = re.compile(r"^[ \t]*(=+)[ \t]*(.*?)[ \t]*\1[ \t]*$", re.MULTILINE)
_WIKITEXT_HEADING = re.compile(r"^[ \t]*(?:=[ \t])+(.*?)(?:[ \t]=)+[ \t]*$", re.MULTILINE)
_WIKITEXT_ESCAPES = {" @-@ ": "-", " @,@ ": ",", " @.@ ": "."}
_BLANK_RUNS = re.compile(r"\n{3,}")
_MARKUP_CORPORA = ("wiki", "wikitext2")


def _readable(text: str) -> str:
    """`text` without wiki markup, for a person to read (headings as plain lines, no quote runs)."""
    for escape, plain in _WIKITEXT_ESCAPES.items():
        text = text.replace(escape, plain)
    text = _WIKITEXT_HEADING.sub(r"\1", text)
    text = _WIKI_HEADING.sub(r"\2", text)
    text = _WIKI_QUOTES.sub("", text)
    return _BLANK_RUNS.sub("\n\n", text)


def preview(name: str | os.PathLike, split: str, column: str | None = None, chars: int = 600) -> dict[str, Any]:
    """A short look at a corpus split for the dashboard: {"text", "chars", "documents", "markup_removed"}.

    text: the first ``chars`` characters of the split, as a person reads it: for the wiki corpora without
    wiki markup (markup_removed True; the model still reads the split as stored); chars: the split's total
    length in characters; documents: the number of non-empty documents (articles, lines, topics,
    paragraphs, rows) in the split.
    """
    loaded = _load_split(name, split, column)
    text = loaded.text
    limit = max(int(chars), 0)
    cleaned = os.fspath(name) in _MARKUP_CORPORA
    # Clean a little more than is shown: markup removal shortens the text.
    shown = _readable(text[: 2 * limit])[:limit] if cleaned else text[:limit]
    return {
        "text": shown,
        "chars": len(text),
        "documents": sum(1 for document in loaded.documents if document.strip()),
        "markup_removed": cleaned,
    }


# --------------------------------------------------------------------------------------------------------------
# Public API: tokens and windows
# --------------------------------------------------------------------------------------------------------------

_TOKEN_CACHE_SIZE = 8  # (tokenizer, text) pairs; a wiki calibration split is ~0.6 M tokens = ~5 MB as int64
_token_cache: "OrderedDict[tuple[int, str], tuple[Any, torch.Tensor]]" = OrderedDict()
_token_cache_lock = threading.Lock()


#: Characters tokenized in one call. Longer texts are cut into pieces of about this size where a document ends
#: (a non-space character before a blank line and a non-space character after it): a byte-level BPE tokenizer
#: gives there exactly the ids of the whole text (checked on the embedded corpora, and on a probe text for each
#: tokenizer), while the tokenizer's transient memory (~280 bytes per token) stays that of one piece instead of
#: growing with the file (a 20 MB text at once took GBs).
TOKENIZE_CHARS = 100_000
_PIECE_BOUNDARY = re.compile(r"(?<=\S)(?=\n\n\S)")


def text_pieces(text: str, size: int = TOKENIZE_CHARS) -> Iterator[str]:
    """`text` in consecutive pieces of about `size` characters (more when no document boundary comes sooner),
    each cut where a document ends; joined, the pieces are `text`."""
    start = 0
    while len(text) - start > size:
        boundary = _PIECE_BOUNDARY.search(text, start + size)
        if boundary is None:
            break
        yield text[start:boundary.start()]
        start = boundary.start()
    yield text[start:]


_PROBE_TEXT = "Alpha beta, gamma.\n\nDelta epsilon: zeta.\n\nEta (theta) iota."


def _ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False, verbose=False, return_attention_mask=False)["input_ids"])


def pieces_are_exact(tokenizer: Any) -> bool:
    """Whether `tokenizer` gives a text cut at document boundaries the ids of the whole text (byte-level BPE
    does; a tokenizer that prefixes every call's first word, as SentencePiece's dummy prefix does, does not)."""
    return _ids(tokenizer, _PROBE_TEXT) == [i for piece in text_pieces(_PROBE_TEXT, 1) for i in _ids(tokenizer, piece)]


def _encode(tokenizer: Any, text: str, max_tokens: int | None = None) -> torch.Tensor:
    """Token ids of `text` piece by piece (`text_pieces`), stopping once `max_tokens` are reached; in one call
    when the text is short or the tokenizer's ids would change at the cuts (`pieces_are_exact`)."""
    parts, count = [], 0
    pieces = text_pieces(text) if len(text) > TOKENIZE_CHARS and pieces_are_exact(tokenizer) else [text]
    for piece in pieces:
        parts.append(torch.tensor(_ids(tokenizer, piece), dtype=torch.int32))  # (piece tokens,); vocab < 2**31
        count += int(parts[-1].numel())
        if max_tokens is not None and count >= max_tokens:
            break
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def tokenize_text(tokenizer: Any, text: str) -> torch.Tensor:
    """The token ids of ``text`` as a fresh 1-D ``torch.long`` tensor (callers may modify it); see `token_ids`."""
    return token_ids(tokenizer, text).long()


def token_ids(tokenizer: Any, text: str) -> torch.Tensor:
    """Tokenize ``text`` as one sequence, without special tokens: the cached 1-D ``torch.int32`` tensor of token
    ids (half the memory of int64 for a long file); read it, never modify it.

    The text is encoded as one sequence, as the reference code does (long texts piece by piece at document
    boundaries, `text_pieces`, which gives the same ids with bounded memory), with ``verbose=False`` so that
    transformers' "sequence length is longer than the specified maximum" warning (meaningless here: the ids
    are cut into windows afterwards) is not emitted. Results are cached per (tokenizer object, sha256 of text)
    in a small LRU; the tokenizer's identity is checked through a weak reference, so two tokenizers that share
    a ``name_or_path`` never share an entry.
    """
    key = (id(tokenizer), _sha256(text))
    with _token_cache_lock:
        hit = _token_cache.get(key)
        if hit is not None and hit[0]() is tokenizer:
            _token_cache.move_to_end(key)
            return hit[1]
    ids = _encode(tokenizer, text)  # (ntokens,)
    assert ids.dim() == 1, f"expected a 1-D sequence of token ids, got shape {tuple(ids.shape)}"
    try:
        reference = weakref.ref(tokenizer)
    except TypeError:  # an object without weakref support: hold it (the cache is small)
        reference = functools.partial(lambda obj: obj, tokenizer)
    with _token_cache_lock:
        _token_cache[key] = (reference, ids)
        _token_cache.move_to_end(key)
        while len(_token_cache) > _TOKEN_CACHE_SIZE:
            _token_cache.popitem(last=False)
    return ids


def calibration_windows(tokenizer: Any, text: str, nsamples: int, seqlen: int, seed: int) -> torch.Tensor:
    """``nsamples`` random windows of ``seqlen`` tokens from ``text``: a (nsamples, seqlen) long tensor.

    As in the Wanda/SparseGPT data loaders: each window starts at a token index drawn uniformly from
    [0, ntokens - seqlen - 1], here by a ``torch.Generator`` seeded with ``seed`` (same seed, same windows).
    Raises ``CorpusError`` when the text has fewer than seqlen + 1 tokens, or fewer than nsamples x seqlen.
    """
    return random_token_windows(token_ids(tokenizer, text), nsamples, seqlen, seed, source="calibration split")


def evaluation_windows(tokenizer: Any, text: str, seqlen: int, eval_windows: int | None) -> torch.Tensor:
    """The first ``eval_windows`` non-overlapping windows of ``seqlen`` tokens: a (n, seqlen) long tensor.

    eval_windows: how many windows to take from the start of the text; None = all that fit. When fewer fit than
    asked, all that fit are returned (n < eval_windows: the shape tells the caller). Raises ``CorpusError`` when
    not even one window fits.
    """
    if eval_windows is not None and len(text) > TOKENIZE_CHARS:
        # Only the first windows are read: tokenize the pieces that hold them, not the whole text.
        _require_positive(seqlen=seqlen, eval_windows=eval_windows)
        ids = _encode(tokenizer, text, max_tokens=int(eval_windows) * int(seqlen))
    else:
        ids = token_ids(tokenizer, text)
    return consecutive_token_windows(ids, seqlen, eval_windows, source="evaluation split")


def calibration_tokens_needed(nsamples: int, seqlen: int) -> int:
    """Tokens a text needs for `random_token_windows`: nsamples x seqlen, and at least one window plus one
    token (the two checks that function makes), so callers can refuse a short text before reading windows."""
    return max(int(nsamples) * int(seqlen), int(seqlen) + 1)


def random_token_windows(
    token_ids: torch.Tensor, nsamples: int, seqlen: int, seed: int, source: str = "text"
) -> torch.Tensor:
    """``calibration_windows`` on an already tokenized 1-D sequence; ``source`` names it in error messages."""
    _require_positive(nsamples=nsamples, seqlen=seqlen)
    ntokens = int(token_ids.numel())
    if ntokens < seqlen + 1:
        raise CorpusError(
            f"The {source} has {ntokens} tokens but a window of seqlen={seqlen} needs at least {seqlen + 1}: "
            f"choose a shorter seqlen (at most {max(ntokens - 1, 0)}) or a larger corpus."
        )
    if nsamples * seqlen > ntokens:
        raise CorpusError(
            f"nsamples x seqlen = {nsamples} x {seqlen} = {nsamples * seqlen} tokens is larger than the {source} "
            f"({ntokens} tokens): lower nsamples or seqlen, or use a larger corpus."
        )
    generator = torch.Generator().manual_seed(int(seed))
    # randint's upper bound is exclusive: starts lie in [0, ntokens - seqlen - 1], as random.randint in Wanda.
    starts = torch.randint(0, ntokens - seqlen, (nsamples,), generator=generator)  # (nsamples,)
    offsets = starts[:, None] + torch.arange(seqlen)  # (nsamples, seqlen)
    return token_ids.reshape(-1)[offsets].long()  # (nsamples, seqlen); index first: no long copy of the text


def consecutive_token_windows(
    token_ids: torch.Tensor, seqlen: int, eval_windows: int | None, source: str = "text"
) -> torch.Tensor:
    """``evaluation_windows`` on an already tokenized 1-D sequence; ``source`` names it in error messages."""
    _require_positive(seqlen=seqlen)
    if eval_windows is not None:
        _require_positive(eval_windows=eval_windows)
    ntokens = int(token_ids.numel())
    available = ntokens // seqlen
    if available == 0:
        raise CorpusError(
            f"The {source} has {ntokens} tokens, fewer than one window of seqlen={seqlen}: "
            f"choose a shorter seqlen (at most {ntokens}) or a larger corpus."
        )
    count = available if eval_windows is None else min(int(eval_windows), available)
    return token_ids.reshape(-1)[: count * seqlen].to(torch.long, copy=True).reshape(count, seqlen)  # (count, seqlen)


# --------------------------------------------------------------------------------------------------------------
# Dispatch
# --------------------------------------------------------------------------------------------------------------


def _load_split(name: str | os.PathLike, split: str, column: str | None) -> _Split:
    if split not in SPLITS:
        raise CorpusError(f"Unknown split '{split}': use 'calibration' or 'evaluation'.")
    key = os.fspath(name)
    index = SPLITS.index(split)
    if key in EMBEDDED_CORPORA:
        return _embedded_splits(key)[index]
    if key in HUB_CORPORA:
        return _hub_split(key, split)
    path = _resolve_user_file(key)
    stat = path.stat()
    return _user_file_splits(str(path), stat.st_mtime_ns, stat.st_size, column)[index]


def _is_user_file(name: str | os.PathLike) -> bool:
    key = os.fspath(name)
    return key not in EMBEDDED_CORPORA and key not in HUB_CORPORA


#: A stored upload's name: a 12-hex content-hash prefix before the user's own file name (app/services/corpora).
HASH_PREFIXED_NAME = re.compile(r"^[0-9a-f]{12}-(?P<original>.+)$")


def corpus_display_name(name: str | os.PathLike) -> str:
    """How a corpus is named to people and in exported files: embedded and hub corpora by name, a file by its
    own file name (a stored upload's content-hash prefix dropped), never the path it lies at on this machine."""
    key = os.fspath(name)
    if not _is_user_file(key):
        return key
    file_name = Path(key).name
    match = HASH_PREFIXED_NAME.match(file_name)
    return match.group("original") if match else file_name


def without_local_paths(document: Any, corpora: Sequence[str | os.PathLike]) -> Any:
    """`document` (JSON-like) with every path of a user-file corpus among `corpora` replaced by its
    `corpus_display_name`, wherever it appears in a string: what an export writes names files, not folders of
    this machine (the content is identified by its sha256, recorded beside)."""
    paths = sorted({os.fspath(c) for c in corpora if c and _is_user_file(c)}, key=len, reverse=True)
    if not paths:
        return document

    def clean(value: Any) -> Any:
        if isinstance(value, str):
            for path in paths:
                value = value.replace(path, corpus_display_name(path))
            return value
        if isinstance(value, dict):
            return {clean(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(clean(v) for v in value)
        return value

    return clean(document)


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8", errors="surrogatepass")).hexdigest()


def _require_positive(**values: Any) -> None:
    for label, value in values.items():
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{label} must be a positive integer, got {value!r}: set it to 1 or more.")


def _split_by_fraction(documents: Sequence[str], source: str) -> tuple[_Split, _Split]:
    """First 80 % of the documents calibrate, the rest evaluate; at least one document on each side."""
    n = len(documents)
    if n < 2:
        raise CorpusError(
            f"{source} holds {n} document{'s' if n != 1 else ''}, but calibration and evaluation need at least one "
            "each: add more text (separate documents by a blank line in a .txt file)."
        )
    n_calibration = min(max(int(CALIBRATION_FRACTION * n), 1), n - 1)
    return (
        _Split(tuple(documents[:n_calibration]), DOCUMENT_SEPARATOR),
        _Split(tuple(documents[n_calibration:]), DOCUMENT_SEPARATOR),
    )


# --------------------------------------------------------------------------------------------------------------
# Embedded corpora
# --------------------------------------------------------------------------------------------------------------


def _gensim_test_file(filename: str) -> Path:
    spec = importlib.util.find_spec("gensim")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        candidate = Path(location) / "test" / "test_data" / filename
        if candidate.is_file():
            return candidate
    raise CorpusError(
        f"gensim's bundled test file {filename} was not found: reinstall gensim (pip install 'gensim>=4.3') "
        "or use the pydocs corpus or an uploaded file."
    )


@functools.lru_cache(maxsize=None)
def _embedded_splits(name: str) -> tuple[_Split, _Split]:
    if name == "wiki":
        articles = _wiki_articles()
        return (
            _Split(articles[:WIKI_CALIBRATION_ARTICLES], DOCUMENT_SEPARATOR),
            _Split(articles[WIKI_CALIBRATION_ARTICLES:], DOCUMENT_SEPARATOR),
        )
    if name == "news":
        lines = _news_articles()
        return (
            _Split(lines[:NEWS_CALIBRATION_LINES], DOCUMENT_SEPARATOR),
            _Split(lines[NEWS_CALIBRATION_LINES:], DOCUMENT_SEPARATOR),
        )
    if name == "pydocs":
        return _split_by_fraction(_pydocs_topics(), "The pydocs corpus")
    raise AssertionError(f"not an embedded corpus: {name}")


def _wiki_articles() -> tuple[str, ...]:
    """The first WIKI_ARTICLES pages, in file order, whose filter_wiki text exceeds WIKI_MIN_CHARS characters."""
    from gensim.corpora.wikicorpus import extract_pages, filter_wiki

    articles: list[str] = []
    with bz2.open(_gensim_test_file(WIKI_FILE), "rb") as dump:
        for _title, raw_text, _page_id in extract_pages(dump):
            text = filter_wiki(raw_text)
            if len(text) > WIKI_MIN_CHARS:
                articles.append(text.strip())
                if len(articles) == WIKI_ARTICLES:
                    break
    if len(articles) <= WIKI_CALIBRATION_ARTICLES:
        raise CorpusError(
            f"gensim's Wikipedia dump yields only {len(articles)} articles over {WIKI_MIN_CHARS} characters, too few "
            f"for the wiki splits: reinstall gensim or use the news or pydocs corpus."
        )
    return tuple(articles)


def _news_articles() -> tuple[str, ...]:
    raw = _gensim_test_file(NEWS_FILE).read_bytes()
    lines = (line.strip() for line in raw.decode("utf-8", errors="replace").splitlines())
    return tuple(line for line in lines if line)


def _pydocs_topics() -> tuple[str, ...]:
    try:
        from pydoc_data.topics import topics
    except ImportError as exc:  # some distributions strip pydoc_data
        raise CorpusError(
            "This Python has no pydoc_data module (some distributions remove it): use the wiki or news corpus."
        ) from exc
    return tuple(topics[key].strip() for key in sorted(topics))


# --------------------------------------------------------------------------------------------------------------
# User files
# --------------------------------------------------------------------------------------------------------------


def _resolve_user_file(name: str) -> Path:
    path = Path(name).expanduser()
    suffix = path.suffix.lower()
    if not path.exists():
        if suffix or os.sep in name or "/" in name:
            raise CorpusError(f"The corpus file '{name}' does not exist: check the path or upload the file again.")
        raise CorpusError(
            f"Unknown corpus '{name}': choose one of {', '.join(EMBEDDED_CORPORA)} (embedded), "
            f"{', '.join(HUB_CORPORA)} (hub, online only), or give the path of a {_SUPPORTED_FILES_TEXT} file."
        )
    if not path.is_file():
        raise CorpusError(f"'{name}' is not a file: give the path of a {_SUPPORTED_FILES_TEXT} file.")
    return path.resolve()


@functools.lru_cache(maxsize=16)
def _user_file_splits(path_str: str, mtime_ns: int, size: int, column: str | None) -> tuple[_Split, _Split]:
    """Documents of a user file split 80/20; cached by (path, modification time, size, column)."""
    del mtime_ns  # part of the cache key only: an edited file is read again
    path = Path(path_str)
    if size == 0:
        raise CorpusError(f"The corpus file '{path.name}' is empty: upload a file that contains text.")
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        documents = _table_documents(_read_parquet(path), path, column)
    else:
        text = _read_text_file(path)
        if suffix == ".jsonl":
            documents = _jsonl_documents(text, path, column)
        elif suffix == ".json":
            documents = _json_documents(text, path, column)
        elif suffix == ".csv":
            documents = _table_documents(_read_csv(text, path), path, column)
        else:  # .txt, any other extension, or none: plain text
            documents = _txt_documents(text)
    if not documents:
        raise CorpusError(f"The corpus file '{path.name}' contains no text: upload a file with non-empty documents.")
    return _split_by_fraction(documents, f"The corpus file '{path.name}'")


def _read_text_file(path: Path) -> str:
    raw = path.read_bytes()
    if b"\x00" in raw:
        raise CorpusError(
            f"The corpus file '{path.name}' looks binary (it contains NUL bytes), not like text: give a "
            f"{_SUPPORTED_FILES_TEXT} file."
        )
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"The corpus file '{path.name}' is not valid UTF-8 (bad byte at offset {exc.start}): save it as UTF-8 "
            "text and upload it again."
        ) from exc
    head = text[:65536]
    controls = sum(1 for ch in head if ord(ch) < 32 and ch not in "\t\n\r\f\v")
    if head and controls > _BINARY_CONTROL_SHARE * len(head):
        raise CorpusError(
            f"The corpus file '{path.name}' looks binary ({controls} control characters in its first {len(head)} "
            f"characters), not like text: give a {_SUPPORTED_FILES_TEXT} file."
        )
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    if not text.strip():
        raise CorpusError(f"The corpus file '{path.name}' is empty: upload a file that contains text.")
    return text


def _txt_documents(text: str) -> list[str]:
    """Paragraphs separated by blank lines; a text without blank lines falls back to its non-empty lines."""
    paragraphs = [paragraph.strip() for paragraph in re.split(r"\n[ \t]*\n", text)]
    paragraphs = [paragraph for paragraph in paragraphs if paragraph]
    if len(paragraphs) >= 2:
        return paragraphs
    lines = [line.strip() for line in text.split("\n")]
    return [line for line in lines if line]


def _text_value(value: Any, field: str, where: str, path: Path) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise CorpusError(
            f"The field '{field}' {where} of '{path.name}' is a {type(value).__name__}, not a string: choose a "
            "field that holds text."
        )
    return value.strip() or None


def _missing_field(field: str, available: Sequence[Any], where: str, path: Path) -> CorpusError:
    names = ", ".join(repr(str(name)) for name in available) or "none"
    return CorpusError(
        f"'{path.name}' has no field '{field}' {where} (available: {names}): choose the text column."
    )


def _jsonl_documents(text: str, path: Path, column: str | None) -> list[str]:
    field = column or "text"
    documents: list[str] = []
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise CorpusError(
                f"Line {number} of '{path.name}' is not valid JSON ({exc.msg}): write one JSON object per line."
            ) from exc
        if not isinstance(record, dict):
            raise CorpusError(
                f"Line {number} of '{path.name}' is a {type(record).__name__}, not a JSON object: write one object "
                f'per line, such as {{"{field}": "..."}}.'
            )
        if field not in record:
            raise _missing_field(field, list(record), f"on line {number}", path)
        value = _text_value(record[field], field, f"on line {number}", path)
        if value is not None:
            documents.append(value)
    return documents


def _json_documents(text: str, path: Path, column: str | None) -> list[str]:
    field = column or "text"
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        hint = " (one object per line? rename the file to .jsonl)" if exc.msg == "Extra data" else ""
        raise CorpusError(f"'{path.name}' is not valid JSON{hint}: {exc.msg} at line {exc.lineno}.") from exc
    if isinstance(data, list):
        documents = []
        for index, item in enumerate(data):
            if isinstance(item, dict):
                if field not in item:
                    raise _missing_field(field, list(item), f"in item {index}", path)
                value = item[field]
            elif isinstance(item, str) and column is None:
                value = item  # a plain list of strings: each string is a document
            else:
                raise CorpusError(
                    f"Item {index} of '{path.name}' is a {type(item).__name__}: use a list of objects with a "
                    f"'{field}' field."
                )
            cleaned = _text_value(value, field, f"in item {index}", path)
            if cleaned is not None:
                documents.append(cleaned)
        return documents
    if isinstance(data, dict):
        if field not in data:
            raise _missing_field(field, list(data), "at the top level", path)
        column_values = data[field]
        if not isinstance(column_values, list):
            raise CorpusError(
                f"The field '{field}' of '{path.name}' is a {type(column_values).__name__}, not a list: use an "
                "object of lists or a list of objects."
            )
        documents = []
        for index, value in enumerate(column_values):
            cleaned = _text_value(value, field, f"at index {index}", path)
            if cleaned is not None:
                documents.append(cleaned)
        return documents
    raise CorpusError(
        f"'{path.name}' holds a JSON {type(data).__name__}: use a list of objects with a '{field}' field, "
        "or an object of lists."
    )


def _read_csv(text: str, path: Path):
    import pandas as pd

    try:
        return pd.read_csv(io.StringIO(text))
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise CorpusError(f"'{path.name}' could not be read as CSV ({exc}): save it as comma-separated UTF-8.") from exc


def _read_parquet(path: Path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        return pq.read_table(path).to_pandas()
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise CorpusError(
            f"'{path.name}' is not a readable Parquet file ({exc}): export it again as Parquet, or as CSV or JSONL."
        ) from exc


def _table_documents(frame: Any, path: Path, column: str | None) -> list[str]:
    import pandas as pd

    names = [str(name) for name in frame.columns]
    text_columns = [str(name) for name in frame.columns if pd.api.types.is_string_dtype(frame[name].dropna())]
    if column is not None:
        if column not in names:
            raise _missing_field(column, names, "among its columns", path)
        chosen = column
    elif len(text_columns) == 1:
        chosen = text_columns[0]
    elif not text_columns:
        raise CorpusError(
            f"'{path.name}' has no text column (columns: {', '.join(repr(name) for name in names) or 'none'}): "
            "add a column of text."
        )
    else:
        raise CorpusError(
            f"'{path.name}' has several text columns ({', '.join(repr(name) for name in text_columns)}): "
            "choose which column holds the text."
        )
    series = frame[frame.columns[names.index(chosen)]]
    documents = []
    for index, value in enumerate(series.tolist()):
        if value is None or (isinstance(value, float) and value != value):  # None / NaN: an empty cell
            continue
        cleaned = _text_value(value, chosen, f"in row {index}", path)
        if cleaned is not None:
            documents.append(cleaned)
    return documents


# --------------------------------------------------------------------------------------------------------------
# Hub corpora (online only)
# --------------------------------------------------------------------------------------------------------------

_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}
_PROXY_VARIABLES = ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy")


def _offline_error(name: str, reason: str) -> CorpusError:
    return CorpusError(
        f"The hub corpus '{name}' needs internet, but this machine seems offline ({reason}): {_FALLBACK_ADVICE}."
    )


def _hub_offline_reason() -> str | None:
    """Why the hub must not be tried, or None: an offline switch in the environment, or no TCP connection."""
    for variable in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(variable, "").strip().upper() in _TRUE_VALUES:
            return f"{variable} is set"
    if any(os.environ.get(variable) for variable in _PROXY_VARIABLES):
        return None  # a direct connection says nothing behind a proxy: let the datasets library try
    endpoint = urllib.parse.urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host = endpoint.hostname or "huggingface.co"
    port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
    if not _tcp_reachable(host, port, HUB_PROBE_TIMEOUT_S):
        return f"no connection to {host} within {HUB_PROBE_TIMEOUT_S:g} s"
    return None


def _tcp_reachable(host: str, port: int, timeout_s: float) -> bool:
    """Whether a TCP connection to host:port opens within timeout_s seconds (DNS included: run in a thread)."""
    outcome: dict[str, bool] = {}

    def probe() -> None:
        try:
            with socket.create_connection((host, port), timeout=timeout_s):
                outcome["ok"] = True
        except OSError:
            outcome["ok"] = False

    thread = threading.Thread(target=probe, name="prunescope-hub-probe", daemon=True)
    thread.start()
    thread.join(timeout_s + 0.5)  # getaddrinfo ignores socket timeouts; never wait on it longer than this
    return outcome.get("ok", False)


def _looks_like_connection_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (ConnectionError, TimeoutError, socket.gaierror)):
            return True
        if any(word in type(current).__name__ for word in ("Connect", "Timeout", "Offline", "LocalEntryNotFound")):
            return True
        current = current.__cause__ or current.__context__
    return False


def _hub_split(name: str, split: str) -> _Split:
    reason = _hub_offline_reason()
    if reason is not None:
        raise _offline_error(name, reason)
    try:
        return _load_hub_split(name, split)
    except CorpusError:
        raise
    except Exception as exc:  # noqa: BLE001 - any library failure becomes one actionable message
        if _looks_like_connection_error(exc):
            raise _offline_error(name, type(exc).__name__) from exc
        raise CorpusError(
            f"The hub corpus '{name}' could not be loaded ({type(exc).__name__}: {exc}): {_FALLBACK_ADVICE}."
        ) from exc


@functools.lru_cache(maxsize=8)
def _load_hub_split(name: str, split: str) -> _Split:
    """Download (or read from the datasets cache) one split, joined as the Wanda/SparseGPT loaders join it."""
    import datasets

    calibration = split == "calibration"
    if name == "wikitext2":
        rows = datasets.load_dataset(
            "Salesforce/wikitext", "wikitext-2-raw-v1", split="train" if calibration else "test"
        )
        return _Split(tuple(rows["text"]), " " if calibration else "\n\n")
    if name == "c4":
        rows = datasets.load_dataset(
            "allenai/c4",
            data_files={"validation": "en/c4-validation.00000-of-00008.json.gz"},
            split="validation",
        )
        texts = list(rows["text"])
        chosen = texts[C4_EVALUATION_DOCUMENTS:] if calibration else texts[:C4_EVALUATION_DOCUMENTS]
        return _Split(tuple(chosen), " ")
    if name == "ptb":
        rows = datasets.load_dataset("ptb_text_only", "penn_treebank", split="train" if calibration else "test")
        return _Split(tuple(rows["sentence"]), " ")
    raise AssertionError(f"not a hub corpus: {name}")
