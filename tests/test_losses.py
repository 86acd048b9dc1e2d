"""Tests of vaemotion.training.losses against independent float64 NumPy references."""

import math

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from vaemotion.training.vg_align import VGAlignConfig
from vaemotion.training.losses import (
    TeacherTopK,
    category_loss,
    chunked_lm_head_cross_entropy,
    chunked_lm_head_distillation,
    distillation_loss,
    emotion_loss,
    response_cross_entropy,
    select_positions,
    token_divergence,
    topk_teacher,
    valence_arousal_loss,
)

KINDS = [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.1), ("jsd", 0.5), ("jsd", 0.9)]


# ---------------------------------------------------------------------------------------------------------------
# float64 NumPy references, written from the definitions


def np_softmax(z):
    z = np.asarray(z, dtype=np.float64)
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def np_kl(p, q):
    with np.errstate(divide="ignore", invalid="ignore"):
        return float(np.sum(np.where(p > 0, p * (np.log(p) - np.log(q)), 0.0)))


def np_divergence(q, p, kind, beta):
    """D(teacher q || student p) for one position."""
    if kind == "forward_kl":
        return np_kl(q, p)
    if kind == "reverse_kl":
        return np_kl(p, q)
    m = beta * q + (1 - beta) * p
    return beta * np_kl(q, m) + (1 - beta) * np_kl(p, m)


def np_topk_buckets(q, p, k):
    """Teacher's k most likely tokens plus the rest bucket (1 - their sum) for both distributions."""
    top = np.argsort(-q)[:k]
    qk, pk = q[top], p[top]
    if k >= q.size:
        return qk, pk
    return np.append(qk, 1 - qk.sum()), np.append(pk, 1 - pk.sum())


def np_distillation(student, teacher, mask, kind, tau, beta, k=None):
    """tau^2 * mean over selected positions of D(softmax(t/tau) || softmax(s/tau))."""
    s = student.double().numpy()[mask.numpy()]
    t = teacher.double().numpy()[mask.numpy()]
    values = []
    for zs, zt in zip(s, t):
        q, p = np_softmax(zt / tau), np_softmax(zs / tau)
        if k is not None:
            q, p = np_topk_buckets(q, p, k)
        values.append(np_divergence(q, p, kind, beta))
    return tau**2 * np.mean(values) if values else 0.0


