"""
FlashAttention-2 in Triton: forward, backward and a split-KV decode path, with grouped-query attention.

    attention(q, k, v, causal=True)   q (B, Hq, Tq, D); k, v (B, Hkv, Tk, D); Hq a multiple of Hkv
    supported(q, k, v) -> bool        whether the switch in kernels/__init__.py should send these here
    reference                         the plain-PyTorch semantics (kernels/reference.py: attention_eager)

How it works (Dao 2023, "FlashAttention-2", arXiv 2307.08691: Algorithms 1 and 2, section 3.1):
- forward: one program per (block of BLOCK_M queries, query head). It streams the keys of its kv head
  in blocks of BLOCK_N with an online softmax (running max m, running sum l, exp2 with log2(e) folded
  into the scale) and saves lse = m + log2(l) per query row, in log2 units, for the backward.
- backward: recompute instead of storing the (Tq, Tk) probabilities. delta = rowsum(o * do) first; then
  one kernel per key block computes dk and dv, looping over every query head of its group (so GQA
  gradients are summed in registers, with no repeated K/V and no atomics), and one kernel per query
  block computes dq. Two kernels recompute q k^T twice, but stay deterministic.
- decode (Tq == 1, no gradient needed): Flash-Decoding (Dao, Haziza, Massa, Sizov 2023, "Flash-Decoding
  for long-context inference", PyTorch blog). The KV cache is cut into splits, each program
  handles one split for all query heads of one kv head, and a second kernel merges the partial results
  with their log-sum-exp weights, so a long cache keeps the whole GPU busy even at batch 1.

Details that public kernels often get wrong, handled here on purpose:
- Any Tq, Tk: every load and store is masked; nothing assumes a multiple of the block size.
- Causal means bottom-right aligned: query i sits at key position i + Tk - Tq. With Tq > Tk the first
  Tq - Tk rows see no key at all; they output zeros, store lse = +inf (so exp2(s - lse) = 0 in the
  backward) and get zero gradients, never NaN.
- head_dim need not be a power of two (OpenLLaMA-3B uses 100): the head dimension is padded to
  BLOCK_D = next power of two with masked loads; the softmax scale uses the true head_dim.
- fp16, bf16 and fp32 (fp32 uses IEEE dots, for tests and the interpreter; "auto" keeps fp32 on SDPA).
"""
import functools
import math
from typing import Optional

import torch
import triton
import triton.language as tl

from kernels import common  # importing it also fixes triton 3.6's interpreter
from kernels.common import prep, strides
from kernels.reference import attention_eager as reference  # the semantics this file implements

_LOG2E = 1.4426950408889634
MAX_HEAD_DIM = 256

# Outputs are allocated through this name so the tests can swap in an allocator that fills with NaN:
# an element a kernel forgot to write then fails the comparison instead of passing as a stale zero.
_empty = torch.empty

# Under the interpreter there is no autotuning (each config would run the slow interpreter again):
# these fixed (BLOCK_M, BLOCK_N) are used instead. They differ from each other on purpose so that the
# tests exercise block-boundary logic with BLOCK_M != BLOCK_N; tests may swap them.
INTERPRET_BLOCKS = {"fwd": (32, 16), "dq": (32, 16), "dkdv": (16, 32), "decode": 16}


# ----------------------------------------------------------------------------- forward

