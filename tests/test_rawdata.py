import hashlib

import pytest

from ehrbert.rawdata import ROOT, ChecksumError, fetch, read_manifest, verify


def _mirror(tmp_path):
    mirror = tmp_path / "mirror"
    (mirror / "corpus").mkdir(parents=True)
    (mirror / "corpus" / "a.txt").write_text("alpha\n")
    (mirror / "b.txt").write_text("beta\n")
    lines = [
        f"{hashlib.sha256(p.read_bytes()).hexdigest()}  {p.relative_to(mirror)}" for p in sorted(mirror.rglob("*.txt"))
    ]
    manifest = tmp_path / "data.sha256"
    manifest.write_text("\n".join(lines) + "\n")
    return mirror, read_manifest(manifest)


def test_fetch_copies_and_verifies(tmp_path):
    mirror, manifest = _mirror(tmp_path)
    dest = tmp_path / "data"
    fetch(mirror, dest, manifest)
    assert (dest / "corpus" / "a.txt").read_text() == "alpha\n"
    assert verify(dest, manifest) == []
    fetch(mirror, dest, manifest)  # already there: a no-op, not an error


def test_corrupt_mirror_leaves_nothing_behind(tmp_path):
    mirror, manifest = _mirror(tmp_path)
    (mirror / "b.txt").write_text("tampered\n")
    dest = tmp_path / "data"
    with pytest.raises(ChecksumError, match="b.txt: sha256 differs"):
        fetch(mirror, dest, manifest)
    assert not dest.exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".data")] == []


def test_changed_destination_is_reported(tmp_path):
    mirror, manifest = _mirror(tmp_path)
    dest = tmp_path / "data"
    fetch(mirror, dest, manifest)
    (dest / "corpus" / "a.txt").unlink()
    assert verify(dest, manifest) == [f"{dest / 'corpus' / 'a.txt'}: missing"]
    with pytest.raises(ChecksumError, match="does not match the manifest"):
        fetch(mirror, dest, manifest)


def test_malformed_manifest_names_file_and_line(tmp_path):
    manifest = tmp_path / "data.sha256"
    manifest.write_text("0" * 64 + "  ok.txt\nnot-a-checksum  x.txt\n")
    with pytest.raises(ChecksumError, match=r"data.sha256:2: expected"):
        read_manifest(manifest)


def test_repository_manifest_covers_every_source_and_keeps_cadec_out_of_git():
    manifest = read_manifest(ROOT / "data.sha256")
    folders = {name.split("/")[0] for name in manifest}
    assert folders == {"ncbi_disease", "bc5cdr", "medic", "dnorm_abbreviations", "cadec", "mtsamples"}
    assert sum(name.startswith("cadec/text/") for name in manifest) == 1250
    assert "/data" in (ROOT / ".gitignore").read_text().split()


def test_staged_data_matches_manifest(raw_data):
    manifest = read_manifest(ROOT / "data.sha256")
    sample = {name: digest for name, digest in manifest.items() if not name.startswith("cadec/")}
    assert verify(raw_data, sample) == []
