"""Gated delta rule (Gated DeltaNet) in plain PyTorch: chunked for prefill/training, recurrent for decode."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .fla_backend import fla_gated_delta_rule, fla_usable

# 32 measured faster than 64 on a 2-core AVX-512 CPU (benchmarks/gdn_chunk.py): a chunk's intra work
# grows with its size while the scan's per-token work does not.
DEFAULT_CHUNK_SIZE = 32
# up to this many tokens the token-by-token loop beats the chunked form's fixed cost on CPU
RECURRENT_MAX_LENGTH = 8
# Chunks are processed in segments of about this many float elements per operand, so that the
# intra-chunk intermediates stay in cache and are served from the allocator's free list instead
# of fresh (page-faulting) memory.
_SEGMENT_ELEMENTS = 1 << 19
# diagonal blocks up to this size are inverted directly; larger ones by merging halves
_LEAF_BLOCK = 16


def l2norm(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """x * rsqrt(sum(x^2) + eps) over the last dim, as in fla and transformers."""
    return x * torch.rsqrt((x * x).sum(-1, keepdim=True) + eps)


def gated_delta_rule(q, k, v, *, g, beta, scale=None, initial_state=None, output_final_state=False,
                     use_qk_l2norm=False, chunk_size=DEFAULT_CHUNK_SIZE, mode="auto", in_place=False):
    """The gated delta rule by the fastest path available; arguments and results as `chunk_gated_delta_rule`.

    mode "auto" runs fla's kernels when every tensor is on CUDA and fla imports, else the PyTorch
    code: recurrent up to RECURRENT_MAX_LENGTH tokens (decode), chunked beyond. "chunk", "recurrent"
    and "fla" force a path.

    `in_place`: the final state is written into `initial_state` (which is returned as the final state),
    so a decode step allocates no new state; see `recurrent_gated_delta_rule`.
    """
    if mode not in ("auto", "chunk", "recurrent", "fla"):
        raise ValueError(f"mode must be 'auto', 'chunk', 'recurrent' or 'fla', got {mode!r}")
    if in_place:
        _check_in_place(q, initial_state, output_final_state)
    kwargs = {"g": g, "beta": beta, "scale": scale, "initial_state": initial_state,
              "output_final_state": output_final_state, "use_qk_l2norm": use_qk_l2norm}
    short = q.shape[1] <= RECURRENT_MAX_LENGTH
    if mode == "recurrent" or (mode == "auto" and short and not fla_usable(q, k, v, g, beta, initial_state)):
        return recurrent_gated_delta_rule(q, k, v, in_place=in_place, **kwargs)
    if mode == "fla" or (mode == "auto" and fla_usable(q, k, v, g, beta, initial_state)):
        _validate(q, k, v, g, beta, initial_state)
        o, final = fla_gated_delta_rule(q, k, v, recurrent=short, **kwargs)
    else:
        o, final = chunk_gated_delta_rule(q, k, v, chunk_size=chunk_size, **kwargs)
    if in_place:
        # the kernels return a fresh state; one copy keeps the caller's state object the one that holds it
        initial_state.copy_(final)
        final = initial_state
    return o, final


def chunk_gated_delta_rule(q, k, v, *, g, beta, scale=None, initial_state=None, output_final_state=False,
                           use_qk_l2norm=False, chunk_size=DEFAULT_CHUNK_SIZE):
    """Gated delta rule over a sequence, in chunks of `chunk_size` tokens.

    q, k: [B, T, H, K]; v: [B, T, H, V]; g (log decay, <= 0) and beta: [B, T, H].
    scale defaults to K ** -0.5 and multiplies q (after the optional L2 norm).
    initial_state: float32 [B, H, K, V] or None. Returns (o [B, T, H, V] in v.dtype,
    final_state float32 [B, H, K, V] or None); float64 inputs are computed and returned in float64.
    """
    batch, length, heads, k_dim, v_dim = _validate(q, k, v, g, beta, initial_state)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    dtype = _compute_dtype(q, k, v)
    scale = k_dim**-0.5 if scale is None else scale
    state = _start_state(initial_state, batch, heads, k_dim, v_dim, dtype, q.device)
    if length == 0:
        return _empty_result(v, state, batch, heads, output_final_state)
    future = torch.ones(chunk_size, chunk_size, dtype=torch.bool, device=q.device).triu(1)
    segment = chunk_size * max(1, _SEGMENT_ELEMENTS // (batch * heads * chunk_size * max(k_dim, v_dim)))

    outputs = []
    for start in range(0, length, segment):
        window = slice(start, min(start + segment, length))
        kq = _to_chunks([k[:, window], q[:, window]], chunk_size, dtype)  # [N, BH, 2C, K]: keys over queries
        if use_qk_l2norm:
            kq = _l2norm_fresh(kq)
        vc = _to_chunks([v[:, window]], chunk_size, dtype)  # [N, BH, C, V]
        gc, bc = (_to_chunks([x[:, window, :, None]], chunk_size, dtype).squeeze(-1) for x in (g, beta))
        chunk_out, state = _chunk_segment(kq, vc, gc, bc, scale, future, state)
        outputs.append(chunk_out.view(-1, batch, heads, chunk_size, v_dim).permute(1, 0, 3, 2, 4))

    o = torch.cat(outputs, dim=1).flatten(1, 2)[:, :length].to(v.dtype).contiguous()  # [B, T, H, V]
    final_state = state.view(batch, heads, k_dim, v_dim) if output_final_state else None
    return o, final_state


def recurrent_gated_delta_rule(q, k, v, *, g, beta, scale=None, initial_state=None, output_final_state=False,
                               use_qk_l2norm=False, in_place=False):
    """Gated delta rule one token at a time; same arguments and results as `chunk_gated_delta_rule`.

    With `in_place`, the state is updated inside `initial_state` (decay and rank-one write in place) and
    that same tensor is returned as the final state: a cached decode step then reads and writes each
    GDN state once and allocates none.
    """
    batch, length, heads, k_dim, v_dim = _validate(q, k, v, g, beta, initial_state)
    dtype = _compute_dtype(q, k, v)
    scale = k_dim**-0.5 if scale is None else scale
    if in_place:
        _check_in_place(q, initial_state, output_final_state)
    state = _start_state(initial_state, batch, heads, k_dim, v_dim, dtype, q.device)
    if length == 0:
        return (v.new_empty(v.shape), initial_state) if in_place else _empty_result(v, state, batch, heads,
                                                                                   output_final_state)
    if use_qk_l2norm:
        q, k = l2norm(q.to(dtype)), l2norm(k.to(dtype))
    # token-major so that each step reads contiguous [B*H, ...] slices
    qt, kt, vt = (x.to(dtype).transpose(0, 1).reshape(length, batch * heads, 1, x.shape[-1])
                  for x in (q, k, v))  # [T, B*H, 1, D]
    gt, bt = (x.to(dtype).transpose(0, 1).reshape(length, batch * heads, 1, 1) for x in (g, beta))
    qt = qt * scale

    # one buffer rather than a list of small outputs: those would pin the allocator's free space between
    # the large per-step states and grow the heap by about a state per step
    o = torch.empty(length, batch * heads, 1, v_dim, dtype=dtype, device=v.device)  # [T, B*H, 1, V]
    for t in range(length):
        if in_place:
            state.mul_(gt[t].exp())
            delta = bt[t] * (vt[t] - torch.bmm(kt[t], state))  # [B*H, 1, V]
            state.baddbmm_(kt[t].mT, delta)
        else:
            state = state * gt[t].exp()
            delta = bt[t] * (vt[t] - torch.bmm(kt[t], state))  # [B*H, 1, V]
            state = torch.baddbmm(state, kt[t].mT, delta)
        o[t] = torch.bmm(qt[t], state)

    o = o.view(length, batch, heads, v_dim).transpose(0, 1).to(v.dtype).contiguous()  # [B, T, H, V]
    if in_place:
        return o, initial_state
    final_state = state.view(batch, heads, k_dim, v_dim) if output_final_state else None
    return o, final_state


def _check_in_place(q, initial_state, output_final_state) -> None:
    """An in-place update needs a state to write into, of the compute dtype, contiguous, outside autograd."""
    if initial_state is None or not output_final_state:
        raise ValueError("in_place needs an initial_state to update and output_final_state=True")
    if initial_state.dtype != _compute_dtype(q) or not initial_state.is_contiguous():
        raise ValueError(f"in_place needs a contiguous {_compute_dtype(q)} initial_state, got "
                         f"{initial_state.dtype}{'' if initial_state.is_contiguous() else ', not contiguous'}")
    if torch.is_grad_enabled() and (initial_state.requires_grad or q.requires_grad):
        raise ValueError("in_place cannot update a state that autograd may need; run the decode under torch.no_grad()")


def _validate(q, k, v, g, beta, initial_state):
    if q.dim() != 4:
        raise ValueError(f"q must be [B, T, H, K], got shape {tuple(q.shape)}")
    batch, length, heads, k_dim = q.shape
    if k.shape != q.shape:
        raise ValueError(f"k must have q's shape [B, T, H, K] = {tuple(q.shape)}, got {tuple(k.shape)}")
    if v.dim() != 4 or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"v must be [B, T, H, V] with [B, T, H] = {tuple(q.shape[:3])} from q, "
                         f"got {tuple(v.shape)}")
    for name, x in (("g", g), ("beta", beta)):
        if x.shape != q.shape[:3]:
            raise ValueError(f"{name} must be [B, T, H] = {tuple(q.shape[:3])} like q, got {tuple(x.shape)}")
    v_dim = v.shape[-1]
    if initial_state is not None and initial_state.shape != (batch, heads, k_dim, v_dim):
        raise ValueError(f"initial_state must be [B, H, K, V] = {(batch, heads, k_dim, v_dim)}, "
                         f"got {tuple(initial_state.shape)}")
    return batch, length, heads, k_dim, v_dim


def _empty_result(v, state, batch, heads, output_final_state):
    """The result for T = 0: no outputs, and the initial state (copied: results never alias inputs)."""
    final_state = state.view(batch, heads, *state.shape[1:]).clone() if output_final_state else None
    return v.new_empty(v.shape), final_state


def _compute_dtype(*tensors):
    # float32 at least, so bf16/fp16 inputs keep a float32 state; float64 stays float64 for gradcheck
    return torch.float64 if any(x.dtype == torch.float64 for x in tensors) else torch.float32


def _start_state(initial_state, batch, heads, k_dim, v_dim, dtype, device):
    if initial_state is None:
        return torch.zeros(batch * heads, k_dim, v_dim, dtype=dtype, device=device)
    return initial_state.to(dtype).reshape(batch * heads, k_dim, v_dim)


def _l2norm_fresh(x):
    """`l2norm` of a tensor nothing else holds: in place unless autograd needs the original.

    The norm comes from a reduction kernel rather than a full-size x * x temporary.
    """
    inv_norm = torch.rsqrt(torch.linalg.vector_norm(x, dim=-1, keepdim=True).square() + 1e-6)
    return x * inv_norm if x.requires_grad else x.mul_(inv_norm)


def _to_chunks(parts, chunk_size, dtype):
    """[B, L, H, D] tensors -> one [N, B*H, P*C, D] tensor, the P parts stacked within each chunk.

    Chunk-major so that the scan reads one contiguous block per step; stacking parts lets one
    matmul serve several of them. The cat does the layout change and the dtype cast in one pass.
    """
    batch, length, heads, _ = parts[0].shape
    n_chunks = -(-length // chunk_size)
    pad = n_chunks * chunk_size - length
    # zero k, v, g and beta leave the state unchanged, so padding only adds discarded outputs
    views = [F.pad(x, (0, 0, 0, 0, 0, pad)) if pad else x for x in parts]
    views = [x.to(dtype).unflatten(1, (n_chunks, chunk_size)).permute(1, 0, 3, 2, 4) for x in views]
    out = torch.cat(views, dim=-2) if len(views) > 1 else views[0].contiguous()
    return out.view(n_chunks, batch * heads, *out.shape[-2:])


def _chunk_segment(kq, v, g, beta, scale, future, state):
    """Run a segment of chunks from `state`; returns ([N, BH, C, V] outputs, the state after it).

    Within a chunk the delta rule's updates compose to T = (I + L)^-1 with L strictly lower
    triangular (the WY/UT transform): given the state S at the chunk start, the chunk writes
    new_values = U - W S with U = T (beta v) and W = T (beta decay_in k), and its outputs are
    o = q_decayed S + A new_values with A the decayed causal q.k scores. Only U - W S, q S and the
    state update are sequential; the A new_values term is batched over the segment afterwards.

    In-place updates are on fresh intermediates only: autograd keeps what it needs, and inference
    skips an allocation (on CPU the page faults of fresh memory cost about as much as the math).
    """
    chunk = v.shape[-2]
    k, q = kq[..., :chunk, :], kq[..., chunk:, :]  # [N, BH, C, K] each
    log_decay = g.cumsum(-1)  # [N, BH, C] from the chunk start through each position
    decay_in = log_decay.exp()
    decay_out = (log_decay[..., -1:] - log_decay).exp()  # [N, BH, C] from each position to the chunk end
    # decays between positions from differences of log decays, as exp(a) * exp(-b) would overflow;
    # the upper triangle is zeroed before exp rather than set to -inf, which takes a slow path in exp
    pairwise = (log_decay[..., :, None] - log_decay[..., None, :]).tril_().exp_()  # [N, BH, C, C]

    gram = torch.matmul(kq, k.mT)  # [N, BH, 2C, C]: k.k^T over q.k^T
    gram.unflatten(-2, (2, chunk)).mul_(pairwise[..., None, :, :])
    system = gram[..., :chunk, :].mul_(beta[..., None])  # rows scaled by beta, the update strength
    scores = gram[..., chunk:, :].masked_fill_(future, 0)  # [N, BH, C, C]: A, without the query scale
    transform = _unit_lower_inverse(system).mul_(beta[..., None, :])  # [N, BH, C, C]: T diag(beta)
    values = torch.matmul(transform, v)  # [N, BH, C, V]: U
    keys = torch.matmul(transform * decay_in[..., None, :], k)  # [N, BH, C, K]: W
    keys_out = k * decay_out[..., None]  # [N, BH, C, K]

    new_values, out, state = _scan(values, keys, q, keys_out, decay_in[..., -1], state)
    out.mul_((scale * decay_in)[..., None])
    out.flatten(0, 1).baddbmm_(scores.flatten(0, 1), new_values.flatten(0, 1), alpha=scale)
    return out, state


def _unit_lower_inverse(system):
    """(I + strictly_lower(system))^-1 for [..., C, C]; the diagonal and upper triangle are ignored.

    torch.linalg.solve_triangular makes one LAPACK call per small matrix (plus copies), so instead
    invert the small diagonal blocks by a truncated Neumann series, then merge neighbours with
    [[A11, 0], [A21, A22]]^-1 = [[T11, 0], [-T22 A21 T11, T22]]: a handful of batched matmuls.
    """
    size = system.shape[-1]
    block = size
    while block > _LEAF_BLOCK and block % 2 == 0:
        block //= 2
    inverse = _neumann_inverse(_diagonal_blocks(system, block))  # [..., C / b, b, b]
    while block < size:
        pairs = inverse.unflatten(-3, (-1, 2))  # [..., C / 2b, 2, b, b]
        upper, lower = pairs[..., 0, :, :], pairs[..., 1, :, :]
        coupling = _diagonal_blocks(system, 2 * block)[..., block:, :block]
        merged = inverse.new_zeros(*upper.shape[:-2], 2 * block, 2 * block)  # [..., C / 2b, 2b, 2b]
        # slice copies: cat over the last dim of these strided views takes a slow generic path
        merged[..., :block, :block] = upper
        merged[..., block:, block:] = lower
        merged[..., block:, :block] = -torch.matmul(torch.matmul(lower, coupling), upper)
        inverse = merged
        block *= 2
    return inverse.squeeze(-3)


def _diagonal_blocks(x, block):
    """The [..., C / b, b, b] diagonal blocks of [..., C, C] (a strided view)."""
    n_blocks = x.shape[-1] // block
    grid = x.unflatten(-1, (n_blocks, block)).unflatten(-3, (n_blocks, block))  # [..., n, b, n, b]
    return torch.diagonal(grid, dim1=-4, dim2=-2).movedim(-1, -3)


def _neumann_inverse(system):
    """(I + N)^-1 = (I - N)(I + N^2)(I + N^4)... for strictly lower N, exact once 2^j >= size."""
    size = system.shape[-1]
    power = -system.tril(-1)
    inverse = power + torch.eye(size, dtype=system.dtype, device=system.device)
    for _ in range((size - 1).bit_length() - 1):
        power = torch.matmul(power, power)
        inverse = inverse + torch.matmul(inverse, power)
    return inverse


def _scan(values, keys, queries, keys_out, chunk_decay, state):
    """Carry the [BH, K, V] state across the chunks.

    Returns the [N, BH, C, V] new values, the [N, BH, C, V] reads q S of the state at each chunk's
    start and the state after the last chunk.
    """
    new_values, state_reads = [], []
    # unbind once: indexing inside the loop costs a dispatcher call per operand and step
    steps = zip(values.unbind(0), keys.unbind(0), queries.unbind(0), keys_out.mT.unbind(0),
                chunk_decay[..., None, None].unbind(0))
    for base, written_keys, query, write_with, decay in steps:
        written = torch.baddbmm(base, written_keys, state, alpha=-1)  # [BH, C, V]: U - W S
        new_values.append(written)
        state_reads.append(torch.bmm(query, state))
        state = torch.bmm(write_with, written).addcmul_(state, decay)
    return torch.stack(new_values), torch.stack(state_reads), state
