"""onnxruntime CUDA graphs for one session: a graph captured per input shape (``gpu_graph_id``), replayed on fixed
device buffers.

A captured CUDA graph replays its kernels on the very addresses it was captured with, so every shape (with
mmer_rt/shapes.py, a handful of padded buckets) gets its own input and output buffers on the device, bound once;
a run copies the host inputs into them and replays. Inputs that already live on the device (another graph's
outputs) are part of the shape's key by address: the Recognizer feeds the fusion graph the audio and text graphs'
fixed output buffers, so the same bucket finds the same addresses again.

The outputs returned are those fixed buffers: the next run of the same shape overwrites them, so the caller runs
one batch at a time through the three graphs (Recognizer serialises its batches when CUDA graphs are on).

onnxruntime captures on a shape's first runs after one or more regular ones (Recognizer.warmup runs each shape
three times). onnxruntime refuses CUDA graphs for a session with any node outside the CUDA provider (shape
arithmetic it places on the CPU, say); session.open_session then raises DeviceError. NOT YET RUN ON A GPU: written from onnxruntime's documentation of ``enable_cuda_graph`` and
``gpu_graph_id``; benchmarks/gpu_profile.py exercises it on the next lease (benchmarks/README.md).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np
import onnxruntime as ort

SKIP_CAPTURE = "-1"  # gpu_graph_id for a regular run on a session with CUDA graphs enabled


@dataclass
class _Shape:
    binding: ort.IOBinding
    run_options: ort.RunOptions
    host_inputs: dict[str, ort.OrtValue]
    outputs: dict[str, ort.OrtValue]


class CapturedRuns:
    """The per-shape buffers, bindings and graph ids of one session created with ``enable_cuda_graph``."""

    def __init__(self, session: ort.InferenceSession, device: str = "cuda", device_id: int = 0):
        self.session = session
        self.device, self.device_id = device, device_id
        self.output_names = [node.name for node in session.get_outputs()]
        self._shapes: dict[tuple, _Shape] = {}
        self._lock = threading.Lock()

    @property
    def captured(self) -> int:
        """How many shapes have their own graph id (each is captured on its first runs)."""
        return len(self._shapes)

    def run(self, feeds: Mapping, host_outputs: Sequence[str], device_outputs: Sequence[str]) -> dict:
        key = tuple(sorted((name, *_describe(value)) for name, value in feeds.items()))
        with self._lock:
            shape = self._shapes.get(key)
            if shape is None:
                shape = self._shapes[key] = self._prepare(feeds, graph_id=len(self._shapes) + 1)
            for name, value in feeds.items():
                if name in shape.host_inputs:
                    shape.host_inputs[name].update_inplace(np.ascontiguousarray(value))
            self.session.run_with_iobinding(shape.binding, shape.run_options)
            values = {name: shape.outputs[name].numpy() for name in host_outputs}
        values.update({name: shape.outputs[name] for name in device_outputs})
        return values

    def _prepare(self, feeds: Mapping, graph_id: int) -> _Shape:
        """One regular run (no capture) to learn the output shapes, then this shape's fixed buffers and binding."""
        binding = self.session.io_binding()
        host_inputs = {}
        for name, value in feeds.items():
            if isinstance(value, ort.OrtValue):
                binding.bind_ortvalue_input(name, value)
            else:
                host_inputs[name] = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(value), self.device,
                                                                     self.device_id)
                binding.bind_ortvalue_input(name, host_inputs[name])
        for name in self.output_names:
            binding.bind_output(name, self.device, self.device_id)
        regular = ort.RunOptions()
        regular.add_run_config_entry("gpu_graph_id", SKIP_CAPTURE)
        self.session.run_with_iobinding(binding, regular)
        examples = [value.numpy() for value in binding.get_outputs()]
        outputs = {name: ort.OrtValue.ortvalue_from_shape_and_type(example.shape, example.dtype, self.device,
                                                                  self.device_id)
                   for name, example in zip(self.output_names, examples)}
        binding.clear_binding_outputs()
        for name, value in outputs.items():
            binding.bind_ortvalue_output(name, value)
        run_options = ort.RunOptions()
        run_options.add_run_config_entry("gpu_graph_id", str(graph_id))
        return _Shape(binding, run_options, host_inputs, outputs)


def _describe(value) -> tuple:
    if isinstance(value, ort.OrtValue):
        return tuple(value.shape()), value.data_type(), value.data_ptr()
    array = np.asarray(value)
    return array.shape, str(array.dtype), None