@triton.jit
def _query_block(Hq, Tq, GROUP, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Which BLOCK_M query rows of which (batch, query head) this program of the forward or the dq kernel
    owns, the kv head they read, and the offsets and masks of their tiles.
    Returns (pid_bh, b, h, hk, m0, rows, offs_n, offs_d, mask_d, q_mask)."""
    pid_m = tl.program_id(0)
    if CAUSAL:  # causal blocks near the bottom do the most work: launch them first
        pid_m = tl.num_programs(0) - 1 - pid_m
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hq).to(tl.int64)
    h = (pid_bh % Hq).to(tl.int64)
    hk = h // GROUP  # GQA: query head h reads kv head h // GROUP, never a repeated copy
    m0 = pid_m * BLOCK_M
    rows = m0 + tl.arange(0, BLOCK_M)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM  # folds away when BLOCK_D == HEAD_DIM
    return pid_bh, b, h, hk, m0, rows, offs_n, offs_d, mask_d, (rows[:, None] < Tq) & mask_d[None, :]


@triton.jit
def _key_blocks(m0, Tq, Tk, CAUSAL: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """The keys that query rows [m0, m0 + BLOCK_M) stream, as (shift, full_end, hi): [0, full_end) is
    visible to every row; [full_end, hi) holds keys past Tk or, if causal, above the diagonal for some
    rows, and needs the mask. Causal is bottom-right aligned: row i sees keys j <= i + shift. Kept apart
    from _query_block because the kernels call it after their loads: computed before them, it changes the
    dq kernel's compiled instruction order (its cubin), for nothing."""
    shift = Tk - Tq
    if CAUSAL:
        hi = tl.maximum(tl.minimum(Tk, m0 + BLOCK_M + shift), 0)
        full_end = tl.maximum(m0 + shift + 1, 0) // BLOCK_N * BLOCK_N  # <= Tk since m0 < Tq
    else:
        hi = Tk
        full_end = Tk // BLOCK_N * BLOCK_N
    return shift, full_end, hi


@triton.jit
def _fwd_inner(acc, m_i, l_i, q, k_base, v_base, skt, svt, start, end, rows, offs_n, offs_d, mask_d,
               Tk, shift, qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr, BLOCK_N: tl.constexpr,
               DOT_PREC: tl.constexpr):
    """Online softmax over key blocks [start, end). MASKED blocks may hold keys past Tk or, if causal,
    keys above the diagonal; unmasked blocks are fully visible to every row, and skip the where()."""
    for n0 in range(start, end, BLOCK_N):
        cols = n0 + offs_n
        kv_mask = (cols[:, None] < Tk) & mask_d[None, :]
        k = tl.load(k_base + cols[:, None] * skt + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale  # (BLOCK_M, BLOCK_N), log2 units
        if MASKED:
            keep = cols[None, :] < Tk
            if CAUSAL:
                keep = keep & (cols[None, :] <= rows[:, None] + shift)
            s = tl.where(keep, s, float("-inf"))
        m_new = tl.maximum(m_i, tl.max(s, 1))
        m_use = m_new
        if MASKED:
            # a row that has seen only masked keys has m_new = -inf, and -inf - -inf would be NaN;
            # subtracting 0 instead gives p = 0 and alpha = 0, and m_i stays -inf
            m_use = tl.where(m_new == float("-inf"), 0.0, m_new)
        p = tl.exp2(s - m_use[:, None])
        alpha = tl.exp2(m_i - m_use)  # rescales what was accumulated under the old max
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + cols[:, None] * svt + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new
    return acc, m_i, l_i


@triton.jit
def _fwd_kernel(Q, K, V, O, LSE, sqb, sqh, sqt, skb, skh, skt, svb, svh, svt, sob, soh, sot,
                Hq, Tq, Tk, GROUP, qk_scale, Q_BUCKET, K_BUCKET,
                HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr,
                DOT_PREC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    # Q_BUCKET, K_BUCKET are unused here: they only key the autotuner on the rough sequence lengths
    pid_bh, b, h, hk, m0, rows, offs_n, offs_d, mask_d, q_mask = _query_block(
        Hq, Tq, GROUP, HEAD_DIM, BLOCK_D, CAUSAL, BLOCK_M, BLOCK_N)
    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqt + offs_d[None, :], mask=q_mask, other=0.0)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    shift, full_end, hi = _key_blocks(m0, Tq, Tk, CAUSAL, BLOCK_M, BLOCK_N)
    acc, m_i, l_i = _fwd_inner(acc, m_i, l_i, q, k_base, v_base, skt, svt, 0, full_end, rows, offs_n,
                               offs_d, mask_d, Tk, shift, qk_scale, False, CAUSAL, BLOCK_N, DOT_PREC)
    acc, m_i, l_i = _fwd_inner(acc, m_i, l_i, q, k_base, v_base, skt, svt, full_end, hi, rows, offs_n,
                               offs_d, mask_d, Tk, shift, qk_scale, True, CAUSAL, BLOCK_N, DOT_PREC)

    # l_i == 0 only for a row that sees no key (causal, Tq > Tk): output 0 and lse = +inf
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    out = acc / l_safe[:, None]
    tl.store(O + b * sob + h * soh + rows[:, None] * sot + offs_d[None, :], out.to(O.dtype.element_ty),
             mask=q_mask)
    lse = tl.where(empty, float("inf"), m_i + tl.log2(l_safe))
    tl.store(LSE + pid_bh.to(tl.int64) * Tq + rows, lse, mask=rows < Tq)


# ----------------------------------------------------------------------------- backward

@triton.jit
def _bwd_delta_kernel(O, DO, DELTA, sob, soh, sot, sdb, sdh, sdt, Hq, Tq,
                      HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_M: tl.constexpr):
    """delta_i = sum_d o_id * do_id: the softmax-backward term shared by every key of row i."""
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hq).to(tl.int64)
    h = (pid_bh % Hq).to(tl.int64)
    rows = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask = (rows[:, None] < Tq) & (offs_d[None, :] < HEAD_DIM)
    o = tl.load(O + b * sob + h * soh + rows[:, None] * sot + offs_d[None, :], mask=mask, other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + rows[:, None] * sdt + offs_d[None, :], mask=mask, other=0.0)
    delta = tl.sum(o.to(tl.float32) * do.to(tl.float32), 1)
    tl.store(DELTA + pid_bh.to(tl.int64) * Tq + rows, delta, mask=rows < Tq)


@triton.jit
def _bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, skt, svt, start, end, rows, offs_n, offs_d,
                  mask_d, Tk, shift, qk_scale, MASKED: tl.constexpr, CAUSAL: tl.constexpr,
                  BLOCK_N: tl.constexpr, DOT_PREC: tl.constexpr):
    for n0 in range(start, end, BLOCK_N):
        cols = n0 + offs_n
        kv_mask = (cols[:, None] < Tk) & mask_d[None, :]
        k = tl.load(k_base + cols[:, None] * skt + offs_d[None, :], mask=kv_mask, other=0.0)
        v = tl.load(v_base + cols[:, None] * svt + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        if MASKED:
            keep = cols[None, :] < Tk
            if CAUSAL:
                keep = keep & (cols[None, :] <= rows[:, None] + shift)
            s = tl.where(keep, s, float("-inf"))
        p = tl.exp2(s - lse[:, None])  # the forward's probabilities; 0 where masked or lse = +inf
        dp = tl.dot(do, tl.trans(v), input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        dq += tl.dot(ds.to(k.dtype), k, input_precision=DOT_PREC)
    return dq


@triton.jit
def _bwd_dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, sqb, sqh, sqt, skb, skh, skt, svb, svh, svt,
                   sdb, sdh, sdt, sqgb, sqgh, sqgt, Hq, Tq, Tk, GROUP, qk_scale, sm_scale,
                   Q_BUCKET, K_BUCKET, HEAD_DIM: tl.constexpr, BLOCK_D: tl.constexpr,
                   CAUSAL: tl.constexpr, DOT_PREC: tl.constexpr,
                   BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dq for one block of query rows of one head: the forward's key loop, replayed."""
    pid_bh, b, h, hk, m0, rows, offs_n, offs_d, mask_d, q_mask = _query_block(
        Hq, Tq, GROUP, HEAD_DIM, BLOCK_D, CAUSAL, BLOCK_M, BLOCK_N)
    q = tl.load(Q + b * sqb + h * sqh + rows[:, None] * sqt + offs_d[None, :], mask=q_mask, other=0.0)
    do = tl.load(DO + b * sdb + h * sdh + rows[:, None] * sdt + offs_d[None, :], mask=q_mask, other=0.0)
    # rows past Tq load lse = +inf, so their probabilities, and everything downstream, are exactly 0
    lse = tl.load(LSE + pid_bh.to(tl.int64) * Tq + rows, mask=rows < Tq, other=float("inf"))
    delta = tl.load(DELTA + pid_bh.to(tl.int64) * Tq + rows, mask=rows < Tq, other=0.0)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh
    dq = tl.zeros([BLOCK_M, BLOCK_D], tl.float32)
    shift, full_end, hi = _key_blocks(m0, Tq, Tk, CAUSAL, BLOCK_M, BLOCK_N)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, skt, svt, 0, full_end, rows, offs_n,
                       offs_d, mask_d, Tk, shift, qk_scale, False, CAUSAL, BLOCK_N, DOT_PREC)
    dq = _bwd_dq_inner(dq, q, do, lse, delta, k_base, v_base, skt, svt, full_end, hi, rows, offs_n,
                       offs_d, mask_d, Tk, shift, qk_scale, True, CAUSAL, BLOCK_N, DOT_PREC)
    dq = dq * sm_scale  # d(q k^T * sm_scale)/dq; the log2(e) of qk_scale only lived inside exp2
    tl.store(DQ + b * sqgb + h * sqgh + rows[:, None] * sqgt + offs_d[None, :],
             dq.to(DQ.dtype.element_ty), mask=q_mask)


@triton.jit
def _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, lse_base, delta_base, sqt, sdt, start, end, cols,
                    offs_m, offs_d, mask_d, Tq, shift, qk_scale, MASKED: tl.constexpr,
                    BLOCK_M: tl.constexpr, DOT_PREC: tl.constexpr):
    """Accumulates dk, dv of one key block over query blocks [start, end) of one query head. Works in
    the transposed orientation (keys as rows) so that no (BLOCK_M, BLOCK_N) tile needs a transpose."""
    for m0 in range(start, end, BLOCK_M):
        rows = m0 + offs_m
        row_ok = rows < Tq
        q_mask = row_ok[:, None] & mask_d[None, :]
        q = tl.load(q_base + rows[:, None] * sqt + offs_d[None, :], mask=q_mask, other=0.0)
        do = tl.load(do_base + rows[:, None] * sdt + offs_d[None, :], mask=q_mask, other=0.0)
        # padded rows: q = do = 0 and lse = +inf give p = 0 and ds = 0, so they add nothing
        lse = tl.load(lse_base + rows, mask=row_ok, other=float("inf"))
        delta = tl.load(delta_base + rows, mask=row_ok, other=0.0)
        sT = tl.dot(k, tl.trans(q), input_precision=DOT_PREC) * qk_scale  # (BLOCK_N, BLOCK_M)
        if MASKED:  # only causal blocks are ever masked here
            sT = tl.where(cols[:, None] <= rows[None, :] + shift, sT, float("-inf"))
        pT = tl.exp2(sT - lse[None, :])
        dv += tl.dot(pT.to(do.dtype), do, input_precision=DOT_PREC)
        dpT = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        dsT = pT * (dpT - delta[None, :])
        dk += tl.dot(dsT.to(q.dtype), q, input_precision=DOT_PREC)
    return dk, dv


