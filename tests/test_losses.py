"""Tests of the training losses against values worked out by hand (loops, math.exp/log, brute-force CTC)."""

from __future__ import annotations

import itertools
import math
from types import SimpleNamespace

import pytest
import torch

from training.losses import acl_loss, ctc_loss, mmer_loss, scl_loss_published, supcon_loss

E = [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
E_AUG = [[0.5, 0.2], [0.1, 0.9], [1.2, 0.7]]
LABELS = [0, 1, 0]


def dot(u, v):
    return sum(a * b for a, b in zip(u, v))


def log_softmax_row(row):
    log_total = math.log(sum(math.exp(x) for x in row))
    return [x - log_total for x in row]


def hand_cross_entropy(logits, labels):
    return sum(-log_softmax_row(row)[y] for row, y in zip(logits, labels)) / len(labels)


def hand_ctc(probabilities, target):
    """-log of the summed probability of every frame-level path that collapses to ``target`` (blank 0)."""
    frames, vocab = len(probabilities), len(probabilities[0])
    total = 0.0
    for path in itertools.product(range(vocab), repeat=frames):
        collapsed = [s for i, s in enumerate(path) if s != 0 and (i == 0 or s != path[i - 1])]
        if collapsed == target:
            total += math.prod(probabilities[t][s] for t, s in enumerate(path))
    return -math.log(total)


def hand_scl_published(e, labels, tau):
    scores = [[dot(u, v) for v in e] for u in e]
    terms = [log_softmax_row(scores[i])[j] / tau
             for i in range(len(e)) for j in range(len(e)) if labels[i] == labels[j]]
    return -sum(terms) / len(terms)


def hand_supcon(e, labels, tau):
    unit = [[x / math.sqrt(dot(u, u)) for x in u] for u in e]
    anchors = []
    for i in range(len(e)):
        others = [j for j in range(len(e)) if j != i]
        positives = [j for j in others if labels[j] == labels[i]]
        if not positives:
            continue
        denominator = sum(math.exp(dot(unit[i], unit[k]) / tau) for k in others)
        anchors.append(-sum(math.log(math.exp(dot(unit[i], unit[j]) / tau) / denominator)
                            for j in positives) / len(positives))
    return sum(anchors) / len(anchors)


def hand_acl(e, e_aug, tau):
    scores = [[dot(u, v) / tau for v in e_aug] for u in e]
    return hand_cross_entropy(scores, list(range(len(e))))


def tensor(values):
    return torch.tensor(values, dtype=torch.float64)


# Two utterances: 3 frames with target "ab" (ids 1, 2), and 2 valid frames (one padded) with target "a".
CTC_LOGITS = [[[0.2, 1.0, -0.5], [0.1, 0.3, 0.9], [1.2, -0.4, 0.6]],
              [[0.0, 0.7, 0.1], [0.5, 0.5, -1.0], [9.0, 9.0, 9.0]]]
CTC_FRAME_MASK = [[1, 1, 1], [1, 1, 0]]
CTC_TARGETS = [[1, 2], [1]]


def hand_ctc_batch():
    losses = []
    for row, mask, target in zip(CTC_LOGITS, CTC_FRAME_MASK, CTC_TARGETS):
        valid = [frame for frame, m in zip(row, mask) if m]
        probabilities = [[math.exp(x) for x in log_softmax_row(frame)] for frame in valid]
        losses.append(hand_ctc(probabilities, target))
    return losses


def test_ctc_loss_sums_brute_force_alignments_over_the_batch():
    expected = sum(hand_ctc_batch())
    got = ctc_loss(tensor(CTC_LOGITS), torch.tensor(CTC_FRAME_MASK), CTC_TARGETS)
    assert got.item() == pytest.approx(expected, rel=1e-6)


def test_ctc_loss_takes_padded_targets_and_other_reductions():
    padded = (torch.tensor([[1, 2], [1, 0]]), torch.tensor([2, 1]))
    per_row = hand_ctc_batch()
    logits, mask = tensor(CTC_LOGITS), torch.tensor(CTC_FRAME_MASK)
    assert ctc_loss(logits, mask, padded).item() == pytest.approx(sum(per_row), rel=1e-6)
    none = ctc_loss(logits, mask, CTC_TARGETS, reduction="none")
    assert none.tolist() == pytest.approx(per_row, rel=1e-6)
    with pytest.raises(ValueError, match="1 target sequences for a batch of 2"):
        ctc_loss(logits, mask, [[1]])


def test_ctc_loss_is_infinite_for_an_impossible_target_unless_zeroed():
    logits, mask = tensor(CTC_LOGITS)[:1, :1], torch.tensor([[1]])
    assert math.isinf(ctc_loss(logits, mask, [[1, 2]]).item())
    assert ctc_loss(logits, mask, [[1, 2]], zero_infinity=True).item() == 0.0


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_published_scl_matches_hand_computation(tau):
    got = scl_loss_published(tensor(E), torch.tensor(LABELS), tau)
    assert got.item() == pytest.approx(hand_scl_published(E, LABELS, tau), rel=1e-9)


def test_published_scl_is_not_supcon():
    e, labels = tensor(E), torch.tensor(LABELS)
    assert abs(scl_loss_published(e, labels).item() - supcon_loss(e, labels).item()) > 1.0


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_supcon_matches_hand_computation(tau):
    got = supcon_loss(tensor(E), torch.tensor(LABELS), tau)
    assert got.item() == pytest.approx(hand_supcon(E, LABELS, tau), rel=1e-9)


def test_supcon_ignores_embedding_scale_and_is_zero_without_positive_pairs():
    labels = torch.tensor(LABELS)
    assert supcon_loss(tensor(E) * 7.0, labels).item() == pytest.approx(supcon_loss(tensor(E), labels).item())
    e = tensor(E).requires_grad_(True)
    loss = supcon_loss(e, torch.tensor([0, 1, 2]))
    assert loss.item() == 0.0
    loss.backward()  # still part of the graph, so a training step does not fail
    assert e.grad is not None


@pytest.mark.parametrize("tau", [0.07, 0.5])
def test_acl_matches_hand_computation(tau):
    got = acl_loss(tensor(E), tensor(E_AUG), tau)
    assert got.item() == pytest.approx(hand_acl(E, E_AUG, tau), rel=1e-9)


def test_acl_rejects_unpaired_batches():
    with pytest.raises(ValueError, match="same shape"):
        acl_loss(tensor(E), tensor(E_AUG[:2]))


CE_LOGITS = [[1.0, 2.0, 0.0], [0.5, 0.5, 3.0], [-1.0, 0.0, 1.0]]


def fake_output(scl_embeddings, acl_embeddings):
    return SimpleNamespace(
        logits=tensor(CE_LOGITS), ctc_logits=tensor(CTC_LOGITS + [CTC_LOGITS[0]]),
        frame_mask=torch.tensor(CTC_FRAME_MASK + [CTC_FRAME_MASK[0]]),
        scl_embeddings=tensor(scl_embeddings), acl_embeddings=tensor(acl_embeddings),
    )


@pytest.mark.parametrize("lam", [0.1, 1.0])
def test_mmer_loss_combines_the_parts_with_lambda(lam):
    out, aug = fake_output(E, [[9.0, 9.0]] * 3), fake_output([[5.0, 5.0]] * 3, E_AUG)
    labels = torch.tensor([1, 2, 0])
    targets = CTC_TARGETS + [CTC_TARGETS[0]]
    ce = hand_cross_entropy(CE_LOGITS, [1, 2, 0])
    ctc = sum(hand_ctc_batch()) + hand_ctc_batch()[0]
    scl = hand_scl_published(E, [1, 2, 0], 0.07)
    acl = hand_acl(E, E_AUG, 0.07)  # the original's SCL embeddings against the augmented pass's ACL ones

    total, parts = mmer_loss(out, aug, labels, targets, lam=lam)
    assert total.item() == pytest.approx(ce + lam * (ctc + scl + acl), rel=1e-6)
    assert {k: v.item() for k, v in parts.items()} == pytest.approx(
        {"ce": ce, "ctc": ctc, "scl": scl, "acl": acl, "total": total.item()}, rel=1e-6)

    total, parts = mmer_loss(out, None, labels, targets, lam=lam)
    assert "acl" not in parts
    assert total.item() == pytest.approx(ce + lam * (ctc + scl), rel=1e-6)


def test_mmer_loss_selects_the_scl_form():
    out, labels = fake_output(E, E), torch.tensor(LABELS)
    targets = CTC_TARGETS + [CTC_TARGETS[0]]
    _, parts = mmer_loss(out, None, labels, targets, scl="supcon")
    assert parts["scl"].item() == pytest.approx(hand_supcon(E, LABELS, 0.07), rel=1e-6)
    with pytest.raises(ValueError, match="scl='khosla'"):
        mmer_loss(out, None, labels, targets, scl="khosla")


def test_mmer_loss_trains_the_heads_and_not_the_frozen_encoder(tiny_model, make_tiny_batch):
    # Transcripts short enough for CTC to align them to 10-20 tiny frames.
    tiny_batch = make_tiny_batch((1600, 900, 1234), texts=["Oh no.", "Fine!", "Go away"])
    inputs = [tiny_batch[k] for k in ("input_values", "sample_mask", "input_ids", "attention_mask")]
    tiny_model.train()
    out, aug = tiny_model(*inputs), tiny_model(*inputs)
    total, _ = mmer_loss(out, aug, tiny_batch["labels"], tiny_batch["ctc_targets"])
    assert torch.isfinite(total)
    total.backward()
    grads = {name: p.grad for name, p in tiny_model.named_parameters()}
    for name in ("ctc_head.weight", "scl_head.0.weight", "acl_head.0.weight", "fusion.classifier.weight",
                 "audio_encoder.wav2vec2.encoder.layers.0.attention.q_proj.weight"):
        assert grads[name] is not None and grads[name].abs().sum() > 0, name
    assert all(g is None for name, g in grads.items() if name.startswith("text_encoder."))


def test_mmer_loss_mean_ctc_is_torchs_mean_reduction():
    out, labels = fake_output(E, E), torch.tensor(LABELS)
    targets = CTC_TARGETS + [CTC_TARGETS[0]]
    _, parts = mmer_loss(out, None, labels, targets, ctc_reduction="mean")
    expected = ctc_loss(out.ctc_logits, out.frame_mask, targets, reduction="mean", zero_infinity=True)
    assert parts["ctc"].item() == pytest.approx(expected.item(), rel=1e-9)
    with pytest.raises(ValueError, match="ctc_reduction='max'"):
        mmer_loss(out, None, labels, targets, ctc_reduction="max")
