"""Text sources (`read_texts`: files, folders, JSONL, the default corpus), the token
fingerprint and where the default corpus lives. `install` needs the network: never run here
(`make corpus` has installed the corpus before the tests)."""

import hashlib
import json

import numpy as np
import pytest

from saescope.data.corpus import DEFAULT, default_dir, fingerprint, read_texts
from saescope.errors import InputError
from saescope.native import cache_dir


def test_files_are_read_in_the_order_given(tmp_path):
    (tmp_path / "b.txt").write_text("bee")
    (tmp_path / "a.md").write_text("ay")
    (tmp_path / "notes.csv").write_text("given by name, so read whatever its suffix")
    assert read_texts([tmp_path / "b.txt", tmp_path / "a.md"]) == ["bee", "ay"]
    assert read_texts([str(tmp_path / "notes.csv")]) == [
        "given by name, so read whatever its suffix"
    ]


def test_folders_are_read_recursively_in_sorted_order(tmp_path):
    root = tmp_path / "corpus"
    (root / "z" / "deeper").mkdir(parents=True)
    (root / "b.txt").write_text("b")
    (root / "a.rst").write_text("a")
    (root / "z" / "deeper" / "c.text").write_text("c")
    (root / "z" / "d.jsonl").write_text(json.dumps({"text": "d"}) + "\n")
    (root / "skip.py").write_text("not text")
    (root / "skip.json").write_text('{"text": "not jsonl"}')
    (root / "LICENCE.txt").write_text("a licence is not a document")
    (root / "blank.txt").write_text(" \n\t")
    # sorted by path: z/d.jsonl before z/deeper/c.text
    assert read_texts([root]) == ["a", "b", "d", "c"]
    assert read_texts([root / "z", tmp_path / "corpus" / "b.txt"]) == ["d", "c", "b"]


def test_jsonl_gives_the_text_field_of_each_line(tmp_path):
    path = tmp_path / "docs.jsonl"
    rows = [{"text": "first", "id": 1}, {"text": "  "}, {"text": "second\nline"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    assert read_texts([path]) == ["first", "second\nline"]  # blank documents dropped


@pytest.mark.parametrize(
    ("lines", "says"),
    [
        ('{"text": "ok"}\n{"text": 3}\n', r'docs.jsonl:2: expected an object with a "text" string'),
        ('{"text": "ok"}\n\n["text"]\n', r'docs.jsonl:3: expected an object with a "text"'),
        ('{"text": "ok"}\n{oops\n', r"docs.jsonl:2: not JSON .*; give one object per line"),
    ],
)
def test_bad_jsonl_lines_are_named(tmp_path, lines, says):
    (tmp_path / "docs.jsonl").write_text(lines)
    with pytest.raises(InputError, match=says):
        read_texts([tmp_path / "docs.jsonl"])


def test_no_text_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no text found in .*empty; the corpus is empty"):
        read_texts([tmp_path / "empty"])
    (tmp_path / "blank.txt").write_text("\n\n")
    with pytest.raises(InputError, match="the corpus is empty"):
        read_texts([tmp_path / "blank.txt"])
    with pytest.raises(InputError, match=r"missing\.txt: no such file or folder"):
        read_texts([tmp_path / "blank.txt", tmp_path / "missing.txt"])


def test_undecodable_bytes_are_replaced(tmp_path):
    (tmp_path / "latin.txt").write_bytes(b"caf\xe9 au lait")
    assert read_texts([tmp_path / "latin.txt"]) == ["caf\ufffd au lait"]


def test_the_default_corpus_is_read_when_no_text_is_given():
    root = default_dir()
    docs = read_texts(None)
    assert read_texts([]) == docs == read_texts([root])
    files = sorted(p for p in root.rglob("*.txt") if p.name != "LICENCE.txt")
    assert len(docs) == len(files) >= 40
    assert docs[0] == files[0].read_text(errors="replace")
    assert not any("CC BY 2.5" in d for d in docs)  # the licence file is not a document
    assert any("Of Mans First Disobedience" in d for d in docs)  # Milton is in
    assert any("Now is the winter of our discontent" in d for d in docs)


def test_a_missing_default_corpus_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("SAESCOPE_CACHE", str(tmp_path))
    with pytest.raises(InputError, match=r"not installed in .*; run `make corpus`"):
        read_texts(None)


def test_default_dir_is_in_the_user_cache_folder(tmp_path, monkeypatch):
    assert default_dir() == cache_dir() / "corpora" / DEFAULT
    monkeypatch.delenv("SAESCOPE_CACHE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_dir() == tmp_path / "xdg" / "saescope" / "corpora" / "shakespeare"
    monkeypatch.setenv("SAESCOPE_CACHE", str(tmp_path / "own"))
    assert default_dir() == tmp_path / "own" / "corpora" / "shakespeare"


def test_fingerprint_is_a_stable_order_sensitive_hash():
    ids = [5, 1, 1023, 7]
    fp = fingerprint(ids)
    assert len(fp) == 16 and int(fp, 16) >= 0
    assert fingerprint(list(ids)) == fp == fingerprint(tuple(ids))
    assert fingerprint(np.array(ids, dtype=np.int32)) == fp  # the ids, not their container
    want = hashlib.sha256(np.array(ids, dtype=np.int64).tobytes()).hexdigest()[:16]
    assert fp == want
    assert fingerprint([1, 5, 1023, 7]) != fp  # order matters
    assert fingerprint([5, 1, 1023]) != fp and fingerprint([5, 1, 1023, 7, 0]) != fp


def test_text_sources_files_folders_jsonl_and_errors(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("one")
    (tmp_path / "d" / "sub" / "b.md").write_text("two")
    (tmp_path / "d" / "c.jsonl").write_text('{"text": "three"}\n\n{"text": "four"}\n')
    assert read_texts([tmp_path / "d"]) == ["one", "three", "four", "two"]
    (tmp_path / "bad.jsonl").write_text('{"body": 1}\n')
    with pytest.raises(InputError, match=r'bad.jsonl:1: expected an object with a "text"'):
        read_texts([tmp_path / "bad.jsonl"])
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(InputError, match="the corpus is empty"):
        read_texts([tmp_path / "empty.txt"])
    with pytest.raises(InputError, match="no such file or folder"):
        read_texts([tmp_path / "nope.txt"])


def test_default_corpus_is_installed_with_its_licence():
    docs = read_texts(None)
    assert "public domain" in (default_dir() / "LICENCE.txt").read_text()
    assert len(docs) >= 40 and sum(map(len, docs)) > 5_000_000
    assert any("To be, or not to be" in d for d in docs)