@triton.jit
def _bwd_dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, sqb, sqh, sqt, skb, skh, skt, svb, svh, svt,
                     sdb, sdh, sdt, skgb, skgh, skgt, svgb, svgh, svgt, Hq, Hkv, Tq, Tk, GROUP,
                     qk_scale, sm_scale, Q_BUCKET, K_BUCKET, HEAD_DIM: tl.constexpr,
                     BLOCK_D: tl.constexpr, CAUSAL: tl.constexpr, DOT_PREC: tl.constexpr,
                     BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """dk, dv for one block of keys of one kv head, summed over all GROUP query heads that read it."""
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // Hkv).to(tl.int64)
    hk = (pid_bh % Hkv).to(tl.int64)
    n0 = pid_n * BLOCK_N
    cols = n0 + tl.arange(0, BLOCK_N)
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    kv_mask = (cols[:, None] < Tk) & mask_d[None, :]
    k = tl.load(K + b * skb + hk * skh + cols[:, None] * skt + offs_d[None, :], mask=kv_mask, other=0.0)
    v = tl.load(V + b * svb + hk * svh + cols[:, None] * svt + offs_d[None, :], mask=kv_mask, other=0.0)

    shift = Tk - Tq
    if CAUSAL:
        # query row i sees key j iff i >= j - shift: rows below lo see none of this block; rows from
        # mid on see all of it; [lo, mid) straddle the diagonal and need the mask
        lo = tl.maximum(n0 - shift, 0) // BLOCK_M * BLOCK_M
        mid = tl.maximum(n0 + BLOCK_N - 1 - shift, lo)
        mid = (mid + BLOCK_M - 1) // BLOCK_M * BLOCK_M
    else:
        lo = 0
        mid = 0
    dk = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], tl.float32)
    for g in range(GROUP):
        h = hk * GROUP + g
        bh = b * Hq + h
        q_base = Q + b * sqb + h * sqh
        do_base = DO + b * sdb + h * sdh
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, LSE + bh * Tq, DELTA + bh * Tq, sqt,
                                 sdt, lo, tl.minimum(mid, Tq), cols, offs_m, offs_d, mask_d, Tq,
                                 shift, qk_scale, True, BLOCK_M, DOT_PREC)
        dk, dv = _bwd_dkdv_inner(dk, dv, k, v, q_base, do_base, LSE + bh * Tq, DELTA + bh * Tq, sqt,
                                 sdt, mid, Tq, cols, offs_m, offs_d, mask_d, Tq, shift, qk_scale,
                                 False, BLOCK_M, DOT_PREC)
    dk = dk * sm_scale
    tl.store(DK + b * skgb + hk * skgh + cols[:, None] * skgt + offs_d[None, :],
             dk.to(DK.dtype.element_ty), mask=kv_mask)
    tl.store(DV + b * svgb + hk * svgh + cols[:, None] * svgt + offs_d[None, :],
             dv.to(DV.dtype.element_ty), mask=kv_mask)


