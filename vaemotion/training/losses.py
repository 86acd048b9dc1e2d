# Copyright 2026 The VAEmotion Authors. Licensed under the Apache License, Version 2.0.
r"""Training losses: token-level distillation for Stage 1 (VG-Align) and emotion supervision for Stage 2.

Plain functions on tensors; the trainers wrap them. Everything reduces to a scalar in float32 (float64 for float64
inputs), whatever the input dtype, so bf16 models get an fp32 loss.

**Distillation.** At every selected (response) position the frozen visual pathway's next-token distribution is the
teacher :math:`q = \mathrm{softmax}(z_T/\tau)` and the audio pathway's the student
:math:`p = \mathrm{softmax}(z_S/\tau)`. The loss is

.. math:: L = \tau^2 \cdot \frac{1}{M}\sum_{m=1}^{M} D(q_m \,\|\, p_m)

over the :math:`M` selected positions of the whole batch (a token-level mean; ``reduction="sum"`` drops the
:math:`1/M`), with :math:`D` one of

* ``"forward_kl"``: :math:`\mathrm{KL}(q\|p) = \sum_v q_v (\log q_v - \log p_v)` (mode-covering; the default),
* ``"reverse_kl"``: :math:`\mathrm{KL}(p\|q)` (mode-seeking),
* ``"jsd"``: the generalised Jensen-Shannon divergence of GKD (Agarwal et al., 2024),
  :math:`\beta\,\mathrm{KL}(q\|m) + (1-\beta)\,\mathrm{KL}(p\|m)` with :math:`m = \beta q + (1-\beta) p`,
  :math:`0 < \beta < 1` (``jsd_beta``; 0.5 is the symmetric JSD).

The :math:`\tau^2` factor keeps gradient magnitudes comparable across temperatures (Hinton et al., 2015).
Terms with zero probability count as :math:`0 \log 0 = 0`, in value and in gradient.

**Top-k teacher.** A teacher cache keeps only the teacher's ``k`` most likely tokens per position
(:class:`TeacherTopK`). We keep the remaining mass as one extra *rest* bucket instead of renormalising the top-k:
the teacher's rest is :math:`1 - \sum_{i \le k} q_i`, the student's is the exact mass of its distribution outside
those ``k`` ids, and :math:`D` is taken over the ``k + 1`` buckets. This is the divergence between the two
distributions coarse-grained to "one of the k tokens, or anything else": it never exceeds the full-vocabulary
divergence (data-processing inequality) and equals it when ``k`` covers the vocabulary. Renormalising instead would
tell the student that the teacher is surer than it is (a teacher with 30 % of its mass outside the top-k would
train the student to put none there). With ``k >= V`` there is no rest bucket and the loss is the exact one.

**Memory.** Positions are processed ``chunk_size`` at a time and only one chunk is ever upcast to fp32. When
gradients are needed, each chunk's gradient is computed right away inside the forward pass (a custom
``autograd.Function``), so no chunk's fp32 activations outlive it; the backward only scales the stored gradients.
:func:`chunked_lm_head_distillation` and :func:`chunked_lm_head_cross_entropy` go further and take hidden states
plus the LM-head weight, so the ``(positions, vocabulary)`` student logits never exist at full size. Transient
memory is a few ``chunk_size x V`` fp32 buffers (e.g. 256 x 152k x 4 B = 156 MB each for Qwen2.5). These functions
support first-order gradients only (no double backward). Measured on one H200 with Qwen2.5-7B's LM head
(V = 152064, H = 3584, bf16), top-64 teacher plus cross-entropy, forward + backward over 4096 positions: full fp32
logits 26.6 ms and 9.25 GiB above the inputs; the fused functions at ``chunk_size=256`` 65.8 ms and 0.73 GiB (the
rest bucket costs extra passes, and the two losses each project through the head); at 512 positions 3.5 ms /
1.16 GiB against 8.4 ms / 0.73 GiB.

**Emotion (Stage 2).** :func:`valence_arousal_loss` (MSE and/or 1 - CCC, missing targets ignored),
:func:`category_loss` (cross-entropy over emotion categories) and :func:`emotion_loss` (their weighted sum, with
the parts for logging).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F

DivergenceKind = Literal["forward_kl", "reverse_kl", "jsd"]
Reduction = Literal["mean", "sum"]
VALossKind = Literal["mse", "ccc", "mse+ccc"]

DIVERGENCE_KINDS = ("forward_kl", "reverse_kl", "jsd")
VA_LOSS_KINDS = ("mse", "ccc", "mse+ccc")
# Positions per chunk: small enough that a few fp32 (chunk, vocabulary) buffers stay far below the model's own
# memory at a 152k vocabulary, large enough to keep a GPU busy.
DEFAULT_CHUNK_SIZE = 256
# log of the smallest normal float32. The reverse KL floors teacher log-probabilities here, so student mass where
# the teacher's is exactly zero (a -inf logit, or a top-k rest that rounded to zero) costs a large finite amount
# instead of an infinite loss.
_LOG_FLOOR = math.log(torch.finfo(torch.float32).tiny)


class TeacherTopK(NamedTuple):
    """The teacher's ``k`` most likely tokens per position, from :func:`topk_teacher` or a teacher cache.

    Attributes:
        logprobs: ``(..., k)`` teacher log-probabilities at ``temperature``, i.e. ``log_softmax(z_T / tau)``
            over the full vocabulary, taken at the top ``k`` ids (any float dtype).
        indices: ``(..., k)`` the vocabulary ids of those entries, distinct along the last dimension (any integer
            dtype).
        temperature: the ``tau`` the log-probabilities were computed at. A loss at another temperature is refused:
            re-tempering needs the whole distribution.
    """

    logprobs: torch.Tensor
    indices: torch.Tensor
    temperature: float


Teacher = torch.Tensor | TeacherTopK


# ----------------------------------------------------------------------------------------------------------------
# Positions


def select_positions(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Rows of ``values`` at the ``True`` positions of ``mask``, flattened to ``(M, D)`` in row-major order.

    ``values`` has shape ``(*mask.shape, D)``; ``mask=None`` keeps every position.

    >>> values = torch.arange(12.0).reshape(2, 3, 2)
    >>> select_positions(values, torch.tensor([[False, True, True], [True, False, False]]))
    tensor([[2., 3.],
            [4., 5.],
            [6., 7.]])
    """
    flat = values.reshape(-1, values.shape[-1])
    return flat.index_select(0, _position_index(mask, values.shape[:-1], values.device))


