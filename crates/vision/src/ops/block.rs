//! Whole inverted-bottleneck blocks (and MiniFASNet's classifier head) as one candle op each,
//! over plain f32 buffers.
//!
//! On MiniFASNet's 80x80 input the maps are 40x40 down to 5x5 and a block is a few hundred
//! thousand multiply-adds: run as separate candle ops, every 1x1 convolution, depthwise
//! convolution, residual add and squeeze-excitation step paid for a fresh zero-filled tensor,
//! dispatch and a thread fork, which cost more than the arithmetic. Here a block is one op: the
//! 1x1 expansion (with bias + PReLU) writes into a scratch map, the depthwise 3x3 (with bias +
//! PReLU) reads it plane by plane, and the 1x1 projection adds the bias and the residual as it
//! writes the block's only output tensor.
//!
//! With two or more rayon threads a large enough block is split in two once per step: the
//! expansion and depthwise by channel (each half owns its channels, no halo), the projection by
//! output channel.

use std::cell::Cell;
use std::ops::Range;

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor, bail};

use super::depthwise::PlaneDepthwise;
use super::gemm::{Epilogue, PackedMatrix, matmul_into};
use super::input_slice;

/// Below this many multiply-adds a step runs on the calling thread. A rayon fork/join costs a
/// few microseconds on an idle machine and far more when the other core is busy (measured on the
/// shared 2-core machine: splitting every step above 128K made two threads slower than one), so
/// only the big steps (about ten per network, two thirds of the arithmetic) are split.
const PARALLEL_MIN_MACS: usize = 1 << 20;

thread_local! {
    /// The expanded map and the depthwise output of a block, kept between calls: zero-filling
    /// fresh ones for every block cost more than some blocks' arithmetic. Taken out of the cell
    /// while in use, so a nested call on the same thread (rayon may run another job here while a
    /// join waits) allocates its own instead of sharing.
    static EXPANDED: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    static HIDDEN: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// Grows a scratch buffer to at least `len` (every value read is written first, so the old
/// contents do not matter).
fn grow(buf: &mut Vec<f32>, len: usize) {
    if buf.len() < len {
        buf.resize(len, 0.0);
    }
}

/// The values of a small weight tensor, checking the element count.
fn values(t: &Tensor, len: usize, what: &str) -> Result<Vec<f32>> {
    if t.dtype() != DType::F32 {
        bail!("{what} must be f32, got {:?}", t.dtype())
    }
    if t.elem_count() != len {
        bail!("{what} must hold {len} values, got shape {:?}", t.dims())
    }
    t.flatten_all()?.to_vec1::<f32>()
}

/// A 1x1 convolution's weight (`[O, I]` or `[O, I, 1, 1]`) packed for [`matmul_into`].
fn packed(t: &Tensor, what: &str) -> Result<PackedMatrix> {
    let (rows, depth) = match *t.dims() {
        [o, i] | [o, i, 1, 1] => (o, i),
        _ => bail!("{what} must be [O, I] or [O, I, 1, 1], got {:?}", t.dims()),
    };
    let v = values(t, rows * depth, what)?;
    match PackedMatrix::new(&v, rows, depth) {
        Some(m) => Ok(m),
        None => bail!("{what}: {} values for [{rows}, {depth}]", v.len()),
    }
}

/// Whether a step of `macs` multiply-adds is worth splitting over two threads.
fn split_worth_it(macs: usize, tiles: usize) -> bool {
    tiles >= 2 && macs >= PARALLEL_MIN_MACS && rayon::current_num_threads() >= 2
}

/// The weights of one bottleneck, BatchNorms already folded (each bias is per output channel).
#[derive(Debug, Clone, Copy)]
pub struct BottleneckWeights<'a> {
    /// 1x1 expansion `[E, C]` (or `[E, C, 1, 1]`), its bias and PReLU slope (`[E]` each).
    pub expand: &'a Tensor,
    pub expand_bias: &'a Tensor,
    pub expand_alpha: &'a Tensor,
    /// Depthwise `[E, 1, k, k]` (padding `k / 2`), its bias and PReLU slope.
    pub depthwise: &'a Tensor,
    pub depthwise_bias: &'a Tensor,
    pub depthwise_alpha: &'a Tensor,
    pub stride: usize,
    /// 1x1 projection `[O, E]` (or `[O, E, 1, 1]`) and its bias; no activation.
    pub project: &'a Tensor,
    pub project_bias: &'a Tensor,
    /// Squeeze-excitation on the projected map, before the residual add.
    pub squeeze_excitation: Option<SqueezeExcitationWeights<'a>>,
    /// Adds the block's input to its output (needs `O == C` and stride 1).
    pub residual: bool,
}

