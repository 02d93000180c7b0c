"""Triton kernels for grouped-statistics BatchNorm.

Every kernel sees the activation as a 2-D (position, channel) array addressed through three strides, never a
copy:

    element (position p, channel c) lives at  image * stride_n + pixel * stride_hw + c * stride_c,
        image = p // POSITIONS_PER_IMAGE,  pixel = p % POSITIONS_PER_IMAGE

There are num_positions = N*H*W positions (the values each channel's statistics run over) and num_channels = C
channels. The host side (triton_function.py) folds (N, H, W) into one position axis when the strides allow it, so
that
    NCHW-contiguous : POSITIONS_PER_IMAGE = H*W (a compile-time constant), stride_hw = 1, stride_c = H*W,
                      stride_n = C*H*W
    channels_last   : POSITIONS_PER_IMAGE = 1, stride_n = C (one "image" per pixel), stride_c = 1
and the per-element integer division disappears in the channels_last case (and is a multiply-shift for a
constexpr POSITIONS_PER_IMAGE in the NCHW case).

Statistic groups: channel c belongs to group c // channels_per_group (channels_per_group = C // num_groups,
contiguous groups). Statistics are always accumulated per channel inside a tile and merged to the group level in a
small finalize kernel, so one code path covers per-channel (num_groups == C), grouped and shared (num_groups == 1)
statistics.

Launch layout shared by the three streaming kernels (stats partials, normalize, backward reduce / dx):
    grid = (cdiv(C, BLOCK_C), num_splits); program (channel_block, split) owns channels
    [channel_block*BLOCK_C, +BLOCK_C) and positions [split*positions_per_split, (split+1)*positions_per_split)
    (positions_per_split = tiles_per_split * BLOCK_M) and walks them one BLOCK_M x BLOCK_C tile at a time.
num_splits is chosen so that the grid is a few programs per SM even when C (or num_groups) is small: the
reduction over positions is split across programs and merged in the finalize kernel.
The second pass over the same data (normalize after stats, dx after the backward reduce) walks each
program's tiles in REVERSE order: the tiles the first pass touched last are the ones most likely to still be
in L2, so part of the second read of x is served from cache (all of it when x fits in L2).

The streaming reductions keep [BLOCK_M, BLOCK_C] accumulators in registers and reduce across threads only once per
program (a cross-warp reduction per tile costs more than the tile's arithmetic).

Buffers (all in the compute dtype: fp32, or fp64 for float64 inputs):
    stats (2, num_groups)        row 0 mean, row 1 invstd of each group (saved for the backward)
    workspace (forward)          (2, num_splits, C) per-split mean and M2 of each channel
    workspace (backward)         (2, num_splits, C) per-split sum(dy), sum(dy * xhat), then (2, num_groups)
                                 dx coefficients mean(dxhat), mean(dxhat * xhat)
    dweight_dbias (2, C)         row 0 dweight, row 1 dbias

All arithmetic is in the compute dtype, which each kernel reads off its statistics or workspace pointer: fp32 for
fp32, fp16 and bf16 inputs, fp64 for float64 ones (inputs are cast right after the load); outputs are stored in the
output's dtype.
"""
import triton
import triton.language as tl


@triton.jit
def _tile_offsets(positions, channels, POSITIONS_PER_IMAGE: tl.constexpr, stride_n, stride_hw, stride_c,
                  USE_INT64: tl.constexpr):
    """Element offsets of a [BLOCK_M, BLOCK_C] tile (rows: positions, columns: channels)."""
    if USE_INT64:
        positions = positions.to(tl.int64)
        channels = channels.to(tl.int64)
    if POSITIONS_PER_IMAGE == 1:
        position_offsets = positions * stride_n
    else:
        image = positions // POSITIONS_PER_IMAGE
        pixel = positions - image * POSITIONS_PER_IMAGE
        position_offsets = image * stride_n + pixel * stride_hw
    return position_offsets[:, None] + channels[None, :] * stride_c


