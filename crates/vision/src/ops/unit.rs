//! YuNet's "depthwise-pointwise unit" (1x1 convolution + bias, then 3x3 depthwise convolution +
//! bias, then an optional ReLU) as one candle op, optionally reading its input through a 2x2
//! max-pool or a 2x nearest upsample + add.
//!
//! YuNet's layers are thin (16-64 channels) on large maps (320x320 for a 640 input), so the time
//! of the op-by-op version went to memory, not arithmetic: every step wrote a fresh zero-filled
//! map and the next read it back. Here the output rows are split into one band per thread; each
//! band is walked in small blocks of rows:
//!
//! 1. the input rows of the block are read (when pooling or upsampling, gathered first into a
//!    small buffer, so the pooled / summed map never exists in full);
//! 2. the 1x1 convolution writes those rows into a ring of `rows + 2` rows per channel that stays
//!    in L2: its input rows are first packed into contiguous `channels x 16` tiles (read in place
//!    they sit a channel plane apart and alias in L1), then a register-blocked product runs over
//!    them, 4 output channels x 16 columns per step;
//! 3. the 3x3 depthwise convolution reads three ring rows per output row and writes the final
//!    output once, with bias and ReLU. The two rows it shares with the next block stay in the
//!    ring, so only the first row of each band is computed twice.
//!
//! On x86-64 the whole band runs in a copy compiled for AVX2+FMA, chosen at run time.

use std::mem::MaybeUninit;
use std::ops::Range;

use candle_core::{CpuStorage, CustomOp1, CustomOp2, DType, Layout, Result, Shape, Tensor, bail};
use rayon::prelude::*;

/// Output channels per step of the 1x1 kernel.
const OUT_BLOCK: usize = 4;
/// Columns per step of the 1x1 kernel (two AVX registers).
const COLUMNS: usize = 16;
/// Output columns per step of the depthwise row (one AVX register).
const DEPTHWISE_STEP: usize = 8;
/// Target size in floats of the per-thread ring of 1x1 outputs (fits in L2 beside its input).
const RING_FLOATS: usize = 48 * 1024;
/// Below this many multiply-adds a unit runs on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 20;

/// The weights of one unit, copied out of their tensors once at load time.
#[derive(Debug, Clone)]
pub struct UnitWeights {
    inputs: usize,
    outputs: usize,
    /// `[outputs, inputs]` 1x1 weights.
    pointwise: Vec<f32>,
    pointwise_bias: Vec<f32>,
    /// The same 1x1 weights and bias as the panel kernel reads them.
    pointwise_panel: PanelWeights,
    /// `[outputs, 9]` depthwise taps.
    depthwise: Vec<f32>,
    depthwise_bias: Vec<f32>,
    relu: bool,
}

fn values(t: &Tensor, expected: usize, what: &str) -> Result<Vec<f32>> {
    if t.dtype() != DType::F32 || t.elem_count() != expected {
        bail!(
            "unit: {what} must be {expected} f32 values, got {:?} {:?}",
            t.dtype(),
            t.dims()
        )
    }
    t.flatten_all()?.to_vec1::<f32>()
}

impl UnitWeights {
    /// From the 1x1 weight `[out, in, 1, 1]` (or `[out, in]`) and bias `[out]`, the depthwise
    /// weight `[out, 1, 3, 3]` and bias `[out]`, and whether a ReLU ends the unit.
    pub fn new(
        pointwise: &Tensor,
        pointwise_bias: &Tensor,
        depthwise: &Tensor,
        depthwise_bias: &Tensor,
        relu: bool,
    ) -> Result<Self> {
        let outputs = pointwise.dim(0)?;
        let inputs = pointwise.elem_count() / outputs.max(1);
        if outputs == 0 || inputs == 0 || !matches!(pointwise.rank(), 2 | 4) {
            bail!(
                "unit: 1x1 weight must be [out, in, 1, 1], got {:?}",
                pointwise.dims()
            )
        }
        if pointwise.rank() == 4 && pointwise.dims()[2..] != [1, 1] {
            bail!(
                "unit: 1x1 weight must be [out, in, 1, 1], got {:?}",
                pointwise.dims()
            )
        }
        if depthwise.dims() != [outputs, 1, 3, 3] {
            bail!(
                "unit: depthwise weight must be [{outputs}, 1, 3, 3], got {:?}",
                depthwise.dims()
            )
        }
        let pointwise = values(pointwise, outputs * inputs, "1x1 weight")?;
        let pointwise_bias = values(pointwise_bias, outputs, "1x1 bias")?;
        Ok(Self {
            inputs,
            outputs,
            pointwise_panel: PanelWeights::new(&pointwise, &pointwise_bias, inputs, outputs),
            pointwise,
            pointwise_bias,
            depthwise: values(depthwise, outputs * 9, "depthwise weight")?,
            depthwise_bias: values(depthwise_bias, outputs, "depthwise bias")?,
            relu,
        })
    }