def _position_index(mask: torch.Tensor | None, leading_shape: torch.Size, device: torch.device) -> torch.Tensor:
    """Indices (int64, row-major) of the selected positions among the flattened leading dimensions."""
    if mask is None:
        return torch.arange(math.prod(leading_shape), device=device)
    if mask.dtype != torch.bool:
        raise TypeError(f"a position mask must be a bool tensor, got {mask.dtype}")
    if mask.shape != leading_shape:
        raise ValueError(f"mask shape {tuple(mask.shape)} does not match the positions {tuple(leading_shape)}")
    return mask.reshape(-1).nonzero().squeeze(1).to(device)


# ----------------------------------------------------------------------------------------------------------------
# Divergences between distributions given as log-probabilities


def _compute_dtype(*dtypes: torch.dtype) -> torch.dtype:
    """float32 for half-precision inputs, float64 if any input is float64."""
    result = torch.float32
    for dtype in dtypes:
        result = torch.promote_types(result, dtype)
    return result


def _kl(log_p: torch.Tensor, log_q: torch.Tensor) -> torch.Tensor:
    """``sum_v p_v (log p_v - log q_v)`` over the last dimension, with ``0 log 0 = 0``.

    The inputs of the masked-out terms are replaced before use ("double where"), because ``torch.where`` alone
    would still propagate the NaN gradient of ``0 * (-inf)`` into ``log_p`` and ``log_q``.
    """
    present = log_p > float("-inf")
    log_p = torch.where(present, log_p, 0.0)
    log_q = torch.where(present, log_q, 0.0)
    return torch.where(present, log_p.exp() * (log_p - log_q), 0.0).sum(-1)


def _log_mixture(teacher_lp: torch.Tensor, student_lp: torch.Tensor, beta: float) -> torch.Tensor:
    """``log(beta * q + (1 - beta) * p)``; entries where both are -inf are left finite (their KL terms vanish)."""
    both_absent = (teacher_lp == float("-inf")) & (student_lp == float("-inf"))
    # logaddexp's gradient is 0/0 where both inputs are -inf
    teacher_lp = torch.where(both_absent, 0.0, teacher_lp)
    student_lp = torch.where(both_absent, 0.0, student_lp)
    return torch.logaddexp(teacher_lp + math.log(beta), student_lp + math.log1p(-beta))


def _divergence(teacher_lp: torch.Tensor, student_lp: torch.Tensor, kind: str, beta: float) -> torch.Tensor:
    """Per-row divergence between two log-distributions over the same buckets (last dimension)."""
    if kind == "forward_kl":
        return _kl(teacher_lp, student_lp)
    if kind == "reverse_kl":
        return _kl(student_lp, teacher_lp.clamp(min=_LOG_FLOOR))
    mixture = _log_mixture(teacher_lp, student_lp, beta)
    return beta * _kl(teacher_lp, mixture) + (1.0 - beta) * _kl(student_lp, mixture)


