"""The index's one file: an SQLite database (Python's own sqlite3; bench/INDEX.md says why
SQLite over DuckDB). Written to a temp file beside the target, then renamed over it, so a
reader sees the old index or the new one, never half of one. docs/INDEX.md lists the tables.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from saescope.analysis.pages import FeatureRows

FILE = "index.sqlite"
FORMAT_VERSION = 1

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE features (id INTEGER PRIMARY KEY, density REAL NOT NULL, max_act REAL NOT NULL,
    mean_act REAL NOT NULL, fired INTEGER NOT NULL, page TEXT NOT NULL);
CREATE TABLE examples (feature INTEGER NOT NULL, slot INTEGER NOT NULL, kind INTEGER NOT NULL,
    example INTEGER NOT NULL, position INTEGER NOT NULL, at INTEGER NOT NULL,
    max REAL NOT NULL, tokens BLOB NOT NULL, acts BLOB NOT NULL,
    PRIMARY KEY (feature, slot)) WITHOUT ROWID;
CREATE TABLE peaks (token INTEGER NOT NULL, feature INTEGER NOT NULL, count INTEGER NOT NULL,
    mean_act REAL NOT NULL, PRIMARY KEY (token, feature)) WITHOUT ROWID;
CREATE TABLE texts (feature INTEGER NOT NULL, text TEXT NOT NULL);
CREATE TABLE vocab (id INTEGER PRIMARY KEY, text TEXT NOT NULL);
"""
INDEXES = """
CREATE INDEX features_density ON features (density);
CREATE INDEX features_max_act ON features (max_act);
CREATE INDEX features_mean_act ON features (mean_act);
CREATE INDEX features_fired ON features (fired);
"""
CHUNK = 512
"""Features written per executemany."""


def write(
    path: Path,
    info: dict[str, Any],
    rows: Iterable[FeatureRows],
    decode: Callable[[int], str],
    extra_ids: Iterable[int] = (),
) -> Path:
    """Write the index to `path` atomically: `rows` every feature's, `decode(id)` a token's
    text (asked once per token id used), extra_ids more ids the pages name (logit tokens)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    vocab: dict[int, str] = {}

    def text(i: int) -> str:
        if i not in vocab:
            vocab[i] = decode(i)
        return vocab[i]

    con = sqlite3.connect(tmp)
    try:
        con.executescript("PRAGMA journal_mode=OFF; PRAGMA synchronous=OFF;" + SCHEMA)
        meta = {"info": info, "format_version": FORMAT_VERSION}
        con.executemany(
            "INSERT INTO meta VALUES (?, ?)", [(k, json.dumps(v)) for k, v in meta.items()]
        )
        batch: list[FeatureRows] = []
        for r in rows:
            batch.append(r)
            if len(batch) == CHUNK:
                _insert(con, batch, text)
                batch = []
        _insert(con, batch, text)
        for i in extra_ids:
            text(i)
        con.executemany("INSERT INTO vocab VALUES (?, ?)", sorted(vocab.items()))
        con.executescript(INDEXES)
        con.commit()
    finally:
        con.close()
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    return path


def _insert(con: sqlite3.Connection, batch: list[FeatureRows], text: Callable[[int], str]) -> None:
    feats, examples, peaks, texts = [], [], [], []
    for r in batch:
        i, density, max_act, mean_act, fired, page = r.feature
        feats.append((i, density, max_act, mean_act, fired, json.dumps(page)))
        for slot, kind, example, pos, at, act, toks, acts in r.examples:
            examples.append((i, slot, kind, example, pos, at, act, toks.tobytes(), acts.tobytes()))
            if kind == 0:
                texts.append((i, "".join(text(t) for t in toks.tolist())))
        for tok, acts_on in r.peaks.items():
            peaks.append((tok, i, len(acts_on), sum(acts_on) / len(acts_on)))
    con.executemany("INSERT INTO features VALUES (?, ?, ?, ?, ?, ?)", feats)
    con.executemany("INSERT INTO examples VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", examples)
    con.executemany("INSERT INTO peaks VALUES (?, ?, ?, ?)", peaks)
    con.executemany("INSERT INTO texts VALUES (?, ?)", texts)


def read_only_uri(path: str | Path) -> str:
    """The SQLite URI that opens `path` read-only; the path is percent-encoded, so a folder
    named with '#', '?' or '%' opens that file and no other."""
    return f"{Path(path).resolve().as_uri()}?mode=ro"


def built(path: Path, meta: dict[str, Any]) -> bool:
    """Whether `path` is an index built with the record `meta` (its info's "build")."""
    if not path.is_file():
        return False
    try:
        con = sqlite3.connect(read_only_uri(path), uri=True)
        try:
            row = con.execute("SELECT value FROM meta WHERE key = 'info'").fetchone()
        finally:
            con.close()
        return row is not None and json.loads(row[0]).get("build") == meta
    except (sqlite3.DatabaseError, json.JSONDecodeError):
        return False
