"""Engines that run a model directory's graphs: onnxruntime (the core), OpenVINO's CPU plugin (the ``openvino``
extra, imported only when asked for), and ``"auto"``, which picks the faster of the two on this machine by timing.

Why OpenVINO: onnxruntime's CPU provider has no bf16 kernels for these graphs on x86, while OpenVINO runs the same
fp32 ONNX files with bf16 arithmetic on AMX or AVX512-BF16 (Intel Xeon of the Sapphire Rapids class and later),
measured 2.9x faster than onnxruntime fp32 on the audio graph at 5 s x 8 on 2 cores, with hidden states closer to
fp32 than the int8 graph's (README, "Speed on the CPU"). It reads the fp32 variant only: the int8 variant's fused
com.microsoft operators (QAttention, DynamicQuantizeMatMul) are onnxruntime's own.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from .errors import DeviceError, InferenceError, ModelDirError
from .modeldir import AUDIO_OUTPUTS, FORMAT_VERSION, FUSION_INPUTS, FUSION_OUTPUTS, TEXT_INPUTS, TEXT_OUTPUTS
from .modeldir import ModelManifest, audio_inputs, verified_graph_path
from .session import check_threads, check_contract_names

logger = logging.getLogger("mmer_rt")

ENGINES = ("onnxruntime", "openvino", "auto")
OPENVINO_PRECISIONS = ("auto", "bf16", "fp32")
GRAPH_OUTPUTS = {"audio_encoder": AUDIO_OUTPUTS, "text_encoder": TEXT_OUTPUTS, "fusion": FUSION_OUTPUTS}


def contract(format_version: int = FORMAT_VERSION) -> dict[str, tuple[tuple[str, ...], tuple[str, ...]]]:
    """Each graph's (inputs, outputs) in a model directory of ``format_version``."""
    inputs = {"audio_encoder": audio_inputs(format_version), "text_encoder": TEXT_INPUTS, "fusion": FUSION_INPUTS}
    return {name: (inputs[name], GRAPH_OUTPUTS[name]) for name in GRAPH_OUTPUTS}
# The CPU features with bf16 dot products (AMX tiles, or AVX-512's VDPBF16PS). OpenVINO also lists BF16 among its
# capabilities on CPUs that only convert to and from bf16 (AVX2-VNNI-2 parts), where bf16 buys no arithmetic speed.
BF16_CPU_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})
# "auto": one clip of this many seconds (or the model's longest input, if shorter) with a short transcript, timed
# in this many rounds per engine after a warm-up, the engines taking turns so that a busy neighbour slows both.
PROBE_SECONDS = 3.0
PROBE_ROUNDS = 3
CACHE_NAME = "engine-choice.json"


def check_engine(engine: str) -> str:
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}; got {engine!r}")
    return engine


def openvino_available() -> bool:
    try:
        import openvino  # noqa: F401
    except ImportError:
        return False
    return True


def _openvino():
    try:
        import openvino
    except ImportError as error:
        raise DeviceError(
            "engine='openvino' needs the openvino package, which is not installed: pip install 'mmer-rt[openvino]' "
            f"(or use engine='onnxruntime'); the import failed with: {error}"
        ) from error
    return openvino


def cpu_flags() -> frozenset[str] | None:
    """The CPU's feature flags from /proc/cpuinfo, or None where there is no such file (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("flags"):
                    return frozenset(line.partition(":")[2].split())
    except OSError:
        return None
    return frozenset()


def bf16_supported() -> bool:
    """Whether OpenVINO's CPU plugin offers bf16 here and the CPU has bf16 dot products (AMX or AVX512-BF16)."""
    core = _core()
    if "BF16" not in core.get_property("CPU", "OPTIMIZATION_CAPABILITIES"):
        return False
    flags = cpu_flags()
    return flags is None or bool(BF16_CPU_FLAGS & flags)


_CORE = None
_CORE_LOCK = threading.Lock()


def _core():
    global _CORE
    with _CORE_LOCK:
        if _CORE is None:
            _CORE = _openvino().Core()
        return _CORE