# ----------------------------------------------------------------------------- decode (Tq == 1)

@triton.jit
def _decode_split_kernel(Q, K, V, O_PART, LSE_PART, sqb, sqh, skb, skh, skt, svb, svh, svt,
                         Hkv, Tk, GROUP, chunk, qk_scale, HEAD_DIM: tl.constexpr,
                         BLOCK_D: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
                         DOT_PREC: tl.constexpr):
    """Attention of the GROUP query heads of one kv head over one split of the cache. The heads are
    the rows of one tile (padded to BLOCK_G >= 16 for tl.dot), so K and V are read once per group."""
    pid_s = tl.program_id(0)
    pid_bh = tl.program_id(1)
    num_splits = tl.num_programs(0)
    b = (pid_bh // Hkv).to(tl.int64)
    hk = (pid_bh % Hkv).to(tl.int64)
    g = tl.arange(0, BLOCK_G)
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    mask_d = offs_d < HEAD_DIM
    g_mask = (g[:, None] < GROUP) & mask_d[None, :]
    heads = hk * GROUP + g  # (BLOCK_G,) query heads of this group
    q = tl.load(Q + b * sqb + heads[:, None] * sqh + offs_d[None, :], mask=g_mask, other=0.0)
    k_base = K + b * skb + hk * skh
    v_base = V + b * svb + hk * svh

    start = pid_s * chunk
    end = tl.minimum(start + chunk, Tk)
    m_i = tl.full([BLOCK_G], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_G], tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], tl.float32)
    for n0 in range(start, end, BLOCK_N):  # a single query at the end of the cache sees every key
        cols = n0 + offs_n
        kv_mask = (cols[:, None] < end) & mask_d[None, :]
        k = tl.load(k_base + cols[:, None] * skt + offs_d[None, :], mask=kv_mask, other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC) * qk_scale
        s = tl.where(cols[None, :] < end, s, float("-inf"))  # each block holds >= 1 visible key
        m_new = tl.maximum(m_i, tl.max(s, 1))
        p = tl.exp2(s - m_new[:, None])
        alpha = tl.exp2(m_i - m_new)
        l_i = l_i * alpha + tl.sum(p, 1)
        v = tl.load(v_base + cols[:, None] * svt + offs_d[None, :], mask=kv_mask, other=0.0)
        acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
        m_i = m_new
    # an empty split (start >= Tk) leaves l = 0: write o = 0 with lse = -inf, i.e. weight 0 in the merge
    empty = l_i == 0.0
    l_safe = tl.where(empty, 1.0, l_i)
    part = (b * Hkv * GROUP + heads) * num_splits + pid_s  # (BLOCK_G,) row of O_PART / LSE_PART
    tl.store(O_PART + part[:, None] * HEAD_DIM + offs_d[None, :], acc / l_safe[:, None], mask=g_mask)
    tl.store(LSE_PART + part, tl.where(empty, float("-inf"), m_i + tl.log2(l_safe)), mask=g < GROUP)


