"""Tests of mmer_rt.modeldir: manifest round trip, version and shape checks, graph file verification."""

import json

import pytest

from mmer_rt.errors import IntegrityError, ModelDirError
from mmer_rt.modeldir import (
    FORMAT_VERSION, GRAPH_NAMES, MANIFEST_NAME, GraphEntry, ModelManifest, VariantEntry, sha256_file,
    verified_graph_path,
)
from mmer_rt.text import CTC_VOCAB, TEXT_CLEANING_RULE


def make_model_dir(root):
    graphs = {}
    for name in GRAPH_NAMES:
        path = root / "fp32" / f"{name}.onnx"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(f"graph {name}".encode())
        graphs[name] = GraphEntry(file=f"fp32/{name}.onnx", sha256=sha256_file(path), opset=17)
    manifest = ModelManifest(
        labels=["happy", "angry", "neutral", "sad"], sample_rate=16000, max_audio_samples=210000,
        ctc_vocab=list(CTC_VOCAB), text_cleaning=TEXT_CLEANING_RULE, tokenizer="tokenizer.json",
        variants={"fp32": VariantEntry("fp32", graphs, parity={"max_abs_prob": 1e-6})},
        versions={"torch": "2.13.0"},
    )
    manifest.write(root)
    return manifest


def rewrite_manifest(root, change):
    path = root / MANIFEST_NAME
    raw = json.loads(path.read_text())
    change(raw)
    path.write_text(json.dumps(raw))


def test_manifest_round_trips(tmp_path):
    written = make_model_dir(tmp_path)
    read = ModelManifest.read(tmp_path)
    assert read == written
    assert read.variants["fp32"].graphs["fusion"].file == "fp32/fusion.onnx"
    assert read.format_version == FORMAT_VERSION


def test_missing_directory_and_missing_manifest(tmp_path):
    with pytest.raises(ModelDirError, match="model directory not found"):
        ModelManifest.read(tmp_path / "nowhere")
    with pytest.raises(ModelDirError, match="mmer.json is missing"):
        ModelManifest.read(tmp_path)


def test_unparsable_manifest(tmp_path):
    (tmp_path / MANIFEST_NAME).write_text("{not json")
    with pytest.raises(ModelDirError, match="cannot read the manifest"):
        ModelManifest.read(tmp_path)


@pytest.mark.parametrize("version", [None, 0, FORMAT_VERSION + 1, "1"])
def test_unknown_format_version_is_refused(tmp_path, version):
    make_model_dir(tmp_path)
    rewrite_manifest(tmp_path, lambda raw: raw.update(format_version=version))
    with pytest.raises(ModelDirError, match="format version .* is not supported"):
        ModelManifest.read(tmp_path)


def test_malformed_manifest_fields(tmp_path):
    make_model_dir(tmp_path)
    rewrite_manifest(tmp_path, lambda raw: raw.pop("labels"))
    with pytest.raises(ModelDirError, match="malformed manifest"):
        ModelManifest.read(tmp_path)


def test_variant_lacking_a_graph_is_refused(tmp_path):
    make_model_dir(tmp_path)
    rewrite_manifest(tmp_path, lambda raw: raw["variants"]["fp32"]["graphs"].pop("fusion"))
    with pytest.raises(ModelDirError, match=r"variants\.fp32\.graphs\.fusion: is missing"):
        ModelManifest.read(tmp_path)


def test_verified_graph_path_checks_presence_and_hash(tmp_path):
    manifest = make_model_dir(tmp_path)
    entry = manifest.variants["fp32"].graphs["audio_encoder"]
    assert verified_graph_path(tmp_path, entry) == tmp_path / "fp32" / "audio_encoder.onnx"
    (tmp_path / entry.file).write_bytes(b"tampered")
    with pytest.raises(IntegrityError, match="does not match the manifest"):
        verified_graph_path(tmp_path, entry)
    (tmp_path / entry.file).unlink()
    with pytest.raises(ModelDirError, match="graph file missing"):
        verified_graph_path(tmp_path, entry)


def test_sha256_file_matches_hashlib(tmp_path):
    import hashlib

    path = tmp_path / "blob"
    path.write_bytes(bytes(range(256)) * 5000)
    assert sha256_file(path, chunk=1000) == hashlib.sha256(path.read_bytes()).hexdigest()
