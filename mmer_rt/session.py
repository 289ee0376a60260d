"""onnxruntime sessions for the model's graphs: device choice, execution providers, threads and IOBinding runs."""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path
from typing import Mapping, Sequence, Union

import numpy as np
import onnxruntime as ort

from .errors import DeviceError, InferenceError, ModelDirError

CUDA_PROVIDER = "CUDAExecutionProvider"
CPU_PROVIDER = "CPUExecutionProvider"
DEVICES = ("auto", "cpu", "cuda")

# Exhaustive search, the CUDA provider's default, re-benchmarked cuDNN convolutions for every new input shape in
# onnxruntime's legacy cuDNN path, and speech has a new length in almost every batch (peers measured 5 to 40 times
# slowdowns). onnxruntime 1.31 builds convolutions through the cuDNN frontend instead, where this option picks the
# heuristic mode, and DEFAULT means cuDNN's fallback engines: measured slow on an H100, but HEURISTIC found no
# engine at all for wav2vec2's positional convolution (export/DESIGN.md). The fp16 graphs therefore run the front
# end's convolutions as MatMuls; only the positional one is still a Conv.
CUDA_OPTIONS = {"cudnn_conv_algo_search": "DEFAULT"}

Feed = Union[np.ndarray, ort.OrtValue]


def cuda_available() -> bool:
    """Whether this onnxruntime build offers the CUDA provider (it may still fail to start: see open_session)."""
    return CUDA_PROVIDER in ort.get_available_providers()


def resolve_device(device: str) -> str:
    """Map ``"auto"`` to ``"cuda"`` when onnxruntime offers CUDA, else ``"cpu"``; check explicit requests.

    Raises:
      ValueError: a device name other than auto, cpu or cuda.
      DeviceError: ``"cuda"`` requested from an onnxruntime without the CUDA provider.
    """
    if device not in DEVICES:
        raise ValueError(f"device must be one of {', '.join(DEVICES)}; got {device!r}")
    if device == "cuda" and not cuda_available():
        raise DeviceError(
            "device='cuda' was requested but this onnxruntime has no CUDA execution provider "
            f"(it offers {', '.join(ort.get_available_providers())}); install mmer-rt[gpu] or use device='cpu'"
        )
    if device == "auto":
        return "cuda" if cuda_available() else "cpu"
    return device


def check_threads(threads: int | None) -> None:
    """Raise ValueError unless ``threads`` is a positive integer or None (every core)."""
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be a positive integer or None; got {threads!r}")


def session_options(threads: int | None, device: str = "cpu") -> ort.SessionOptions:
    """Graph optimisations on; ``threads`` intra-op threads (None lets onnxruntime use every core)."""
    check_threads(threads)
    options = ort.SessionOptions()
    if device == "cpu":
        # A memory pattern plans one block for a run's intermediates and keeps it for the next run of the same
        # shapes. Speech comes in every length, so on the CPU it only raised the peak: the 10-minute timeline at
        # base size peaked 78 MB higher with it (995 against 917 MB; `python -m benchmarks.timeline_bench --sizes
        # base --minutes 10 --ablate mem-pattern`) and predictions took the same time (5 s x 1 and x 8, fp32 and
        # int8, within 3%). Kept on CUDA, where allocations are dearer.
        options.enable_mem_pattern = False
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.intra_op_num_threads = threads or 0
    options.inter_op_num_threads = 1  # the graphs are sequential chains: parallel branches buy nothing
    # Each of the three sessions has its own thread pool, run in turn; threads left spinning after one graph take
    # the cores the next graph needs. Not spinning made a 2 s fp32 prediction 1.26x faster on 2 cores.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def open_session(path: str | Path, device: str, threads: int | None = None,
                 cuda_graph: bool = False) -> ort.InferenceSession:
    """Load one graph on ``"cpu"`` or ``"cuda"``; ``cuda_graph`` enables onnxruntime's CUDA graphs (CUDA only:
    mmer_rt/cudagraphs.py).

    Raises:
      ModelDirError: onnxruntime cannot load the file.
      DeviceError: CUDA was asked for but the session did not start on it (onnxruntime falls back to the CPU
        with no more than a log line, so the session's own providers are checked).
    """
    providers = [CPU_PROVIDER]
    if device == "cuda":
        providers.insert(0, (CUDA_PROVIDER, {**CUDA_OPTIONS, **({"enable_cuda_graph": "1"} if cuda_graph else {})}))
    try:
        session = ort.InferenceSession(str(path), sess_options=session_options(threads, device),
                                       providers=providers)
    except Exception as error:  # onnxruntime's own exception types share no base class but Exception
        if cuda_graph and "graph" in str(error).lower() and "cuda" in str(error).lower():
            # e.g. shape computations placed on the CPU: onnxruntime captures only graphs wholly on the CUDA provider.
            raise DeviceError(f"{path}: onnxruntime will not capture this graph as a CUDA graph ({error}); use "
                              "cuda_graphs=False") from error
        raise ModelDirError(f"{path}: onnxruntime cannot load this graph ({error})") from error
    release_freed_heap()
    active = session.get_providers()
    if device == "cuda" and active[0] != CUDA_PROVIDER:
        raise DeviceError(
            f"{path}: the CUDA execution provider did not start (the session runs on {', '.join(active)}); "
            "check the CUDA and cuDNN libraries onnxruntime-gpu needs, or use device='cpu'"
        )
    return session