@triton.jit
def _tile(tile_start, channels, channel_mask, num_positions, POSITIONS_PER_IMAGE: tl.constexpr, stride_n, stride_hw,
          stride_c, BLOCK_M: tl.constexpr, USE_INT64: tl.constexpr):
    """(offsets, mask) of the [BLOCK_M, BLOCK_C] tile of positions [tile_start, tile_start + BLOCK_M) x channels."""
    positions = tile_start + tl.arange(0, BLOCK_M)
    mask = (positions < num_positions)[:, None] & channel_mask[None, :]
    offsets = _tile_offsets(positions, channels, POSITIONS_PER_IMAGE, stride_n, stride_hw, stride_c, USE_INT64)
    return offsets, mask


@triton.jit
def _channel_block_stats(stats_ptr, num_channels, channels_per_group, num_groups, BLOCK_C: tl.constexpr):
    """This program's BLOCK_C channels (axis 0 of the grid), their mask and group, and the group mean / invstd."""
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    channel_mask = channels < num_channels
    channel_group = channels // channels_per_group
    mean = tl.load(stats_ptr + channel_group, mask=channel_mask, other=0.0)
    invstd = tl.load(stats_ptr + num_groups + channel_group, mask=channel_mask, other=0.0)
    return channels, channel_mask, channel_group, mean, invstd


@triton.jit
def bn_stats_partial_kernel(
    x_ptr, workspace_ptr,
    num_positions, num_channels, stride_n, stride_hw, stride_c, positions_per_split, tiles_per_split,
    POSITIONS_PER_IMAGE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, USE_INT64: tl.constexpr,
):
    """Per-channel mean and M2 (sum of squared deviations) over one split of the positions.

    grid: (cdiv(C, BLOCK_C), num_splits); tile: BLOCK_M positions x BLOCK_C channels, tiles_per_split tiles
    per program.
    Shifted sums: each program subtracts a per-channel shift (the mean of its first tile) before accumulating
    sum(d) and sum(d^2) elementwise in registers, so a large mean does not cancel the variance; one
    cross-thread reduction at the end, then mean = shift + sum(d)/n and M2 = sum(d^2) - sum(d)^2/n.
    bytes: reads every element of x once (num_positions * C * elem_size in total; the first tile of each
    program twice, from cache); writes 2 * num_splits * C partials (fp32, fp64 for float64 x) into the workspace.
    """
    compute_dtype = workspace_ptr.dtype.element_ty
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    channels = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    channel_mask = channels < num_channels
    split_start = split * positions_per_split
    offsets, mask = _tile(split_start, channels, channel_mask, num_positions, POSITIONS_PER_IMAGE, stride_n,
                          stride_hw, stride_c, BLOCK_M, USE_INT64)
    x_tile = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(compute_dtype)
    first_tile_count = tl.minimum(tl.maximum(num_positions - split_start, 0), BLOCK_M).to(compute_dtype)
    shift = tl.sum(x_tile, axis=0) / tl.maximum(first_tile_count, 1.0)
    deviation_sum_acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=compute_dtype)
    squared_deviation_sum_acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=compute_dtype)
    for tile in range(tiles_per_split):
        offsets, mask = _tile(split_start + tile * BLOCK_M, channels, channel_mask, num_positions,
                              POSITIONS_PER_IMAGE, stride_n, stride_hw, stride_c, BLOCK_M, USE_INT64)
        x_tile = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(compute_dtype)
        deviation = tl.where(mask, x_tile - shift[None, :], 0.0)
        deviation_sum_acc += deviation
        squared_deviation_sum_acc += deviation * deviation
    split_count = tl.minimum(tl.maximum(num_positions - split_start, 0), positions_per_split).to(compute_dtype)
    deviation_sum = tl.sum(deviation_sum_acc, axis=0)
    squared_deviation_sum = tl.sum(squared_deviation_sum_acc, axis=0)
    inv_split_count = 1.0 / tl.maximum(split_count, 1.0)
    mean = shift + deviation_sum * inv_split_count
    m2 = tl.maximum(squared_deviation_sum - deviation_sum * deviation_sum * inv_split_count, 0.0)
    partial_offsets = split * num_channels + channels
    tl.store(workspace_ptr + partial_offsets, mean, mask=channel_mask)
    tl.store(workspace_ptr + num_splits * num_channels + partial_offsets, m2, mask=channel_mask)