    /// Stacks units that read the same input into one whose output channels are theirs in order
    /// (every output channel depends only on its own weights). All must agree on `inputs` and
    /// `relu`.
    pub fn stack(units: &[Self]) -> Result<Self> {
        let Some(first) = units.first() else {
            bail!("unit: nothing to stack")
        };
        if units
            .iter()
            .any(|u| u.inputs != first.inputs || u.relu != first.relu)
        {
            bail!("unit: stacked units must share their input width and activation")
        }
        let cat = |f: fn(&Self) -> &Vec<f32>| units.iter().flat_map(f).copied().collect();
        let pointwise: Vec<f32> = cat(|u| &u.pointwise);
        let pointwise_bias: Vec<f32> = cat(|u| &u.pointwise_bias);
        let outputs = units.iter().map(|u| u.outputs).sum();
        Ok(Self {
            inputs: first.inputs,
            outputs,
            pointwise_panel: PanelWeights::new(&pointwise, &pointwise_bias, first.inputs, outputs),
            pointwise,
            pointwise_bias,
            depthwise: cat(|u| &u.depthwise),
            depthwise_bias: cat(|u| &u.depthwise_bias),
            relu: first.relu,
        })
    }

    pub fn inputs(&self) -> usize {
        self.inputs
    }

    pub fn outputs(&self) -> usize {
        self.outputs
    }
}

/// A matrix of weights `[outputs, inputs]` and a bias, laid out for [`panel_product`]: the
/// weights as `[outputs / OUT_BLOCK][inputs][OUT_BLOCK]` (the block's weights for one input are
/// adjacent, as the kernel broadcasts them), outputs padded with zeros to whole blocks.
#[derive(Debug, Clone)]
struct PanelWeights {
    inputs: usize,
    outputs: usize,
    packed: Vec<f32>,
    bias: Vec<f32>,
}

impl PanelWeights {
    fn new(weights: &[f32], bias: &[f32], inputs: usize, outputs: usize) -> Self {
        let blocks = outputs.div_ceil(OUT_BLOCK);
        let mut packed = vec![0.0; blocks * inputs * OUT_BLOCK];
        for o in 0..outputs {
            let (block, k) = (o / OUT_BLOCK, o % OUT_BLOCK);
            for i in 0..inputs {
                packed[(block * inputs + i) * OUT_BLOCK + k] = weights[o * inputs + i];
            }
        }
        let mut bias = bias.to_vec();
        bias.resize(blocks * OUT_BLOCK, 0.0);
        Self {
            inputs,
            outputs,
            packed,
            bias,
        }
    }
}

/// A dense 3x3 stride-2 convolution (padding 1) + bias + ReLU on few input channels (YuNet's
/// stem), computed row by row as the input of the first unit so its full-resolution output never
/// goes to memory.
#[derive(Debug, Clone)]
pub struct StemWeights {
    inputs: usize,
    outputs: usize,
    /// The taps as the kernel reads them: per block of `STEM_OUT_BLOCK` output channels, per
    /// input row `(channel, ky)`, the block's three taps of that row, channel after channel
    /// (`[blocks][inputs * 3][STEM_OUT_BLOCK * 3]`), output channels padded with zeros to whole
    /// blocks.
    taps: Vec<f32>,
    bias: Vec<f32>,
}

impl StemWeights {
    /// From the weight `[out, in, 3, 3]` and bias `[out]`.
    pub fn new(weight: &Tensor, bias: &Tensor) -> Result<Self> {
        let &[outputs, inputs, 3, 3] = weight.dims() else {
            bail!(
                "stem: weight must be [out, in, 3, 3], got {:?}",
                weight.dims()
            )
        };
        if outputs == 0 || inputs == 0 {
            bail!("stem: empty weight {:?}", weight.dims())
        }
        // Zero output channels pad the weights to whole blocks of the kernel (never written out).
        let padded = outputs.next_multiple_of(STEM_OUT_BLOCK);
        let weight = values(weight, outputs * inputs * 9, "stem weight")?;
        let mut taps = vec![0.0; padded * inputs * 9];
        for (o, per_output) in weight.chunks_exact(inputs * 9).enumerate() {
            let (block, k) = (o / STEM_OUT_BLOCK, o % STEM_OUT_BLOCK);
            // `r` = 3 * channel + ky: one input row of the kernel, its taps kx = 0, 1, 2.
            for (r, row_taps) in per_output.chunks_exact(3).enumerate() {
                let at = ((block * inputs * 3 + r) * STEM_OUT_BLOCK + k) * 3;
                taps[at..at + 3].copy_from_slice(row_taps);
            }
        }
        let mut bias = values(bias, outputs, "stem bias")?;
        bias.resize(padded, 0.0);
        Ok(Self {
            inputs,
            outputs,
            taps,
            bias,
        })
    }
}

/// How the unit's input map is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitInput {
    /// As is.
    Plain,
    /// Through a 2x2 max-pool with stride 2 (odd trailing rows and columns dropped, as
    /// candle's `max_pool2d(2)`).
    MaxPool2,
}

