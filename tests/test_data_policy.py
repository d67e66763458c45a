"""The test-data policy: pinned bytes, and no silent skipping where data is required (CI)."""

import data
import pytest


def test_missing_data_skips_locally_and_fails_when_required(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DATA", str(tmp_path))
    monkeypatch.delenv("ILEX_REQUIRE_DATA", raising=False)
    with pytest.raises(pytest.skip.Exception, match="colin27_t1.nii.gz"):
        data.data_path("colin27_t1.nii.gz")
    monkeypatch.setenv("ILEX_REQUIRE_DATA", "1")
    with pytest.raises(pytest.fail.Exception, match="colin27_t1.nii.gz.*ILEX_REQUIRE_DATA"):
        data.data_path("colin27_t1.nii.gz")


def test_every_source_is_pinned_and_every_file_has_a_digest():
    """Each digest is written as hashlib writes one, 64 lowercase hex digits: `_store` compares the
    text, so an uppercase pin would refuse the right bytes. Mutation (monkeypatching data.FILES):
    colin27_t1's digest in uppercase fails here, naming it. Before, `int(digest, 16) >= 0` held for
    any hex text, uppercase included."""
    import re

    assert {source for source, _, _ in data.FILES.values()} <= set(data.VERSIONS)
    for name, (_, _, digest) in data.FILES.items():
        assert re.fullmatch(r"[0-9a-f]{64}", digest), (name, digest)


@pytest.mark.realdata
@pytest.mark.parametrize("name", sorted(data.FILES))
def test_pinned_digest_is_the_fetched_files_own(name):
    """The pinned SHA-256 is that of the file the tests read, hashed here with hashlib, not through
    tests/data.py. Mutation (monkeypatching data.FILES): one hex digit of colin27_t1's digest changed
    (the first, a -> b) fails here for that file alone."""
    import hashlib

    with open(data.data_path(name), "rb") as f:
        assert hashlib.sha256(f.read()).hexdigest() == data.FILES[name][2]


def test_a_file_with_other_bytes_is_refused_by_name(tmp_path):
    with pytest.raises(data.ChecksumError, match="mni2009a_t1.nii.gz"):
        data._store("mni2009a_t1.nii.gz", b"not the template", str(tmp_path))
    assert not (tmp_path / "mni2009a_t1.nii.gz").exists()
    (tmp_path / "colin27_t1.nii.gz").write_bytes(b"stale")
    assert data.verify(str(tmp_path)) == ["colin27_t1.nii.gz"]