/// Squeeze-excitation weights: `reduce` `[R, O]` + bias + ReLU, `expand` `[O, R]` + bias,
/// sigmoid (1x1 convolutions on the pooled vector, written as matrices).
#[derive(Debug, Clone, Copy)]
pub struct SqueezeExcitationWeights<'a> {
    pub reduce: &'a Tensor,
    pub reduce_bias: &'a Tensor,
    pub expand: &'a Tensor,
    pub expand_bias: &'a Tensor,
}

#[derive(Debug, Clone)]
struct SqueezeExcitation {
    hidden: usize,
    /// `[hidden, channels]` row-major.
    reduce: Vec<f32>,
    reduce_bias: Vec<f32>,
    /// `[channels, hidden]` row-major.
    expand: Vec<f32>,
    expand_bias: Vec<f32>,
}

impl SqueezeExcitation {
    fn new(w: &SqueezeExcitationWeights<'_>, channels: usize) -> Result<Self> {
        let hidden = match *w.reduce.dims() {
            [r, c] | [r, c, 1, 1] if c == channels => r,
            _ => bail!(
                "squeeze-excitation reduce must be [R, {channels}], got {:?}",
                w.reduce.dims()
            ),
        };
        Ok(Self {
            hidden,
            reduce: values(w.reduce, hidden * channels, "squeeze-excitation reduce")?,
            reduce_bias: values(w.reduce_bias, hidden, "squeeze-excitation reduce bias")?,
            expand: values(w.expand, channels * hidden, "squeeze-excitation expand")?,
            expand_bias: values(w.expand_bias, channels, "squeeze-excitation expand bias")?,
        })
    }

    /// `out = out * gate(out) + residual` (`residual` when the block has one), per channel.
    fn apply(&self, out: &mut [f32], residual: Option<&[f32]>, plane: usize) {
        let channels = self.expand_bias.len();
        let pooled: Vec<f32> = out
            .chunks_exact(plane)
            .map(|p| p.iter().sum::<f32>() / plane as f32)
            .collect();
        let hidden: Vec<f32> = self
            .reduce
            .chunks_exact(channels)
            .zip(&self.reduce_bias)
            .map(|(row, b)| (b + dot(row, &pooled)).max(0.0))
            .collect();
        for (c, p) in out.chunks_exact_mut(plane).enumerate() {
            let row = &self.expand[c * self.hidden..(c + 1) * self.hidden];
            let z = self.expand_bias[c] + dot(row, &hidden);
            let gate = 1.0 / (1.0 + (-z).exp());
            match residual {
                Some(r) => {
                    for (v, r) in p.iter_mut().zip(&r[c * plane..(c + 1) * plane]) {
                        *v = *v * gate + r;
                    }
                }
                None => p.iter_mut().for_each(|v| *v *= gate),
            }
        }
    }
}

/// Dot product with eight partial sums, so the compiler can vectorise it (a single running sum
/// must add in order and stays scalar, which made the 512 -> 128 linear layer cost 0.1 ms).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let (a_blocks, a_rest) = a[..n].as_chunks::<8>();
    let (b_blocks, b_rest) = b[..n].as_chunks::<8>();
    let mut sums = [0.0f32; 8];
    for (a, b) in a_blocks.iter().zip(b_blocks) {
        for i in 0..8 {
            sums[i] += a[i] * b[i];
        }
    }
    let tail: f32 = a_rest.iter().zip(b_rest).map(|(a, b)| a * b).sum();
    sums.iter().sum::<f32>() + tail
}

