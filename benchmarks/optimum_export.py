"""Export the peer baseline with optimum-onnx: run inside .venv-optimum (scripts/optimum_env.sh), never imported.

It reads encoders that the main environment saved with save_pretrained (benchmarks/peer_weights.py), so the peer
graphs hold exactly the weights the benchmark's own model holds, and writes next to them:

    PEER_DIR/optimum/{audio,text}/model.onnx              optimum's fp32 export (task feature-extraction)
    PEER_DIR/optimum/{audio,text}-int8/model_quantized.onnx  ORTQuantizer, avx2 preset, dynamic int8
    PEER_DIR/optimum/export.json                          versions, and why any variant is missing
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path

ENCODERS = ("audio", "text")


def export_fp32(source: Path, target: Path) -> None:
    from optimum.exporters.onnx import main_export

    main_export(str(source), output=str(target), task="feature-extraction", library_name="transformers",
                do_validation=False)


def quantize_int8(fp32_dir: Path, target: Path) -> str:
    """optimum's documented dynamic int8 route. The avx2 preset quantizes every supported op; on wav2vec2 it fails
    on the weight-normalised positional convolution (its weight is computed in the graph, not an initializer), so
    the audio encoder falls back to MatMul only, which is also the setting that pays on this CPU."""
    from optimum.onnxruntime import ORTQuantizer
    from optimum.onnxruntime.configuration import AutoQuantizationConfig

    quantizer = ORTQuantizer.from_pretrained(str(fp32_dir), file_name="model.onnx")
    try:
        quantizer.quantize(save_dir=str(target), quantization_config=AutoQuantizationConfig.avx2(is_static=False))
        return "avx2 dynamic, all supported ops"
    except Exception as error:  # optimum raises bare exceptions of several kinds here; the note records which
        note = f"avx2 dynamic, MatMul only (all-ops preset failed: {type(error).__name__}: {str(error)[:200]})"
    config = AutoQuantizationConfig.avx2(is_static=False, operators_to_quantize=["MatMul"])
    quantizer.quantize(save_dir=str(target), quantization_config=config)
    return note


def export_peer(peer_dir: Path) -> dict:
    out = peer_dir / "optimum"
    out.mkdir(exist_ok=True)
    report: dict = {"versions": _versions(), "variants": {}}
    for encoder in ENCODERS:
        fp32 = out / encoder
        started = time.perf_counter()
        export_fp32(peer_dir / encoder, fp32)
        report["variants"][f"{encoder}-fp32"] = {"file": f"{encoder}/model.onnx",
                                                  "seconds": round(time.perf_counter() - started, 1)}
        try:
            note = quantize_int8(fp32, out / f"{encoder}-int8")
            report["variants"][f"{encoder}-int8"] = {"file": f"{encoder}-int8/model_quantized.onnx", "note": note}
        except Exception as error:  # the peer's int8 is optional: record why it is absent instead of stopping
            report["variants"][f"{encoder}-int8"] = {"error": "".join(traceback.format_exception_only(error))}
    (out / "export.json").write_text(json.dumps(report, indent=2) + "\n")
    return report


def _versions() -> dict:
    from importlib.metadata import version

    return {name: version(name) for name in ("optimum", "optimum-onnx", "transformers", "torch", "onnxruntime")}


def main(argv: list[str]) -> int:
    if not argv:
        print("usage: .venv-optimum/bin/python benchmarks/optimum_export.py PEER_DIR [PEER_DIR ...]", file=sys.stderr)
        return 2
    for peer_dir in map(Path, argv):
        for encoder in ENCODERS:
            if not (peer_dir / encoder / "config.json").is_file():
                print(f"{peer_dir / encoder}: no save_pretrained folder; run python3 -m benchmarks.peer_weights",
                      file=sys.stderr)
                return 1
        print(json.dumps(export_peer(peer_dir), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
