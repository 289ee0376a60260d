"""Tests of mmer_rt.text: transcript cleaning, CTC targets, greedy CTC decoding and the tokenizer wrapper."""

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers, processors

from mmer_rt.errors import TextError
from mmer_rt.text import CTC_BLANK, CTC_VOCAB, TextTokenizer, clean_transcript, ctc_greedy_decode, ctc_targets

IDS = {symbol: i for i, symbol in enumerate(CTC_VOCAB)}


def one_hot_logits(symbols):
    logits = np.full((len(symbols), len(CTC_VOCAB)), -5.0, dtype=np.float32)
    for frame, symbol in enumerate(symbols):
        logits[frame, IDS[symbol]] = 5.0
    return logits


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    vocab = {"<s>": 0, "<pad>": 1, "</s>": 2, "<unk>": 3, "hello": 4, "world": 5, "i": 6, "am": 7, "happy": 8}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    tokenizer.save(str(path))
    return path


# facebook/wav2vec2-base's vocab.json (the authors' CTC head's vocabulary), written out here: no hub in tests.
WAV2VEC2_VOCAB_JSON = {
    "<pad>": 0, "<s>": 1, "</s>": 2, "<unk>": 3, "|": 4, "E": 5, "T": 6, "A": 7, "O": 8, "N": 9, "I": 10, "H": 11,
    "S": 12, "R": 13, "D": 14, "L": 15, "U": 16, "M": 17, "W": 18, "C": 19, "F": 20, "G": 21, "Y": 22, "P": 23,
    "B": 24, "V": 25, "K": 26, "'": 27, "X": 28, "J": 29, "Q": 30, "Z": 31,
}


@pytest.fixture(scope="module")
def wav2vec2_ctc_tokenizer(tmp_path_factory):
    import json

    from transformers import Wav2Vec2CTCTokenizer

    path = tmp_path_factory.mktemp("w2v2") / "vocab.json"
    path.write_text(json.dumps(WAV2VEC2_VOCAB_JSON))
    return Wav2Vec2CTCTokenizer(str(path), do_lower_case=False, word_delimiter_token="|")


def test_vocabulary_is_the_wav2vec2_ctc_tokenizers_in_its_order(wav2vec2_ctc_tokenizer):
    assert len(CTC_VOCAB) == 32 and CTC_VOCAB[CTC_BLANK] == "<pad>" and CTC_VOCAB[4] == "|"
    assert list(CTC_VOCAB) == wav2vec2_ctc_tokenizer.convert_ids_to_tokens(list(range(32)))
    assert CTC_VOCAB.index("K") == 26 and CTC_VOCAB.index("'") == 27


@pytest.mark.parametrize("text", ["DON'T STOP ME NOW", "KEEP IT QUIET, JACK!", "okay [LAUGHTER] fine"])
def test_ctc_targets_are_the_wav2vec2_tokenizers_ids(wav2vec2_ctc_tokenizer, text):
    # The authors made their CTC labels with this tokenizer on the upper-cased text, characters outside it removed.
    upper = clean_transcript(text).upper()
    kept = "".join(c for c in upper if c == " " or c in WAV2VEC2_VOCAB_JSON)
    assert ctc_targets(text) == wav2vec2_ctc_tokenizer(" ".join(kept.split())).input_ids


def test_ctc_targets_in_a_given_vocabulary():
    legacy = list(CTC_VOCAB)
    legacy[26], legacy[27] = legacy[27], legacy[26]
    assert ctc_targets("OK'") == [IDS["O"], IDS["K"], IDS["'"]] == [8, 26, 27]
    assert ctc_targets("OK'", legacy) == [8, 27, 26]
    with pytest.raises(TextError, match="needs <pad>"):
        ctc_targets("ok", ["a", "b"])


@pytest.mark.parametrize(
    "raw, cleaned",
    [("Excuse me.", "Excuse me."), ("[LAUGHTER] Oh  no [BREATHING]!", "Oh no !"), ("  a\tb\n c ", "a b c"),
     ("[GARBAGE]", ""), ("", "")],
)
def test_clean_transcript(raw, cleaned):
    assert clean_transcript(raw) == cleaned


def test_clean_transcript_refuses_non_strings():
    with pytest.raises(TextError, match="must be a str, got int"):
        clean_transcript(3)


def test_ctc_targets_upper_case_with_word_delimiters():
    assert ctc_targets("I'm ok [LAUGHTER]") == [IDS["I"], IDS["'"], IDS["M"], IDS["|"], IDS["O"], IDS["K"]]


def test_ctc_targets_drop_characters_outside_the_vocabulary():
    assert ctc_targets("a1, 99 b!") == [IDS["A"], IDS["|"], IDS["B"]]
    assert ctc_targets("| 42 ?!") == []


def test_greedy_decode_merges_repeats_and_drops_blanks():
    frames = ["H", "H", "<pad>", "I", "|", "|", "<pad>", "Y", "O", "O", "<pad>", "O", "U"]
    assert ctc_greedy_decode(one_hot_logits(frames)) == "HI YOOU"


def test_greedy_decode_stops_at_the_valid_frames():
    logits = one_hot_logits(["O", "K", "|", "N", "O"])
    assert ctc_greedy_decode(logits, num_frames=2) == "OK"
    assert ctc_greedy_decode(logits, num_frames=0) == ""


def test_greedy_decode_of_blanks_and_special_symbols_is_empty():
    assert ctc_greedy_decode(one_hot_logits(["<pad>", "<s>", "|", "</s>", "<unk>"])) == ""


def test_greedy_decode_round_trips_ctc_targets():
    symbols = [CTC_VOCAB[i] for i in ctc_targets("don't stop me now")]
    assert ctc_greedy_decode(one_hot_logits(symbols)) == "DON'T STOP ME NOW"


def test_tokenizer_adds_special_tokens_cleans_and_pads(tokenizer_file):
    tokenizer = TextTokenizer(tokenizer_file)
    encoded = tokenizer.encode_batch(["hello [LAUGHTER] world", "", "happy"])
    np.testing.assert_array_equal(encoded.input_ids, [[0, 4, 5, 2], [0, 2, 1, 1], [0, 8, 2, 1]])
    np.testing.assert_array_equal(encoded.attention_mask, [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 0]])
    assert encoded.input_ids.dtype == encoded.attention_mask.dtype == np.int64 and tokenizer.pad_id == 1


def test_tokenizer_truncates_to_max_tokens_including_specials(tokenizer_file):
    encoded = TextTokenizer(tokenizer_file, max_tokens=4).encode_batch(["hello world i am happy"])
    np.testing.assert_array_equal(encoded.input_ids, [[0, 4, 5, 2]])


def test_tokenizer_refuses_an_empty_batch_and_a_missing_file(tokenizer_file, tmp_path):
    with pytest.raises(TextError, match="empty"):
        TextTokenizer(tokenizer_file).encode_batch([])
    with pytest.raises(FileNotFoundError, match="tokenizer file not found"):
        TextTokenizer(tmp_path / "nope.json")


def test_tokenizer_without_a_pad_token_is_refused(tmp_path):
    tokenizer = Tokenizer(models.WordLevel({"a": 0, "<unk>": 1}, unk_token="<unk>"))
    path = tmp_path / "tokenizer.json"
    tokenizer.save(str(path))
    with pytest.raises(TextError, match="neither a <pad> nor a \\[PAD\\] token"):
        TextTokenizer(path)