/// An inverted bottleneck (1x1 expand + PReLU, depthwise + PReLU, 1x1 project, optional
/// squeeze-excitation, optional residual add) as one op; see the module docs.
#[derive(Debug, Clone)]
pub struct FusedBottleneck {
    expand: PackedMatrix,
    expand_bias: Vec<f32>,
    expand_alpha: Vec<f32>,
    /// `[E, k * k]`.
    depthwise: Vec<f32>,
    depthwise_bias: Vec<f32>,
    depthwise_alpha: Vec<f32>,
    kernel: usize,
    stride: usize,
    project: PackedMatrix,
    project_bias: Vec<f32>,
    squeeze_excitation: Option<SqueezeExcitation>,
    residual: bool,
}

impl FusedBottleneck {
    /// Copies and packs the weights; fails on inconsistent shapes.
    pub fn new(w: &BottleneckWeights<'_>) -> Result<Self> {
        let expand = packed(w.expand, "bottleneck expand")?;
        let (channels, expanded) = (expand.depth(), expand.rows());
        let kernel = match *w.depthwise.dims() {
            [e, 1, k, k2] if e == expanded && k == k2 && k % 2 == 1 => k,
            _ => bail!(
                "bottleneck depthwise must be [{expanded}, 1, k, k] with odd k, got {:?}",
                w.depthwise.dims()
            ),
        };
        if w.stride == 0 {
            bail!("bottleneck stride must be at least 1")
        }
        let project = packed(w.project, "bottleneck project")?;
        if project.depth() != expanded {
            bail!(
                "bottleneck project takes {} channels, the expansion gives {expanded}",
                project.depth()
            )
        }
        let out_channels = project.rows();
        if w.residual && (out_channels != channels || w.stride != 1) {
            bail!(
                "a residual bottleneck needs stride 1 and as many outputs as inputs ({channels}), \
                 got stride {} and {out_channels}",
                w.stride
            )
        }
        let squeeze_excitation = match &w.squeeze_excitation {
            Some(se) => Some(SqueezeExcitation::new(se, out_channels)?),
            None => None,
        };
        Ok(Self {
            expand_bias: values(w.expand_bias, expanded, "bottleneck expand bias")?,
            expand_alpha: values(w.expand_alpha, expanded, "bottleneck expand PReLU slope")?,
            depthwise: values(
                w.depthwise,
                expanded * kernel * kernel,
                "bottleneck depthwise",
            )?,
            depthwise_bias: values(w.depthwise_bias, expanded, "bottleneck depthwise bias")?,
            depthwise_alpha: values(
                w.depthwise_alpha,
                expanded,
                "bottleneck depthwise PReLU slope",
            )?,
            expand,
            kernel,
            stride: w.stride,
            project_bias: values(w.project_bias, out_channels, "bottleneck project bias")?,
            project,
            squeeze_excitation,
            residual: w.residual,
        })
    }

