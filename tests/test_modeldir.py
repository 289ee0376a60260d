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


def _set(path, value):
    """A change to the manifest's JSON: set the value at a dotted path (list indexes as numbers)."""

    def change(raw):
        keys = path.split(".")
        parent = raw
        for key in keys[:-1]:
            parent = parent[int(key)] if isinstance(parent, list) else parent[key]
        parent[int(keys[-1]) if isinstance(parent, list) else keys[-1]] = value

    return change


def _deep(levels):
    value = {}
    for _ in range(levels):
        value = {"x": value}
    return value


GRAPH = "variants.fp32.graphs.fusion"


@pytest.mark.parametrize("change, field, problem", [
    (_set("tokenizer", None), "tokenizer", "expected a non-empty string, got null"),
    (_set("tokenizer", "/etc/passwd"), "tokenizer", "expected a relative path inside the model directory"),
    (_set("tokenizer", "../tokenizer.json"), "tokenizer", "expected a relative path inside the model directory"),
    (_set(f"{GRAPH}.file", None), f"{GRAPH}.file", "expected a non-empty string, got null"),
    (_set(f"{GRAPH}.sha256", "abc"), f"{GRAPH}.sha256", "expected 64 lower-case hex digits"),
    (_set(f"{GRAPH}.opset", True), f"{GRAPH}.opset", "expected an integer, got true"),
    (_set(f"{GRAPH}.bogus", 1), GRAPH, "has keys this format does not define: bogus"),
    (_set("variants.fp32.bogus", 1), "variants.fp32", "has keys this format does not define: bogus"),
    (_set("bogus", 1), "top level", "has keys this format does not define: bogus"),
    (_set("variants.fp32.precision", "int8"), "variants.fp32.precision", "says \"int8\" under the name 'fp32'"),
    (_set("variants.bf16", {}), "variants.bf16", "unknown precision 'bf16'"),
    (_set("variants", {}), "variants", "expected an object of precision variants"),
    (_set("variants.fp32.parity", _deep(20)), "variants.fp32.parity", "nested deeper than 16 levels"),
    (_set("max_audio_samples", "abc"), "max_audio_samples", "expected an integer, got \"abc\""),
    (_set("max_audio_samples", 0), "max_audio_samples", "expected from 1 to 9600000, got 0"),
    (_set("max_audio_samples", 2.5), "max_audio_samples", "expected an integer, got 2.5"),
    (_set("sample_rate", None), "sample_rate", "expected an integer, got null"),
    (_set("sample_rate", 8000), "sample_rate", "8000 Hz, but the graphs of this format take 16000 Hz"),
    (_set("extra", None), "extra", "expected an object, got null"),
    (_set("extra", {"max_text_tokens": "abc"}), "extra.max_text_tokens", "expected an integer, got \"abc\""),
    (_set("extra", {"max_text_tokens": 0}), "extra.max_text_tokens", "expected from 1 to 4096, got 0"),
    (_set("extra", {"max_text_tokens": 100000}), "extra.max_text_tokens", "expected from 1 to 4096, got 100000"),
    (_set("extra", {"min_audio_samples": "abc"}), "extra.min_audio_samples", "expected an integer"),
    (_set("extra", {"min_audio_samples": 300000}), "extra.min_audio_samples", "expected from 1 to 210000"),
    (_set("versions", {"torch": 2}), "versions.torch", "expected a non-empty string, got 2"),
    (_set("labels", []), "labels", "expected a non-empty list of strings, got list"),
    (_set("labels", ["happy", "happy"]), "labels", "'happy' appears twice (at 0 and 1)"),
    (_set("labels.1", 7), "labels[1]", "expected a non-empty string, got 7"),
    (_set("ctc_vocab", "abc"), "ctc_vocab", "expected a non-empty list of strings"),
    (_set("ctc_vocab.4", "E"), "ctc_vocab", "'E' appears twice"),
    (_set("text_cleaning", 3), "text_cleaning", "expected a non-empty string, got 3"),
    (lambda raw: raw.pop("max_audio_samples"), "max_audio_samples", "is missing"),
    (lambda raw: raw["variants"]["fp32"].pop("graphs"), "variants.fp32.graphs", "is missing"),
])
def test_every_field_is_checked_and_named(tmp_path, change, field, problem):
    make_model_dir(tmp_path)
    rewrite_manifest(tmp_path, change)
    with pytest.raises(ModelDirError) as error:
        ModelManifest.read(tmp_path)
    assert f"mmer.json: malformed manifest: {field}: {problem}" in str(error.value)


def test_unknown_keys_are_refused_at_every_level_but_free_form_objects_take_any(tmp_path):
    make_model_dir(tmp_path)
    rewrite_manifest(tmp_path, lambda raw: (raw["extra"].update(anything={"nested": [1, 2]}),
                                            raw["variants"]["fp32"]["parity"].update(speech={"clips": 3}),
                                            raw["versions"].update(onnx="1.17")))
    manifest = ModelManifest.read(tmp_path)
    assert manifest.extra["anything"] == {"nested": [1, 2]} and manifest.versions["onnx"] == "1.17"


def test_json_nested_too_deeply_is_refused(tmp_path):
    make_model_dir(tmp_path)
    (tmp_path / MANIFEST_NAME).write_text('{"format_version": 1, "labels": ' + "[" * 200_000 + "]" * 200_000 + "}")
    with pytest.raises(ModelDirError, match="cannot read the manifest \\(JSON nested too deeply\\)"):
        ModelManifest.read(tmp_path)


def test_a_boolean_format_version_is_not_version_1(tmp_path):
    make_model_dir(tmp_path)
    rewrite_manifest(tmp_path, lambda raw: raw.update(format_version=True))
    with pytest.raises(ModelDirError, match="format version True is not supported"):
        ModelManifest.read(tmp_path)


def test_a_model_dir_name_too_long_is_a_model_dir_error(tmp_path):
    with pytest.raises(ModelDirError, match="cannot open the model directory .*File name too long"):
        ModelManifest.read(tmp_path / ("m" * 300))
