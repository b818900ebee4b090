//! Depthwise 2-D convolution as a candle custom op with a vectorised CPU kernel.
//!
//! candle runs `groups == channels` as one tiny convolution per channel followed by a concat,
//! which made SFace 8x slower than onnxruntime. This kernel works one (batch, channel) plane at a
//! time:
//!
//! 1. The padded input plane is split into `stride x stride` phase planes
//!    (`phase[ry][rx][a][b] = x[a*stride + ry - pad][b*stride + rx - pad]`, zero outside), so
//!    every kernel tap reads a contiguous run of one phase plane even for stride 2.
//! 2. All phase planes share one row pitch, so a block of output rows is a single flat run:
//!    each tap becomes `acc[i] += w * phase[offset + i]` over the whole block, a long
//!    branch-free loop that vectorises regardless of the image width. The few columns past the
//!    output width per row are computed and thrown away.
//! 3. The epilogue copies the valid columns out while adding the bias and, for the fused
//!    variant, applying a per-channel PReLU.
//!
//! Planes run in parallel on rayon's global pool (the pool candle's own kernels use) once the work
//! is large enough to pay for it. On x86-64 the kernel has an AVX2+FMA copy chosen at run time.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Storage, Tensor, bail};
use rayon::prelude::*;

/// Output elements per vector step of the tap loop (one AVX register, two SSE registers).
const LANES: usize = 8;
/// Accumulator block size in floats: small enough to stay in L1 beside the phase rows it reads.
const BLOCK_FLOATS: usize = 2048;
/// Below this many multiply-adds the op runs on the calling thread (rayon's fork/join and
/// wake-up cost tens of microseconds, more than a small layer takes).
const PARALLEL_MIN_MACS: usize = 1 << 17;

/// Shapes of one call, validated once.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    channels: usize,
    in_h: usize,
    in_w: usize,
    k_h: usize,
    k_w: usize,
    stride: usize,
    padding: usize,
    out_h: usize,
    out_w: usize,
    /// Phase planes along each axis that some tap reads (`min(stride, k)`).
    phases_y: usize,
    phases_x: usize,
    /// Rows and row pitch of one phase plane.
    phase_h: usize,
    pitch: usize,
    /// Floats per phase plane: `phase_h * pitch` plus slack for the discarded columns of the
    /// last row and the rounding of the accumulator to whole vectors.
    phase_len: usize,
}

impl Geometry {
    fn new(x: &[usize], w: &[usize], stride: usize, padding: usize) -> Result<Self> {
        let &[_, channels, in_h, in_w] = x else {
            bail!("depthwise_conv2d: input must be NCHW (rank 4), got shape {x:?}")
        };
        let &[w_c, w_one, k_h, k_w] = w else {
            bail!("depthwise_conv2d: weight must be [C, 1, kh, kw], got shape {w:?}")
        };
        if w_c != channels || w_one != 1 {
            bail!(
                "depthwise_conv2d: weight shape {w:?} does not match {channels} input channels \
                 (expected [{channels}, 1, kh, kw])"
            )
        }
        if stride == 0 {
            bail!("depthwise_conv2d: stride must be at least 1")
        }
        if k_h == 0 || k_w == 0 {
            bail!("depthwise_conv2d: empty kernel {w:?}")
        }
        let padded_h = in_h + 2 * padding;
        let padded_w = in_w + 2 * padding;
        if padded_h < k_h || padded_w < k_w {
            bail!(
                "depthwise_conv2d: kernel {k_h}x{k_w} larger than the padded input \
                 {padded_h}x{padded_w}"
            )
        }
        let out_h = (padded_h - k_h) / stride + 1;
        let out_w = (padded_w - k_w) / stride + 1;
        let phase_h = out_h + (k_h - 1) / stride;
        let pitch = out_w + (k_w - 1) / stride;
        Ok(Self {
            channels,
            in_h,
            in_w,
            k_h,
            k_w,
            stride,
            padding,
            out_h,
            out_w,
            phases_y: stride.min(k_h),
            phases_x: stride.min(k_w),
            phase_h,
            pitch,
            phase_len: phase_h * pitch + (k_w - 1) / stride + LANES,
        })
    }