/// The unit's input for one image.
#[derive(Clone, Copy)]
enum Source<'a> {
    /// `[C_in, H, W]`.
    Plain(&'a [f32]),
    /// `[C_in, src_h, src_w]`, pooled to `[C_in, H, W]`.
    MaxPool2 {
        x: &'a [f32],
        src_h: usize,
        src_w: usize,
    },
    /// `fine [C_in, H, W] + upsample2(coarse [C_in, H/2, W/2])`.
    UpsampleAdd { fine: &'a [f32], coarse: &'a [f32] },
    /// `relu(stem(x))` of `x [stem.inputs, src_h, src_w]`, with `C_in == stem.outputs`.
    Stem {
        x: &'a [f32],
        src_h: usize,
        src_w: usize,
        stem: &'a StemWeights,
    },
}

/// Sizes of one call.
#[derive(Clone, Copy, Debug)]
struct Plan {
    h: usize,
    w: usize,
    /// Output rows per block (the ring holds `block_rows + 2`).
    block_rows: usize,
}

impl Plan {
    fn new(weights: &UnitWeights, h: usize, w: usize) -> Self {
        let ring_rows = RING_FLOATS / (weights.outputs * w).max(1);
        Self {
            h,
            w,
            block_rows: ring_rows.saturating_sub(2).clamp(1, h.max(1)),
        }
    }

    fn ring_pitch(&self) -> usize {
        (self.block_rows + 2) * self.w
    }
}

/// Per-thread buffers.
struct Scratch {
    /// `[C_out, block_rows + 2, W]`: the 1x1 output rows the depthwise step reads.
    ring: Vec<f32>,
    /// `[C_in, block_rows + 2, W]`: gathered (pooled / summed) input rows.
    gathered: Vec<f32>,
    /// The 1x1 step's input rows packed into tiles ([`pack_panel`]).
    panel: Vec<f32>,
    /// One row of zeros: the depthwise padding above and below the map.
    zeros: Vec<f32>,
    /// The stem's even and odd input columns of the three input rows of every stem channel:
    /// `[stem inputs * 3][2][stem_pitch]`.
    stem_rows: Vec<f32>,
}

impl Scratch {
    const fn empty() -> Self {
        Self {
            ring: Vec::new(),
            gathered: Vec::new(),
            panel: Vec::new(),
            zeros: Vec::new(),
            stem_rows: Vec::new(),
        }
    }

    /// Sizes the buffers for one call. Only growth is zero-filled: every buffer but `zeros` is
    /// written before it is read, and `zeros` is never written.
    fn prepare(&mut self, weights: &UnitWeights, plan: &Plan, gathers: bool) {
        let grow = |buffer: &mut Vec<f32>, len: usize| {
            if buffer.len() < len {
                buffer.resize(len, 0.0);
            }
        };
        grow(&mut self.ring, weights.outputs * plan.ring_pitch());
        if gathers {
            grow(&mut self.gathered, weights.inputs * plan.ring_pitch());
        }
        grow(&mut self.zeros, plan.w);
    }

    /// Runs `f` with this thread's scratch, prepared for one call. Kept per thread across calls:
    /// allocating and zero-filling fresh buffers in every call of every unit cost more than a
    /// small layer's arithmetic.
    fn with<R>(
        weights: &UnitWeights,
        plan: &Plan,
        gathers: bool,
        f: impl FnOnce(&mut Self) -> R,
    ) -> R {
        thread_local! {
            static SCRATCH: std::cell::RefCell<Scratch> = const {
                std::cell::RefCell::new(Scratch::empty())
            };
        }
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut scratch) => {
                scratch.prepare(weights, plan, gathers);
                f(&mut scratch)
            }
            // Re-entered on this thread (a nested unit inside `f`, which no caller does today):
            // fall back to private buffers rather than fail.
            Err(_) => {
                let mut scratch = Self::empty();
                scratch.prepare(weights, plan, gathers);
                f(&mut scratch)
            }
        })
    }
}

#[inline(always)]
fn madd<const FMA: bool>(w: f32, x: f32, acc: f32) -> f32 {
    // Without hardware FMA `mul_add` is a slow libm call.
    if FMA { w.mul_add(x, acc) } else { acc + w * x }
}

/// Copies `n` columns of `channels` rows (row `i` starting at `i * stride`) into `panel` as
/// `[n / COLUMNS rounded up][channels][COLUMNS]`, the last tile padded with zeros, so that each
/// step of the 1x1 kernel reads one contiguous tile. Read in place, the rows of one step lie a
/// whole channel plane apart: at 160x160 that is 25 x 4 KiB, every row fell into the same L1
/// set and most loads missed (the 32 -> 64 unit ran at a quarter of the speed of its neighbours).
#[inline(always)]
fn pack_panel(input: &[f32], stride: usize, channels: usize, n: usize, panel: &mut Vec<f32>) {
    let tiles = n.div_ceil(COLUMNS);
    panel.resize(tiles * channels * COLUMNS, 0.0);
    for (t, tile) in panel.chunks_exact_mut(channels * COLUMNS).enumerate() {
        let j = t * COLUMNS;
        let valid = COLUMNS.min(n - j);
        let (tile, _) = tile.as_chunks_mut::<COLUMNS>();
        for (i, dst) in tile.iter_mut().enumerate() {
            let src = &input[i * stride + j..];
            // A whole tile as one fixed-size copy (two vector moves, not a `memcpy` call).
            match src.first_chunk::<COLUMNS>() {
                Some(whole) if valid == COLUMNS => *dst = *whole,
                _ => {
                    dst[..valid].copy_from_slice(&src[..valid]);
                    dst[valid..].fill(0.0);
                }
            }
        }
    }
}

