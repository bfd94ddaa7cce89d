"""`FeatureIndex`: read a built index (JSON-ready dicts and lists), from any thread.

Each thread gets its own read-only SQLite connection (sqlite3 objects are not shared across
threads); `close` closes them all."""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np

from saescope.analysis.store import FILE, FORMAT_VERSION, read_only_uri
from saescope.errors import FormatError, InputError
from saescope.runs import sae_folders

ORDERS = ("density", "max_act", "mean_act", "fired", "id")
MAX_LIMIT = 1000


def index_path(path: str | Path, sae: str | None = None) -> Path:
    """The index file of a run folder (its SAE chosen as `Run.sae` chooses: the one named, or
    the only one), of an SAE folder or any folder holding one, or the file itself."""
    path = Path(path)
    if path.is_file():
        return path
    if (path / FILE).is_file() and sae is None:
        return path / FILE
    found = sae_folders(path)
    names = {p.name: p for p in found}
    if not found:
        raise InputError(f"{path} holds no saved SAE and no index; give a run folder or {FILE}")
    if sae is not None:
        if sae not in names:
            raise InputError(f"{path} has no SAE {sae!r}; its SAEs: {', '.join(names)}")
        folder = names[sae]
    elif len(found) > 1:
        raise InputError(
            f"{path} holds several SAEs ({', '.join(names)}); choose one with --sae NAME"
        )
    else:
        folder = found[0]
    db = folder / FILE
    if not db.is_file():
        raise InputError(f"{folder} is not indexed; run saescope index {path}")
    return db