@triton.jit
def bn_stats_finalize_kernel(
    workspace_ptr, stats_ptr, running_mean_ptr, running_var_ptr, num_batches_tracked_ptr,
    num_positions, num_channels, channels_per_group, num_splits, positions_per_split,
    momentum_high, momentum_low, eps_high, eps_low,
    HAS_RUNNING: tl.constexpr, MOMENTUM_FROM_NBT: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_CG: tl.constexpr,
):
    """Merge the (num_splits, C) per-channel partials into per-group mean / invstd; update running stats.

    grid: (num_groups,); one program per statistic group; tile: BLOCK_S splits x BLOCK_CG channels of the group.
    Two passes over the group's partials: the exact group mean (count-weighted mean of partial means), then
    M2 = sum(M2_i) + sum(n_i * (mean_i - mean)^2) (parallel-variance merge). var is biased (normalisation),
    the running variance gets the unbiased n/(n-1) version. With MOMENTUM_FROM_NBT the factor is
    1/num_batches_tracked, read on device. momentum and eps arrive as fp32 pairs (high + low): Triton passes Python
    floats as fp32, and the pair keeps 48 bits for fp64 statistics (an fp32 sum of the pair is just the high part).
    bytes: reads the group's 2 * num_splits * channels_per_group partials, the means twice
    (3 * num_splits * channels_per_group loads, fp32 or fp64); writes 2 statistics (+ reads and writes the group's
    2 running statistics, + reads num_batches_tracked with MOMENTUM_FROM_NBT).
    """
    compute_dtype = stats_ptr.dtype.element_ty
    group = tl.program_id(0)
    num_groups = tl.num_programs(0)
    first_channel = group * channels_per_group
    group_count = (channels_per_group * num_positions).to(compute_dtype)
    weighted_mean_acc = tl.zeros([BLOCK_S, BLOCK_CG], dtype=compute_dtype)
    for first_split in range(0, num_splits, BLOCK_S):
        splits = first_split + tl.arange(0, BLOCK_S)
        split_counts = tl.minimum(tl.maximum(num_positions - splits * positions_per_split, 0),
                                  positions_per_split).to(compute_dtype)
        for first_member in range(0, channels_per_group, BLOCK_CG):
            members = first_member + tl.arange(0, BLOCK_CG)
            mask = (splits < num_splits)[:, None] & (members < channels_per_group)[None, :]
            partial_mean = tl.load(workspace_ptr + splits[:, None] * num_channels + (first_channel + members)[None, :],
                                   mask=mask, other=0.0)
            weighted_mean_acc += partial_mean * split_counts[:, None]
    mean = tl.sum(tl.sum(weighted_mean_acc, axis=1), axis=0) / group_count
    m2_acc = tl.zeros([BLOCK_S, BLOCK_CG], dtype=compute_dtype)
    for first_split in range(0, num_splits, BLOCK_S):
        splits = first_split + tl.arange(0, BLOCK_S)
        split_counts = tl.minimum(tl.maximum(num_positions - splits * positions_per_split, 0),
                                  positions_per_split).to(compute_dtype)
        for first_member in range(0, channels_per_group, BLOCK_CG):
            members = first_member + tl.arange(0, BLOCK_CG)
            mask = (splits < num_splits)[:, None] & (members < channels_per_group)[None, :]
            offsets = splits[:, None] * num_channels + (first_channel + members)[None, :]
            partial_mean = tl.load(workspace_ptr + offsets, mask=mask, other=0.0)
            partial_m2 = tl.load(workspace_ptr + num_splits * num_channels + offsets, mask=mask, other=0.0)
            mean_gap = partial_mean - mean
            m2_acc += tl.where(mask, partial_m2 + split_counts[:, None] * mean_gap * mean_gap, 0.0)
    m2 = tl.sum(tl.sum(m2_acc, axis=1), axis=0)
    var = m2 / group_count
    eps = tl.cast(eps_high, compute_dtype) + tl.cast(eps_low, compute_dtype)
    tl.store(stats_ptr + group, mean)
    tl.store(stats_ptr + num_groups + group, 1.0 / tl.sqrt(var + eps))
    if HAS_RUNNING:
        if MOMENTUM_FROM_NBT:
            update_factor = 1.0 / tl.load(num_batches_tracked_ptr).to(compute_dtype)
        else:
            update_factor = tl.cast(momentum_high, compute_dtype) + tl.cast(momentum_low, compute_dtype)
        var_unbiased = m2 / tl.maximum(group_count - 1.0, 1.0)
        old_running_mean = tl.load(running_mean_ptr + group)
        old_running_var = tl.load(running_var_ptr + group)
        tl.store(running_mean_ptr + group, (1.0 - update_factor) * old_running_mean + update_factor * mean)
        tl.store(running_var_ptr + group, (1.0 - update_factor) * old_running_var + update_factor * var_unbiased)


