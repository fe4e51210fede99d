"""dlib's serialization: primitives, the recognition model file, its errors, and the weights cache."""

import math
import threading

import numpy as np
import pytest
import torch

from worker.face.dlib_format import Plain, Reader, read_layer
from worker.face.errors import WeightsFormatError
from worker.face.resnet import FaceResNet, read_dlib_resnet
from worker.face.weights import RECOGNITION_MODEL, load_resnet_state, model_path, sha256_file

MODEL_SIZE = 22_466_066


def reader(hex_bytes: str) -> Reader:
    return Reader(bytes.fromhex(hex_bytes))


@pytest.fixture(scope="module")
def model_bytes() -> bytes:
    return model_path(RECOGNITION_MODEL).read_bytes()


@pytest.mark.parametrize(
    ("encoded", "value"),
    [("0100", 0), ("0196", 150), ("028012", 4736), ("810a", -10), ("0101", 1), ("08" + "ff" * 8, 2**64 - 1)],
)
def test_int(encoded, value):
    r = reader(encoded)
    assert r.int() == value
    assert r.remaining == 0


@pytest.mark.parametrize(
    ("encoded", "value"),
    [("01108104", 1.0), ("0100010b", 0.0), ("81108104", -1.0), ("03 0ad7a3 811c".replace(" ", ""), 0.04)],
)
def test_float(encoded, value):
    assert reader(encoded).float() == pytest.approx(value, rel=1e-7)


def test_float_specials():
    assert reader("0101" + "02007d").float() == math.inf  # exponent 32000
    assert reader("0101" + "02017d").float() == -math.inf
    assert math.isnan(reader("0101" + "02027d").float())


def test_bool_and_string():
    r = Reader(b"10" + bytes.fromhex("0105") + b"con_4")
    assert (r.bool(), r.bool(), r.string()) == (True, False, "con_4")
    r.end()


def test_tensor_version_2_is_raw_float32():
    values = np.arange(6, dtype="<f4")
    data = bytes.fromhex("01020101010201030101") + values.tobytes()
    t = Reader(data).tensor()
    assert t.shape == (1, 2, 3, 1) and t.dtype == np.float32
    np.testing.assert_array_equal(t.reshape(-1), values)


def test_tensor_version_1_is_encoded_floats():
    data = bytes.fromhex("010101010102010101010110810481108104")
    np.testing.assert_array_equal(Reader(data).tensor().reshape(-1), [1.0, -1.0])


def test_alias_tensor_and_matrix():
    assert reader("01010120010301070107").alias_tensor() == (32, 3, 7, 7)
    # -2 x -1 matrix of 1.0, 0.0
    m = reader("81028101011081040100010b").matrix()
    np.testing.assert_array_equal(m, [[1.0], [0.0]])


def test_sequence_and_plain_layers():
    assert reader("010301010196810a").sequence(Reader.int) == [1, 150, -10]
    assert read_layer(Reader(bytes.fromhex("0105") + b"relu_")) == Plain("relu_")
    with pytest.raises(WeightsFormatError, match="unsupported layer 'bn_con2'.*offset 0"):
        read_layer(Reader(bytes.fromhex("0107") + b"bn_con2"))


def test_errors_name_the_offset():
    r = reader("01960401")
    assert r.int() == 150
    with pytest.raises(WeightsFormatError, match=r"truncated.*offset 2\)") as error:
        r.int()  # wants 4 magnitude bytes, 1 left
    assert error.value.offset == 2
    with pytest.raises(WeightsFormatError, match="'0' or '1'"):
        Reader(b"x").bool()
    with pytest.raises(WeightsFormatError, match="expected layer name 'con_4', found 'relu_'"):
        Reader(bytes.fromhex("0105") + b"relu_").expect_string("con_4")
    r = Reader(b"\x01\x00!")
    r.int()
    with pytest.raises(WeightsFormatError, match="expected end of file, found 1 more bytes.*offset 2"):
        r.end()


def test_reads_the_recognition_model(model_bytes):
    assert len(model_bytes) == MODEL_SIZE
    state = read_dlib_resnet(model_bytes)
    model = FaceResNet()
    assert set(state) == set(model.state_dict())
    for name, tensor in model.state_dict().items():
        assert state[name].shape == tensor.shape, name
    np.testing.assert_allclose(state["input_mean"].reshape(-1), [122.782, 117.001, 104.298], rtol=1e-6)
    assert sum(t.numel() for t in state.values()) == 5_607_491  # 5,607,488 parameters + 3 means