class FeatureIndex:
    """A built feature index. `info`: what it indexes; `feature(i)`: one feature's page;
    `search_token`, `search_text`, `features`: finding features. See docs/INDEX.md."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._local = threading.local()
        self._all: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._closed = False
        con = self._con()
        try:
            meta = dict(con.execute("SELECT key, value FROM meta").fetchall())
            self.vocab = dict(con.execute("SELECT id, text FROM vocab").fetchall())
        except sqlite3.DatabaseError as e:
            raise FormatError(f"{path} is not a saescope index ({e}); build it again") from None
        if json.loads(meta.get("format_version", "0")) != FORMAT_VERSION:
            raise FormatError(f"{path} is an index of another format; build it again")
        self.info: dict[str, Any] = {**json.loads(meta["info"]), "path": str(path)}
        self.d_sae = int(self.info["d_sae"])
        self._ids: dict[str, list[int]] = {}
        for i, text in self.vocab.items():
            self._ids.setdefault(text, []).append(i)

    @classmethod
    def open(cls, path: str | Path, sae: str | None = None) -> FeatureIndex:
        return cls(index_path(path, sae))

    def _con(self) -> sqlite3.Connection:
        if self._closed:
            raise InputError(f"the index {self.path} is closed")
        con = getattr(self._local, "con", None)
        if con is None:
            con = sqlite3.connect(read_only_uri(self.path), uri=True, check_same_thread=False)
            self._local.con = con
            with self._lock:
                self._all.append(con)
        return con

    def close(self) -> None:
        with self._lock:
            self._closed = True
            for con in self._all:
                con.close()
            self._all.clear()

    def __enter__(self) -> FeatureIndex:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def _id(self, i: Any) -> int:
        if isinstance(i, bool) or not isinstance(i, (int, np.integer)):
            raise InputError(f"a feature id is an integer, got {i!r}")
        if not 0 <= int(i) < self.d_sae:
            raise InputError(
                f"feature {i} is out of range; this SAE has features 0 to {self.d_sae - 1}"
            )
        return int(i)

    def feature(self, i: int) -> dict[str, Any]:
        """Feature i's page (see docs/INDEX.md): density, histogram, top examples, interval
        samples, logit tokens, co-firing features, neighbours."""
        i = self._id(i)
        con = self._con()
        density, max_act, mean_act, fired, page = con.execute(
            "SELECT density, max_act, mean_act, fired, page FROM features WHERE id = ?", (i,)
        ).fetchone()
        page = json.loads(page)
        rows = con.execute(
            "SELECT kind, example, position, at, max, tokens, acts FROM examples WHERE feature = ? "
            "ORDER BY slot",
            (i,),
        ).fetchall()
        top: list[dict[str, Any]] = []
        intervals = [{"lo": lo, "hi": hi, "examples": []} for lo, hi in page["intervals"]]
        for kind, example, pos, at, act, toks, acts in rows:
            words = [self.vocab.get(t, "") for t in np.frombuffer(toks, np.int32).tolist()]
            ex = {
                "example": example,
                "tokens": words,
                "acts": np.frombuffer(acts, np.float32).tolist(),
            }
            ex.update(max=act, at=at, position=pos)
            (top if kind == 0 else intervals[kind - 1]["examples"]).append(ex)
        logits = page["logits"]
        if logits is not None:
            logits = {k: self._tokens(*logits[k]) for k in ("top", "bottom")}
        return {
            "id": i,
            "density": density,
            "max_act": max_act,
            "mean_act": mean_act,
            "fired": fired,
            "histogram": page["histogram"],
            "top": top,
            "intervals": intervals,
            "logits": logits,
            "cofiring": page["cofiring"],
            "neighbours": page["neighbours"],
        }

    def _tokens(self, ids: list[int], values: list[float]) -> list[dict[str, Any]]:
        return [
            {"token": self.vocab.get(t, ""), "value": v} for t, v in zip(ids, values, strict=True)
        ]

    @staticmethod
    def _limit(limit: int, offset: int = 0) -> None:
        if not (isinstance(limit, int) and 1 <= limit <= MAX_LIMIT):
            raise InputError(f"limit must be an integer from 1 to {MAX_LIMIT}, got {limit!r}")
        if not (isinstance(offset, int) and offset >= 0):
            raise InputError(f"offset must be an integer >= 0, got {offset!r}")

    def search_token(self, token: str, limit: int = 20) -> list[dict[str, Any]]:
        """Features that peak on `token` (its exact text, e.g. " Queen"): count: how many of
        a feature's top examples have their maximum on it, mean_act: their mean maximum;
        most such examples first."""
        self._limit(limit)
        if not isinstance(token, str) or not token:
            raise InputError("the token to search for is empty; give its text, e.g. ' Queen'")
        ids = self._ids.get(token, [])
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = (
            self._con()
            .execute(
                "SELECT p.feature, SUM(p.count) AS n, SUM(p.count * p.mean_act) / SUM(p.count) "
                "AS m, f.density FROM peaks p JOIN features f ON f.id = p.feature "
                f"WHERE p.token IN ({marks}) "
                "GROUP BY p.feature ORDER BY n DESC, m DESC, p.feature LIMIT ?",
                (*ids, limit),
            )
            .fetchall()
        )
        return [{"feature": f, "count": n, "mean_act": m, "density": d} for f, n, m, d in rows]

    def search_text(self, text: str, limit: int = 20) -> list[dict[str, Any]]:
        """Features whose top examples contain `text` (case-sensitive); count: how many of
        them do. Most such examples first."""
        self._limit(limit)
        if not isinstance(text, str) or not text:
            raise InputError("the text to search for is empty; give some text, e.g. 'Queen'")
        rows = (
            self._con()
            .execute(
                "SELECT t.feature, COUNT(*) AS n, f.density FROM texts t JOIN features f "
                "ON f.id = t.feature WHERE instr(t.text, ?) > 0 GROUP BY t.feature "
                "ORDER BY n DESC, t.feature LIMIT ?",
                (text, limit),
            )
            .fetchall()
        )
        return [{"feature": f, "count": n, "density": d} for f, n, d in rows]

    def features(
        self,
        order: str = "density",
        descending: bool = True,
        lo: float | None = None,
        hi: float | None = None,
        limit: int = 50,
        offset: int = 0,
    ) -> list[dict[str, Any]]:
        """Features by `order` (density, max_act, mean_act, fired or id), with density in
        [lo, hi] when given."""
        if order not in ORDERS:
            raise InputError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        self._limit(limit, offset)
        where, args = [], []
        for op, v in ((">=", lo), ("<=", hi)):
            if v is not None:
                if not isinstance(v, (int, float)) or v != v:
                    raise InputError(f"density bounds are numbers, got {v!r}")
                where.append(f"density {op} ?")
                args.append(float(v))
        sql = "SELECT id, density, max_act, mean_act FROM features"
        sql += f" WHERE {' AND '.join(where)}" if where else ""
        sql += f" ORDER BY {order} {'DESC' if descending else 'ASC'}, id LIMIT ? OFFSET ?"
        rows = self._con().execute(sql, (*args, limit, offset)).fetchall()
        return [{"feature": i, "density": d, "max_act": m, "mean_act": a} for i, d, m, a in rows]