/// `out[o][j] = bias[o] + sum_i weight[o][i] * input[i][j]` for `j < n`, from the input packed
/// by [`pack_panel`]; row `o` of the output starts at
/// `o * out_stride`. Four outputs x 16 columns per step: eight accumulators in registers, two
/// input loads and four broadcasts per eight FMAs.
#[inline(always)]
fn panel_product<const FMA: bool>(
    weights: &PanelWeights,
    panel: &[f32],
    n: usize,
    out: &mut [f32],
    out_stride: usize,
) {
    let (c_in, c_out) = (weights.inputs, weights.outputs);
    for (t, tile) in panel.chunks_exact(c_in * COLUMNS).enumerate() {
        let j = t * COLUMNS;
        let valid = COLUMNS.min(n - j);
        let (tile, _) = tile.as_chunks::<COLUMNS>();
        let blocks = weights.packed.chunks_exact(c_in * OUT_BLOCK);
        for ((block, block_weights), bias) in blocks.enumerate().zip(weights.bias.as_chunks().0) {
            let o0 = block * OUT_BLOCK;
            let bias: &[f32; OUT_BLOCK] = bias;
            let mut acc: [[f32; COLUMNS]; OUT_BLOCK] = std::array::from_fn(|k| [bias[k]; COLUMNS]);
            let (block_weights, _) = block_weights.as_chunks::<OUT_BLOCK>();
            for (x, wk) in tile.iter().zip(block_weights) {
                for k in 0..OUT_BLOCK {
                    acc[k] = std::array::from_fn(|l| madd::<FMA>(wk[k], x[l], acc[k][l]));
                }
            }
            for (k, row) in acc.iter().enumerate().take(c_out - o0) {
                let dst = &mut out[(o0 + k) * out_stride + j..];
                match dst.first_chunk_mut::<COLUMNS>() {
                    Some(whole) if valid == COLUMNS => *whole = *row,
                    _ => dst[..valid].copy_from_slice(&row[..valid]),
                }
            }
        }
    }
}

/// Output columns `1 + x` for `x` in `columns` of [`depthwise_row`]'s interior (column `1 + x`
/// reads columns `x..x + 3` of the three rows). A loop over a run-time range, which the compiler
/// vectorises by eight (a fixed-length one it would only unroll).
#[inline(always)]
fn depthwise_interior<const FMA: bool>(
    rows: [&[f32]; 3],
    t: &[f32; 9],
    bias: f32,
    relu: bool,
    columns: Range<usize>,
    out: &mut [MaybeUninit<f32>],
) {
    let (start, n) = (columns.start, columns.len());
    let [up, mid, down] = rows.map(|row| &row[start..start + n + 2]);
    let (u0, u1, u2) = (&up[..n], &up[1..n + 1], &up[2..n + 2]);
    let (m0, m1, m2) = (&mid[..n], &mid[1..n + 1], &mid[2..n + 2]);
    let (d0, d1, d2) = (&down[..n], &down[1..n + 1], &down[2..n + 2]);
    let interior = &mut out[start + 1..start + 1 + n];
    for x in 0..n {
        // One partial sum per input row: three short dependency chains instead of one of nine.
        let mut up_sum = bias;
        up_sum = madd::<FMA>(t[0], u0[x], up_sum);
        up_sum = madd::<FMA>(t[1], u1[x], up_sum);
        up_sum = madd::<FMA>(t[2], u2[x], up_sum);
        let mut mid_sum = t[3] * m0[x];
        mid_sum = madd::<FMA>(t[4], m1[x], mid_sum);
        mid_sum = madd::<FMA>(t[5], m2[x], mid_sum);
        let mut down_sum = t[6] * d0[x];
        down_sum = madd::<FMA>(t[7], d1[x], down_sum);
        down_sum = madd::<FMA>(t[8], d2[x], down_sum);
        let v = up_sum + mid_sum + down_sum;
        interior[x].write(if relu { v.max(0.0) } else { v });
    }
}

/// One output row of the 3x3 depthwise convolution (padding 1) from the rows above, at and
/// below it (`zeros` outside the map), with bias and optional ReLU.
#[inline(always)]
fn depthwise_row<const FMA: bool>(
    rows: [&[f32]; 3],
    taps: &[f32],
    bias: f32,
    relu: bool,
    out: &mut [MaybeUninit<f32>],
) {
    let w = out.len();
    let t: [f32; 9] = std::array::from_fn(|k| taps[k]);
    let finish = |v: f32| if relu { v.max(0.0) } else { v };
    if w == 1 {
        let mut v = bias;
        for (ky, row) in rows.iter().enumerate() {
            v = madd::<FMA>(t[3 * ky + 1], row[0], v);
        }
        out[0].write(finish(v));
        return;
    }
    // Interior columns 1..w-1: whole steps of eight, then the columns left over as one more
    // step of eight moved back to end at the last column (it rewrites a few columns with the
    // same values), so no column goes through the scalar remainder loop.
    let n = w - 2;
    let whole = n - n % DEPTHWISE_STEP;
    depthwise_interior::<FMA>(rows, &t, bias, relu, 0..whole, out);
    if whole < n {
        let tail = n.saturating_sub(DEPTHWISE_STEP)..n;
        depthwise_interior::<FMA>(rows, &t, bias, relu, tail, out);
    }
    // The first and last columns, whose left / right neighbour is padding.
    let mut first = bias;
    let mut last = bias;
    for (ky, row) in rows.iter().enumerate() {
        first = madd::<FMA>(t[3 * ky + 1], row[0], first);
        first = madd::<FMA>(t[3 * ky + 2], row[1], first);
        last = madd::<FMA>(t[3 * ky], row[w - 2], last);
        last = madd::<FMA>(t[3 * ky + 1], row[w - 1], last);
    }
    out[0].write(finish(first));
    out[w - 1].write(finish(last));
}