    /// The block on an NCHW f32 map with the expansion's input channel count.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, channels, h, w) = x.dims4()?;
        if x.dtype() != DType::F32 || channels != self.expand.depth() {
            bail!(
                "bottleneck expects f32 [N, {}, H, W], got {:?} {:?}",
                self.expand.depth(),
                x.dtype(),
                x.dims()
            )
        }
        // Validates the spatial size against the kernel before touching storage.
        PlaneDepthwise::new(h, w, self.kernel, self.stride, self.kernel / 2)?;
        x.contiguous()?.apply_op1_no_bwd(self)
    }

    /// Expansion then depthwise for the expanded channels of weight tiles `tiles`; `expanded`
    /// and `hidden` hold exactly those channels' planes.
    fn expand_and_depthwise(
        &self,
        x: &[f32],
        plane: usize,
        tiles: Range<usize>,
        expanded: &mut [f32],
        hidden: &mut [f32],
        dw: &mut PlaneDepthwise,
    ) {
        let first = self.expand.tile_start_row(tiles.start);
        let epilogue = Epilogue {
            bias: &self.expand_bias,
            alpha: Some(&self.expand_alpha),
            residual: None,
        };
        matmul_into(
            &self.expand,
            tiles,
            x,
            plane,
            plane,
            expanded,
            plane,
            epilogue,
        );
        let out_plane = dw.out_h() * dw.out_w();
        let taps = self.kernel * self.kernel;
        for (i, (input, out)) in expanded
            .chunks_exact(plane)
            .zip(hidden.chunks_exact_mut(out_plane))
            .enumerate()
        {
            let c = first + i;
            dw.run(
                input,
                &self.depthwise[c * taps..(c + 1) * taps],
                self.depthwise_bias[c],
                Some(self.depthwise_alpha[c]),
                out,
            );
        }
    }

    /// Projection of output-channel tiles `tiles` into `out` (those channels' planes), adding
    /// `residual` (the same channels of the block input) when given.
    fn project_into(
        &self,
        hidden: &[f32],
        plane: usize,
        tiles: Range<usize>,
        out: &mut [f32],
        residual: Option<&[f32]>,
    ) {
        let epilogue = Epilogue {
            bias: &self.project_bias,
            alpha: None,
            residual,
        };
        matmul_into(
            &self.project,
            tiles,
            hidden,
            plane,
            plane,
            out,
            plane,
            epilogue,
        );
    }

    /// One image: `x` is `[C, h, w]`, `out` is `[O, out_h, out_w]`; `dw` is set up for `h x w`.
    fn run_image(
        &self,
        x: &[f32],
        (h, w): (usize, usize),
        expanded: &mut [f32],
        hidden: &mut [f32],
        out: &mut [f32],
        dw: &mut PlaneDepthwise,
    ) -> Result<()> {
        let plane = h * w;
        let pad = self.kernel / 2;
        let out_plane = dw.out_h() * dw.out_w();
        let (channels, expanded_channels) = (self.expand.depth(), self.expand.rows());

        let tiles = self.expand.tile_count();
        let macs = expanded_channels * (channels * plane + self.kernel * self.kernel * out_plane);
        if split_worth_it(macs, tiles) {
            let mid = tiles / 2;
            let row = self.expand.tile_start_row(mid);
            let (e0, e1) = expanded.split_at_mut(row * plane);
            let (h0, h1) = hidden.split_at_mut(row * out_plane);
            let mut dw1 = PlaneDepthwise::new(h, w, self.kernel, self.stride, pad)?;
            rayon::join(
                || self.expand_and_depthwise(x, plane, 0..mid, e0, h0, dw),
                || self.expand_and_depthwise(x, plane, mid..tiles, e1, h1, &mut dw1),
            );
        } else {
            self.expand_and_depthwise(x, plane, 0..tiles, expanded, hidden, dw);
        }

        // The residual rides in the projection's epilogue unless squeeze-excitation must scale
        // the projection first.
        let fused_residual = self.residual && self.squeeze_excitation.is_none();
        let tiles = self.project.tile_count();
        let macs = self.project.rows() * expanded_channels * out_plane;
        if split_worth_it(macs, tiles) {
            let mid = tiles / 2;
            let row = self.project.tile_start_row(mid);
            let (o0, o1) = out.split_at_mut(row * out_plane);
            let (r0, r1) = if fused_residual {
                let (r0, r1) = x.split_at(row * out_plane);
                (Some(r0), Some(r1))
            } else {
                (None, None)
            };
            rayon::join(
                || self.project_into(hidden, out_plane, 0..mid, o0, r0),
                || self.project_into(hidden, out_plane, mid..tiles, o1, r1),
            );
        } else {
            let residual = fused_residual.then_some(x);
            self.project_into(hidden, out_plane, 0..tiles, out, residual);
        }
        if let Some(se) = &self.squeeze_excitation {
            se.apply(out, self.residual.then_some(x), out_plane);
        }
        Ok(())
    }
}

