//! Kernels that candle lacks or runs too slowly for these networks.
//!
//! - [`depthwise_conv2d`] / [`depthwise_conv2d_prelu`]: depthwise convolution (candle's grouped
//!   convolution runs one tiny convolution per channel: 100x slower on SFace's layers).
//! - [`pointwise_conv2d`]: 1x1 convolution as one matrix product with the bias and PReLU applied
//!   in place; [`conv2d_bias_prelu`] for dense convolutions; [`bias_prelu`] on its own.

mod depthwise;
mod pointwise;

pub use depthwise::{depthwise_conv2d, depthwise_conv2d_prelu};
pub use pointwise::{bias_prelu, conv2d_bias_prelu, pointwise_conv2d};

#[cfg(test)]
mod tests;