/// Stem columns per even / odd row: the output width rounded up to whole steps plus one vector
/// (the third tap of a row reads one column further).
fn stem_pitch(w: usize) -> usize {
    w.next_multiple_of(2 * STEM_LANES) + STEM_LANES
}

/// Output channels per step of the stem.
const STEM_OUT_BLOCK: usize = 4;

/// Output elements per vector step of the stem.
const STEM_LANES: usize = 8;

/// Writes stem output row `y` of every stem channel (`out[o * len + offset..][..w]`).
#[inline(always)]
fn stem_row<const FMA: bool>(
    x: &[f32],
    (src_h, src_w): (usize, usize),
    stem: &StemWeights,
    y: usize,
    rows: &mut [f32],
    out: &mut [f32],
    (len, offset, w): (usize, usize, usize),
) {
    let pitch = stem_pitch(w);
    // Split each padded input row into even and odd columns: output column `x` reads padded
    // columns 2x, 2x + 1, 2x + 2 = even[x], odd[x], even[x + 1], where padded column `j` is
    // input column `j - 1`.
    for c in 0..stem.inputs {
        for ky in 0..3 {
            let pair = &mut rows[(3 * c + ky) * 2 * pitch..][..2 * pitch];
            let Some(iy) = (2 * y + ky).checked_sub(1).filter(|&iy| iy < src_h) else {
                pair.fill(0.0);
                continue;
            };
            let src = &x[(c * src_h + iy) * src_w..][..src_w];
            let (even, odd) = pair.split_at_mut(pitch);
            // Input columns 2k and 2k + 1 are padded columns 2k + 1 (odd k) and 2k + 2 (even k + 1).
            let pairs = src.chunks_exact(2);
            if let &[last] = pairs.remainder() {
                odd[src_w / 2] = last;
            }
            for ((o, e), pair) in odd.iter_mut().zip(&mut even[1..]).zip(pairs) {
                *o = pair[0];
                *e = pair[1];
            }
            // Only the padding: everything else was just written.
            even[0] = 0.0;
            even[1 + src_w / 2..].fill(0.0);
            odd[src_w.div_ceil(2)..].fill(0.0);
        }
    }
    // Four output channels x 16 columns per step: eight independent accumulators hide the FMA
    // latency, and each loaded input vector feeds four channels; the taps are read in the order
    // they were laid out at load time, without bounds checks.
    let row_count = 3 * stem.inputs;
    let block_len = row_count * STEM_OUT_BLOCK * 3;
    let rows = &rows[..row_count * 2 * pitch];
    let (blocks, _) = stem.taps.as_chunks::<{ STEM_OUT_BLOCK * 3 }>();
    let (biases, _) = stem.bias.as_chunks::<STEM_OUT_BLOCK>();
    for (block, (block_taps, bias)) in blocks.chunks_exact(row_count).zip(biases).enumerate() {
        debug_assert_eq!(block_taps.len() * STEM_OUT_BLOCK * 3, block_len);
        let o0 = block * STEM_OUT_BLOCK;
        let live = STEM_OUT_BLOCK.min(stem.outputs - o0);
        let mut x0 = 0;
        while x0 < w {
            let mut acc: [[f32; 2 * STEM_LANES]; STEM_OUT_BLOCK] =
                std::array::from_fn(|k| [bias[k]; 2 * STEM_LANES]);
            for (pair, t) in rows.chunks_exact(2 * pitch).zip(block_taps) {
                let (even, odd) = pair.split_at(pitch);
                // In bounds: the pitch covers `w` rounded up to whole steps plus one vector.
                let mut e0 = [0.0f32; 2 * STEM_LANES];
                let mut od = [0.0f32; 2 * STEM_LANES];
                let mut e1 = [0.0f32; 2 * STEM_LANES];
                e0.copy_from_slice(&even[x0..x0 + 2 * STEM_LANES]);
                od.copy_from_slice(&odd[x0..x0 + 2 * STEM_LANES]);
                e1.copy_from_slice(&even[x0 + 1..x0 + 1 + 2 * STEM_LANES]);
                for (row, taps) in acc.iter_mut().zip(t.as_chunks::<3>().0) {
                    let (t0, t1, t2) = (taps[0], taps[1], taps[2]);
                    for l in 0..2 * STEM_LANES {
                        row[l] = madd::<FMA>(t0, e0[l], row[l]);
                        row[l] = madd::<FMA>(t1, od[l], row[l]);
                        row[l] = madd::<FMA>(t2, e1[l], row[l]);
                    }
                }
            }
            let valid = (2 * STEM_LANES).min(w - x0);
            for (k, row) in acc.iter().enumerate().take(live) {
                let dst = &mut out[(o0 + k) * len + offset + x0..][..valid];
                for (d, a) in dst.iter_mut().zip(row) {
                    *d = a.max(0.0);
                }
            }
            x0 += 2 * STEM_LANES;
        }
    }
}