    fn in_plane(&self) -> usize {
        self.in_h * self.in_w
    }

    fn out_plane(&self) -> usize {
        self.out_h * self.out_w
    }

    fn taps(&self) -> usize {
        self.k_h * self.k_w
    }

    /// Accumulator floats for `rows` output rows, rounded up to whole vectors (the extra
    /// outputs read the phase planes' slack and are discarded) so the tap loop has no scalar tail.
    fn block_len(&self, rows: usize) -> usize {
        (rows * self.pitch).next_multiple_of(LANES)
    }

    /// Output rows per accumulator block.
    fn block_rows(&self) -> usize {
        (BLOCK_FLOATS / self.pitch).clamp(1, self.out_h)
    }
}

/// Per-thread buffers: the phase planes and the accumulator block.
struct Scratch {
    phases: Vec<f32>,
    acc: Vec<f32>,
    /// One zero-padded input row (`stride * pitch` floats), split into the phase rows.
    padded_row: Vec<f32>,
}

impl Scratch {
    fn new(g: &Geometry) -> Self {
        Self {
            // Zeroed once: each plane rewrites exactly the same in-image positions, so the
            // padding positions stay zero for every later plane.
            phases: vec![0.0; g.phases_y * g.phases_x * g.phase_len],
            acc: vec![0.0; g.block_len(g.block_rows())],
            padded_row: vec![0.0; g.stride * g.pitch],
        }
    }
}

/// The per-channel epilogue applied when the accumulated rows are written out.
#[derive(Clone, Copy, Debug)]
struct Epilogue {
    bias: f32,
    /// PReLU slope for negative values; `None` leaves the output linear.
    alpha: Option<f32>,
}

/// The custom op: `x` is the op's argument, the small per-channel tensors ride along.
struct DepthwiseOp<'a> {
    weight: &'a Tensor,
    bias: Option<&'a Tensor>,
    alpha: Option<&'a Tensor>,
    stride: usize,
    padding: usize,
}

/// Contiguous f32 values of a CPU tensor (copied: these are the small per-channel tensors).
fn small_tensor_values(t: &Tensor, what: &str) -> Result<Vec<f32>> {
    if t.dtype() != DType::F32 {
        bail!("depthwise_conv2d: {what} must be f32, got {:?}", t.dtype())
    }
    let t = t.contiguous()?;
    let (storage, layout) = t.storage_and_layout();
    let Storage::Cpu(cpu) = &*storage else {
        bail!("depthwise_conv2d: {what} must be on the CPU")
    };
    let Some((start, end)) = layout.contiguous_offsets() else {
        bail!("depthwise_conv2d: {what} is not contiguous")
    };
    Ok(cpu.as_slice::<f32>()?[start..end].to_vec())
}

fn per_channel(t: Option<&Tensor>, channels: usize, what: &str) -> Result<Option<Vec<f32>>> {
    let Some(t) = t else { return Ok(None) };
    let non_unit_dims = t.dims().iter().filter(|&&d| d != 1).count();
    if t.elem_count() != channels || non_unit_dims > 1 {
        bail!(
            "depthwise_conv2d: {what} must hold one value per channel ({channels}), got shape {:?}",
            t.dims()
        )
    }
    small_tensor_values(t, what).map(Some)
}

impl CustomOp1 for DepthwiseOp<'_> {
    fn name(&self) -> &'static str {
        "depthwise-conv2d"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::input_slice(storage, layout, "depthwise_conv2d", "input")?;
        let g = Geometry::new(layout.dims(), self.weight.dims(), self.stride, self.padding)?;
        let weight = small_tensor_values(self.weight, "weight")?;
        let bias = per_channel(self.bias, g.channels, "bias")?;
        let alpha = per_channel(self.alpha, g.channels, "PReLU slope")?;
        let batch = layout.dims()[0];
        let mut out = vec![0.0f32; batch * g.channels * g.out_plane()];
        run(&g, x, &weight, bias.as_deref(), alpha.as_deref(), &mut out);
        let shape = Shape::from((batch, g.channels, g.out_h, g.out_w));
        Ok((CpuStorage::F32(out), shape))
    }
}