impl CustomOp1 for FusedBottleneck {
    fn name(&self) -> &'static str {
        "fused-bottleneck"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = input_slice(storage, layout, "bottleneck", "input")?;
        let (batch, channels, h, w) = layout.shape().dims4()?;
        let mut dw = PlaneDepthwise::new(h, w, self.kernel, self.stride, self.kernel / 2)?;
        let (out_h, out_w) = (dw.out_h(), dw.out_w());
        let out_channels = self.project.rows();
        let (plane, out_plane) = (h * w, out_h * out_w);
        let mut out = vec![0.0f32; batch * out_channels * out_plane];
        if plane > 0 && out_plane > 0 && batch > 0 {
            let (mut expanded_buf, mut hidden_buf) = (EXPANDED.take(), HIDDEN.take());
            grow(&mut expanded_buf, self.expand.rows() * plane);
            grow(&mut hidden_buf, self.expand.rows() * out_plane);
            let expanded = &mut expanded_buf[..self.expand.rows() * plane];
            let hidden = &mut hidden_buf[..self.expand.rows() * out_plane];
            let mut result = Ok(());
            for (image, out) in out.chunks_exact_mut(out_channels * out_plane).enumerate() {
                let x = &x[image * channels * plane..(image + 1) * channels * plane];
                result = self.run_image(x, (h, w), expanded, hidden, out, &mut dw);
                if result.is_err() {
                    break;
                }
            }
            EXPANDED.set(expanded_buf);
            HIDDEN.set(hidden_buf);
            result?;
        }
        Ok((
            CpuStorage::F32(out),
            Shape::from((batch, out_channels, out_h, out_w)),
        ))
    }
}

/// The weights of MiniFASNet's head, BatchNorms folded.
#[derive(Debug, Clone, Copy)]
pub struct HeadWeights<'a> {
    /// 1x1 convolution `[F, C]` (or `[F, C, 1, 1]`) with bias and PReLU slope.
    pub pointwise: &'a Tensor,
    pub pointwise_bias: &'a Tensor,
    pub pointwise_alpha: &'a Tensor,
    /// Depthwise `[F, 1, k, k]` over the whole `k x k` map (no padding) and its bias.
    pub global_depthwise: &'a Tensor,
    pub global_depthwise_bias: &'a Tensor,
    /// Linear `[D, F]` and its bias (the folded BatchNorm1d).
    pub embedding: &'a Tensor,
    pub embedding_bias: &'a Tensor,
    /// Linear `[K, D]`, no bias.
    pub classifier: &'a Tensor,
}

/// MiniFASNet's head as one op: 1x1 conv + PReLU, the `k x k` "global" depthwise conv that
/// reduces the map to one value per channel, linear + bias, linear: `[N, C, k, k]` -> `[N, K]`.
#[derive(Debug, Clone)]
pub struct FusedHead {
    pointwise: PackedMatrix,
    pointwise_bias: Vec<f32>,
    pointwise_alpha: Vec<f32>,
    side: usize,
    /// `[F, k * k]`.
    global_depthwise: Vec<f32>,
    global_depthwise_bias: Vec<f32>,
    /// `[D, F]`.
    embedding: Vec<f32>,
    embedding_bias: Vec<f32>,
    /// `[K, D]`.
    classifier: Vec<f32>,
    classes: usize,
}