def test_truncated_file(tmp_path, model_bytes):
    path = tmp_path / "truncated.dat"
    path.write_bytes(model_bytes[:1_000_000])
    with pytest.raises(WeightsFormatError, match="truncated") as error:
        read_dlib_resnet(path.read_bytes())
    assert f"offset {error.value.offset}" in str(error.value)
    assert error.value.offset <= 1_000_000


def test_foreign_file(tmp_path):
    path = tmp_path / "foreign.dat"
    path.write_bytes(np.random.default_rng(7).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    with pytest.raises(WeightsFormatError, match=r"at byte offset \d+"):
        read_dlib_resnet(path.read_bytes())


def test_trailing_garbage(model_bytes):
    with pytest.raises(WeightsFormatError, match=f"expected end of file.*offset {MODEL_SIZE}"):
        read_dlib_resnet(model_bytes + b"garbage")


def test_wrong_layer_name_and_version(model_bytes):
    first_con = model_bytes.index(b"con_4")
    renamed = model_bytes[:first_con] + b"con_5" + model_bytes[first_con + 5 :]
    message = f"expected layer name 'con_4', found 'con_5'.*offset {first_con - 2}"
    with pytest.raises(WeightsFormatError, match=message):
        read_dlib_resnet(renamed)
    # The stem's stride_y: after the name, the params tensor (11 header bytes, 4736 float32)
    # and num_filters, rows, columns (2 bytes each).
    stride_at = first_con + 5 + 11 + 4736 * 4 + 6
    assert model_bytes[stride_at : stride_at + 2] == b"\x01\x02"
    restrided = model_bytes[: stride_at + 1] + b"\x01" + model_bytes[stride_at + 2 :]
    message = r"layer con_4 \(stem\): expected \(filters, stride, padding\).*offset " + str(first_con - 2)
    with pytest.raises(WeightsFormatError, match=message):
        read_dlib_resnet(restrided)
    # The first layer version (the fc layer's, 2) sits right after the 29-byte loss header.
    assert model_bytes[29:31] == b"\x01\x02"
    bumped = model_bytes[:30] + b"\x07" + model_bytes[31:]
    with pytest.raises(WeightsFormatError, match="version of layer 130 .*= 2, found 7.*offset 29"):
        read_dlib_resnet(bumped)


def test_cache_is_written_then_read(tmp_path):
    source = model_path(RECOGNITION_MODEL)
    sha = sha256_file(source)
    state, first_sha = load_resnet_state(cache_dir=tmp_path)
    cache_file = tmp_path / f"{sha}.pt"
    assert first_sha == sha and cache_file.is_file()
    assert not list(tmp_path.glob("*.tmp"))

    # Mark the cached copy: a second load must return the mark, so it came from the .pt.
    saved = torch.load(cache_file, weights_only=True)
    saved["state_dict"]["fc.weight"][0, 0] = 1234.5
    torch.save(saved, cache_file)
    again, _ = load_resnet_state(cache_dir=tmp_path)
    assert again["fc.weight"][0, 0].item() == 1234.5
    torch.testing.assert_close(again["stem.weight"], state["stem.weight"])


def test_corrupt_cache_is_replaced(tmp_path):
    sha = sha256_file(model_path(RECOGNITION_MODEL))
    cache_file = tmp_path / f"{sha}.pt"
    cache_file.write_bytes(b"not a torch file")
    state, _ = load_resnet_state(cache_dir=tmp_path)
    assert state["fc.weight"].shape == (128, 256)
    reloaded = torch.load(cache_file, weights_only=True)
    torch.testing.assert_close(reloaded["state_dict"]["fc.weight"], state["fc.weight"])


def test_racing_loads_share_one_cache_file(tmp_path):
    barrier = threading.Barrier(3)
    results = []

    def load():
        barrier.wait()
        results.append(load_resnet_state(cache_dir=tmp_path))

    threads = [threading.Thread(target=load) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(results) == 3
    assert [p.name for p in tmp_path.iterdir()] == [f"{results[0][1]}.pt"]
    cached, _ = load_resnet_state(cache_dir=tmp_path)
    for state, _ in results:
        torch.testing.assert_close(state["fc.weight"], cached["fc.weight"])
