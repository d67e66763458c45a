"""The bundle format: round trips, the seed config, hub cache, refused architectures, damage."""

import json
import os
import shutil
import socket
import struct

import equinox as eqx
import jax
import numpy as np
import pytest
from conftest import fixture_path

import ilex
from ilex.errors import BundleError, FileProblem
from ilex.models.params import parameter_names, template

E32 = fixture_path("net_e32_uniform.h5")


@pytest.fixture(scope="module")
def e32():
    return ilex.load(E32), np.load(fixture_path("net_e32_uniform.npz"))


def _out(model, ref):
    lam = float(ref["hyper"][0])
    if isinstance(model, ilex.SynthMorphUNet):
        return np.asarray(model(ref["half_mov"][0], ref["half_fix"][0]))
    return np.asarray(model(lam, ref["half_mov"][0], ref["half_fix"][0]))


def test_save_load_round_trip(e32, tmp_path):
    model, ref = e32
    ilex.save(model, tmp_path / "b")
    assert sorted(os.listdir(tmp_path / "b")) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    assert config["_ilex"]["architecture"] == "ilex.models.synthmorph_deform.model.SynthMorphDeform"
    assert "FreeSurfer Software License" in config["copyright"]
    np.testing.assert_array_equal(_out(ilex.load(tmp_path / "b"), ref), _out(model, ref))


def test_fixed_lambda_bundle_round_trip(e32, tmp_path):
    model, ref = e32
    unet = model.at_hyper(float(ref["hyper"][0]))
    ilex.save(unet, tmp_path / "u")
    loaded = ilex.load(tmp_path / "u")
    assert isinstance(loaded, ilex.SynthMorphUNet) and loaded.hyper == unet.hyper
    # The round trip is exact; the fixed U-Net against the hypernetwork differs by float32
    # rounding only (bit-identical with jax 0.10.2, 3.5e-7 relative with jax 0.8.1's XLA).
    np.testing.assert_array_equal(_out(loaded, ref), _out(unet, ref))
    np.testing.assert_allclose(_out(loaded, ref), _out(model, ref), rtol=2e-6, atol=0)


def test_save_refuses_non_empty_directory(e32, tmp_path):
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "keep.txt").write_text("user data")
    with pytest.raises(FileProblem, match="not empty"):
        ilex.save(e32[0], tmp_path / "b")
    assert os.listdir(tmp_path / "b") == ["keep.txt"]


def _write_sparse_safetensors(path, tensors):
    """A valid safetensors file of zeros whose data section is a hole (no disk, no time)."""
    header, offset = {}, 0
    for name, shape in tensors:
        size = 4 * int(np.prod(shape))
        header[name] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)


@pytest.mark.slow
def test_seed_config_loads_with_foreign_tensor_names(tmp_path):
    """The seed's config.json, unchanged, with a full-width safetensors named differently."""
    bundle = tmp_path / "seed"
    bundle.mkdir()
    shutil.copy(fixture_path("seed_config.json"), bundle / "config.json")
    cls, kwargs = ilex.SynthMorphDeform, json.loads((bundle / "config.json").read_text())["_ilex"]["constructor_kwargs"]
    expected = parameter_names(template(cls, kwargs))
    # A publisher's own naming: "hypernet.dense{i}.w/b", "unet.layer{k}.{a,b,c,d}" (k natural order).
    foreign = []
    for name, shape in expected:
        parts = name.split(".")
        if parts[0] == "hyper_layers":
            foreign.append((f"hypernet.dense{parts[1]}.{'w' if parts[2] == 'kernel' else 'b'}", shape))
        else:
            leaf = {"hyperkernel_kernel": "a", "hyperkernel_bias": "b", "hyperbias_kernel": "c", "hyperbias_bias": "d"}[
                parts[2]
            ]
            foreign.append((f"unet.layer{parts[1]}.{leaf}", shape))
    _write_sparse_safetensors(bundle / "model.safetensors", foreign[::-1])
    model = ilex.load(bundle)
    assert isinstance(model, ilex.SynthMorphDeform)
    assert sum(int(np.prod(s)) for _, s in expected) == 877_133_827
    assert [tuple(x.shape) for x in (model.convs[5].hyperkernel_kernel, model.convs[12].hyperbias_bias)] == [
        (32, 3538944),
        (3,),
    ]


def test_mismatched_shapes_say_what_differs(e32, tmp_path):
    ilex.save(e32[0], tmp_path / "b")
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    config["_ilex"]["constructor_kwargs"]["add_nf"] = [8, 8, 8, 16]
    (tmp_path / "b" / "config.json").write_text(json.dumps(config))
    with pytest.raises(BundleError, match=r"expected \(32, 3456\), found \(32, 1728\)"):
        ilex.load(tmp_path / "b")