def _log1mexp(x: torch.Tensor) -> torch.Tensor:
    """``log(1 - exp(x))`` for ``x <= 0``, accurate at both ends (Maechler, 2012)."""
    return torch.where(x > -math.log(2.0), torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def _logsumexp_excluding(logprobs: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
    """Log of the probability mass outside ``indices`` per row, summed exactly rather than as ``1 - sum``."""
    complement = logprobs.scatter(-1, indices, float("-inf"))
    empty = complement.amax(-1) == float("-inf")
    # logsumexp's gradient is 0/0 on a row with no finite entry left
    complement = torch.where(empty.unsqueeze(-1), 0.0, complement)
    return torch.logsumexp(complement, -1).masked_fill(empty, float("-inf"))


def _topk_buckets(student_lp: torch.Tensor, teacher: TeacherTopK, dtype: torch.dtype):
    """Teacher and student log-probabilities over the teacher's top-k ids plus one rest bucket, ``(n, k + 1)``.

    With ``k`` equal to the vocabulary size there is no rest: ``(n, V)`` in the teacher's order.
    """
    indices = teacher.indices.long()
    teacher_top = teacher.logprobs.detach().to(dtype)
    student_top = student_lp.gather(-1, indices)
    if indices.shape[-1] == student_lp.shape[-1]:
        return teacher_top, student_top
    # stored (rounded) log-probabilities may sum a hair above 1: that is a rest of zero
    teacher_rest = _log1mexp(torch.logsumexp(teacher_top, -1).clamp(max=0.0))
    student_rest = _logsumexp_excluding(student_lp, indices)
    return (
        torch.cat([teacher_top, teacher_rest.unsqueeze(-1)], -1),
        torch.cat([student_top, student_rest.unsqueeze(-1)], -1),
    )


def token_divergence(
    student_logits: torch.Tensor,
    teacher: Teacher,
    *,
    kind: DivergenceKind = "forward_kl",
    temperature: float = 1.0,
    jsd_beta: float = 0.5,
) -> torch.Tensor:
    r"""Per-position divergence :math:`D(q^\tau \| p^\tau)`, without the :math:`\tau^2` factor and unreduced.

    Args:
        student_logits: ``(..., V)`` student logits (any float dtype; computed in fp32 or fp64).
        teacher: teacher logits of the same shape, or a :class:`TeacherTopK` with the same leading shape (top-k
            semantics with a rest bucket: see the module docstring). The teacher gets no gradient.
        kind, temperature, jsd_beta: as in :func:`distillation_loss`.

    Returns:
        ``(...)`` divergences, in fp32 (fp64 for fp64 inputs).

    >>> logits = torch.tensor([[2.0, 0.0, -1.0]])
    >>> token_divergence(logits, logits.clone()).abs().item() < 1e-6
    True
    """
    _check_divergence_args(kind, temperature, jsd_beta)
    _check_teacher_temperature(teacher, temperature)
    leading, vocab_size = student_logits.shape[:-1], student_logits.shape[-1]
    dtype = _compute_dtype(student_logits.dtype)
    student_lp = F.log_softmax(student_logits.reshape(-1, vocab_size).to(dtype) / temperature, dim=-1)
    if isinstance(teacher, TeacherTopK):
        _check_topk(teacher, leading, vocab_size)
        k = teacher.logprobs.shape[-1]
        flat = TeacherTopK(teacher.logprobs.reshape(-1, k), teacher.indices.reshape(-1, k), teacher.temperature)
        teacher_lp, student_lp = _topk_buckets(student_lp, flat, dtype)
    else:
        if teacher.shape != student_logits.shape:
            raise ValueError(f"teacher logits {tuple(teacher.shape)} vs student {tuple(student_logits.shape)}")
        teacher_lp = F.log_softmax(teacher.detach().reshape(-1, vocab_size).to(dtype) / temperature, dim=-1)
    return _divergence(teacher_lp, student_lp, kind, jsd_beta).reshape(leading)


@torch.no_grad()
def topk_teacher(teacher_logits: torch.Tensor, k: int, temperature: float = 1.0) -> TeacherTopK:
    """The teacher's ``k`` most likely tokens per position, as log-probabilities at ``temperature``.

    ``log_softmax(teacher_logits / temperature)`` over the full vocabulary (in fp32), then its top ``min(k, V)``
    entries, sorted by decreasing probability. No gradient flows to the teacher.

    >>> top = topk_teacher(torch.tensor([[0.0, 3.0, 1.0]]), k=2)
    >>> top.indices.tolist(), round(top.logprobs.exp().sum().item(), 4)
    ([[1, 2]], 0.958)
    """
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    _check_temperature(temperature)
    logprobs = F.log_softmax(teacher_logits.to(_compute_dtype(teacher_logits.dtype)) / temperature, dim=-1)
    values, indices = logprobs.topk(min(k, logprobs.shape[-1]), dim=-1)
    return TeacherTopK(values, indices, float(temperature))


# ----------------------------------------------------------------------------------------------------------------
# Chunked evaluation with gradients computed chunk by chunk

ChunkLoss = Callable[[torch.Tensor, int, int], torch.Tensor]


def _chunk_logits(rows: torch.Tensor, weight: torch.Tensor | None, bias: torch.Tensor | None) -> torch.Tensor:
    return rows if weight is None else F.linear(rows, weight, bias)


def _chunk_ranges(num_rows: int, chunk_size: int | None):
    step = max(num_rows, 1) if chunk_size is None else chunk_size
    return ((start, min(start + step, num_rows)) for start in range(0, num_rows, step))


class _ChunkedLoss(torch.autograd.Function):
    """``sum_c chunk_loss(logits of chunk c)`` whose gradient is computed chunk by chunk in the forward pass.

    ``rows`` are the selected input rows' source (``(N, D)``; logits when ``weight`` is None, hidden states
    otherwise) and ``row_index`` the ``M`` selected rows. Only the gradient with respect to the selected rows
    (``(M, D)``, input dtype) and, when needed, the weight (accumulated in fp32) is kept for the backward.
    """

    @staticmethod
    def forward(ctx, rows, weight, bias, row_index, chunk_loss, chunk_size, dtype):
        needs = ctx.needs_input_grad[:3]
        grad_rows = rows.new_empty((row_index.numel(), rows.shape[-1])) if needs[0] else None
        grad_weight = torch.zeros(weight.shape, dtype=dtype, device=weight.device) if needs[1] else None
        grad_bias = torch.zeros(bias.shape, dtype=dtype, device=bias.device) if needs[2] else None
        total = torch.zeros((), dtype=dtype, device=rows.device)
        for start, end in _chunk_ranges(row_index.numel(), chunk_size):
            leaves = [
                rows.index_select(0, row_index[start:end]).requires_grad_(needs[0]),
                None if weight is None else weight.detach().requires_grad_(needs[1]),
                None if bias is None else bias.detach().requires_grad_(needs[2]),
            ]
            with torch.enable_grad():
                loss = chunk_loss(_chunk_logits(*leaves), start, end)
            wanted = [leaf for leaf, need in zip(leaves, needs) if need]
            grads = iter(torch.autograd.grad(loss, wanted))
            if needs[0]:
                grad_rows[start:end] = next(grads)
            if needs[1]:
                grad_weight += next(grads)
            if needs[2]:
                grad_bias += next(grads)
            total += loss.detach()
        ctx.save_for_backward(row_index, grad_rows, grad_weight, grad_bias)
        ctx.rows_meta = (rows.shape, rows.dtype)
        ctx.param_dtypes = (None if weight is None else weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_total):
        row_index, grad_rows, grad_weight, grad_bias = ctx.saved_tensors
        grad_rows_full = None
        if grad_rows is not None:
            shape, dtype = ctx.rows_meta
            grad_rows_full = grad_rows.new_zeros(shape).index_copy_(0, row_index, grad_rows)
            grad_rows_full.mul_(grad_total.to(dtype))
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_total).to(ctx.param_dtypes[0])
        if grad_bias is not None:
            grad_bias = (grad_bias * grad_total).to(ctx.param_dtypes[1])
        return grad_rows_full, grad_weight, grad_bias, None, None, None, None


def _chunked_loss(
    rows: torch.Tensor,
    weight: torch.Tensor | None,
    bias: torch.Tensor | None,
    row_index: torch.Tensor,
    chunk_loss: ChunkLoss,
    chunk_size: int | None,
) -> torch.Tensor:
    """Sum of ``chunk_loss`` over chunks of the selected rows; differentiable w.r.t. rows, weight and bias."""
    if chunk_size is not None and chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive number of positions or None, got {chunk_size}")
    dtype = _compute_dtype(*(t.dtype for t in (rows, weight, bias) if t is not None))
    flat = rows.reshape(-1, rows.shape[-1])
    tensors = [t for t in (rows, weight, bias) if t is not None]
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return _ChunkedLoss.apply(flat, weight, bias, row_index, chunk_loss, chunk_size, dtype)
    with torch.no_grad():
        total = torch.zeros((), dtype=dtype, device=rows.device)
        for start, end in _chunk_ranges(row_index.numel(), chunk_size):
            total += chunk_loss(_chunk_logits(flat.index_select(0, row_index[start:end]), weight, bias), start, end)
        return total


# ----------------------------------------------------------------------------------------------------------------
# Distillation


def distillation_loss(
    student_logits: torch.Tensor,
    teacher: Teacher,
    mask: torch.Tensor | None,
    *,
    teacher_mask: torch.Tensor | None = None,
    kind: DivergenceKind = "forward_kl",
    temperature: float = 1.0,
    jsd_beta: float = 0.5,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    r"""VG-Align distillation loss :math:`\tau^2 \cdot \mathrm{mean}_m D(q_m^\tau \| p_m^\tau)` over response positions.

    Args:
        student_logits: ``(B, T, V)`` or ``(N, V)`` student logits, any float dtype (bf16 is fine).
        teacher: the teacher at the same positions, as logits (any float dtype) or a :class:`TeacherTopK`. Its
            positions are matched to the student's selected ones in row-major order:

            * with ``teacher_mask``: the teacher's own selected positions (the teacher's prompt is longer, e.g.
              video tokens, so its response sits elsewhere; per-sequence counts must agree);
            * else, if its leading shape equals the student's: the same positions (``mask``);
            * else, if it is 2-D with ``M`` rows: already packed, one row per selected student position.
        mask: bool, the student's leading shape; ``True`` marks the positions to distil (positions whose
            *prediction* is a response token, i.e. already shifted). ``None`` selects every position. Masked-out
            positions never enter the computation (they may hold NaN) and get zero gradient.
        kind: ``"forward_kl"`` (default), ``"reverse_kl"`` or ``"jsd"``.
        temperature: ``tau > 0``; must equal ``teacher.temperature`` for a top-k teacher.
        jsd_beta: ``beta`` in ``(0, 1)`` of the generalised JSD (teacher weight in the mixture).
        chunk_size: positions per chunk (``None``: one chunk).
        reduction: ``"mean"`` over the ``M`` selected positions of the whole batch, or ``"sum"`` (to normalise by
            a count across gradient-accumulation steps yourself).

    Returns:
        A scalar, fp32 (fp64 for fp64 inputs); exactly 0, with a zero gradient, when no position is selected.

    >>> student = torch.randn(2, 5, 11, requires_grad=True)
    >>> teacher = torch.randn(2, 5, 11)
    >>> response = torch.tensor([[0, 0, 1, 1, 1], [0, 1, 1, 0, 0]], dtype=torch.bool)
    >>> loss = distillation_loss(student, topk_teacher(teacher, k=4, temperature=2.0), response, temperature=2.0)
    >>> loss.backward()
    >>> bool(loss > 0), student.grad[0, 0].abs().sum().item()
    (True, 0.0)
    """
    return _distillation(student_logits, None, None, teacher, mask, teacher_mask, kind, temperature, jsd_beta,
                         chunk_size, reduction)


def chunked_lm_head_distillation(
    student_hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    teacher: Teacher,
    mask: torch.Tensor | None,
    *,
    lm_head_bias: torch.Tensor | None = None,
    teacher_mask: torch.Tensor | None = None,
    kind: DivergenceKind = "forward_kl",
    temperature: float = 1.0,
    jsd_beta: float = 0.5,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """:func:`distillation_loss` of the logits ``student_hidden @ lm_head_weight.T (+ bias)``, never materialised.

    Each chunk of selected positions is projected through the LM head, its loss and gradients (w.r.t. the hidden
    states, and the weight/bias if they require grad, accumulated in fp32) computed, and its logits freed before
    the next chunk: peak memory is one chunk's ``(chunk_size, V)`` buffers instead of ``(B*T, V)``.

    Args:
        student_hidden: ``(B, T, H)`` or ``(N, H)`` final hidden states (after the final norm).
        lm_head_weight: ``(V, H)``, e.g. ``model.get_output_embeddings().weight``.
        lm_head_bias: ``(V,)`` or None.
        teacher, mask, teacher_mask, kind, temperature, jsd_beta, chunk_size, reduction: as in
            :func:`distillation_loss` (``mask`` has the hidden states' leading shape).

    >>> hidden, weight = torch.randn(2, 5, 8, requires_grad=True), torch.randn(11, 8)
    >>> teacher = torch.randn(2, 5, 11)
    >>> response = torch.ones(2, 5, dtype=torch.bool)
    >>> fused = chunked_lm_head_distillation(hidden, weight, teacher, response, chunk_size=3)
    >>> torch.allclose(fused, distillation_loss(hidden @ weight.T, teacher, response))
    True
    """
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != student_hidden.shape[-1]:
        raise ValueError(f"lm_head_weight {tuple(lm_head_weight.shape)} does not map hidden size "
                         f"{student_hidden.shape[-1]} to a vocabulary")
    return _distillation(student_hidden, lm_head_weight, lm_head_bias, teacher, mask, teacher_mask, kind,
                         temperature, jsd_beta, chunk_size, reduction)


def _distillation(rows, weight, bias, teacher, mask, teacher_mask, kind, temperature, jsd_beta, chunk_size,
                  reduction) -> torch.Tensor:
    _check_divergence_args(kind, temperature, jsd_beta)
    _check_reduction(reduction)
    _check_teacher_temperature(teacher, temperature)
    vocab_size = rows.shape[-1] if weight is None else weight.shape[0]
    leading = rows.shape[:-1]
    row_index = _position_index(mask, leading, rows.device)
    num_positions = row_index.numel()
    teacher_rows, teacher_index = _packed_teacher(teacher, leading, mask, teacher_mask, num_positions, vocab_size)
    scale = temperature**2 / (max(num_positions, 1) if reduction == "mean" else 1)

    def chunk_loss(student_logits: torch.Tensor, start: int, end: int) -> torch.Tensor:
        index = teacher_index[start:end]
        if isinstance(teacher_rows, TeacherTopK):
            chunk_teacher = TeacherTopK(*(t.index_select(0, index).to(student_logits.device)
                                          for t in teacher_rows[:2]), temperature)
        else:
            chunk_teacher = teacher_rows.index_select(0, index).to(student_logits.device)
        return token_divergence(student_logits, chunk_teacher, kind=kind, temperature=temperature,
                                jsd_beta=jsd_beta).sum() * scale

    return _chunked_loss(rows, weight, bias, row_index, chunk_loss, chunk_size)


def _packed_teacher(teacher, student_leading, mask, teacher_mask, num_positions, vocab_size):
    """The teacher flattened to rows, plus the row of each selected student position (see distillation_loss)."""
    reference = teacher.logprobs if isinstance(teacher, TeacherTopK) else teacher
    width = reference.shape[-1]
    if isinstance(teacher, TeacherTopK):
        _check_topk(teacher, reference.shape[:-1], vocab_size)
        rows = TeacherTopK(teacher.logprobs.reshape(-1, width), teacher.indices.reshape(-1, width),
                           teacher.temperature)
    else:
        if width != vocab_size:
            raise ValueError(f"teacher logits have {width} entries per position, the student vocabulary {vocab_size}")
        rows = teacher.reshape(-1, width)
    leading = reference.shape[:-1]
    if teacher_mask is not None:
        _check_same_counts_per_sequence(mask, teacher_mask)
        index = _position_index(teacher_mask, leading, reference.device)
    elif leading == student_leading:
        index = _position_index(mask, leading, reference.device)
    elif len(leading) == 1 and leading[0] == num_positions:
        index = torch.arange(num_positions, device=reference.device)
    else:
        raise ValueError(
            f"cannot match teacher positions {tuple(leading)} to the student's {tuple(student_leading)} with "
            f"{num_positions} selected: give the teacher the student's shape, pack it to ({num_positions}, ...), "
            "or pass teacher_mask"
        )
    if index.numel() != num_positions:
        raise ValueError(f"the teacher has {index.numel()} selected positions, the student {num_positions}")
    return rows, index


def _check_same_counts_per_sequence(mask: torch.Tensor | None, teacher_mask: torch.Tensor) -> None:
    """Row-major matching is only right if every sequence selects as many teacher as student positions."""
    if mask is None or mask.dim() < 2 or teacher_mask.dim() < 2 or mask.shape[0] != teacher_mask.shape[0]:
        return
    student_counts = mask.reshape(mask.shape[0], -1).sum(1).cpu()
    teacher_counts = teacher_mask.reshape(teacher_mask.shape[0], -1).sum(1).cpu()
    mismatched = (student_counts != teacher_counts).nonzero().flatten().tolist()
    if mismatched:
        b = mismatched[0]
        raise ValueError(f"sequence {b} selects {int(student_counts[b])} student positions but "
                         f"{int(teacher_counts[b])} teacher positions")


# ----------------------------------------------------------------------------------------------------------------
# Cross-entropy on response tokens


def response_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """Cross-entropy of ``labels`` under ``logits``, over the positions whose label is not ``ignore_index``.

    ``labels[..., t]`` is the token ``logits[..., t, :]`` predicts: shift before calling
    (``logits[:, :-1]``, ``labels[:, 1:]``). Chunked like :func:`distillation_loss`, so only one chunk is ever
    upcast to fp32. ``label_smoothing`` as in :func:`torch.nn.functional.cross_entropy`. Mean over the labelled
    positions (0 with a zero gradient when there are none), or their sum.

    >>> logits, labels = torch.randn(2, 4, 7), torch.tensor([[-100, 1, 2, 3], [-100, -100, 5, 6]])
    >>> torch.allclose(response_cross_entropy(logits, labels),
    ...                F.cross_entropy(logits.reshape(-1, 7), labels.reshape(-1)))
    True
    """
    return _cross_entropy(logits, None, None, labels, ignore_index, label_smoothing, chunk_size, reduction)


def chunked_lm_head_cross_entropy(
    hidden: torch.Tensor,
    lm_head_weight: torch.Tensor,
    labels: torch.Tensor,
    *,
    lm_head_bias: torch.Tensor | None = None,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    chunk_size: int | None = DEFAULT_CHUNK_SIZE,
    reduction: Reduction = "mean",
) -> torch.Tensor:
    """:func:`response_cross_entropy` of ``hidden @ lm_head_weight.T (+ bias)`` without materialising the logits.

    Same chunk-by-chunk projection and gradients as :func:`chunked_lm_head_distillation`; ``labels`` has the
    hidden states' leading shape.

    >>> hidden, weight = torch.randn(3, 8), torch.randn(7, 8)
    >>> labels = torch.tensor([4, -100, 6])
    >>> torch.allclose(chunked_lm_head_cross_entropy(hidden, weight, labels, chunk_size=1),
    ...                response_cross_entropy(hidden @ weight.T, labels))
    True
    """
    if lm_head_weight.dim() != 2 or lm_head_weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"lm_head_weight {tuple(lm_head_weight.shape)} does not map hidden size "
                         f"{hidden.shape[-1]} to a vocabulary")
    return _cross_entropy(hidden, lm_head_weight, lm_head_bias, labels, ignore_index, label_smoothing, chunk_size,
                          reduction)


def _cross_entropy(rows, weight, bias, labels, ignore_index, label_smoothing, chunk_size, reduction):
    _check_reduction(reduction)
    if labels.shape != rows.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match the positions {tuple(rows.shape[:-1])}")
    vocab_size = rows.shape[-1] if weight is None else weight.shape[0]
    row_index = _position_index(labels != ignore_index, labels.shape, rows.device)
    targets = labels.reshape(-1).to(rows.device).index_select(0, row_index).long()
    if targets.numel() and (targets.min() < 0 or targets.max() >= vocab_size):
        raise ValueError(f"labels must lie in [0, {vocab_size}) or equal ignore_index={ignore_index}")
    scale = 1.0 / (max(targets.numel(), 1) if reduction == "mean" else 1)
    dtype = _compute_dtype(rows.dtype)

    def chunk_loss(logits: torch.Tensor, start: int, end: int) -> torch.Tensor:
        return F.cross_entropy(logits.to(dtype), targets[start:end], reduction="sum",
                               label_smoothing=label_smoothing) * scale

    return _chunked_loss(rows, weight, bias, row_index, chunk_loss, chunk_size)


# ----------------------------------------------------------------------------------------------------------------
# Stage 2: emotion supervision


def valence_arousal_loss(
    pred_va: torch.Tensor,
    target_va: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    kind: VALossKind = "mse",
) -> torch.Tensor:
    r"""Regression loss for valence/arousal (or any ``D`` continuous emotion dimensions), per dimension.

    ``pred_va`` and ``target_va`` are ``(B, D)`` (``D = 2``: valence, arousal). A target is used where it is
    finite (NaN marks "missing") and ``mask`` is ``True`` (``mask``: ``(B,)`` per sample or ``(B, D)``).
    With the :math:`n_d` valid pairs of dimension :math:`d`:

    * ``"mse"``: :math:`\frac{1}{n_d}\sum_i (\hat y_{id} - y_{id})^2`, for dimensions with :math:`n_d \ge 1`;
    * ``"ccc"``: :math:`1 - \mathrm{CCC}_d`, :math:`\mathrm{CCC} = \frac{2\,\mathrm{cov}(\hat y, y)}
      {\mathrm{var}(\hat y) + \mathrm{var}(y) + (\bar{\hat y} - \bar y)^2}` with batch (population, ``1/n``)
      statistics, for dimensions with :math:`n_d \ge 2` (a CCC of one sample is meaningless). Identical constant
      predictions and targets (0/0) count as :math:`\mathrm{CCC} = 1`;
    * ``"mse+ccc"``: the sum of the two.

    Each part is averaged over the dimensions it covers; a part with no such dimension is 0 (with a gradient).
    Computed in fp32 (fp64 for fp64 inputs). CCC is a batch statistic: use batches of several samples.

    >>> pred = torch.tensor([[0.5, -0.2], [0.1, 0.4], [-0.3, 0.0]])
    >>> target = torch.tensor([[0.5, float("nan")], [0.1, 0.4], [-0.3, 0.0]])
    >>> valence_arousal_loss(pred, target, kind="mse+ccc").abs().item() < 1e-6
    True
    """
    if kind not in VA_LOSS_KINDS:
        raise ValueError(f"kind must be one of {VA_LOSS_KINDS}, got {kind!r}")
    if pred_va.shape != target_va.shape or pred_va.dim() != 2:
        raise ValueError(f"pred_va {tuple(pred_va.shape)} and target_va {tuple(target_va.shape)} must both be (B, D)")
    dtype = _compute_dtype(pred_va.dtype)
    pred, target = pred_va.to(dtype), target_va.detach().to(dtype)
    valid = torch.isfinite(target)
    if mask is not None:
        valid = valid & (mask.unsqueeze(-1) if mask.dim() == 1 else mask).to(valid.device)
    # missing targets are replaced, not multiplied by 0: NaN * 0 is NaN, in the value and in the gradient
    pred = torch.where(valid, pred, 0.0)
    target = torch.where(valid, target, 0.0)
    count = valid.sum(0).to(dtype)
    parts = []
    if kind in ("mse", "mse+ccc"):
        parts.append(_mean_over_dims(((pred - target) ** 2).sum(0) / count.clamp(min=1), count >= 1))
    if kind in ("ccc", "mse+ccc"):
        parts.append(_mean_over_dims(1.0 - _ccc_per_dim(pred, target, valid, count), count >= 2))
    return sum(parts)


def _ccc_per_dim(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """Concordance correlation per column over the valid rows (columns with < 2 valid rows get finite filler)."""
    n = count.clamp(min=1)
    pred_mean, target_mean = pred.sum(0) / n, target.sum(0) / n
    pred_dev = torch.where(valid, pred - pred_mean, 0.0)
    target_dev = torch.where(valid, target - target_mean, 0.0)
    covariance = (pred_dev * target_dev).sum(0) / n
    denominator = (pred_dev**2).sum(0) / n + (target_dev**2).sum(0) / n + (pred_mean - target_mean) ** 2
    defined = denominator > 0
    return torch.where(defined, 2.0 * covariance / torch.where(defined, denominator, 1.0), 1.0)


def _mean_over_dims(per_dim: torch.Tensor, covered: torch.Tensor) -> torch.Tensor:
    return torch.where(covered, per_dim, 0.0).sum() / covered.sum().clamp(min=1)


def category_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Cross-entropy over emotion categories: ``logits`` ``(..., C)``, integer ``labels`` ``(...)``.

    Mean over the labels that are not ``ignore_index`` (0, with a gradient, when all are ignored, where
    :func:`torch.nn.functional.cross_entropy` would return NaN). Computed in fp32 (fp64 for fp64 inputs).

    >>> logits = torch.tensor([[2.0, 0.0], [0.0, 2.0]])
    >>> round(category_loss(logits, torch.tensor([0, -100])).item(), 4)
    0.1269
    """
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels {tuple(labels.shape)} do not match logits {tuple(logits.shape)}")
    flat_logits = logits.reshape(-1, logits.shape[-1]).to(_compute_dtype(logits.dtype))
    flat_labels = labels.reshape(-1).long()
    total = F.cross_entropy(flat_logits, flat_labels, ignore_index=ignore_index, reduction="sum",
                            label_smoothing=label_smoothing)
    return total / (flat_labels != ignore_index).sum().clamp(min=1)


class EmotionLoss(NamedTuple):
    """:func:`emotion_loss`'s result: the weighted total and its unweighted parts (None when not computed)."""

    loss: torch.Tensor
    va_loss: torch.Tensor | None
    category_loss: torch.Tensor | None


def emotion_loss(
    *,
    pred_va: torch.Tensor | None = None,
    target_va: torch.Tensor | None = None,
    va_mask: torch.Tensor | None = None,
    emotion_logits: torch.Tensor | None = None,
    emotion_labels: torch.Tensor | None = None,
    va_kind: VALossKind = "mse",
    va_weight: float = 1.0,
    category_weight: float = 1.0,
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
) -> EmotionLoss:
    """Emotion Supervisor loss: ``va_weight * valence_arousal_loss + category_weight * category_loss``.

    Either part may be left out (pass neither of its tensors); at least one must be given. Parts are returned
    unweighted so they can be logged separately.

    >>> out = emotion_loss(pred_va=torch.zeros(2, 2), target_va=torch.ones(2, 2),
    ...                    emotion_logits=torch.zeros(2, 8), emotion_labels=torch.tensor([0, 3]), va_weight=0.5)
    >>> round(out.va_loss.item(), 4), round(out.category_loss.item(), 4), round(out.loss.item(), 4)
    (1.0, 2.0794, 2.5794)
    """
    if (pred_va is None) != (target_va is None):
        raise ValueError("pass both pred_va and target_va, or neither")
    if (emotion_logits is None) != (emotion_labels is None):
        raise ValueError("pass both emotion_logits and emotion_labels, or neither")
    if pred_va is None and emotion_logits is None:
        raise ValueError("emotion_loss needs valence/arousal predictions, category logits, or both")
    va = None if pred_va is None else valence_arousal_loss(pred_va, target_va, va_mask, kind=va_kind)
    category = None if emotion_logits is None else category_loss(
        emotion_logits, emotion_labels, ignore_index=ignore_index, label_smoothing=label_smoothing)
    weighted = [w * part for w, part in ((va_weight, va), (category_weight, category)) if part is not None]
    return EmotionLoss(sum(weighted), va, category)


# ----------------------------------------------------------------------------------------------------------------
# Argument checks


def _check_temperature(temperature: float) -> None:
    if not (math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"temperature must be a positive number, got {temperature}")


def _check_divergence_args(kind: str, temperature: float, jsd_beta: float) -> None:
    if kind not in DIVERGENCE_KINDS:
        raise ValueError(f"kind must be one of {DIVERGENCE_KINDS}, got {kind!r}")
    _check_temperature(temperature)
    if kind == "jsd" and not 0.0 < jsd_beta < 1.0:
        # at 0 or 1 the generalised JSD vanishes identically; use forward_kl / reverse_kl for those limits
        raise ValueError(f"jsd_beta must lie strictly between 0 and 1, got {jsd_beta}")


def _check_reduction(reduction: str) -> None:
    if reduction not in ("mean", "sum"):
        raise ValueError(f"reduction must be 'mean' or 'sum', got {reduction!r}")


def _check_teacher_temperature(teacher: Teacher, temperature: float) -> None:
    if isinstance(teacher, TeacherTopK) and not math.isclose(teacher.temperature, temperature, rel_tol=1e-6):
        raise ValueError(f"the top-k teacher was computed at temperature {teacher.temperature}, the loss uses "
                         f"{temperature}: a top-k distribution cannot be re-tempered")


def _check_topk(teacher: TeacherTopK, leading: torch.Size, vocab_size: int) -> None:
    if teacher.logprobs.shape != teacher.indices.shape:
        raise ValueError(f"top-k logprobs {tuple(teacher.logprobs.shape)} and indices "
                         f"{tuple(teacher.indices.shape)} differ in shape")
    if teacher.logprobs.shape[:-1] != leading:
        raise ValueError(f"top-k teacher positions {tuple(teacher.logprobs.shape[:-1])} vs {tuple(leading)}")
    if teacher.logprobs.shape[-1] > vocab_size:
        raise ValueError(f"top-k teacher has k={teacher.logprobs.shape[-1]} > vocabulary size {vocab_size}")