@triton.jit
def _decode_merge_kernel(O_PART, LSE_PART, O, sob, soh, Hq, num_splits, HEAD_DIM: tl.constexpr,
                         BLOCK_D: tl.constexpr, BLOCK_S: tl.constexpr):
    """o = sum_s w_s o_s / sum_s w_s with w_s = 2^(lse_s - max lse): the exact softmax over all splits."""
    pid = tl.program_id(0).to(tl.int64)  # b * Hq + h
    splits = tl.arange(0, BLOCK_S)
    s_ok = splits < num_splits
    offs_d = tl.arange(0, BLOCK_D)
    lse = tl.load(LSE_PART + pid * num_splits + splits, mask=s_ok, other=float("-inf"))
    w = tl.exp2(lse - tl.max(lse, 0))  # split 0 is never empty, so the max is finite
    mask = s_ok[:, None] & (offs_d[None, :] < HEAD_DIM)
    o_part = tl.load(O_PART + (pid * num_splits + splits)[:, None] * HEAD_DIM + offs_d[None, :],
                     mask=mask, other=0.0)
    o = tl.sum(w[:, None] * o_part, 0) / tl.sum(w, 0)
    tl.store(O + (pid // Hq) * sob + (pid % Hq) * soh + offs_d, o.to(O.dtype.element_ty),
             mask=offs_d < HEAD_DIM)


# ----------------------------------------------------------------------------- autotuning

def _configs(kind, block_d):
    """Candidate (BLOCK_M, BLOCK_N, num_warps, num_stages) for one kernel. Big head dims get smaller
    tiles, else the K/V tiles and the (BLOCK_M, BLOCK_D) accumulator overflow shared memory/registers;
    configs that still do not fit are dropped by the autotuner (OutOfResources)."""
    if kind == "fwd":
        c = [(128, 64, 4, 3), (128, 64, 8, 3), (128, 128, 8, 3), (64, 64, 4, 3), (64, 32, 4, 4),
             (128, 32, 4, 4), (64, 64, 4, 2)] if block_d <= 128 else \
            [(64, 64, 8, 2), (64, 32, 4, 2), (128, 32, 8, 2), (32, 64, 4, 2)]
    elif kind == "dq":  # BLOCK_M queries per program, BLOCK_N keys per step
        c = [(128, 32, 8, 3), (128, 64, 8, 2), (64, 64, 4, 2), (64, 32, 4, 3), (32, 64, 4, 3)] \
            if block_d <= 128 else [(64, 32, 4, 2), (32, 32, 4, 2), (64, 16, 4, 2)]
    else:  # dkdv: BLOCK_N keys per program, BLOCK_M queries per step. Two (BLOCK_N, D) fp32 accumulators
        # plus the K and V tiles: on sm_90, causal, only the 8-warp configs hold them in registers at head_dim
        # 128 and 256 (and at 100, only BLOCK_N = 32); the rest spill (python -m kernels.compile_check).
        # triton 3.6 for sm_80 spills in all of them at head_dim 100, causal; (16, 64, 8, 2) does not
        c = [(32, 128, 8, 3), (64, 128, 8, 2), (32, 64, 4, 3), (64, 64, 4, 2), (16, 64, 4, 3), (16, 128, 8, 3),
             (32, 64, 8, 2), (64, 32, 8, 2), (16, 64, 8, 2)] \
            if block_d <= 128 else [(32, 64, 4, 2), (16, 64, 4, 2), (32, 32, 4, 2), (16, 32, 8, 2), (32, 32, 8, 2)]
    return [triton.Config({"BLOCK_M": m, "BLOCK_N": n}, num_warps=w, num_stages=s) for m, n, w, s in c]


@functools.lru_cache(maxsize=None)
def _kernel(kind, block_d):
    """The kernel to launch: autotuned on a GPU (per head dim, causal flag, dtype and the power-of-two
    bucket of the sequence lengths), the bare kernel under the interpreter."""
    fn = {"fwd": _fwd_kernel, "dq": _bwd_dq_kernel, "dkdv": _bwd_dkdv_kernel}[kind]
    if common.INTERPRET:
        return fn
    return triton.autotune(_configs(kind, block_d), key=["HEAD_DIM", "CAUSAL", "GROUP", "Q_BUCKET",
                                                        "K_BUCKET", "DOT_PREC"])(fn)


def _launch(kind, block_d, grid, **kw):
    if common.INTERPRET:
        bm, bn = INTERPRET_BLOCKS[kind]
        kw.update(BLOCK_M=bm, BLOCK_N=bn)
        grid = grid({"BLOCK_M": bm, "BLOCK_N": bn})
    _kernel(kind, block_d)[grid](**kw)


def _bucket(t):
    return min(triton.next_power_of_2(t), 1 << 16)


# ----------------------------------------------------------------------------- launchers

def _common(q, k):
    """(HEAD_DIM, BLOCK_D, DOT_PREC, qk_scale, sm_scale): the arguments every attention kernel takes."""
    D = q.shape[-1]
    sm_scale = 1.0 / math.sqrt(D)
    dot_prec = "ieee" if q.dtype == torch.float32 else "tf32"  # only fp32 inputs read this
    return dict(HEAD_DIM=D, BLOCK_D=max(16, triton.next_power_of_2(D)), DOT_PREC=dot_prec,
                qk_scale=sm_scale * _LOG2E), sm_scale


def _forward(q, k, v, causal):
    B, Hq, Tq, _ = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    args, _ = _common(q, k)
    o = _empty(q.shape, dtype=q.dtype, device=q.device)
    lse = _empty((B, Hq, Tq), dtype=torch.float32, device=q.device)
    grid = lambda meta: (triton.cdiv(Tq, meta["BLOCK_M"]), B * Hq)  # noqa: E731
    _launch("fwd", args["BLOCK_D"], grid, Q=q, K=k, V=v, O=o, LSE=lse, **strides("sq", q, "bht"),
            **strides("sk", k, "bht"), **strides("sv", v, "bht"), **strides("so", o, "bht"), Hq=Hq, Tq=Tq,
            Tk=Tk, GROUP=Hq // Hkv, Q_BUCKET=_bucket(Tq), K_BUCKET=_bucket(Tk), CAUSAL=causal, **args)
    return o, lse


def _backward(q, k, v, o, lse, do, causal):
    B, Hq, Tq, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    args, sm_scale = _common(q, k)
    delta = _empty((B, Hq, Tq), dtype=torch.float32, device=q.device)
    _bwd_delta_kernel[(triton.cdiv(Tq, 64), B * Hq)](
        O=o, DO=do, DELTA=delta, **strides("so", o, "bht"), **strides("sd", do, "bht"), Hq=Hq, Tq=Tq,
        HEAD_DIM=D, BLOCK_D=args["BLOCK_D"], BLOCK_M=64)
    dq = _empty(q.shape, dtype=q.dtype, device=q.device)
    dk = _empty(k.shape, dtype=k.dtype, device=k.device)
    dv = _empty(v.shape, dtype=v.dtype, device=v.device)
    args.update(Q=q, K=k, V=v, DO=do, LSE=lse, DELTA=delta, **strides("sq", q, "bht"), **strides("sk", k, "bht"),
                **strides("sv", v, "bht"), **strides("sd", do, "bht"), Hq=Hq, Tq=Tq, Tk=Tk, GROUP=Hq // Hkv,
                sm_scale=sm_scale, Q_BUCKET=_bucket(Tq), K_BUCKET=_bucket(Tk), CAUSAL=causal)
    grid = lambda meta: (triton.cdiv(Tk, meta["BLOCK_N"]), B * Hkv)  # noqa: E731
    _launch("dkdv", args["BLOCK_D"], grid, DK=dk, DV=dv, **strides("skg", dk, "bht"), **strides("svg", dv, "bht"),
            Hkv=Hkv, **args)
    grid = lambda meta: (triton.cdiv(Tq, meta["BLOCK_M"]), B * Hq)  # noqa: E731
    _launch("dq", args["BLOCK_D"], grid, DQ=dq, **strides("sqg", dq, "bht"), **args)
    return dq, dk, dv


def _decode(q, k, v, num_splits):
    q, k, v = prep(q), prep(k), prep(v)
    B, Hq, _, D = q.shape
    Hkv, Tk = k.shape[1], k.shape[2]
    args, _ = _common(q, k)
    group = Hq // Hkv
    block_n = INTERPRET_BLOCKS["decode"] if common.INTERPRET else (64 if args["BLOCK_D"] <= 128 else 32)
    if num_splits is None:
        sms = 4 if common.INTERPRET else common.num_sms(q.device.index or 0)
        # about two waves of programs, but no split shorter than 256 keys (the merge is not free)
        num_splits = max(1, min(triton.cdiv(2 * sms, B * Hkv), triton.cdiv(Tk, 256)))
    chunk = triton.cdiv(triton.cdiv(Tk, num_splits), block_n) * block_n  # whole blocks per split
    num_splits = triton.cdiv(Tk, chunk)  # after rounding, drop splits that would start past Tk
    o_part = _empty((B * Hq, num_splits, D), dtype=torch.float32, device=q.device)
    lse_part = _empty((B * Hq, num_splits), dtype=torch.float32, device=q.device)
    _decode_split_kernel[(num_splits, B * Hkv)](
        Q=q, K=k, V=v, O_PART=o_part, LSE_PART=lse_part, **strides("sq", q, "bh"), **strides("sk", k, "bht"),
        **strides("sv", v, "bht"), Hkv=Hkv, Tk=Tk, GROUP=group, chunk=chunk,
        BLOCK_G=max(16, triton.next_power_of_2(group)), BLOCK_N=block_n, **args)
    o = _empty(q.shape, dtype=q.dtype, device=q.device)
    _decode_merge_kernel[(B * Hq,)](O_PART=o_part, LSE_PART=lse_part, O=o, **strides("so", o, "bh"), Hq=Hq,
                                    num_splits=num_splits, HEAD_DIM=D, BLOCK_D=args["BLOCK_D"],
                                    BLOCK_S=max(2, triton.next_power_of_2(num_splits)))
    return o


# The launchers are registered as custom ops, so torch.compile (fullgraph, CUDA graphs included) sees
# opaque calls with known output shapes instead of tracing into Triton's Python launcher.

@torch.library.custom_op("nanoelm::flash_attention_fwd", mutates_args=())
def _forward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _forward(q, k, v, causal)


@_forward_op.register_fake
def _(q, k, v, causal):
    return q.new_empty(q.shape), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("nanoelm::flash_attention_bwd", mutates_args=())
def _backward_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, o: torch.Tensor, lse: torch.Tensor,
                 do: torch.Tensor, causal: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return _backward(q, k, v, o, lse, do, causal)


@_backward_op.register_fake
def _(q, k, v, o, lse, do, causal):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape)


@torch.library.custom_op("nanoelm::flash_decode", mutates_args=())
def _decode_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, num_splits: Optional[int]) -> torch.Tensor:
    return _decode(q, k, v, num_splits)