/// Runs every plane, in parallel when the work is large enough.
fn run(
    g: &Geometry,
    x: &[f32],
    weight: &[f32],
    bias: Option<&[f32]>,
    alpha: Option<&[f32]>,
    out: &mut [f32],
) {
    let out_plane = g.out_plane();
    if out_plane == 0 || out.is_empty() {
        return;
    }
    let planes = out.len() / out_plane;
    let kernel = select_kernel();
    let plane_job = |scratch: &mut Scratch, (plane, out): (usize, &mut [f32])| {
        let channel = plane % g.channels;
        let input = &x[plane * g.in_plane()..(plane + 1) * g.in_plane()];
        let taps = &weight[channel * g.taps()..(channel + 1) * g.taps()];
        let epilogue = Epilogue {
            bias: bias.map_or(0.0, |b| b[channel]),
            alpha: alpha.map(|a| a[channel]),
        };
        kernel(g, input, taps, epilogue, scratch, out);
    };
    let macs = planes * out_plane * g.taps();
    let threads = rayon::current_num_threads();
    if macs < PARALLEL_MIN_MACS || threads < 2 || planes < 2 {
        let mut scratch = Scratch::new(g);
        out.chunks_mut(out_plane)
            .enumerate()
            .for_each(|job| plane_job(&mut scratch, job));
    } else {
        // A few tasks per thread balance uneven progress without paying per-plane overhead.
        let min_len = (planes / (threads * 4)).max(1);
        out.par_chunks_mut(out_plane)
            .enumerate()
            .with_min_len(min_len)
            .for_each_init(|| Scratch::new(g), plane_job);
    }
}

/// The depthwise kernel one plane at a time over plain buffers, for fused blocks that keep their
/// intermediate maps out of candle tensors (see `block.rs`).
pub(crate) struct PlaneDepthwise {
    g: Geometry,
    kernel: PlaneKernel,
    scratch: Scratch,
}

impl PlaneDepthwise {
    /// A `k x k` filter over `in_h x in_w` planes.
    pub(crate) fn new(
        in_h: usize,
        in_w: usize,
        k: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let g = Geometry::new(&[1, 1, in_h, in_w], &[1, 1, k, k], stride, padding)?;
        Ok(Self {
            g,
            kernel: select_kernel(),
            scratch: Scratch::new(&g),
        })
    }

    pub(crate) fn out_h(&self) -> usize {
        self.g.out_h
    }

    pub(crate) fn out_w(&self) -> usize {
        self.g.out_w
    }

    /// `out = prelu(depthwise(input, taps) + bias)`; `input` is one `in_h x in_w` plane, `taps`
    /// the `k * k` weights, `out` one `out_h x out_w` plane.
    pub(crate) fn run(
        &mut self,
        input: &[f32],
        taps: &[f32],
        bias: f32,
        alpha: Option<f32>,
        out: &mut [f32],
    ) {
        let epilogue = Epilogue { bias, alpha };
        (self.kernel)(&self.g, input, taps, epilogue, &mut self.scratch, out);
    }
}

type PlaneKernel = fn(&Geometry, &[f32], &[f32], Epilogue, &mut Scratch, &mut [f32]);

avx2_fma_copy!(
    select_kernel -> PlaneKernel,
    plane_avx2_fma_entry,
    plane_avx2_fma,
    conv_plane,
    (
        g: &Geometry,
        input: &[f32],
        taps: &[f32],
        epilogue: Epilogue,
        scratch: &mut Scratch,
        out: &mut [f32],
    )
);