impl FusedHead {
    pub fn new(w: &HeadWeights<'_>) -> Result<Self> {
        let pointwise = packed(w.pointwise, "head pointwise")?;
        let features = pointwise.rows();
        let side = match *w.global_depthwise.dims() {
            [f, 1, k, k2] if f == features && k == k2 && k > 0 => k,
            _ => bail!(
                "head depthwise must be [{features}, 1, k, k], got {:?}",
                w.global_depthwise.dims()
            ),
        };
        let (dim, classes) = match (w.embedding.dims(), w.classifier.dims()) {
            (&[d, f], &[k, d2]) if f == features && d == d2 => (d, k),
            (e, c) => {
                bail!("head linear layers must be [D, {features}] and [K, D], got {e:?} and {c:?}")
            }
        };
        Ok(Self {
            pointwise_bias: values(w.pointwise_bias, features, "head pointwise bias")?,
            pointwise_alpha: values(w.pointwise_alpha, features, "head PReLU slope")?,
            pointwise,
            side,
            global_depthwise: values(w.global_depthwise, features * side * side, "head depthwise")?,
            global_depthwise_bias: values(
                w.global_depthwise_bias,
                features,
                "head depthwise bias",
            )?,
            embedding: values(w.embedding, dim * features, "head embedding")?,
            embedding_bias: values(w.embedding_bias, dim, "head embedding bias")?,
            classifier: values(w.classifier, classes * dim, "head classifier")?,
            classes,
        })
    }

    /// Logits `[N, K]` for an f32 map `[N, C, k, k]`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, channels, h, w) = x.dims4()?;
        if x.dtype() != DType::F32
            || channels != self.pointwise.depth()
            || (h, w) != (self.side, self.side)
        {
            bail!(
                "head expects f32 [N, {}, {}, {}], got {:?} {:?}",
                self.pointwise.depth(),
                self.side,
                self.side,
                x.dtype(),
                x.dims()
            )
        }
        x.contiguous()?.apply_op1_no_bwd(self)
    }

    fn pointwise_into(&self, x: &[f32], tiles: Range<usize>, out: &mut [f32]) {
        let plane = self.side * self.side;
        let epilogue = Epilogue {
            bias: &self.pointwise_bias,
            alpha: Some(&self.pointwise_alpha),
            residual: None,
        };
        matmul_into(
            &self.pointwise,
            tiles,
            x,
            plane,
            plane,
            out,
            plane,
            epilogue,
        );
    }
}

impl CustomOp1 for FusedHead {
    fn name(&self) -> &'static str {
        "fused-head"
    }

    fn cpu_fwd(&self, storage: &CpuStorage, layout: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = input_slice(storage, layout, "head", "input")?;
        let (batch, channels, _, _) = layout.shape().dims4()?;
        let plane = self.side * self.side;
        let features = self.pointwise.rows();
        let mut map = vec![0.0f32; features * plane];
        let mut logits = Vec::with_capacity(batch * self.classes);
        for image in 0..batch {
            let x = &x[image * channels * plane..(image + 1) * channels * plane];
            let tiles = self.pointwise.tile_count();
            if split_worth_it(features * channels * plane, tiles) {
                let mid = tiles / 2;
                let (m0, m1) = map.split_at_mut(self.pointwise.tile_start_row(mid) * plane);
                rayon::join(
                    || self.pointwise_into(x, 0..mid, m0),
                    || self.pointwise_into(x, mid..tiles, m1),
                );
            } else {
                self.pointwise_into(x, 0..tiles, &mut map);
            }
            let pooled: Vec<f32> = map
                .chunks_exact(plane)
                .zip(self.global_depthwise.chunks_exact(plane))
                .zip(&self.global_depthwise_bias)
                .map(|((m, taps), b)| b + dot(m, taps))
                .collect();
            let embedding: Vec<f32> = self
                .embedding
                .chunks_exact(features)
                .zip(&self.embedding_bias)
                .map(|(row, b)| b + dot(row, &pooled))
                .collect();
            let dim = embedding.len();
            logits.extend(
                self.classifier
                    .chunks_exact(dim)
                    .map(|row| dot(row, &embedding)),
            );
        }
        Ok((CpuStorage::F32(logits), Shape::from((batch, self.classes))))
    }
}