/// Writes input rows `rows` of `source` as `[C_in, rows.len(), W]` into `gathered`.
#[inline(always)]
fn gather_rows<const FMA: bool>(
    source: Source<'_>,
    plan: &Plan,
    c_in: usize,
    rows: Range<usize>,
    out: &mut [f32],
    stem_rows: &mut Vec<f32>,
) {
    let (h, w) = (plan.h, plan.w);
    let len = rows.len() * w;
    if let Source::Stem {
        x,
        src_h,
        src_w,
        stem,
    } = source
    {
        stem_rows.resize(stem.inputs * 3 * 2 * stem_pitch(w), 0.0);
        for (i, y) in rows.enumerate() {
            stem_row::<FMA>(x, (src_h, src_w), stem, y, stem_rows, out, (len, i * w, w));
        }
        return;
    }
    for c in 0..c_in {
        let dst = &mut out[c * len..(c + 1) * len];
        for (y, dst_row) in rows.clone().zip(dst.chunks_exact_mut(w)) {
            match source {
                Source::Plain(x) => dst_row.copy_from_slice(&x[(c * h + y) * w..][..w]),
                Source::Stem { .. } => {}
                Source::MaxPool2 { x, src_h, src_w } => {
                    let plane = &x[c * src_h * src_w..(c + 1) * src_h * src_w];
                    let top = &plane[2 * y * src_w..][..2 * w];
                    let bottom = &plane[(2 * y + 1) * src_w..][..2 * w];
                    for ((d, a), b) in dst_row
                        .iter_mut()
                        .zip(top.chunks_exact(2))
                        .zip(bottom.chunks_exact(2))
                    {
                        *d = a[0].max(a[1]).max(b[0].max(b[1]));
                    }
                }
                Source::UpsampleAdd { fine, coarse } => {
                    let fine_row = &fine[(c * h + y) * w..][..w];
                    let (coarse_h, coarse_w) = (h / 2, w / 2);
                    let coarse_row = &coarse[(c * coarse_h + y / 2) * coarse_w..][..coarse_w];
                    for ((d, f), &v) in dst_row
                        .chunks_exact_mut(2)
                        .zip(fine_row.chunks_exact(2))
                        .zip(coarse_row)
                    {
                        d[0] = f[0] + v;
                        d[1] = f[1] + v;
                    }
                }
            }
        }
    }
}

/// Computes output rows `band` (`out[c]` is channel `c`'s rows of the band).
#[inline(always)]
fn run_band<const FMA: bool>(
    weights: &UnitWeights,
    plan: &Plan,
    source: Source<'_>,
    band: Range<usize>,
    out: &mut [&mut [MaybeUninit<f32>]],
    scratch: &mut Scratch,
) {
    let (h, w) = (plan.h, plan.w);
    let pitch = plan.ring_pitch();
    // The ring holds the 1x1 output rows `[lo, hi)` at ring rows `0..hi - lo`.
    let mut lo = band.start.saturating_sub(1);
    let mut hi = lo;
    let mut y0 = band.start;
    while y0 < band.end {
        let y1 = (y0 + plan.block_rows).min(band.end);
        // Drop the rows the block no longer needs, keeping the one above it.
        let keep_from = y0.saturating_sub(1);
        if keep_from > lo {
            let dropped = (keep_from - lo) * w;
            let kept = (hi - keep_from) * w;
            // Only this unit's channels: the ring may have grown for a wider unit before.
            for channel in scratch.ring[..weights.outputs * pitch].chunks_exact_mut(pitch) {
                channel.copy_within(dropped..dropped + kept, 0);
            }
            lo = keep_from;
        }
        let need = (y1 + 1).min(h);
        if need > hi {
            let n = (need - hi) * w;
            let ring_offset = (hi - lo) * w;
            let (input, stride) = match source {
                Source::Plain(x) => (&x[hi * w..], h * w),
                _ => {
                    gather_rows::<FMA>(
                        source,
                        plan,
                        weights.inputs,
                        hi..need,
                        &mut scratch.gathered,
                        &mut scratch.stem_rows,
                    );
                    (&scratch.gathered[..], n)
                }
            };
            pack_panel(input, stride, weights.inputs, n, &mut scratch.panel);
            panel_product::<FMA>(
                &weights.pointwise_panel,
                &scratch.panel,
                n,
                &mut scratch.ring[ring_offset..],
                pitch,
            );
            hi = need;
        }
        for (c, out_channel) in out.iter_mut().enumerate() {
            let ring = &scratch.ring[c * pitch..(c + 1) * pitch];
            let row = |y: usize| &ring[(y - lo) * w..(y - lo + 1) * w];
            let taps = &weights.depthwise[9 * c..9 * c + 9];
            let bias = weights.depthwise_bias[c];
            for y in y0..y1 {
                let up = if y > 0 { row(y - 1) } else { &scratch.zeros };
                let down = if y + 1 < h {
                    row(y + 1)
                } else {
                    &scratch.zeros
                };
                let dst = &mut out_channel[(y - band.start) * w..(y - band.start + 1) * w];
                depthwise_row::<FMA>([up, row(y), down], taps, bias, weights.relu, dst);
            }
        }
        y0 = y1;
    }
}