/// One (batch, channel) plane: fill the phase planes, then accumulate and write out row blocks.
#[inline(always)]
fn conv_plane<const FMA: bool>(
    g: &Geometry,
    input: &[f32],
    taps: &[f32],
    epilogue: Epilogue,
    scratch: &mut Scratch,
    out: &mut [f32],
) {
    fill_phases(g, input, &mut scratch.phases, &mut scratch.padded_row);
    let phases = &scratch.phases;
    let block_rows = g.block_rows();
    let mut y0 = 0;
    while y0 < g.out_h {
        let y1 = (y0 + block_rows).min(g.out_h);
        let block_len = g.block_len(y1 - y0);
        let acc = &mut scratch.acc[..block_len];
        // The run that tap (ky, kx) reads for this block.
        let source = |ky: usize, kx: usize| -> &[f32] {
            let phase = (ky % g.stride) * g.phases_x + kx % g.stride;
            let start = phase * g.phase_len + (y0 + ky / g.stride) * g.pitch + kx / g.stride;
            &phases[start..start + block_len]
        };
        if g.k_h == 3 && g.k_w == 3 {
            let sources = std::array::from_fn(|t| source(t / 3, t % 3));
            let weights = std::array::from_fn(|t| taps[t]);
            accumulate::<9, FMA>(acc, &sources, &weights, false);
        } else if g.k_w == 3 || g.k_w == 5 {
            for ky in 0..g.k_h {
                let row = &taps[ky * g.k_w..(ky + 1) * g.k_w];
                if g.k_w == 3 {
                    let sources = std::array::from_fn(|kx| source(ky, kx));
                    let weights = std::array::from_fn(|kx| row[kx]);
                    accumulate::<3, FMA>(acc, &sources, &weights, ky > 0);
                } else {
                    let sources = std::array::from_fn(|kx| source(ky, kx));
                    let weights = std::array::from_fn(|kx| row[kx]);
                    accumulate::<5, FMA>(acc, &sources, &weights, ky > 0);
                }
            }
        } else {
            for (t, &w) in taps.iter().enumerate() {
                let sources = [source(t / g.k_w, t % g.k_w)];
                accumulate::<1, FMA>(acc, &sources, &[w], t > 0);
            }
        }
        let out_rows = &mut out[y0 * g.out_w..y1 * g.out_w];
        for (out_row, acc_row) in out_rows.chunks_exact_mut(g.out_w).zip(acc.chunks(g.pitch)) {
            write_row(out_row, &acc_row[..g.out_w], epilogue);
        }
        y0 = y1;
    }
}

/// Copies the input plane into the phase planes (in-image positions only; see `Scratch::new`).
#[inline(always)]
fn fill_phases(g: &Geometry, input: &[f32], phases: &mut [f32], padded_row: &mut [f32]) {
    let (s, p) = (g.stride, g.padding);
    // Source columns that land in the padded row `[p, p + in_w)`, clipped to the row buffer
    // (columns past the last phase column are never read).
    let copy_end = (p + g.in_w).min(padded_row.len());
    let copy_len = copy_end.saturating_sub(p);
    for ry in 0..g.phases_y {
        for a in 0..g.phase_h {
            let Some(iy) = (a * s + ry).checked_sub(p).filter(|&iy| iy < g.in_h) else {
                continue;
            };
            let src_row = &input[iy * g.in_w..][..copy_len];
            let row_start = |rx: usize| (ry * g.phases_x + rx) * g.phase_len + a * g.pitch;
            if s == 1 {
                // The padded row is the phase row itself.
                phases[row_start(0) + p..][..copy_len].copy_from_slice(src_row);
                continue;
            }
            padded_row[p..p + copy_len].copy_from_slice(src_row);
            if s == 2 && g.phases_x == 2 {
                // De-interleave even and odd columns in one pass.
                let (even_start, odd_start) = (row_start(0), row_start(1));
                let (head, tail) = phases.split_at_mut(odd_start);
                let even = &mut head[even_start..even_start + g.pitch];
                let odd = &mut tail[..g.pitch];
                // Eight pairs at a time as fixed-size arrays (the compiler turns these into
                // vector shuffles; the plain pair loop stayed scalar), then the rest.
                let pairs = even.len().min(odd.len()).min(padded_row.len() / 2);
                let vector_pairs = pairs - pairs % 8;
                let (src_blocks, _) = padded_row[..2 * vector_pairs].as_chunks::<16>();
                let (even_blocks, _) = even[..vector_pairs].as_chunks_mut::<8>();
                let (odd_blocks, _) = odd[..vector_pairs].as_chunks_mut::<8>();
                for ((e, o), src) in even_blocks.iter_mut().zip(odd_blocks).zip(src_blocks) {
                    *e = std::array::from_fn(|i| src[2 * i]);
                    *o = std::array::from_fn(|i| src[2 * i + 1]);
                }
                for i in vector_pairs..pairs {
                    even[i] = padded_row[2 * i];
                    odd[i] = padded_row[2 * i + 1];
                }
            } else {
                for rx in 0..g.phases_x {
                    let dst = &mut phases[row_start(rx)..][..g.pitch];
                    for (d, v) in dst.iter_mut().zip(padded_row[rx..].iter().step_by(s)) {
                        *d = *v;
                    }
                }
            }
        }
    }
}