@triton.jit
def bn_normalize_kernel(
    x_ptr, y_ptr, stats_ptr, weight_ptr, bias_ptr,
    num_positions, num_channels, channels_per_group, num_groups, stride_n, stride_hw, stride_c,
    positions_per_split, tiles_per_split,
    POSITIONS_PER_IMAGE: tl.constexpr, HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, USE_INT64: tl.constexpr,
):
    """y = (x - mean_g) * invstd_g * weight_c + bias_c, stored in y's dtype (y has x's strides).

    Used for the training forward (stats = batch statistics) and the eval forward (stats from running buffers).
    grid: (cdiv(C, BLOCK_C), num_splits); tile: BLOCK_M x BLOCK_C, tiles_per_split tiles per program walked in
    reverse (L2 reuse after the stats pass). Per-channel coefficients are loaded once per program.
    bytes: reads x once and writes y once (2 * num_positions * C * elem_size), plus BLOCK_C stats / weight /
    bias values per program.
    """
    compute_dtype = stats_ptr.dtype.element_ty
    channels, channel_mask, channel_group, mean, scale = _channel_block_stats(
        stats_ptr, num_channels, channels_per_group, num_groups, BLOCK_C)
    if HAS_WEIGHT:
        scale = scale * tl.load(weight_ptr + channels, mask=channel_mask, other=0.0).to(compute_dtype)
    if HAS_BIAS:
        shift = tl.load(bias_ptr + channels, mask=channel_mask, other=0.0).to(compute_dtype)
    else:
        shift = tl.zeros([BLOCK_C], dtype=compute_dtype)
    split_start = tl.program_id(1) * positions_per_split
    for tile in range(tiles_per_split):
        offsets, mask = _tile(split_start + (tiles_per_split - 1 - tile) * BLOCK_M, channels, channel_mask,
                              num_positions, POSITIONS_PER_IMAGE, stride_n, stride_hw, stride_c, BLOCK_M, USE_INT64)
        x_tile = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(compute_dtype)
        y_tile = (x_tile - mean[None, :]) * scale[None, :] + shift[None, :]
        tl.store(y_ptr + offsets, y_tile.to(y_ptr.dtype.element_ty), mask=mask)