type BandKernel =
    fn(&UnitWeights, &Plan, Source<'_>, Range<usize>, &mut [&mut [MaybeUninit<f32>]], &mut Scratch);

avx2_fma_copy!(
    select_band_kernel -> BandKernel,
    band_avx2_fma_entry,
    band_avx2_fma,
    run_band,
    (
        weights: &UnitWeights,
        plan: &Plan,
        source: Source<'_>,
        band: Range<usize>,
        out: &mut [&mut [MaybeUninit<f32>]],
        scratch: &mut Scratch,
    )
);

/// Runs the unit on every image of the batch: `image(b)` is image `b`'s source.
fn run_unit<'a>(
    weights: &UnitWeights,
    batch: usize,
    h: usize,
    w: usize,
    image: impl Fn(usize) -> Source<'a>,
) -> Vec<f32> {
    let plan = Plan::new(weights, h, w);
    let c_out = weights.outputs;
    let image_len = c_out * h * w;
    let total = batch * image_len;
    // Not zero-filled: the bands write every element exactly once (the zero fill cost about a
    // tenth of YuNet's time, a memset of every output map).
    let mut out: Vec<f32> = Vec::with_capacity(total);
    if image_len == 0 {
        return out;
    }
    let kernel = select_band_kernel();
    let macs = h * w * c_out * (weights.inputs + 9);
    let threads = rayon::current_num_threads();
    let bands = if macs < PARALLEL_MIN_MACS || threads < 2 {
        1
    } else {
        threads.min(h)
    };
    let band_ranges: Vec<Range<usize>> = (0..bands)
        .map(|b| b * h / bands..(b + 1) * h / bands)
        .collect();
    for (b, out_image) in out.spare_capacity_mut()[..total]
        .chunks_exact_mut(image_len)
        .enumerate()
    {
        let source = image(b);
        let gathers = !matches!(source, Source::Plain(_));
        // Split every channel plane at the band boundaries: band `i` gets its rows of each plane.
        let mut per_band: Vec<Vec<&mut [MaybeUninit<f32>]>> =
            (0..bands).map(|_| Vec::with_capacity(c_out)).collect();
        for plane in out_image.chunks_exact_mut(h * w) {
            let mut rest = plane;
            for (rows, band_out) in band_ranges.iter().zip(per_band.iter_mut()) {
                let (head, tail) = rest.split_at_mut(rows.len() * w);
                band_out.push(head);
                rest = tail;
            }
        }
        let job =
            |scratch: &mut Scratch,
             (rows, mut band_out): (Range<usize>, Vec<&mut [MaybeUninit<f32>]>)| {
                kernel(weights, &plan, source, rows, &mut band_out, scratch);
            };
        if bands == 1 {
            Scratch::with(weights, &plan, gathers, |scratch| {
                band_ranges
                    .iter()
                    .cloned()
                    .zip(per_band)
                    .for_each(|job_args| job(scratch, job_args));
            });
        } else {
            band_ranges
                .clone()
                .into_par_iter()
                .zip(per_band)
                .for_each(|job_args| {
                    Scratch::with(weights, &plan, gathers, |scratch| job(scratch, job_args))
                });
        }
    }
    // SAFETY: the first `total` elements are initialised. Every image is split into bands that
    // cover rows `0..h` (`band_ranges`), each band's slice of every channel plane goes to exactly
    // one `run_band` call, and `run_band` writes every row of its band for every channel in full
    // (`depthwise_row` writes all `w` columns of its row). Had any of it panicked, we would not
    // be here and the vector would drop with length 0.
    #[allow(unsafe_code)]
    unsafe {
        out.set_len(total)
    };
    out
}

/// Contiguous f32 values and dims `[N, C, H, W]` of an op argument.
fn nchw<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    what: &str,
) -> Result<(&'a [f32], [usize; 4])> {
    let data = super::input_slice(storage, layout, "unit", what)?;
    let &[n, c, h, w] = layout.dims() else {
        bail!("unit: {what} must be NCHW, got {:?}", layout.dims())
    };
    Ok((data, [n, c, h, w]))
}

struct UnitOp<'a> {
    weights: &'a UnitWeights,
    input: UnitInput,
    /// When set, the op's input is the stem's input and the unit reads the stem's output.
    stem: Option<&'a StemWeights>,
}