#[inline(always)]
fn madd<const FMA: bool>(w: f32, x: f32, acc: f32) -> f32 {
    // Without hardware FMA `mul_add` is a slow libm call, so the portable kernel multiplies and
    // adds separately; the AVX2 copy fuses them.
    if FMA { w.mul_add(x, acc) } else { acc + w * x }
}

/// `acc[i] (+)= sum_t weights[t] * sources[t][i]`, `LANES` outputs at a time so the compiler
/// keeps each group in one vector register across all `T` taps.
#[inline(always)]
fn accumulate<const T: usize, const FMA: bool>(
    acc: &mut [f32],
    sources: &[&[f32]; T],
    weights: &[f32; T],
    add_to_existing: bool,
) {
    let n = acc.len();
    let vector_end = n - n % LANES;
    let mut i = 0;
    while i < vector_end {
        let lanes = &mut acc[i..i + LANES];
        let mut sum = [0.0f32; LANES];
        if add_to_existing {
            sum.copy_from_slice(lanes);
        }
        for t in 0..T {
            let src = &sources[t][i..i + LANES];
            for l in 0..LANES {
                sum[l] = madd::<FMA>(weights[t], src[l], sum[l]);
            }
        }
        lanes.copy_from_slice(&sum);
        i += LANES;
    }
    for i in vector_end..n {
        let mut sum = if add_to_existing { acc[i] } else { 0.0 };
        for t in 0..T {
            sum = madd::<FMA>(weights[t], sources[t][i], sum);
        }
        acc[i] = sum;
    }
}

#[inline(always)]
fn write_row(out: &mut [f32], acc: &[f32], epilogue: Epilogue) {
    let bias = epilogue.bias;
    match epilogue.alpha {
        None => {
            for (o, a) in out.iter_mut().zip(acc) {
                *o = a + bias;
            }
        }
        Some(alpha) => {
            for (o, a) in out.iter_mut().zip(acc) {
                let v = a + bias;
                *o = if v >= 0.0 { v } else { v * alpha };
            }
        }
    }
}

/// Depthwise 2-D convolution (one filter per channel, `groups == channels`) of an NCHW f32 tensor.
///
/// `weight` is `[C, 1, kh, kw]`, `bias` is `[C]`; `padding` is applied symmetrically on both axes.
/// Any stride, padding and kernel size; 3x3 and 5x5 (and kx3, kx5) have unrolled inner loops.
pub fn depthwise_conv2d(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    apply(x, weight, bias, None, stride, padding)
}

/// [`depthwise_conv2d`] followed by a per-channel PReLU (`alpha` is `[C]`), in one pass: the
/// activation is applied while the output is written, saving a full read and write of the tensor
/// plus candle's PReLU temporaries.
pub fn depthwise_conv2d_prelu(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    alpha: &Tensor,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    apply(x, weight, bias, Some(alpha), stride, padding)
}