def openvino_precision(precision: str) -> str:
    """The arithmetic OpenVINO will use: ``"auto"`` is bf16 where :func:`bf16_supported`, else fp32.

    Raises:
      DeviceError: a precision OpenVINO cannot give here (int8 and fp16 are onnxruntime variants; bf16 on a CPU
        without bf16 dot products).
      ValueError: an unknown precision name.
    """
    if precision in ("int8", "fp16"):
        raise DeviceError(
            f"engine='openvino' runs the fp32 graphs, in bf16 or fp32 arithmetic; precision={precision!r} is an "
            "onnxruntime variant: use engine='onnxruntime' for it, or precision 'auto', 'bf16' or 'fp32'"
        )
    if precision not in OPENVINO_PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(OPENVINO_PRECISIONS)} with engine='openvino'; "
                         f"got {precision!r}")
    supported = bf16_supported()
    if precision == "bf16" and not supported:
        raise DeviceError("precision='bf16' was requested but this CPU has neither AMX-BF16 nor AVX512-BF16 "
                          "(or OpenVINO does not offer bf16 on it); use precision='fp32' or 'auto'")
    if precision == "auto":
        return "bf16" if supported else "fp32"
    return precision


class OpenVINOGraph:
    """One graph compiled by OpenVINO's CPU plugin, with :class:`mmer_rt.session.Graph`'s ``run``.

    Thread safety: an OpenVINO infer request serves one call at a time, so each call takes an idle request from a
    pool (a new one when all are busy) and puts it back; the compiled model itself is shared.
    """

    def __init__(self, compiled, name: str, inputs: Sequence[str], outputs: Sequence[str], precision: str):
        self.compiled = compiled
        self.name = name
        self.precision = precision
        check_contract_names(name, [port.any_name for port in compiled.inputs],
                             {n for port in compiled.outputs for n in port.names}, inputs, outputs)
        self._idle: list = []
        self._lock = threading.Lock()

    @property
    def providers(self) -> list[str]:
        return [f"OpenVINO CPU ({self.precision})"]

    def run(self, feeds: Mapping[str, np.ndarray], host_outputs: Sequence[str] = (),
            device_outputs: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """Run once; every output comes back as a numpy array (the CPU has no device memory to keep them in).

        Raises:
          InferenceError: OpenVINO failed (it raises plain RuntimeError).
        """
        with self._lock:
            request = self._idle.pop() if self._idle else self.compiled.create_infer_request()
        try:
            # share_outputs=False: the request reuses its output buffers on its next call, so results are copied.
            results = request.infer({name: np.ascontiguousarray(value) for name, value in feeds.items()},
                                    share_inputs=False, share_outputs=False)
            return {name: results[name] for name in (*host_outputs, *device_outputs)}
        except RuntimeError as error:
            raise InferenceError(f"the {self.name} graph failed under OpenVINO: {error}") from error
        finally:
            with self._lock:
                self._idle.append(request)


def open_openvino_graph(path: str | Path, name: str, precision: str, threads: int | None,
                        format_version: int = FORMAT_VERSION) -> OpenVINOGraph:
    """The model directory's graph ``name`` (audio_encoder, text_encoder or fusion), compiled by
    :func:`compile_for_cpu` and checked against the graph contract.

    Raises:
      ModelDirError: OpenVINO cannot read or compile the file, or it breaks the graph contract.
    """
    inputs, outputs = contract(format_version)[name]
    return OpenVINOGraph(compile_for_cpu(path, precision, threads), name, inputs, outputs, precision)


def compile_for_cpu(path: str | Path, precision: str, threads: int | None):
    """An ONNX file compiled by OpenVINO's CPU plugin in ``precision`` ("bf16" or "fp32") on ``threads`` threads.

    Raises:
      ModelDirError: OpenVINO cannot read or compile the file.
    """
    check_threads(threads)
    core = _core()
    config = {
        "INFERENCE_PRECISION_HINT": "bf16" if precision == "bf16" else "f32",
        "INFERENCE_NUM_THREADS": threads or 0,  # 0: the plugin's own choice, one per physical core
        "PERFORMANCE_HINT": "LATENCY",  # one stream: a call's batch uses every thread, as with onnxruntime
        "NUM_STREAMS": 1,
    }
    try:
        model = core.read_model(str(path))
        if precision == "bf16":
            dense_small_group_convolutions(model)
        return core.compile_model(model, "CPU", config)
    except Exception as error:  # OpenVINO raises plain RuntimeError/Exception for unreadable or unsupported graphs
        raise ModelDirError(f"{path}: OpenVINO cannot load this graph ({error})") from error


# OpenVINO 2026.4's CPU plugin computes a bf16 GroupConvolution wrongly when a group has 4 to 15 channels and the
# kernel is long (16 taps: errors as large as the outputs; 3 taps, or 1-3 or 16+ channels per group, are right),
# measured on a Xeon with AMX. wav2vec2-base's positional convolution has 48 per group and is fine; small models
# (tests, 8 per group) hit it. Such a convolution runs as a dense one with a block-diagonal weight instead: the same
# values, G times the multiplications of a layer that is tiny when its groups are this narrow.
SMALL_GROUP_CHANNELS = range(4, 16)


def dense_small_group_convolutions(model) -> int:
    """Rewrite ``model``'s GroupConvolutions with 4 to 15 input channels per group as dense Convolutions with a
    block-diagonal weight (see SMALL_GROUP_CHANNELS); returns how many were rewritten."""
    ops = _openvino().opset13
    rewritten = 0
    for node in model.get_ordered_ops():
        shape = node.input_value(1).get_partial_shape() if node.get_type_name() == "GroupConvolution" else None
        if shape is None or not shape.is_static:
            continue
        groups, outputs, inputs, *kernel = (dimension.get_length() for dimension in shape)
        if inputs not in SMALL_GROUP_CHANNELS:
            continue
        spread = ops.reshape(node.input_value(1), ops.constant(np.array([groups, outputs, 1, inputs, *kernel])),
                             False)
        diagonal = np.eye(groups, dtype=np.float32).reshape(groups, 1, groups, 1, *[1] * len(kernel))
        dense = ops.reshape(ops.multiply(spread, ops.constant(diagonal)),
                            ops.constant(np.array([groups * outputs, groups * inputs, *kernel])), False)
        settings = node.get_attributes()
        convolution = ops.convolution(node.input_value(0), dense, settings["strides"], settings["pads_begin"],
                                      settings["pads_end"], settings["dilations"], settings["auto_pad"])
        convolution.set_friendly_name(node.get_friendly_name())
        for target in list(node.output(0).get_target_inputs()):
            target.replace_source_output(convolution.output(0))
        rewritten += 1
    if rewritten:
        model.validate_nodes_and_infer_types()
    return rewritten


def load_openvino_graphs(model_dir: Path, manifest: ModelManifest, precision: str,
                         threads: int | None) -> tuple[str, dict[str, OpenVINOGraph]]:
    """The fp32 variant's three graphs under OpenVINO; returns (arithmetic precision, graphs)."""
    chosen = openvino_precision(precision)
    if "fp32" not in manifest.variants:
        raise ModelDirError(f"{model_dir} holds no fp32 variant, which engine='openvino' reads (it has "
                            f"{', '.join(sorted(manifest.variants)) or 'none'})")
    graphs = {}
    for name in GRAPH_OUTPUTS:
        path = verified_graph_path(model_dir, manifest.variants["fp32"].graphs[name])
        graphs[name] = open_openvino_graph(path, name, chosen, threads, manifest.format_version)
    return chosen, graphs


# ---- engine="auto": the faster engine on this machine, measured once and remembered ----

def cache_path() -> Path:
    """Where measured choices are kept: ``$XDG_CACHE_HOME/mmer-rt/engine-choice.json`` (``~/.cache`` by default)."""
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "mmer-rt" / CACHE_NAME


def choice_key(manifest: ModelManifest, precision: str, threads: int | None) -> str:
    """What a measured choice depends on: the graphs, the CPU, the thread count, the precision asked for and the
    engines' versions. A change in any of them measures again."""
    import onnxruntime

    openvino = _openvino()
    graphs = sorted(entry.sha256 for variant in manifest.variants.values() for entry in variant.graphs.values())
    flags = sorted(cpu_flags() or ())
    parts = [graphs, _cpu_model(), flags, os.cpu_count(), threads, precision, onnxruntime.__version__,
             openvino.__version__]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:24]