impl CustomOp1 for UnitOp<'_> {
    fn name(&self) -> &'static str {
        "depthwise-pointwise-unit"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, [n, c, src_h, src_w]) = nchw(storage, layout, "input")?;
        let (h, w) = match (self.stem, self.input) {
            (Some(stem), _) => {
                check_stem(stem, self.weights, c)?;
                // 3x3, stride 2, padding 1.
                (src_h.div_ceil(2), src_w.div_ceil(2))
            }
            (None, UnitInput::Plain) => (src_h, src_w),
            (None, UnitInput::MaxPool2) => (src_h / 2, src_w / 2),
        };
        if self.stem.is_none() {
            check_channels(self.weights, c)?;
        }
        let image_len = c * src_h * src_w;
        let (input, stem) = (self.input, self.stem);
        let out = run_unit(self.weights, n, h, w, |b| {
            let x = &x[b * image_len..(b + 1) * image_len];
            match (stem, input) {
                (Some(stem), _) => Source::Stem {
                    x,
                    src_h,
                    src_w,
                    stem,
                },
                (None, UnitInput::Plain) => Source::Plain(x),
                (None, UnitInput::MaxPool2) => Source::MaxPool2 { x, src_h, src_w },
            }
        });
        Ok((
            CpuStorage::F32(out),
            Shape::from((n, self.weights.outputs, h, w)),
        ))
    }
}

impl CustomOp2 for UnitOp<'_> {
    fn name(&self) -> &'static str {
        "upsample-add-depthwise-pointwise-unit"
    }

    fn cpu_fwd(
        &self,
        fine: &CpuStorage,
        fine_layout: &Layout,
        coarse: &CpuStorage,
        coarse_layout: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (fine, [n, c, h, w]) = nchw(fine, fine_layout, "fine input")?;
        let (coarse, coarse_dims) = nchw(coarse, coarse_layout, "coarse input")?;
        check_channels(self.weights, c)?;
        if coarse_dims != [n, c, h / 2, w / 2] || h % 2 != 0 || w % 2 != 0 {
            bail!(
                "unit: a 2x upsample of {coarse_dims:?} does not match {:?}",
                [n, c, h, w]
            )
        }
        let (fine_len, coarse_len) = (c * h * w, c * (h / 2) * (w / 2));
        let out = run_unit(self.weights, n, h, w, |b| Source::UpsampleAdd {
            fine: &fine[b * fine_len..(b + 1) * fine_len],
            coarse: &coarse[b * coarse_len..(b + 1) * coarse_len],
        });
        Ok((
            CpuStorage::F32(out),
            Shape::from((n, self.weights.outputs, h, w)),
        ))
    }
}

fn check_stem(stem: &StemWeights, weights: &UnitWeights, channels: usize) -> Result<()> {
    if channels != stem.inputs || stem.outputs != weights.inputs {
        bail!(
            "unit: a stem {} -> {} cannot take {channels} channels into a unit of {} inputs",
            stem.inputs,
            stem.outputs,
            weights.inputs
        )
    }
    Ok(())
}

fn check_channels(weights: &UnitWeights, channels: usize) -> Result<()> {
    if channels != weights.inputs {
        bail!(
            "unit: input has {channels} channels, the weights expect {}",
            weights.inputs
        )
    }
    Ok(())
}

/// The unit on an NCHW f32 tensor read as is or through a 2x2 max-pool.
pub fn depthwise_pointwise_unit(
    x: &Tensor,
    weights: &UnitWeights,
    input: UnitInput,
) -> Result<Tensor> {
    if x.dtype() != DType::F32 || x.rank() != 4 {
        bail!(
            "unit: input must be NCHW f32, got {:?} {:?}",
            x.dtype(),
            x.dims()
        )
    }
    check_channels(weights, x.dim(1)?)?;
    x.contiguous()?.apply_op1_no_bwd(&UnitOp {
        weights,
        input,
        stem: None,
    })
}

/// The unit on `relu(stem(x))`, the stem's output computed a few rows at a time and never
/// stored in full.
pub fn stem_depthwise_pointwise_unit(
    x: &Tensor,
    stem: &StemWeights,
    weights: &UnitWeights,
) -> Result<Tensor> {
    if x.dtype() != DType::F32 || x.rank() != 4 {
        bail!(
            "unit: input must be NCHW f32, got {:?} {:?}",
            x.dtype(),
            x.dims()
        )
    }
    check_stem(stem, weights, x.dim(1)?)?;
    x.contiguous()?.apply_op1_no_bwd(&UnitOp {
        weights,
        input: UnitInput::Plain,
        stem: Some(stem),
    })
}

/// The unit on `fine + upsample2(coarse)` (2x nearest-neighbour upsampling, as ONNX `Resize`
/// nearest), without materialising the upsampled or summed map.
pub fn upsample_add_depthwise_pointwise_unit(
    coarse: &Tensor,
    fine: &Tensor,
    weights: &UnitWeights,
) -> Result<Tensor> {
    if fine.dtype() != DType::F32 || coarse.dtype() != DType::F32 {
        bail!("unit: inputs must be f32")
    }
    fine.contiguous()?.apply_op2_no_bwd(
        &coarse.contiguous()?,
        &UnitOp {
            weights,
            input: UnitInput::Plain,
            stem: None,
        },
    )
}