fn apply(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    alpha: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    if x.dtype() != DType::F32 {
        bail!("depthwise_conv2d: input must be f32, got {:?}", x.dtype())
    }
    // Validate before touching storage so bad shapes fail the same way on every device.
    Geometry::new(x.dims(), weight.dims(), stride, padding)?;
    let x = x.contiguous()?;
    x.apply_op1_no_bwd(&DepthwiseOp {
        weight,
        bias,
        alpha,
        stride,
        padding,
    })
}

/// Dense convolution (groups 1) with few input channels, for the 3-channel stems: candle's tiled
/// im2col gathers every patch element by element with bounds checks and then runs a thin matrix
/// product (K = 27), which cost more than the whole rest of SFace's first stage. This reuses the
/// depthwise machinery: each input channel is split into phase planes once, and every output
/// channel sums `C_in x taps` contiguous runs into an L1-sized accumulator block.
struct DenseFewChannelsOp<'a> {
    weight: &'a Tensor,
    bias: Option<&'a Tensor>,
    alpha: Option<&'a Tensor>,
    stride: usize,
    padding: usize,
}

impl CustomOp1 for DenseFewChannelsOp<'_> {
    fn name(&self) -> &'static str {
        "dense-conv2d-few-channels"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = super::input_slice(storage, layout, "dense_conv2d", "input")?;
        let &[out_channels, in_channels, k_h, k_w] = self.weight.dims() else {
            bail!("dense_conv2d: weight must be [C_out, C_in, kh, kw]")
        };
        let g = Geometry::new(
            layout.dims(),
            &[in_channels, 1, k_h, k_w],
            self.stride,
            self.padding,
        )?;
        let weight = small_tensor_values(self.weight, "weight")?;
        let bias = per_channel(self.bias, out_channels, "bias")?;
        let alpha = per_channel(self.alpha, out_channels, "PReLU slope")?;
        let batch = layout.dims()[0];
        let mut out = vec![0.0f32; batch * out_channels * g.out_plane()];
        let kernel = select_dense_kernel();
        let phase_set = g.phases_y * g.phases_x * g.phase_len;
        let mut phases = vec![0.0f32; in_channels * phase_set];
        let mut padded_row = vec![0.0f32; g.stride * g.pitch];
        let out_image = out_channels * g.out_plane();
        if out_image == 0 {
            return Ok((
                CpuStorage::F32(out),
                Shape::from((batch, out_channels, g.out_h, g.out_w)),
            ));
        }
        for (image, out) in out.chunks_mut(out_image).enumerate() {
            let input = &x[image * in_channels * g.in_plane()..][..in_channels * g.in_plane()];
            for (c, set) in phases.chunks_mut(phase_set).enumerate() {
                let plane = &input[c * g.in_plane()..(c + 1) * g.in_plane()];
                fill_phases(&g, plane, set, &mut padded_row);
            }
            let channel_job = |acc: &mut Vec<f32>, (o, out): (usize, &mut [f32])| {
                let taps = &weight[o * in_channels * g.taps()..(o + 1) * in_channels * g.taps()];
                let epilogue = Epilogue {
                    bias: bias.as_ref().map_or(0.0, |b| b[o]),
                    alpha: alpha.as_ref().map(|a| a[o]),
                };
                kernel(&g, &phases, phase_set, taps, epilogue, acc, out);
            };
            let macs = out_image * in_channels * g.taps();
            let threads = rayon::current_num_threads();
            let new_acc = || vec![0.0f32; g.block_len(g.block_rows())];
            if macs < PARALLEL_MIN_MACS || threads < 2 || out_channels < 2 {
                let mut acc = new_acc();
                out.chunks_mut(g.out_plane())
                    .enumerate()
                    .for_each(|job| channel_job(&mut acc, job));
            } else {
                let min_len = (out_channels / (threads * 4)).max(1);
                out.par_chunks_mut(g.out_plane())
                    .enumerate()
                    .with_min_len(min_len)
                    .for_each_init(new_acc, channel_job);
            }
        }
        let shape = Shape::from((batch, out_channels, g.out_h, g.out_w));
        Ok((CpuStorage::F32(out), shape))
    }
}