@_decode_op.register_fake
def _(q, k, v, num_splits):
    return q.new_empty(q.shape)


def decode(q, k, v, num_splits=None):
    """Split-KV attention of a single query per head (Tq == 1) against Tk cached keys; forward only.
    The query is the last position, so causal and non-causal agree. num_splits=None picks enough splits
    to fill the GPU: B * Hkv programs alone would leave most SMs idle at batch 1."""
    return _decode_op(q, k, v, num_splits)


class FlashAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, causal):
        q, k, v = prep(q), prep(k), prep(v)
        o, lse = _forward_op(q, k, v, causal)
        ctx.save_for_backward(q, k, v, o, lse)
        ctx.causal = causal
        return o

    @staticmethod
    def backward(ctx, do):
        q, k, v, o, lse = ctx.saved_tensors
        dq, dk, dv = _backward_op(q, k, v, o, lse, prep(do), ctx.causal)
        return dq, dk, dv, None


# ----------------------------------------------------------------------------- entry points

def _shape_problem(q, k, v):
    """Why these kernels cannot take q, k, v of these shapes (one line), or None."""
    if q.dim() != 4 or k.dim() != 4 or k.shape != v.shape:
        return (f"attention wants q (B, Hq, Tq, D) and k, v (B, Hkv, Tk, D); got q {tuple(q.shape)}, "
                f"k {tuple(k.shape)}, v {tuple(v.shape)}")
    if q.shape[0] != k.shape[0] or q.shape[3] != k.shape[3] or q.shape[1] % k.shape[1]:
        return (f"attention: q {tuple(q.shape)} does not match k/v {tuple(k.shape)} (same batch and "
                "head_dim, query heads a multiple of kv heads)")
    if q.shape[3] > MAX_HEAD_DIM:
        return f"Triton attention supports head_dim <= {MAX_HEAD_DIM}, got {q.shape[3]}"
    return None


