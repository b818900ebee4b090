//! A small matrix product `weights x activations` for the 1x1 convolutions of tiny feature maps,
//! with the per-row bias, PReLU and residual add applied as each tile is written.
//!
//! MiniFASNet's 1x1 convolutions are `[13..512, 13..308] x [13..308, 25..1600]`: candle's matmul
//! spends more time on dispatch, its own packing and the separate epilogue pass than on the
//! arithmetic at these sizes. Here the weights are packed once at load time into tiles of
//! [`TILE_ROWS`] rows (depth-major, so the micro-kernel reads them sequentially), and the
//! activations are packed [`TILE_COLS`] columns at a time into an L1-sized panel reused by every
//! weight tile. The micro-kernel keeps a `6 x 16` block of sums in twelve AVX registers (the
//! compiler keeps the fixed-size array in registers); on x86-64 an AVX2+FMA copy is chosen at run
//! time.

use std::cell::Cell;
use std::ops::Range;

/// Rows of a packed weight tile: the micro-kernel's height.
pub(crate) const TILE_ROWS: usize = 6;
/// Columns of an activation panel: the micro-kernel's width (two AVX vectors).
pub(crate) const TILE_COLS: usize = 16;

/// A `[rows, depth]` row-major matrix packed into `ceil(rows / TILE_ROWS)` tiles, each
/// `depth x TILE_ROWS` (column `k` of the tile's rows is contiguous); the rows past `rows` in the
/// last tile are zero.
#[derive(Debug, Clone)]
pub(crate) struct PackedMatrix {
    rows: usize,
    depth: usize,
    tiles: Vec<f32>,
}

impl PackedMatrix {
    /// Packs a row-major `[rows, depth]` matrix; `values.len()` must be `rows * depth`.
    pub(crate) fn new(values: &[f32], rows: usize, depth: usize) -> Option<Self> {
        if values.len() != rows * depth {
            return None;
        }
        let tile_count = rows.div_ceil(TILE_ROWS);
        let mut tiles = vec![0.0; tile_count * depth * TILE_ROWS];
        for (t, tile) in tiles.chunks_exact_mut(depth * TILE_ROWS).enumerate() {
            for (k, column) in tile.chunks_exact_mut(TILE_ROWS).enumerate() {
                for (i, v) in column.iter_mut().enumerate() {
                    let row = t * TILE_ROWS + i;
                    if row < rows {
                        *v = values[row * depth + k];
                    }
                }
            }
        }
        Some(Self { rows, depth, tiles })
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn depth(&self) -> usize {
        self.depth
    }

    /// Number of row tiles.
    pub(crate) fn tile_count(&self) -> usize {
        self.rows.div_ceil(TILE_ROWS)
    }

    /// The first row of tile `t` (clamped to `rows`): where a split at tile `t` cuts the output.
    pub(crate) fn tile_start_row(&self, t: usize) -> usize {
        (t * TILE_ROWS).min(self.rows)
    }
}

/// What happens to each sum as it is written: `prelu(sum + bias[row]) + residual`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Epilogue<'a> {
    /// One value per matrix row (indexed by the global row).
    pub bias: &'a [f32],
    /// PReLU slope per matrix row; `None` leaves the output linear.
    pub alpha: Option<&'a [f32]>,
    /// Added after the activation; laid out like the output slice (same first row and stride).
    pub residual: Option<&'a [f32]>,
}

/// The output rows `tiles` of `weights x b`: `b` holds `weights.depth()` rows of `cols` values,
/// `b_stride` apart; `out` starts at row `weights.tile_start_row(tiles.start)` and its rows are
/// `out_stride` apart.
#[allow(clippy::too_many_arguments)]
pub(crate) fn matmul_into(
    weights: &PackedMatrix,
    tiles: Range<usize>,
    b: &[f32],
    b_stride: usize,
    cols: usize,
    out: &mut [f32],
    out_stride: usize,
    epilogue: Epilogue<'_>,
) {
    let tiles = tiles.start..tiles.end.min(weights.tile_count());
    if tiles.is_empty() || cols == 0 {
        return;
    }
    let job = Job {
        weights,
        tiles,
        b,
        b_stride,
        cols,
        out_stride,
        epilogue,
    };
    // Taken out of the cell (not borrowed), so a nested call on this thread (rayon may run
    // another job here while a join waits) just allocates its own.
    let mut panel = PANEL.take();
    panel.resize(weights.depth * TILE_COLS, 0.0);
    run(&job, out, &mut panel);
    PANEL.set(panel);
}

thread_local! {
    /// The activation panel, kept between calls.
    static PANEL: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

fn run(job: &Job<'_>, out: &mut [f32], panel: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx2_fma_available() {
            // SAFETY: AVX2 and FMA were just confirmed on the running CPU, the only requirement
            // of `matmul_avx2_fma`, which is itself safe, bounds-checked code.
            #[allow(unsafe_code)]
            unsafe {
                matmul_avx2_fma(job, out, panel)
            };
            return;
        }
    }
    matmul_generic::<false>(job, out, panel);
}