def choose_engine(manifest: ModelManifest, precision: str, threads: int | None, sample_rate: int, max_samples: int,
                  build: Callable[[str], object]) -> tuple[object, dict]:
    """The faster of onnxruntime and OpenVINO for this model on this machine, as a loaded Recognizer.

    ``build(engine)`` loads a Recognizer on one engine. Without OpenVINO installed, or for a precision only
    onnxruntime has (int8, fp16), onnxruntime is chosen without timing; for bf16, OpenVINO. Otherwise a choice cached for the same
    graphs, CPU, threads, precision and versions is reused; failing that both engines are loaded and timed on one
    probe clip (:func:`time_engines`), the choice cached, and the slower engine released. Returns the Recognizer
    and a record of how the choice was made (``engine``, ``reason``, ``seconds`` when measured).
    """
    if not openvino_available():
        return build("onnxruntime"), {"engine": "onnxruntime", "reason": "openvino is not installed"}
    if precision in ("int8", "fp16"):
        return build("onnxruntime"), {"engine": "onnxruntime", "reason": f"{precision} is an onnxruntime variant"}
    if precision == "bf16":
        return build("openvino"), {"engine": "openvino", "reason": "bf16 is OpenVINO's"}
    key = choice_key(manifest, precision, threads)
    cached = _read_cache().get(key)
    if cached and cached.get("engine") in ("onnxruntime", "openvino"):
        return build(cached["engine"]), {**cached, "reason": f"measured before (cached in {cache_path()})"}
    candidates = {engine: build(engine) for engine in ("onnxruntime", "openvino")}
    seconds = time_engines(candidates, sample_rate, max_samples)
    engine = min(seconds, key=seconds.get)
    record = {"engine": engine, "seconds": seconds, "threads": threads, "precision": precision,
              "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    _write_cache(key, record)
    logger.info("mmer_rt: engine='auto' chose %s (median seconds per probe call: %s)", engine, seconds)
    return candidates[engine], {**record, "reason": "measured now"}


def time_engines(recognizers: Mapping[str, object], sample_rate: int, max_samples: int) -> dict[str, float]:
    """Median seconds of one ``predict`` call per engine on the same probe clip, in interleaved rounds."""
    samples = min(int(PROBE_SECONDS * sample_rate), max_samples)
    clip = (0.1 * np.random.default_rng(0).standard_normal(samples)).astype(np.float32)
    text = "a short probe sentence for timing"
    rounds: dict[str, list[float]] = {name: [] for name in recognizers}
    for recognizer in recognizers.values():
        recognizer.predict(clip, text, sample_rate=sample_rate)  # warm-up: compilation, thread pools, caches
    for _ in range(PROBE_ROUNDS):
        for name, recognizer in recognizers.items():
            started = time.perf_counter()
            recognizer.predict(clip, text, sample_rate=sample_rate)
            rounds[name].append(time.perf_counter() - started)
    return {name: float(np.median(times)) for name, times in rounds.items()}


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            for line in handle:
                if line.startswith("model name"):
                    return line.partition(":")[2].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def _read_cache() -> dict:
    try:
        data = json.loads(cache_path().read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}  # no cache yet, or an unreadable one: measure again
    return data if isinstance(data, dict) else {}


def _write_cache(key: str, record: dict) -> None:
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        data = {**_read_cache(), key: record}
        temporary = path.with_name(f".{path.name}.{os.getpid()}")
        temporary.write_text(json.dumps(data, indent=1), encoding="utf-8")
        temporary.replace(path)  # atomic: two processes measuring at once leave one whole file
    except OSError as error:
        logger.warning("mmer_rt: cannot cache the engine choice in %s (%s); it will be measured again", path, error)