def _autocast_dtype(q):
    return torch.get_autocast_dtype(q.device.type) if torch.is_autocast_enabled(q.device.type) else None


def supported(q, k, v):
    """Whether "auto" should use these kernels: fp16/bf16 (after autocast) on an Ampere-or-newer GPU
    (fp32 stays on SDPA, which is faster there), a head_dim up to 256 and well-formed GQA shapes."""
    dtype = _autocast_dtype(q)
    if dtype is None and not q.dtype == k.dtype == v.dtype:
        return False
    if (dtype or q.dtype) not in (torch.float16, torch.bfloat16) or not (q.device == k.device == v.device):
        return False
    if _shape_problem(q, k, v):
        return False
    return not q.is_cuda or torch.cuda.get_device_capability(q.device) >= (8, 0)


def attention(q, k, v, causal=True):
    """softmax(q k^T / sqrt(D)) v; see the module docstring. Tq == 1 without autograd takes the
    split-KV decode path; everything else goes through the differentiable FlashAttention kernels."""
    dtype = _autocast_dtype(q)
    if dtype is not None:  # as SDPA does; e.g. q, k leave an fp32-weight QK-norm in fp32, v is bf16
        q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    problem = _shape_problem(q, k, v)
    if problem:
        raise ValueError(problem)
    if not q.dtype == k.dtype == v.dtype or q.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(f"Triton attention takes fp16, bf16 or fp32 q, k, v of one dtype; got {q.dtype}, "
                         f"{k.dtype}, {v.dtype}")
    if q.shape[2] == 0 or k.shape[2] == 0 or q.numel() == 0:
        return reference(q, k, v, causal)  # nothing to launch; the reference defines the empty cases
    needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
    if q.shape[2] == 1 and not needs_grad:
        return decode(q, k, v)
    return FlashAttention.apply(q, k, v, causal)