def release_freed_heap() -> None:
    """Give the C heap's free pages back to the system (glibc's ``malloc_trim``; elsewhere nothing is done).

    Loading a graph parses the whole file and copies its weights into tensors; the parse is freed, but glibc keeps
    freed pages for reuse and the process stays that much larger. Trimmed after each graph, a base-size model's
    int8 variant held 778 MB once loaded instead of 938 MB, and the 10-minute timeline peaked at 917 MB instead of
    1045 MB (`python -m benchmarks.timeline_bench --sizes base --minutes 10 --ablate heap-release`).
    """
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    """glibc's ``malloc_trim``, or None where the C library has none (musl, macOS, Windows)."""
    try:
        return ctypes.CDLL(None).malloc_trim
    except (AttributeError, OSError, TypeError):  # TypeError: Windows loads no library by None
        return None


class Graph:
    """One graph's session, checked against the graph contract, with runs that can keep outputs on the device.

    On CUDA every run goes through IOBinding: outputs named in ``device_outputs`` stay in GPU memory as
    OrtValues and can be fed to the next graph without a trip through the host. With ``cuda_graphs`` (a session
    opened with ``cuda_graph=True``) each input shape is captured once and replayed (mmer_rt/cudagraphs.py).
    """

    def __init__(
        self, session: ort.InferenceSession, name: str, inputs: Sequence[str], outputs: Sequence[str],
        bind_device: str | None = None, cuda_graphs: bool = False,
    ):
        self.session = session
        self.name = name
        self.bind_device = bind_device
        check_contract_names(name, [node.name for node in session.get_inputs()],
                             {node.name for node in session.get_outputs()}, inputs, outputs)
        self.captured = None
        if cuda_graphs:
            from .cudagraphs import CapturedRuns

            self.captured = CapturedRuns(session, bind_device or "cuda")

    @property
    def providers(self) -> list[str]:
        """The execution providers this session actually runs on, best first."""
        return self.session.get_providers()

    def run(
        self, feeds: Mapping[str, Feed], host_outputs: Sequence[str] = (), device_outputs: Sequence[str] = (),
    ) -> dict[str, Feed]:
        """Run once; host outputs come back as numpy arrays, device outputs as OrtValues when binding is on.

        Raises:
          InferenceError: onnxruntime failed (its own exception types share no base class but Exception).
        """
        try:
            return self._run(feeds, host_outputs, device_outputs)
        except Exception as error:
            if not type(error).__module__.startswith("onnxruntime"):
                raise
            raise InferenceError(f"the {self.name} graph failed: {error}") from error

    def _run(self, feeds: Mapping[str, Feed], host_outputs: Sequence[str], device_outputs: Sequence[str]):
        if self.captured is not None:
            return self.captured.run(feeds, host_outputs, device_outputs)
        if self.bind_device is None:
            names = [*host_outputs, *device_outputs]
            return dict(zip(names, self.session.run(names, dict(feeds))))
        binding = self.session.io_binding()
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                binding.bind_cpu_input(name, np.ascontiguousarray(value))
        for name in host_outputs:
            binding.bind_output(name, "cpu")
        for name in device_outputs:
            binding.bind_output(name, self.bind_device)
        self.session.run_with_iobinding(binding)
        values = dict(zip([*host_outputs, *device_outputs], binding.get_outputs()))
        return {name: value.numpy() if name in host_outputs else value for name, value in values.items()}


def check_contract_names(name: str, have_inputs: Sequence[str], have_outputs: set[str], inputs: Sequence[str],
                         outputs: Sequence[str]) -> None:
    """Raise ModelDirError unless a graph takes exactly ``inputs`` and gives at least ``outputs``."""
    if sorted(have_inputs) != sorted(inputs) or not set(outputs) <= set(have_outputs):
        raise ModelDirError(
            f"the {name} graph does not follow the graph contract: it takes {list(have_inputs)} and gives "
            f"{sorted(have_outputs)}, but {list(inputs)} -> {list(outputs)} are expected"
        )
