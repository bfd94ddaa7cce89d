"""Activation files: `read_activations` (.npy memory-mapped, .safetensors with one tensor or
x/y, and every bad file named) and `ActivationFile`, the shuffling stream over one."""

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from saescope.data.files import ActivationFile, read_activations
from saescope.errors import ConfigError, InputError


def _rows(n: int, d: int = 3) -> np.ndarray:
    """Row i is (i, i + 0.5, ...): each row says its index."""
    return (np.arange(n, dtype=np.float32)[:, None] + np.arange(d) * 0.5).astype(np.float32)


@pytest.fixture
def npy(tmp_path):
    path = tmp_path / "acts.npy"
    np.save(path, _rows(12))
    return path


@pytest.fixture
def xy(tmp_path):
    path = tmp_path / "xy.safetensors"
    x = torch.from_numpy(_rows(12))
    save_file({"x": x, "y": torch.cat([2 * x, -x[:, :1]], 1)}, path)  # y (12, 4)
    return path


# ----- read_activations --------------------------------------------------------------------------


def test_npy_is_memory_mapped(npy):
    x, y = read_activations(npy)
    assert isinstance(x, np.memmap) and y is None
    assert x.shape == (12, 3) and np.array_equal(np.asarray(x), _rows(12))


def test_safetensors_with_one_tensor_or_x_and_y(tmp_path, xy):
    one = tmp_path / "one.safetensors"
    save_file({"acts": torch.from_numpy(_rows(5)).half()}, one)
    x, y = read_activations(one)
    assert y is None and x.dtype == torch.float16 and x.shape == (5, 3)
    x, y = read_activations(xy)
    assert x.shape == (12, 3) and y.shape == (12, 4)
    assert torch.equal(y[:, :3], 2 * x)
    only_x = tmp_path / "x.safetensors"
    save_file({"x": torch.ones(4, 2), "other": torch.ones(1)}, only_x)
    x, y = read_activations(only_x)  # "x" present: other tensors are not data
    assert x.shape == (4, 2) and y is None


def _save(path, **tensors):
    if path.suffix == ".npy":
        (arr,) = tensors.values()
        np.save(path, arr, allow_pickle=True)
    else:
        save_file({k: torch.as_tensor(v) for k, v in tensors.items()}, path)
    return path