type DenseKernel = fn(&Geometry, &[f32], usize, &[f32], Epilogue, &mut [f32], &mut [f32]);

avx2_fma_copy!(
    select_dense_kernel -> DenseKernel,
    dense_avx2_fma_entry,
    dense_avx2_fma,
    dense_plane,
    (
        g: &Geometry,
        phases: &[f32],
        phase_set: usize,
        taps: &[f32],
        epilogue: Epilogue,
        acc: &mut [f32],
        out: &mut [f32],
    )
);

/// One output channel of a dense convolution: `taps` is that channel's `[C_in, kh, kw]` weights,
/// `phases` holds `C_in` sets of phase planes of `phase_set` floats each.
#[inline(always)]
fn dense_plane<const FMA: bool>(
    g: &Geometry,
    phases: &[f32],
    phase_set: usize,
    taps: &[f32],
    epilogue: Epilogue,
    acc: &mut [f32],
    out: &mut [f32],
) {
    let in_channels = phases.len() / phase_set.max(1);
    let block_rows = g.block_rows();
    let mut y0 = 0;
    while y0 < g.out_h {
        let y1 = (y0 + block_rows).min(g.out_h);
        let block_len = g.block_len(y1 - y0);
        let acc = &mut acc[..block_len];
        for c in 0..in_channels {
            let set = &phases[c * phase_set..(c + 1) * phase_set];
            let source = |ky: usize, kx: usize| -> &[f32] {
                let phase = (ky % g.stride) * g.phases_x + kx % g.stride;
                let start = phase * g.phase_len + (y0 + ky / g.stride) * g.pitch + kx / g.stride;
                &set[start..start + block_len]
            };
            let channel_taps = &taps[c * g.taps()..(c + 1) * g.taps()];
            if g.k_h == 3 && g.k_w == 3 {
                let sources = std::array::from_fn(|t| source(t / 3, t % 3));
                let weights = std::array::from_fn(|t| channel_taps[t]);
                accumulate::<9, FMA>(acc, &sources, &weights, c > 0);
            } else {
                for (t, &w) in channel_taps.iter().enumerate() {
                    let sources = [source(t / g.k_w, t % g.k_w)];
                    accumulate::<1, FMA>(acc, &sources, &[w], c > 0 || t > 0);
                }
            }
        }
        let out_rows = &mut out[y0 * g.out_w..y1 * g.out_w];
        for (out_row, acc_row) in out_rows.chunks_exact_mut(g.out_w).zip(acc.chunks(g.pitch)) {
            write_row(out_row, &acc_row[..g.out_w], epilogue);
        }
        y0 = y1;
    }
}

/// Dense 2-D convolution (groups 1) of an NCHW f32 tensor with `weight` `[C_out, C_in, kh, kw]`,
/// optional per-output-channel `bias` and PReLU slope `alpha`, computed directly (no im2col).
/// Meant for few input channels (the RGB stems); wide layers belong to a matrix product.
pub fn dense_conv2d_few_channels(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    alpha: Option<&Tensor>,
    stride: usize,
    padding: usize,
) -> Result<Tensor> {
    if x.dtype() != DType::F32 {
        bail!("dense_conv2d: input must be f32, got {:?}", x.dtype())
    }
    let &[_, in_channels, k_h, k_w] = weight.dims() else {
        bail!(
            "dense_conv2d: weight must be [C_out, C_in, kh, kw], got {:?}",
            weight.dims()
        )
    };
    Geometry::new(x.dims(), &[in_channels, 1, k_h, k_w], stride, padding)?;
    let x = x.contiguous()?;
    x.apply_op1_no_bwd(&DenseFewChannelsOp {
        weight,
        bias,
        alpha,
        stride,
        padding,
    })
}
