"""Tests of mmer_rt.session: device resolution, CUDA fallback detection, graph contract, IOBinding runs."""

import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from benchmarks.micro import onnx_model
from mmer_rt.errors import DeviceError, ModelDirError
from mmer_rt.session import (CPU_PROVIDER, CUDA_PROVIDER, Graph, _malloc_trim, open_session, release_freed_heap,
                             resolve_device, session_options)
from test_recognizer_fixtures import cuda_starts

NO_CUDA = CUDA_PROVIDER not in ort.get_available_providers()


@pytest.fixture(scope="module")
def doubling_graph(tmp_path_factory):
    """y = 2x and z = x + 1 over a float (B, N) input x."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "n"])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "n"])
    z = helper.make_tensor_value_info("z", TensorProto.FLOAT, ["b", "n"])
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [helper.make_node("Mul", ["x", "two"], ["y"]), helper.make_node("Add", ["x", "one"], ["z"])]
    graph = helper.make_graph(nodes, "double", [x], [y, z], initializer=[two, one])
    path = tmp_path_factory.mktemp("graph") / "double.onnx"
    onnx.save(onnx_model(graph), path)
    return path


def test_explicit_devices_and_bad_names():
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(ValueError, match="device must be one of auto, cpu, cuda; got 'gpu'"):
        resolve_device("gpu")


@pytest.mark.skipif(not NO_CUDA, reason="this onnxruntime offers CUDA")
def test_cuda_without_the_cuda_provider_is_a_clear_error():
    with pytest.raises(DeviceError, match="no CUDA execution provider"):
        resolve_device("cuda")
    assert resolve_device("auto") == "cpu"


def test_auto_picks_cuda_when_onnxruntime_offers_it(monkeypatch):
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CUDA_PROVIDER, CPU_PROVIDER])
    assert resolve_device("auto") == "cuda"
    monkeypatch.setattr(ort, "get_available_providers", lambda: [CPU_PROVIDER])
    assert resolve_device("auto") == "cpu"


@pytest.mark.skipif(cuda_starts(), reason="CUDA really starts here")
def test_a_cuda_session_that_falls_back_to_the_cpu_is_refused(doubling_graph):
    # onnxruntime itself runs on the CPU with no more than a warning (an onnxruntime without CUDA) or a log line
    # (onnxruntime-gpu on a machine without a GPU or the CUDA libraries); the session's providers reveal it.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Specified provider 'CUDAExecutionProvider'")
        with pytest.raises(DeviceError, match="CUDA execution provider did not start"):
            open_session(doubling_graph, "cuda")


def test_cpu_session_uses_the_cpu_provider_and_thread_count(doubling_graph):
    session = open_session(doubling_graph, "cpu", threads=1)
    assert session.get_providers() == [CPU_PROVIDER]
    options = session_options(3)
    assert options.intra_op_num_threads == 3
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    assert session_options(None).intra_op_num_threads == 0
    # The three graphs run in turn: idle threads must not spin and take the next graph's cores.
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    # Speech comes in every length: on the CPU no per-shape memory pattern is planned and kept.
    assert options.enable_mem_pattern is False and session_options(3, "cuda").enable_mem_pattern is True


def test_opening_a_session_gives_the_freed_heap_back(doubling_graph, monkeypatch):
    import mmer_rt.session as session_module

    calls = []
    monkeypatch.setattr(session_module, "release_freed_heap", lambda: calls.append(1))
    open_session(doubling_graph, "cpu", threads=1)
    assert calls == [1]


def _resident_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(_malloc_trim() is None, reason="this C library has no malloc_trim (not glibc)")
def test_release_freed_heap_returns_pages_the_heap_kept():
    import ctypes

    libc = ctypes.CDLL(None)
    libc.malloc.restype = ctypes.c_void_p
    libc.free.argtypes = [ctypes.c_void_p]
    # 100 MB in blocks below the mmap threshold (so they come from the heap), then a fence block above them that
    # stays allocated: freed, the blocks lie under the fence and the heap cannot shrink from its top.
    blocks = [libc.malloc(64 * 1024) for _ in range(1600)]
    for block in blocks:
        ctypes.memset(block, 1, 64 * 1024)
    fence = libc.malloc(64 * 1024)
    for block in blocks:
        libc.free(block)
    kept = _resident_mb()
    release_freed_heap()
    released = _resident_mb()
    libc.free(fence)
    assert kept - released > 50, (kept, released)


@pytest.mark.parametrize("threads", [0, -2, 1.5, True])
def test_bad_thread_counts_are_refused(threads):
    with pytest.raises(ValueError, match="threads must be a positive integer"):
        session_options(threads)


def test_unloadable_graph_is_a_model_dir_error(tmp_path):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a protobuf")
    with pytest.raises(ModelDirError, match="onnxruntime cannot load this graph"):
        open_session(bad, "cpu")


def test_graph_contract_is_checked(doubling_graph):
    session = open_session(doubling_graph, "cpu")
    Graph(session, "double", ["x"], ["y", "z"])
    with pytest.raises(ModelDirError, match="the double graph does not follow the graph contract"):
        Graph(session, "double", ["input_values"], ["y"])
    with pytest.raises(ModelDirError, match="does not follow the graph contract"):
        Graph(session, "double", ["x"], ["logits"])


def test_bound_runs_equal_plain_runs_and_chain_device_outputs(doubling_graph):
    session = open_session(doubling_graph, "cpu")
    plain = Graph(session, "double", ["x"], ["y", "z"])
    bound = Graph(session, "double", ["x"], ["y", "z"], bind_device="cpu")
    x = np.arange(6, dtype=np.float32).reshape(2, 3)
    expected = plain.run({"x": x}, host_outputs=("y", "z"))
    np.testing.assert_array_equal(expected["y"], 2 * x)
    np.testing.assert_array_equal(expected["z"], x + 1)
    got = bound.run({"x": x}, host_outputs=("z",), device_outputs=("y",))
    assert isinstance(got["y"], ort.OrtValue) and isinstance(got["z"], np.ndarray)
    np.testing.assert_array_equal(got["z"], expected["z"])
    # A device output feeds the next run without becoming a numpy array first.
    chained = bound.run({"x": got["y"]}, host_outputs=("y",))
    np.testing.assert_array_equal(chained["y"], 4 * x)