@pytest.mark.parametrize(
    ("name", "tensors", "says"),
    [
        ("a.npy", {"a": np.arange(12, dtype=np.int32).reshape(4, 3)}, "dtype int32; expected"),
        ("a.npy", {"a": np.zeros(5, np.float32)}, r"shape \(5,\); expected \(N, d\)"),
        ("a.npy", {"a": np.zeros((0, 3), np.float32)}, r"shape \(0, 3\); expected .* N >= 1"),
        ("a.npy", {"a": np.zeros((2, 3, 4), np.float32)}, r"shape \(2, 3, 4\)"),
        ("a.npy", {"a": np.array([[{"x": 1}]], dtype=object)}, "not a readable .npy array"),
        ("a.safetensors", {"t": torch.zeros(4, dtype=torch.int64)}, "shape"),
        ("a.safetensors", {"t": torch.zeros(4, 2, dtype=torch.int64)}, "t has dtype"),
        ("a.safetensors", {"a": torch.zeros(3, 2), "b": torch.zeros(3, 2)}, r"holds \['a', 'b'\]"),
        (
            "a.safetensors",
            {"x": torch.zeros(5, 2), "y": torch.zeros(4, 2)},
            "x has 5 rows but y has 4",
        ),
        (
            "a.safetensors",
            {"x": torch.zeros(5, 2), "y": torch.zeros(5, dtype=torch.int32)},
            "y has shape",
        ),
        ("a.safetensors", {"x": torch.zeros(5), "y": torch.zeros(5, 2)}, r"x has shape \(5,\)"),
    ],
)
def test_bad_files_are_named_with_the_fix(tmp_path, name, tensors, says):
    path = _save(tmp_path / name, **tensors)
    with pytest.raises(InputError, match=says) as e:
        read_activations(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


def test_missing_unsupported_and_corrupt_files(tmp_path):
    with pytest.raises(InputError, match=r"unsupported file type; use \.npy or \.safetensors"):
        read_activations(tmp_path / "acts.pt")
    (tmp_path / "acts.csv").write_text("1,2\n")
    with pytest.raises(InputError, match="unsupported file type"):
        read_activations(tmp_path / "acts.csv")
    with pytest.raises(InputError, match="no such file"):
        read_activations(tmp_path / "missing.npy")
    (tmp_path / "bad.npy").write_bytes(b"not an array")
    with pytest.raises(InputError, match=r"not a readable \.npy array"):
        read_activations(tmp_path / "bad.npy")
    (tmp_path / "bad.safetensors").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00{")
    with pytest.raises(InputError, match="not a readable safetensors file"):
        read_activations(tmp_path / "bad.safetensors")


# ----- ActivationFile ----------------------------------------------------------------------------


def test_the_stream_says_what_it_gives(npy, xy):
    f = ActivationFile(npy, batch_size=5)
    assert (f.d_in, f.d_out, f.y_is_x, f.tokens_per_batch, f.per_epoch) == (3, 3, True, 5, 2)
    x, y = f.batch(0)
    assert x.shape == (5, 3) and x.dtype == torch.float32 and y is x
    t = ActivationFile(xy, batch_size=100)  # more than the file holds: all of it
    assert (t.d_in, t.d_out, t.y_is_x, t.tokens_per_batch, t.per_epoch) == (3, 4, False, 12, 1)
    x, y = t.batch(0)
    assert y.shape == (12, 4) and torch.equal(y[:, :3], 2 * x)  # pairs stay aligned
    with pytest.raises(ConfigError, match="batch_size must be >= 1, got 0"):
        ActivationFile(npy, batch_size=0)


def test_batch_i_is_a_function_of_seed_and_i(npy):
    a = ActivationFile(npy, batch_size=4, seed=3)
    b = ActivationFile(npy, batch_size=4, seed=3)
    later = [b.batch(i)[0] for i in (10, 2, 7)]  # another order, across epochs
    assert all(torch.equal(a.batch(i)[0], g) for i, g in zip((10, 2, 7), later, strict=True))
    c = ActivationFile(npy, batch_size=4, seed=4)
    assert any(not torch.equal(c.batch(i)[0], a.batch(i)[0]) for i in range(3))
    it = a.iter_from(4)
    assert torch.equal(next(it)[0], a.batch(4)[0]) and torch.equal(next(it)[0], a.batch(5)[0])


def test_an_epoch_covers_every_row_once(npy):
    f = ActivationFile(npy, batch_size=4, seed=1)  # 12 rows: 3 batches an epoch
    epochs = []
    for e in range(3):
        rows = torch.cat([f.batch(3 * e + j)[0] for j in range(3)])[:, 0].long().tolist()
        assert sorted(rows) == list(range(12))
        epochs.append(rows)
    assert epochs[0] != epochs[1] != epochs[2]
    x, _ = f.batch(1)
    assert x[:, 0].tolist() == sorted(x[:, 0].tolist())  # rows read in file order
    torch.testing.assert_close(x, torch.from_numpy(_rows(12))[x[:, 0].long()])


def test_an_epoch_leaves_out_the_remainder(tmp_path):
    np.save(tmp_path / "a.npy", _rows(11))
    f = ActivationFile(tmp_path / "a.npy", batch_size=4)
    assert f.per_epoch == 2
    rows = torch.cat([f.batch(0)[0], f.batch(1)[0]])[:, 0].tolist()
    assert len(set(rows)) == 8


def test_a_half_precision_file_gives_float32(tmp_path):
    np.save(tmp_path / "h.npy", _rows(6).astype(np.float16))
    f = ActivationFile(tmp_path / "h.npy", batch_size=3)
    assert f.batch(0)[0].dtype == torch.float32 and f.head(2)[0].dtype == torch.float32


def test_head_is_the_first_rows_unshuffled(npy, xy):
    f = ActivationFile(npy, batch_size=4, seed=9)
    x, y = f.head(5)
    assert torch.equal(x, torch.from_numpy(_rows(5))) and y is x
    assert f.head(100)[0].shape == (12, 3)
    x, y = ActivationFile(xy).head(3)
    assert x.shape == (3, 3) and torch.equal(y[:, :3], 2 * x)
