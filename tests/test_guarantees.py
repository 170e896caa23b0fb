"""Promises about what the code and the repository hold, checked on the files themselves.

- Restricted text stays out of git: CADEC is research-only, so no file that git tracks may contain a passage of
  a CADEC post (its figures and examples go to DVC's cache, `reports/restricted/`).
- Weights are read without executing code: nothing under src/ unpickles (`pickle`, `torch.load` without
  `weights_only=True`, `np.load(..., allow_pickle=True)`); weights come through safetensors and plain `.npy`.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PASSAGE = 40  # characters of a post that count as its text


def tracked_text_files() -> list[Path]:
    names = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, text=True, check=True).stdout
    files = []
    for name in filter(None, names.split("\0")):
        path = ROOT / name
        if path.is_file() and b"\0" not in path.read_bytes()[:8192]:
            files.append(path)
    return files


def test_no_cadec_text_in_git(raw_data):
    posts = sorted((raw_data / "cadec" / "text").glob("*.txt"))
    assert len(posts) == 1250
    passages = set()
    for post in posts:
        text = " ".join(post.read_text(errors="replace").split())
        # a passage from the middle of each post: long enough to be the post's own words
        middle = len(text) // 2
        if len(text) >= 2 * PASSAGE:
            passages.add(text[middle - PASSAGE // 2 : middle + PASSAGE // 2])
    assert len(passages) > 1000
    files = tracked_text_files()
    assert files, "git ls-files found nothing"
    leaks = []
    for path in files:
        content = " ".join(path.read_text(errors="replace").split())
        leaks += [(str(path.relative_to(ROOT)), p) for p in passages if p in content]
    assert not leaks, f"CADEC text in git: {leaks[:3]}"


UNSAFE = {
    "pickle": re.compile(r"^\s*(import pickle|from pickle import)|\bpickle\.loads?\(", re.M),
    "torch.load without weights_only=True": re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)[^)]*\)"),
    "np.load with allow_pickle=True": re.compile(r"np\.load\([^)]*allow_pickle\s*=\s*True"),
}


@pytest.mark.parametrize("rule", sorted(UNSAFE))
def test_no_code_executing_weight_loads_in_src(rule):
    found = [
        f"{path.relative_to(ROOT)}:{text[: m.start()].count(chr(10)) + 1}"
        for path in sorted((ROOT / "src").rglob("*.py"))
        for text in [path.read_text()]
        for m in UNSAFE[rule].finditer(text)
    ]
    assert not found, f"{rule}: {found}"


def test_the_unsafe_patterns_would_be_found():
    assert UNSAFE["pickle"].search("import pickle\n") and UNSAFE["pickle"].search("x = pickle.load(f)")
    assert UNSAFE["torch.load without weights_only=True"].search("torch.load(path)")
    assert not UNSAFE["torch.load without weights_only=True"].search("torch.load(path, weights_only=True)")
    assert UNSAFE["np.load with allow_pickle=True"].search("np.load(f, allow_pickle=True)")