@triton.jit
def bn_backward_reduce_kernel(
    x_ptr, dy_ptr, stats_ptr, workspace_ptr,
    num_positions, num_channels, channels_per_group, num_groups, stride_n, stride_hw, stride_c,
    positions_per_split, tiles_per_split,
    POSITIONS_PER_IMAGE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, USE_INT64: tl.constexpr,
):
    """Per-channel partial sums of dy and dy * xhat (xhat = (x - mean_g) * invstd_g) over one split.

    xhat is formed from the centred x, so the sums do not cancel for inputs with a large mean. Elementwise
    accumulators, one cross-thread reduction per program.
    grid: (cdiv(C, BLOCK_C), num_splits); tile: BLOCK_M x BLOCK_C, tiles_per_split tiles per program.
    bytes: reads x and dy once (2 * num_positions * C * elem_size); writes 2 * num_splits * C partials into the
    workspace.
    """
    compute_dtype = workspace_ptr.dtype.element_ty
    split = tl.program_id(1)
    num_splits = tl.num_programs(1)
    channels, channel_mask, channel_group, mean, invstd = _channel_block_stats(
        stats_ptr, num_channels, channels_per_group, num_groups, BLOCK_C)
    dy_sum_acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=compute_dtype)
    dy_x_centred_sum_acc = tl.zeros([BLOCK_M, BLOCK_C], dtype=compute_dtype)
    split_start = split * positions_per_split
    for tile in range(tiles_per_split):
        offsets, mask = _tile(split_start + tile * BLOCK_M, channels, channel_mask, num_positions,
                              POSITIONS_PER_IMAGE, stride_n, stride_hw, stride_c, BLOCK_M, USE_INT64)
        x_tile = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(compute_dtype)
        dy_tile = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(compute_dtype)
        dy_sum_acc += dy_tile
        dy_x_centred_sum_acc += dy_tile * (x_tile - mean[None, :])  # masked lanes: dy == 0
    partial_offsets = split * num_channels + channels
    tl.store(workspace_ptr + partial_offsets, tl.sum(dy_sum_acc, axis=0), mask=channel_mask)
    tl.store(workspace_ptr + num_splits * num_channels + partial_offsets,
             tl.sum(dy_x_centred_sum_acc, axis=0) * invstd, mask=channel_mask)


@triton.jit
def bn_backward_finalize_kernel(
    workspace_ptr, weight_ptr, dweight_dbias_ptr,
    num_positions, num_channels, channels_per_group, num_splits,
    HAS_WEIGHT: tl.constexpr, BATCH_STATS: tl.constexpr,
    BLOCK_S: tl.constexpr, BLOCK_CG: tl.constexpr,
):
    """Per-channel dweight = sum(dy * xhat), dbias = sum(dy); per-group dx coefficients.

    With dxhat = weight_c * dy and n = channels_per_group * num_positions elements per group:
        mean(dxhat)_g        = sum_{c in g} weight_c * sum(dy)_c / n
        mean(dxhat * xhat)_g = sum_{c in g} weight_c * sum(dy * xhat)_c / n
    (both zero in eval mode, where the statistics are constants). They go to
    workspace[2 * num_splits * C:] as (2, num_groups).
    grid: (num_groups,); tile: BLOCK_S splits x BLOCK_CG channels.
    bytes: reads 2 * num_splits * channels_per_group partials (+ channels_per_group weights with HAS_WEIGHT),
    writes 2 * channels_per_group + 2 values (fp32, fp64 for float64 x).
    """
    compute_dtype = workspace_ptr.dtype.element_ty
    group = tl.program_id(0)
    num_groups = tl.num_programs(0)
    first_channel = group * channels_per_group
    group_count = (channels_per_group * num_positions).to(compute_dtype)
    dxhat_sum_acc = tl.zeros([BLOCK_CG], dtype=compute_dtype)
    dxhat_xhat_sum_acc = tl.zeros([BLOCK_CG], dtype=compute_dtype)
    for first_member in range(0, channels_per_group, BLOCK_CG):
        members = first_member + tl.arange(0, BLOCK_CG)
        member_mask = members < channels_per_group
        channels = first_channel + members
        dy_sum = tl.zeros([BLOCK_CG], dtype=compute_dtype)
        dy_xhat_sum = tl.zeros([BLOCK_CG], dtype=compute_dtype)
        for first_split in range(0, num_splits, BLOCK_S):
            splits = first_split + tl.arange(0, BLOCK_S)
            mask = (splits < num_splits)[:, None] & member_mask[None, :]
            offsets = splits[:, None] * num_channels + channels[None, :]
            dy_sum += tl.sum(tl.load(workspace_ptr + offsets, mask=mask, other=0.0), axis=0)
            dy_xhat_sum += tl.sum(tl.load(workspace_ptr + num_splits * num_channels + offsets, mask=mask, other=0.0),
                                  axis=0)
        tl.store(dweight_dbias_ptr + channels, dy_xhat_sum, mask=member_mask)
        tl.store(dweight_dbias_ptr + num_channels + channels, dy_sum, mask=member_mask)
        if HAS_WEIGHT:
            channel_weight = tl.load(weight_ptr + channels, mask=member_mask, other=0.0).to(compute_dtype)
        else:
            channel_weight = tl.where(member_mask, 1.0, 0.0)
        dxhat_sum_acc += channel_weight * dy_sum
        dxhat_xhat_sum_acc += channel_weight * dy_xhat_sum
    mean_dxhat = tl.sum(dxhat_sum_acc, axis=0) / group_count
    mean_dxhat_xhat = tl.sum(dxhat_xhat_sum_acc, axis=0) / group_count
    if not BATCH_STATS:
        mean_dxhat = mean_dxhat * 0.0
        mean_dxhat_xhat = mean_dxhat_xhat * 0.0
    dx_coefs_ptr = workspace_ptr + 2 * num_splits * num_channels
    tl.store(dx_coefs_ptr + group, mean_dxhat)
    tl.store(dx_coefs_ptr + num_groups + group, mean_dxhat_xhat)