def test_ambiguous_foreign_names_are_refused(e32, tmp_path):
    ilex.save(e32[0], tmp_path / "b")
    names = parameter_names(e32[0])
    _write_sparse_safetensors(tmp_path / "b" / "model.safetensors", [(f"t{i}", s) for i, (_, s) in enumerate(names)])
    with pytest.raises(BundleError, match="does not match by shape"):
        ilex.load(tmp_path / "b")


@pytest.mark.parametrize("arch", ["os.system", "builtins.eval", "ilex.bundle.io.save", "torch.nn.Module"])
def test_unknown_architecture_is_refused_not_imported(e32, tmp_path, arch, monkeypatch):
    ilex.save(e32[0], tmp_path / "b")
    config = json.loads((tmp_path / "b" / "config.json").read_text())
    config["_ilex"]["architecture"] = arch
    (tmp_path / "b" / "config.json").write_text(json.dumps(config))
    import importlib

    def no_import(*a, **k):
        raise AssertionError("a config must never trigger an import")

    monkeypatch.setattr(importlib, "import_module", no_import)
    with pytest.raises(BundleError, match="refused"):
        ilex.load(tmp_path / "b")


def test_hub_repo_id_from_local_cache_offline(e32, tmp_path, monkeypatch):
    model, ref = e32
    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--ilex-hub--synthmorph.deform.3"
    ilex.save(model, tmp_path / "b")
    snap = repo / "snapshots" / commit
    snap.parent.mkdir(parents=True)
    shutil.copytree(tmp_path / "b", snap)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)

    def no_network(*a, **k):
        raise AssertionError("network access in a test")

    monkeypatch.setattr(socket, "socket", no_network)
    loaded = ilex.load(ilex.DEFAULT_REPO_ID, cache_dir=str(cache))
    np.testing.assert_array_equal(_out(loaded, ref), _out(model, ref))
    with pytest.raises(BundleError, match="not in the local Hugging Face cache"):
        ilex.load("ilex-hub/not-cached", cache_dir=str(cache))


def test_damaged_safetensors_is_detected(e32, tmp_path):
    ilex.save(e32[0], tmp_path / "b")
    path = tmp_path / "b" / "model.safetensors"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0x40  # a flipped bit in the last tensor's data
    path.write_bytes(bytes(data))
    with pytest.raises(BundleError, match="checksum"):
        ilex.load(tmp_path / "b")
    path.write_bytes(bytes(data[: len(data) // 2]))
    with pytest.raises(BundleError, match="model.safetensors"):
        ilex.load(tmp_path / "b")


def test_digest_is_computed_only_when_one_is_recorded(e32, tmp_path, monkeypatch):
    """Hashing reads the whole weights file (3.5 GB for FreeSurfer's), so without a recorded
    digest there is nothing to compare with and the file must not be hashed."""
    from safetensors.numpy import save_file

    import ilex.bundle.io as bundle_io

    calls = []
    real = bundle_io.data_checksum
    monkeypatch.setattr(bundle_io, "data_checksum", lambda path: calls.append(path) or real(path))
    ilex.save(e32[0], tmp_path / "with")
    ilex.load(tmp_path / "with")
    assert len(calls) == 1  # digests recorded: checked
    # The same weights written by another tool, with no digest in the header or in config.json.
    plain = tmp_path / "without"
    plain.mkdir()
    config = json.loads((tmp_path / "with" / "config.json").read_text())
    del config["_ilex"]["weights_sha256"]
    (plain / "config.json").write_text(json.dumps(config))
    names = [n for n, _ in parameter_names(e32[0])]
    leaves = [np.asarray(x) for x in jax.tree_util.tree_leaves(eqx.filter(e32[0], eqx.is_array))]
    save_file(dict(zip(names, leaves, strict=True)), str(plain / "model.safetensors"))
    np.testing.assert_array_equal(_out(ilex.load(plain), e32[1]), _out(e32[0], e32[1]))
    assert len(calls) == 1, "a file without a recorded digest was hashed"


def test_bad_config_json(e32, tmp_path):
    ilex.save(e32[0], tmp_path / "b")
    (tmp_path / "b" / "config.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        ilex.load(tmp_path / "b")
    (tmp_path / "b" / "config.json").write_text(json.dumps({"name": "x"}))
    with pytest.raises(BundleError, match="_ilex"):
        ilex.load(tmp_path / "b")


def test_missing_path_is_clear(tmp_path):
    with pytest.raises(FileProblem, match="no such file"):
        ilex.load(tmp_path / "nothing" / "here")