/// The arguments of one product, bundled for the dispatch.
struct Job<'a> {
    weights: &'a PackedMatrix,
    tiles: Range<usize>,
    b: &'a [f32],
    b_stride: usize,
    cols: usize,
    out_stride: usize,
    epilogue: Epilogue<'a>,
}

/// The generic product compiled with AVX2 and FMA enabled (`mul_add` lowers to `vfmadd`).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn matmul_avx2_fma(job: &Job<'_>, out: &mut [f32], panel: &mut [f32]) {
    matmul_generic::<true>(job, out, panel);
}

#[inline(always)]
fn madd<const FMA: bool>(a: f32, b: f32, acc: f32) -> f32 {
    // Without hardware FMA `mul_add` is a slow libm call.
    if FMA { a.mul_add(b, acc) } else { acc + a * b }
}

#[inline(always)]
fn matmul_generic<const FMA: bool>(job: &Job<'_>, out: &mut [f32], panel: &mut [f32]) {
    let w = job.weights;
    let depth = w.depth;
    let first_row = w.tile_start_row(job.tiles.start);
    let panel = &mut panel[..depth * TILE_COLS];
    let mut col0 = 0;
    while col0 < job.cols {
        let width = (job.cols - col0).min(TILE_COLS);
        pack_panel(job.b, job.b_stride, col0, width, panel);
        for t in job.tiles.clone() {
            let tile = &w.tiles[t * depth * TILE_ROWS..(t + 1) * depth * TILE_ROWS];
            let sums = tile_product::<FMA>(tile, panel);
            let row0 = t * TILE_ROWS;
            let live_rows = (w.rows - row0).min(TILE_ROWS);
            for (i, sums) in sums.iter().enumerate().take(live_rows) {
                let row = row0 + i;
                let offset = (row - first_row) * job.out_stride + col0;
                let out_row = &mut out[offset..offset + width];
                let e = &job.epilogue;
                let bias = e.bias[row];
                let sums = &sums[..width];
                match (e.alpha, e.residual) {
                    (None, None) => {
                        for (o, s) in out_row.iter_mut().zip(sums) {
                            *o = s + bias;
                        }
                    }
                    (Some(alpha), None) => {
                        let alpha = alpha[row];
                        for (o, s) in out_row.iter_mut().zip(sums) {
                            let v = s + bias;
                            *o = if v >= 0.0 { v } else { v * alpha };
                        }
                    }
                    (alpha, Some(residual)) => {
                        let alpha = alpha.map(|a| a[row]);
                        let residual = &residual[offset..offset + width];
                        for ((o, s), r) in out_row.iter_mut().zip(sums).zip(residual) {
                            let v = s + bias;
                            let v = match alpha {
                                Some(alpha) if v < 0.0 => v * alpha,
                                _ => v,
                            };
                            *o = v + r;
                        }
                    }
                }
            }
        }
        col0 += width;
    }
}

/// Copies columns `col0..col0 + width` of every row of `b` into `panel` (`TILE_COLS` per row),
/// zero-filling the columns past `width`. Full panels copy fixed-size arrays so the compiler
/// emits two vector moves per row instead of a `memcpy` call.
#[inline(always)]
fn pack_panel(b: &[f32], b_stride: usize, col0: usize, width: usize, panel: &mut [f32]) {
    let (rows, _) = panel.as_chunks_mut::<TILE_COLS>();
    for (k, dst) in rows.iter_mut().enumerate() {
        let src = &b[k * b_stride + col0..k * b_stride + col0 + width];
        match <&[f32; TILE_COLS]>::try_from(src) {
            Ok(full) => *dst = *full,
            Err(_) => {
                for (i, d) in dst.iter_mut().enumerate() {
                    *d = src.get(i).copied().unwrap_or(0.0);
                }
            }
        }
    }
}

/// `tile (depth x TILE_ROWS) ^T x panel (depth x TILE_COLS)`: the sums stay in registers.
#[inline(always)]
fn tile_product<const FMA: bool>(tile: &[f32], panel: &[f32]) -> [[f32; TILE_COLS]; TILE_ROWS] {
    let mut sums = [[0.0f32; TILE_COLS]; TILE_ROWS];
    let (a_columns, _) = tile.as_chunks::<TILE_ROWS>();
    let (b_rows, _) = panel.as_chunks::<TILE_COLS>();
    for (a, b) in a_columns.iter().zip(b_rows) {
        for (i, row) in sums.iter_mut().enumerate() {
            for (s, &bv) in row.iter_mut().zip(b) {
                *s = madd::<FMA>(a[i], bv, *s);
            }
        }
    }
    sums
}