@triton.jit
def bn_backward_dx_kernel(
    x_ptr, dy_ptr, dx_ptr, stats_ptr, weight_ptr, dx_coefs_ptr,
    num_positions, num_channels, channels_per_group, num_groups, stride_n, stride_hw, stride_c,
    positions_per_split, tiles_per_split,
    POSITIONS_PER_IMAGE: tl.constexpr, HAS_WEIGHT: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, USE_INT64: tl.constexpr,
):
    """dx = invstd_g * (weight_c * dy - mean(dxhat)_g - mean(dxhat * xhat)_g * xhat), in dx's dtype (x's strides).

    grid: (cdiv(C, BLOCK_C), num_splits); tile: BLOCK_M x BLOCK_C, tiles_per_split tiles per program walked in
    reverse (L2 reuse after the reduce pass). dx_coefs_ptr points at the (2, num_groups) mean(dxhat),
    mean(dxhat * xhat) coefficients.
    bytes: reads x and dy, writes dx (3 * num_positions * C * elem_size), plus BLOCK_C stats / weight /
    coefficient values per program.
    """
    compute_dtype = stats_ptr.dtype.element_ty
    channels, channel_mask, channel_group, mean, invstd = _channel_block_stats(
        stats_ptr, num_channels, channels_per_group, num_groups, BLOCK_C)
    mean_dxhat = tl.load(dx_coefs_ptr + channel_group, mask=channel_mask, other=0.0)
    mean_dxhat_xhat = tl.load(dx_coefs_ptr + num_groups + channel_group, mask=channel_mask, other=0.0)
    if HAS_WEIGHT:
        dy_coef = invstd * tl.load(weight_ptr + channels, mask=channel_mask, other=0.0).to(compute_dtype)
    else:
        dy_coef = invstd
    x_centred_coef = -invstd * invstd * mean_dxhat_xhat  # xhat = invstd * centred x
    constant_term = -invstd * mean_dxhat
    split_start = tl.program_id(1) * positions_per_split
    for tile in range(tiles_per_split):
        offsets, mask = _tile(split_start + (tiles_per_split - 1 - tile) * BLOCK_M, channels, channel_mask,
                              num_positions, POSITIONS_PER_IMAGE, stride_n, stride_hw, stride_c, BLOCK_M, USE_INT64)
        x_tile = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(compute_dtype)
        dy_tile = tl.load(dy_ptr + offsets, mask=mask, other=0.0).to(compute_dtype)
        dx_tile = (dy_coef[None, :] * dy_tile + x_centred_coef[None, :] * (x_tile - mean[None, :])
                   + constant_term[None, :])
        tl.store(dx_ptr + offsets, dx_tile.to(dx_ptr.dtype.element_ty), mask=mask)