def random_inputs(seed=0, shape=(3, 5), vocab=13, scale=2.0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    student = (torch.randn(*shape, vocab, generator=g) * scale).to(dtype)
    teacher = (torch.randn(*shape, vocab, generator=g) * scale).to(dtype)
    mask = torch.rand(*shape, generator=g) < 0.6
    mask.view(-1)[0] = True
    return student, teacher, mask


# ---------------------------------------------------------------------------------------------------------------
# Divergence values


@pytest.mark.parametrize("kind,beta", KINDS)
@pytest.mark.parametrize("tau", [1.0, 2.0])
@pytest.mark.parametrize("k", [None, 4])
def test_distillation_matches_float64_reference(kind, beta, tau, k):
    student, teacher, mask = random_inputs(seed=hash((kind, beta, tau, k)) % 1000)
    given = teacher if k is None else topk_teacher(teacher, k, tau)
    loss = distillation_loss(student, given, mask, kind=kind, temperature=tau, jsd_beta=beta, chunk_size=3)
    expected = np_distillation(student, teacher, mask, kind, tau, beta, k)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(expected, rel=1e-5, abs=1e-7)


def np_trl_beta_divergence(q, p, beta):
    """TRL's generalised JSD as its DistillationConfig documents ``beta``: 0 forward KL(teacher || student), 1 reverse
    KL, in between beta * KL(q || m) + (1 - beta) * KL(p || m) with the mixture m = beta * q + (1 - beta) * p."""
    if beta == 0:
        return np_kl(q, p)
    if beta == 1:
        return np_kl(p, q)
    m = beta * q + (1 - beta) * p
    return beta * np_kl(q, m) + (1 - beta) * np_kl(p, m)


@pytest.mark.parametrize("beta", [0.0, 0.1, 0.5, 0.9, 1.0])
def test_trl_beta_selects_the_divergence_trl_means(beta):
    """The trainers' ``beta`` field (TRL's name) reaches the loss as TRL defines it, tau^2-scaled (Hinton)."""
    settings = VGAlignConfig(output_dir="out", model_name_or_path="m", train_data="d", beta=beta, temperature=2.0,
                             use_cpu=True).distillation
    student, teacher, mask = random_inputs(seed=int(beta * 10))
    loss = distillation_loss(student, teacher, mask, kind=settings.divergence, temperature=settings.temperature,
                             jsd_beta=settings.jsd_beta)
    s, t = student.double().numpy()[mask.numpy()], teacher.double().numpy()[mask.numpy()]
    expected = 4.0 * np.mean([np_trl_beta_divergence(np_softmax(zt / 2), np_softmax(zs / 2), beta) for zs, zt in zip(s, t)])
    assert loss.item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("kind,beta", KINDS)
def test_sum_reduction_and_token_divergence(kind, beta):
    student, teacher, mask = random_inputs(seed=3)
    total = distillation_loss(student, teacher, mask, kind=kind, jsd_beta=beta, temperature=2.0, reduction="sum")
    per_token = token_divergence(student, teacher, kind=kind, jsd_beta=beta, temperature=2.0)
    assert per_token.shape == mask.shape
    expected = np_distillation(student, teacher, mask, kind, 2.0, beta) * mask.sum().item()
    assert total.item() == pytest.approx(expected, rel=1e-5)
    assert (4 * per_token[mask].sum()).item() == pytest.approx(expected, rel=1e-5)


def test_topk_covering_vocabulary_is_exact_and_truncation_lower_bounds_forward_kl():
    student, teacher, mask = random_inputs(seed=4, vocab=9)
    full = distillation_loss(student, teacher, mask, temperature=2.0)
    everything = topk_teacher(teacher, k=50, temperature=2.0)  # k >= V: clamped to V, no rest bucket
    assert everything.logprobs.shape[-1] == 9
    assert torch.allclose(distillation_loss(student, everything, mask, temperature=2.0), full, rtol=1e-6)
    for k in (1, 3, 8):
        # the divergence of coarse-grained distributions never exceeds the full one (data processing)
        truncated = distillation_loss(student, topk_teacher(teacher, k, 2.0), mask, temperature=2.0)
        assert truncated.item() <= full.item() + 1e-6


def test_topk_teacher_is_sorted_tempered_logprobs():
    logits = torch.tensor([[0.0, 3.0, 1.0, -2.0]])
    top = topk_teacher(logits, k=2, temperature=2.0)
    reference = np.log(np_softmax(logits.numpy()[0] / 2.0))
    assert top.indices.tolist() == [[1, 2]]
    assert np.allclose(top.logprobs.numpy()[0], reference[[1, 2]], atol=1e-6)
    assert top.temperature == 2.0


def test_packed_teacher_and_teacher_mask_align_positions():
    student, teacher, mask = random_inputs(seed=5, shape=(2, 6))
    mask[:] = False
    mask[0, 2:5] = True
    mask[1, 1:3] = True
    expected = distillation_loss(student, teacher, mask, temperature=2.0)
    packed = select_positions(teacher, mask)
    assert torch.allclose(distillation_loss(student, packed, mask, temperature=2.0), expected)
    # the teacher's prompt is 3 tokens longer: its responses sit 3 positions later
    shifted = torch.randn(2, 9, teacher.shape[-1])
    shifted[:, 3:] = teacher
    teacher_mask = torch.zeros(2, 9, dtype=torch.bool)
    teacher_mask[:, 3:] = mask
    aligned = distillation_loss(student, shifted, mask, teacher_mask=teacher_mask, temperature=2.0)
    assert torch.allclose(aligned, expected)
    top = topk_teacher(shifted, 4, 2.0)
    assert torch.allclose(
        distillation_loss(student, top, mask, teacher_mask=teacher_mask, temperature=2.0),
        distillation_loss(student, topk_teacher(teacher, 4, 2.0), mask, temperature=2.0),
    )
    teacher_mask[1, 8] = True
    with pytest.raises(ValueError, match="sequence 1 selects 2 student positions but 3 teacher"):
        distillation_loss(student, shifted, mask, teacher_mask=teacher_mask)


# ---------------------------------------------------------------------------------------------------------------
# Gradients, chunking, masks


@pytest.mark.parametrize("kind,beta", [("forward_kl", 0.5), ("reverse_kl", 0.5), ("jsd", 0.3)])
@pytest.mark.parametrize("k", [None, 3])
def test_gradcheck_float64(kind, beta, k):
    student, teacher, mask = random_inputs(seed=6, shape=(2, 3), vocab=6, dtype=torch.float64)
    student.requires_grad_(True)
    given = teacher if k is None else topk_teacher(teacher, k, 1.5)

    def loss(x):
        return distillation_loss(x, given, mask, kind=kind, jsd_beta=beta, temperature=1.5, chunk_size=2)

    assert loss(student).dtype == torch.float64
    assert torch.autograd.gradcheck(loss, (student,))


def test_gradcheck_lm_head_float64():
    g = torch.Generator().manual_seed(7)
    hidden = torch.randn(2, 3, 4, dtype=torch.float64, generator=g, requires_grad=True)
    weight = torch.randn(7, 4, dtype=torch.float64, generator=g, requires_grad=True)
    bias = torch.randn(7, dtype=torch.float64, generator=g, requires_grad=True)
    mask = torch.tensor([[True, False, True], [True, True, False]])
    teacher = topk_teacher(torch.randn(2, 3, 7, dtype=torch.float64, generator=g), 3, 2.0)
    labels = torch.randint(0, 7, (2, 3), generator=g).masked_fill(~mask, -100)

    def kd(h, w, b):
        return chunked_lm_head_distillation(h, w, teacher, mask, lm_head_bias=b, kind="jsd", temperature=2.0,
                                            chunk_size=2)

    def ce(h, w, b):
        return chunked_lm_head_cross_entropy(h, w, labels, lm_head_bias=b, label_smoothing=0.1, chunk_size=1)

    assert torch.autograd.gradcheck(kd, (hidden, weight, bias))
    assert torch.autograd.gradcheck(ce, (hidden, weight, bias))


@pytest.mark.parametrize("k", [None, 5])
@pytest.mark.parametrize("chunk_size", [1, 4, None])
def test_lm_head_chunked_equals_unchunked_composition(k, chunk_size):
    """Loss and gradients of the fused path match plain autograd through ``hidden @ W.T + b`` in float64."""
    g = torch.Generator().manual_seed(8)
    hidden = torch.randn(3, 5, 6, dtype=torch.float64, generator=g)
    weight = torch.randn(11, 6, dtype=torch.float64, generator=g)
    bias = torch.randn(11, dtype=torch.float64, generator=g)
    mask = torch.rand(3, 5, generator=g) < 0.7
    teacher_logits = torch.randn(3, 5, 11, dtype=torch.float64, generator=g)
    teacher = teacher_logits if k is None else topk_teacher(teacher_logits, k, 2.0)

    def run(fused):
        leaves = [t.clone().requires_grad_(True) for t in (hidden, weight, bias)]
        h, w, b = leaves
        if fused:
            loss = chunked_lm_head_distillation(h, w, teacher, mask, lm_head_bias=b, temperature=2.0,
                                                kind="reverse_kl", chunk_size=chunk_size)
        else:  # the textbook composition: full logits, per-token divergence, masked mean, plain autograd
            per_token = token_divergence(h @ w.T + b, teacher, kind="reverse_kl", temperature=2.0)
            loss = 4.0 * per_token[mask].mean()
        loss.backward()
        return [loss, *(t.grad for t in leaves)]

    for fused, plain in zip(run(True), run(False)):
        assert torch.allclose(fused, plain, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("k", [None, 4])
def test_logits_chunk_sizes_agree(k):
    student, teacher, mask = random_inputs(seed=9)
    given = teacher if k is None else topk_teacher(teacher, k, 2.0)
    results = []
    for chunk_size in (1, 2, 7, None):
        x = student.clone().requires_grad_(True)
        loss = distillation_loss(x, given, mask, kind="jsd", temperature=2.0, chunk_size=chunk_size)
        loss.backward()
        results.append((loss.detach(), x.grad))
    for loss, grad in results[1:]:
        assert torch.allclose(loss, results[0][0], rtol=1e-6)
        assert torch.allclose(grad, results[0][1], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("kind,beta", KINDS)
@pytest.mark.parametrize("k", [None, 4])
def test_masked_positions_never_affect_loss_or_gradients(kind, beta, k):
    student, teacher, mask = random_inputs(seed=10)
    given = teacher if k is None else topk_teacher(teacher, k, 1.0)
    clean = distillation_loss(student, given, mask, kind=kind, jsd_beta=beta)
    poisoned_student = student.masked_fill(~mask.unsqueeze(-1), float("nan")).requires_grad_(True)
    if k is None:
        poisoned_teacher = teacher.masked_fill(~mask.unsqueeze(-1), float("inf"))
    else:
        poisoned_teacher = TeacherTopK(given.logprobs.masked_fill(~mask.unsqueeze(-1), float("nan")),
                                       given.indices, 1.0)
    loss = distillation_loss(poisoned_student, poisoned_teacher, mask, kind=kind, jsd_beta=beta, chunk_size=2)
    loss.backward()
    assert torch.allclose(loss, clean)
    assert torch.isfinite(poisoned_student.grad).all()
    assert (poisoned_student.grad[~mask] == 0).all()
    assert (poisoned_student.grad[mask] != 0).any()


@pytest.mark.parametrize("kind,beta", KINDS)
def test_empty_mask_gives_zero_with_zero_gradient(kind, beta):
    student, teacher, _ = random_inputs(seed=11)
    student = student.masked_fill(torch.rand(student.shape) < 0.1, float("nan")).requires_grad_(True)
    empty = torch.zeros(student.shape[:-1], dtype=torch.bool)
    for given in (teacher, topk_teacher(teacher, 3, 1.0)):
        loss = distillation_loss(student, given, empty, kind=kind, jsd_beta=beta)
        loss.backward()
        assert loss.item() == 0.0 and loss.requires_grad
        assert (student.grad == 0).all()
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    weight = torch.randn(5, 4, requires_grad=True)
    assert chunked_lm_head_distillation(hidden, weight, torch.randn(2, 3, 5), empty[:2, :3]).item() == 0.0
    ce = chunked_lm_head_cross_entropy(hidden, weight, torch.full((2, 3), -100))
    ce.backward()
    assert ce.item() == 0.0 and (hidden.grad == 0).all() and (weight.grad == 0).all()


@pytest.mark.parametrize("kind,beta", KINDS)
@pytest.mark.parametrize("k", [None, 3])
def test_huge_and_minus_inf_logits_are_stable(kind, beta, k):
    """Logits at 1e4 scale and -inf entries (e.g. suppressed vocabulary ids) shared by teacher and student."""
    g = torch.Generator().manual_seed(12)
    base = torch.randn(4, 10, generator=g)
    student = 1e4 * base + torch.randn(4, 10, generator=g)
    teacher = 1e4 * base + torch.randn(4, 10, generator=g)
    student[:, 7:] = teacher[:, 7:] = float("-inf")
    soft_student = base.clone()
    soft_student[:, 7:] = float("-inf")
    soft_teacher = soft_student + 0.3 * torch.randn(4, 10, generator=g)
    mask = torch.ones(4, dtype=torch.bool)
    for s, t in ((student, teacher), (soft_student, soft_teacher)):
        x = s.clone().requires_grad_(True)
        given = t if k is None else topk_teacher(t, k, 1.0)
        loss = distillation_loss(x, given, mask, kind=kind, jsd_beta=beta)
        loss.backward()
        assert loss.item() == pytest.approx(np_distillation(s, t, mask, kind, 1.0, beta, k), rel=1e-4, abs=1e-6)
        assert torch.isfinite(x.grad).all()


def test_reverse_kl_stays_finite_when_teacher_rest_rounds_to_zero():
    teacher = torch.full((1, 20), -60.0)
    teacher[0, 0] = 60.0  # the rest (~1e-51) is below float32 resolution: stored top-k sums to exactly 1
    student = torch.zeros(1, 20, requires_grad=True)
    loss = distillation_loss(student, topk_teacher(teacher, 2, 1.0), None, kind="reverse_kl")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


# ---------------------------------------------------------------------------------------------------------------
# Precision and memory


@pytest.mark.parametrize("k", [None, 6])
def test_bf16_inputs_close_to_float32(k):
    student, teacher, mask = random_inputs(seed=13, vocab=64)
    results = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = student.to(dtype).detach().clone().requires_grad_(True)
        t = teacher.to(dtype)
        given = t if k is None else topk_teacher(t, k, 2.0)
        loss = distillation_loss(x, given, mask, temperature=2.0, chunk_size=4)
        loss.backward()
        assert loss.dtype == torch.float32 and x.grad.dtype == dtype
        results[dtype] = (loss.detach(), x.grad.float())
    (loss32, grad32), (loss16, grad16) = results[torch.float32], results[torch.bfloat16]
    assert torch.allclose(loss16, loss32, rtol=3e-2)
    assert torch.allclose(grad16, grad32, rtol=5e-2, atol=2e-3 * grad32.abs().max().item())


def test_bf16_lm_head_close_to_float32():
    g = torch.Generator().manual_seed(14)
    hidden, weight = torch.randn(2, 8, 16, generator=g), torch.randn(40, 16, generator=g) / 4
    labels = torch.randint(0, 40, (2, 8), generator=g)
    teacher = topk_teacher(torch.randn(2, 8, 40, generator=g), 5, 1.0)
    losses = {}
    for dtype in (torch.float32, torch.bfloat16):
        h = hidden.to(dtype).detach().clone().requires_grad_(True)
        w = weight.to(dtype).detach().clone().requires_grad_(True)
        kd = chunked_lm_head_distillation(h, w, teacher, None, chunk_size=5)
        ce = chunked_lm_head_cross_entropy(h, w, labels, chunk_size=5)
        (kd + ce).backward()
        assert h.grad.dtype == dtype and w.grad.dtype == dtype
        losses[dtype] = torch.stack([kd, ce]).detach()
    assert torch.allclose(losses[torch.bfloat16], losses[torch.float32], rtol=3e-2)


class MaxNumel(TorchDispatchMode):
    """Records the largest tensor any operator allocates, forward and backward (views of inputs do not count)."""

    def __init__(self):
        super().__init__()
        self.max_numel = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = tree_flatten((args, kwargs))[0]
        input_storages = {t.untyped_storage().data_ptr() for t in inputs if isinstance(t, torch.Tensor)}
        for value in tree_flatten(out)[0]:
            if isinstance(value, torch.Tensor) and value.untyped_storage().data_ptr() not in input_storages:
                self.max_numel = max(self.max_numel, value.numel())
        return out


@pytest.mark.parametrize("k", [None, 5])
def test_lm_head_paths_never_materialise_all_logits(k):
    positions, hidden_size, vocab, chunk = 64, 6, 50, 8
    hidden = torch.randn(4, 16, hidden_size, requires_grad=True)
    weight = torch.randn(vocab, hidden_size, requires_grad=True)
    teacher_logits = torch.randn(positions, vocab)
    teacher = teacher_logits if k is None else topk_teacher(teacher_logits, k, 1.0)
    mask = torch.ones(4, 16, dtype=torch.bool)
    labels = torch.randint(0, vocab, (4, 16))
    with MaxNumel() as recorder:
        loss = chunked_lm_head_distillation(hidden, weight, teacher, mask, chunk_size=chunk)
        loss = loss + chunked_lm_head_cross_entropy(hidden, weight, labels, chunk_size=chunk)
        loss.backward()
    assert recorder.max_numel <= chunk * vocab < positions * vocab
    with MaxNumel() as recorder:  # the recorder does see full logits when they exist
        distillation_loss(hidden @ weight.T, teacher, mask, chunk_size=chunk).backward()
    assert recorder.max_numel >= positions * vocab


# ---------------------------------------------------------------------------------------------------------------
# Cross-entropy


def np_cross_entropy(logits, labels, ignore_index=-100, smoothing=0.0):
    z = logits.double().numpy().reshape(-1, logits.shape[-1])
    y = labels.numpy().reshape(-1)
    losses = []
    for row, label in zip(z, y):
        if label == ignore_index:
            continue
        log_p = np.log(np_softmax(row))
        losses.append((1 - smoothing) * -log_p[label] + smoothing * -log_p.mean())
    return np.mean(losses) if losses else 0.0


@pytest.mark.parametrize("smoothing", [0.0, 0.2])
def test_cross_entropy_matches_reference(smoothing):
    g = torch.Generator().manual_seed(15)
    hidden, weight = torch.randn(3, 7, 5, generator=g), torch.randn(17, 5, generator=g)
    labels = torch.randint(0, 17, (3, 7), generator=g)
    labels[torch.rand(3, 7, generator=g) < 0.4] = -100
    logits = (hidden @ weight.T).requires_grad_(True)
    on_logits = response_cross_entropy(logits, labels, label_smoothing=smoothing, chunk_size=4)
    fused = chunked_lm_head_cross_entropy(hidden, weight, labels, label_smoothing=smoothing, chunk_size=4)
    expected = np_cross_entropy(logits.detach(), labels, smoothing=smoothing)
    assert on_logits.item() == pytest.approx(expected, rel=1e-5)
    assert fused.item() == pytest.approx(expected, rel=1e-5)
    on_logits.backward()
    assert (logits.grad[labels == -100] == 0).all()
    out_of_range = labels.clone()
    out_of_range[0, 0] = 17
    with pytest.raises(ValueError, match="labels must lie in"):
        response_cross_entropy(logits, out_of_range)


# ---------------------------------------------------------------------------------------------------------------
# Argument validation


def test_invalid_arguments_are_refused():
    student, teacher, mask = random_inputs(seed=16)
    top = topk_teacher(teacher, 3, 2.0)
    with pytest.raises(ValueError, match="cannot be re-tempered"):
        distillation_loss(student, top, mask, temperature=1.0)
    with pytest.raises(ValueError, match="jsd_beta"):
        distillation_loss(student, teacher, mask, kind="jsd", jsd_beta=1.0)
    with pytest.raises(ValueError, match="kind"):
        distillation_loss(student, teacher, mask, kind="kl")
    with pytest.raises(ValueError, match="temperature"):
        distillation_loss(student, teacher, mask, temperature=0.0)
    with pytest.raises(TypeError, match="bool"):
        distillation_loss(student, teacher, mask.long())
    with pytest.raises(ValueError, match="cannot match teacher positions"):
        distillation_loss(student, teacher[:, :2], mask)
    with pytest.raises(ValueError, match="k=20 > vocabulary size 13"):
        distillation_loss(student, TeacherTopK(torch.zeros(3, 5, 20), torch.zeros(3, 5, 20, dtype=torch.long), 1.0),
                          mask)
    with pytest.raises(ValueError, match="chunk_size"):
        distillation_loss(student, teacher, mask, chunk_size=0)


# ---------------------------------------------------------------------------------------------------------------
# Emotion losses


def np_va_loss(pred, target, valid, kind):
    """Per-dimension MSE / 1 - CCC over valid pairs (population statistics), averaged over covered dims."""
    mse, ccc = [], []
    for d in range(pred.shape[1]):
        p, t = pred[valid[:, d], d], target[valid[:, d], d]
        if p.size >= 1:
            mse.append(np.mean((p - t) ** 2))
        if p.size >= 2:
            cov = np.mean((p - p.mean()) * (t - t.mean()))
            ccc.append(1 - 2 * cov / (p.var() + t.var() + (p.mean() - t.mean()) ** 2))
    parts = {"mse": [mse], "ccc": [ccc], "mse+ccc": [mse, ccc]}[kind]
    return sum(np.mean(part) if part else 0.0 for part in parts)


@pytest.mark.parametrize("kind", ["mse", "ccc", "mse+ccc"])
def test_valence_arousal_loss_matches_reference_with_missing_targets(kind):
    g = torch.Generator().manual_seed(17)
    pred = torch.tanh(torch.randn(9, 2, generator=g)).requires_grad_(True)
    target = torch.tanh(torch.randn(9, 2, generator=g))
    target[[1, 4], 0] = float("nan")
    target[6, 1] = float("nan")
    mask = torch.ones(9, dtype=torch.bool)
    mask[2] = False
    loss = valence_arousal_loss(pred, target, mask, kind=kind)
    valid = np.isfinite(target.numpy()) & mask.numpy()[:, None]
    expected = np_va_loss(pred.detach().double().numpy(), target.double().numpy(), valid, kind)
    assert loss.item() == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    assert (pred.grad[2] == 0).all() and pred.grad[1, 0] == 0 and pred.grad[6, 1] == 0


def test_valence_arousal_edge_cases():
    pred = torch.tensor([[0.2, 0.3], [0.5, -0.1], [0.1, 0.9]], requires_grad=True)
    assert valence_arousal_loss(pred, pred.detach().clone(), kind="mse+ccc").abs().item() < 1e-6
    constant = torch.full((3, 2), 0.4)
    assert valence_arousal_loss(constant, constant, kind="ccc").item() == 0.0  # 0/0: identical is perfect
    # dimension 1 has a single valid target: CCC skips it, MSE keeps it
    target = torch.tensor([[0.0, float("nan")], [1.0, 0.5], [0.5, float("nan")]])
    ccc_only = valence_arousal_loss(pred, target, kind="ccc")
    p, t = pred.detach().double().numpy()[:, 0], target.double().numpy()[:, 0]
    expected = 1 - 2 * np.mean((p - p.mean()) * (t - t.mean())) / (p.var() + t.var() + (p.mean() - t.mean()) ** 2)
    assert ccc_only.item() == pytest.approx(expected, rel=1e-5)
    nothing = valence_arousal_loss(pred, torch.full((3, 2), float("nan")), kind="mse+ccc")
    nothing.backward()
    assert nothing.item() == 0.0 and (pred.grad == 0).all()


def test_category_and_emotion_loss():
    g = torch.Generator().manual_seed(18)
    logits = torch.randn(6, 8, generator=g, requires_grad=True)
    labels = torch.tensor([0, 3, -100, 7, 2, -100])
    loss = category_loss(logits, labels, label_smoothing=0.1)
    assert loss.item() == pytest.approx(np_cross_entropy(logits.detach(), labels, smoothing=0.1), rel=1e-5)
    ignored = category_loss(logits, torch.full((6,), -100))
    ignored.backward()
    assert ignored.item() == 0.0 and torch.isfinite(logits.grad).all()

    pred, target = torch.zeros(6, 2), torch.tanh(torch.randn(6, 2, generator=g))
    out = emotion_loss(pred_va=pred, target_va=target, emotion_logits=logits, emotion_labels=labels,
                       va_kind="mse", va_weight=0.3, category_weight=2.0)
    va = np.mean(target.double().numpy() ** 2)
    cat = np_cross_entropy(logits.detach(), labels)
    assert out.va_loss.item() == pytest.approx(va, rel=1e-5)
    assert out.category_loss.item() == pytest.approx(cat, rel=1e-5)
    assert out.loss.item() == pytest.approx(0.3 * va + 2.0 * cat, rel=1e-5)
    only_category = emotion_loss(emotion_logits=logits, emotion_labels=labels)
    assert only_category.va_loss is None and torch.allclose(only_category.loss, out.category_loss)
    with pytest.raises(ValueError, match="needs"):
        emotion_loss()
    with pytest.raises(ValueError, match="both pred_va and target_va"):
        emotion_loss(pred_va=pred)


def test_select_positions_row_major():
    values = torch.arange(24.0).reshape(2, 3, 4)
    mask = torch.tensor([[True, False, True], [False, True, False]])
    assert select_positions(values, mask).tolist() == [values[0, 0].tolist(), values[0, 2].tolist(),
                                                       values[1, 1].tolist()]
    assert math.prod(select_positions(values, None).shape) == 24


# ---------------------------------------------------------------------------------------------------------------
# On a GPU (skipped without one)

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@needs_cuda
@pytest.mark.parametrize("kind", ["forward_kl", "reverse_kl", "jsd"])
def test_cuda_bf16_fused_path_matches_float64_cpu(kind):
    """bf16 on the GPU against the float64 CPU computation (itself checked against NumPy above)."""
    g = torch.Generator().manual_seed(20)
    hidden, weight = torch.randn(300, 256, generator=g), torch.randn(4096, 256, generator=g) / 16
    mask = torch.rand(300, generator=g) < 0.8
    top = topk_teacher(torch.randn(300, 4096, generator=g, dtype=torch.float64) * 2, 32, 2.0)
    reference_hidden = hidden.double().requires_grad_(True)
    per_token = token_divergence(reference_hidden @ weight.double().T, top, kind=kind, temperature=2.0)
    reference = 4.0 * per_token[mask].mean()
    reference.backward()

    h = hidden.cuda().bfloat16().requires_grad_(True)
    teacher = TeacherTopK(top.logprobs.half().cuda(), top.indices.int().cuda(), 2.0)  # as a cache stores it
    loss = chunked_lm_head_distillation(h, weight.cuda().bfloat16(), teacher, mask.cuda(), kind=kind,
                                        temperature=2.0, chunk_size=64)
    loss.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=2e-2)
    grad, expected = h.grad.double().cpu(), reference_hidden.grad
    assert (grad - expected).norm() / expected.norm() < 5e-2


@needs_cuda
def test_cuda_fused_path_peak_memory_is_per_chunk():
    positions, vocab, chunk = 2048, 32768, 64
    hidden = torch.randn(positions, 512, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    weight = torch.randn(vocab, 512, device="cuda", dtype=torch.bfloat16) / 20
    teacher = topk_teacher(torch.randn(positions, vocab, device="cuda"), 64, 1.0)
    labels = torch.randint(0, vocab, (positions,), device="cuda")
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    loss = chunked_lm_head_distillation(hidden, weight, teacher, None, chunk_size=chunk)
    (loss + chunked_lm_head_cross_entropy(hidden, weight, labels, chunk_size=chunk)).backward()
    torch.cuda.synchronize()
    peak, full_fp32_logits = torch.cuda.max_memory_allocated() - before, positions * vocab * 4
    # a handful of (chunk, vocab) fp32 buffers (1/32 of the positions each), never the (positions, vocab) logits
    assert peak < full_fp32_logits / 4, f"peak {peak / 2**20:.0f} MiB"
