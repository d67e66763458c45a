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
    assert {source for source, _, _ in data.FILES.values()} <= set(data.VERSIONS)
    assert all(len(digest) == 64 and int(digest, 16) >= 0 for _, _, digest in data.FILES.values())


def test_a_file_with_other_bytes_is_refused_by_name(tmp_path):
    with pytest.raises(data.ChecksumError, match="mni2009a_t1.nii.gz"):
        data._store("mni2009a_t1.nii.gz", b"not the template", str(tmp_path))
    assert not (tmp_path / "mni2009a_t1.nii.gz").exists()
    (tmp_path / "colin27_t1.nii.gz").write_bytes(b"stale")
    assert data.verify(str(tmp_path)) == ["colin27_t1.nii.gz"]
