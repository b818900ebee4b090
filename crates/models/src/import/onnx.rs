//! ONNX importer: the weights of an ONNX graph as named fp32 candle tensors.
//!
//! Only the subset of `onnx.proto` that carries weights is decoded (hand-written prost messages, so
//! no build script and no protoc). Every other field is skipped by the decoder.
//!
//! # Block-quantized weights
//! The upstream YuNet and SFace files are int8 block-quantized (opset 21): each Conv/Gemm weight is
//! the output of a `DequantizeLinear` node over an int8 initializer, its scales (one per block of
//! `block_size` elements along `axis`) and optional zero points. The importer folds each such node:
//! `w = (q - zero_point) * scale` computed in f32, so a network sees plain fp32 weights. Per-tensor
//! and per-axis quantization (`block_size == 0`) are folded the same way.
//!
//! # Naming
//! Initializer names in these files are mostly numbers, so tensors are named by the node that
//! consumes them, in graph order: `<op><k>.<role>`, where `<op>` is the node's op type in lower case,
//! `<k>` counts the nodes of that op type from 0 in the order the graph lists them (all of them, with
//! or without constant inputs, so the numbering follows the architecture), and `<role>` names the
//! input:
//!
//! | op                   | roles (by input position)                                           |
//! | -------------------- | ------------------------------------------------------------------- |
//! | `Conv`               | `weight` (`[out, in/groups, kh, kw]`), `bias`                       |
//! | `Gemm`               | `weight` (always `[out, in]`: transposed here when `transB == 0`; `alpha`/`beta` folded in), `bias` |
//! | `MatMul`             | `weight` (the constant operand, as stored)                          |
//! | `BatchNormalization` | `weight`, `bias`, `running_mean`, `running_var`, plus `eps` (a 1-element tensor from the attribute) |
//! | `PRelu`              | `slope`                                                             |
//! | anything else        | `input<i>` (i = input position), e.g. `sub0.input1` for a constant subtrahend |
//!
//! Only floating-point constants are emitted (integer constants such as reshape targets are graph
//! plumbing, not weights). So the first convolution's weight is `conv0.weight`, the fourth PReLU's
//! slope is `prelu3.slope`.

use std::collections::HashMap;

use candle_core::{Device, Tensor};

/// Why an ONNX file could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum OnnxImportError {
    #[error("not an ONNX model: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("the ONNX model has no graph")]
    MissingGraph,
    #[error("tensor `{name}`: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("tensor `{name}` stores its data outside the file (external data is not supported)")]
    ExternalData { name: String },
    #[error("tensor `{name}` has unsupported data type {data_type}")]
    UnsupportedDataType { name: String, data_type: i32 },
    #[error("node `{node}` ({op_type}): {reason}")]
    BadNode {
        node: String,
        op_type: String,
        reason: String,
    },
    #[error("building tensor `{name}`: {source}")]
    Tensor {
        name: String,
        #[source]
        source: candle_core::Error,
    },
}

/// The subset of `onnx.ModelProto` needed here.
#[derive(Clone, PartialEq, prost::Message)]
struct ModelProto {
    #[prost(message, optional, tag = "7")]
    graph: Option<GraphProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct GraphProto {
    #[prost(message, repeated, tag = "1")]
    node: Vec<NodeProto>,
    #[prost(message, repeated, tag = "5")]
    initializer: Vec<TensorProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct NodeProto {
    #[prost(string, repeated, tag = "1")]
    input: Vec<String>,
    #[prost(string, repeated, tag = "2")]
    output: Vec<String>,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(string, tag = "4")]
    op_type: String,
    #[prost(message, repeated, tag = "5")]
    attribute: Vec<AttributeProto>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct AttributeProto {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(float, tag = "2")]
    f: f32,
    #[prost(int64, tag = "3")]
    i: i64,
    #[prost(bytes = "vec", tag = "4")]
    s: Vec<u8>,
    #[prost(message, optional, tag = "5")]
    t: Option<TensorProto>,
    #[prost(float, repeated, tag = "7")]
    floats: Vec<f32>,
    #[prost(int64, repeated, tag = "8")]
    ints: Vec<i64>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct TensorProto {
    #[prost(int64, repeated, tag = "1")]
    dims: Vec<i64>,
    #[prost(int32, tag = "2")]
    data_type: i32,
    #[prost(float, repeated, tag = "4")]
    float_data: Vec<f32>,
    #[prost(int32, repeated, tag = "5")]
    int32_data: Vec<i32>,
    #[prost(int64, repeated, tag = "7")]
    int64_data: Vec<i64>,
    #[prost(string, tag = "8")]
    name: String,
    #[prost(bytes = "vec", tag = "9")]
    raw_data: Vec<u8>,
    #[prost(double, repeated, tag = "10")]
    double_data: Vec<f64>,
    #[prost(message, repeated, tag = "13")]
    external_data: Vec<StringStringEntryProto>,
    #[prost(int32, tag = "14")]
    data_location: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
struct StringStringEntryProto {
    #[prost(string, tag = "1")]
    key: String,
}

/// `TensorProto.DataType` values this importer reads.
mod data_type {
    pub const FLOAT: i32 = 1;
    pub const UINT8: i32 = 2;
    pub const INT8: i32 = 3;
    pub const INT32: i32 = 6;
    pub const INT64: i32 = 7;
    pub const FLOAT16: i32 = 10;
    pub const DOUBLE: i32 = 11;
}

/// A decoded constant: its shape and values, with integers kept apart from floats so that only
/// floating-point weights are emitted.
#[derive(Debug, Clone)]
struct Constant {
    dims: Vec<usize>,
    values: Values,
}

#[derive(Debug, Clone)]
enum Values {
    Float(Vec<f32>),
    Int(Vec<i64>),
}

impl Values {
    fn len(&self) -> usize {
        match self {
            Values::Float(v) => v.len(),
            Values::Int(v) => v.len(),
        }
    }

    /// All values as f32 (for dequantization, where int8 data and float scales meet).
    fn to_f32(&self) -> Vec<f32> {
        match self {
            Values::Float(v) => v.clone(),
            Values::Int(v) => v.iter().map(|&x| x as f32).collect(),
        }
    }
}

/// Decodes an ONNX model and returns its weights as named fp32 tensors (see the module docs for the
/// naming), in graph order, on the CPU.
pub fn import_onnx(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, OnnxImportError> {
    let model = <ModelProto as prost::Message>::decode(bytes)?;
    let graph = model.graph.ok_or(OnnxImportError::MissingGraph)?;

    let mut constants: HashMap<String, Constant> = HashMap::new();
    for init in &graph.initializer {
        constants.insert(init.name.clone(), decode_tensor(init)?);
    }

    let mut op_counts: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for node in &graph.node {
        match node.op_type.as_str() {
            "Constant" => {
                if let (Some(value), Some(output)) = (attribute_tensor(node), node.output.first()) {
                    constants.insert(output.clone(), decode_tensor(value)?);
                }
                continue;
            }
            "DequantizeLinear" => {
                let folded = fold_dequantize(node, &constants)?;
                if let Some(output) = node.output.first() {
                    constants.insert(output.clone(), folded);
                }
                continue;
            }
            "Reshape" | "Identity" => {
                if let Some(folded) = fold_reshape(node, &constants)? {
                    if let Some(output) = node.output.first() {
                        constants.insert(output.clone(), folded);
                    }
                    continue;
                }
            }
            _ => {}
        }

        let op = node.op_type.to_ascii_lowercase();
        let count = op_counts.entry(op.clone()).or_insert(0);
        let index = *count;
        *count += 1;

        for (position, input) in node.input.iter().enumerate() {
            let Some(constant) = constants.get(input) else {
                continue;
            };
            let Values::Float(values) = &constant.values else {
                continue;
            };
            if values.is_empty() {
                continue;
            }
            let Some(role) = role_name(&node.op_type, position) else {
                continue;
            };
            let name = format!("{op}{index}.{role}");
            let (dims, values) = if node.op_type == "Gemm" {
                gemm_operand(node, position, &constant.dims, values)?
            } else {
                (constant.dims.clone(), values.clone())
            };
            out.push((name.clone(), make_tensor(&name, values, &dims)?));
        }
        if node.op_type == "BatchNormalization" {
            let eps = attribute_f32(node, "epsilon").unwrap_or(1e-5);
            let name = format!("{op}{index}.eps");
            out.push((name.clone(), make_tensor(&name, vec![eps], &[1])?));
        }
    }
    Ok(out)
}

/// The role of a node's input at `position` in the output names, or `None` for the data input.
fn role_name(op_type: &str, position: usize) -> Option<String> {
    let fixed: &[&str] = match op_type {
        "Conv" | "ConvTranspose" | "Gemm" => &["", "weight", "bias"],
        "BatchNormalization" => &["", "weight", "bias", "running_mean", "running_var"],
        "PRelu" => &["", "slope"],
        "MatMul" => &["", "weight"],
        _ => return Some(format!("input{position}")),
    };
    match fixed.get(position) {
        Some(&"") => None,
        Some(role) => Some((*role).to_string()),
        None => Some(format!("input{position}")),
    }
}

/// Puts a Gemm's constant operands in the `[out, in]` / `[out]` layout of a linear layer, with the
/// `alpha` and `beta` factors folded in.
fn gemm_operand(
    node: &NodeProto,
    position: usize,
    dims: &[usize],
    values: &[f32],
) -> Result<(Vec<usize>, Vec<f32>), OnnxImportError> {
    match position {
        1 => {
            let alpha = attribute_f32(node, "alpha").unwrap_or(1.0);
            let trans_b = attribute_i64(node, "transB").unwrap_or(0) != 0;
            let &[rows, cols] = dims else {
                return Err(bad_node(node, format!("Gemm weight has shape {dims:?}")));
            };
            let scaled = values.iter().map(|v| v * alpha);
            if trans_b {
                Ok((vec![rows, cols], scaled.collect()))
            } else {
                // Stored as [in, out]: transpose to [out, in].
                let stored: Vec<f32> = scaled.collect();
                let mut transposed = vec![0.0; stored.len()];
                for r in 0..rows {
                    for c in 0..cols {
                        transposed[c * rows + r] = stored[r * cols + c];
                    }
                }
                Ok((vec![cols, rows], transposed))
            }
        }
        2 => {
            let beta = attribute_f32(node, "beta").unwrap_or(1.0);
            let flat = values.len();
            Ok((vec![flat], values.iter().map(|v| v * beta).collect()))
        }
        _ => Ok((dims.to_vec(), values.to_vec())),
    }
}

/// Folds `Reshape(constant, constant shape)` and `Identity(constant)` (the quantizer reshapes each
/// dequantized 2-D weight back to the convolution's 4-D shape); `None` when the data is not constant.
fn fold_reshape(
    node: &NodeProto,
    constants: &HashMap<String, Constant>,
) -> Result<Option<Constant>, OnnxImportError> {
    let Some(data) = node.input.first().and_then(|name| constants.get(name)) else {
        return Ok(None);
    };
    if node.op_type == "Identity" {
        return Ok(Some(data.clone()));
    }
    let Some(shape) = node.input.get(1).and_then(|name| constants.get(name)) else {
        return Ok(None);
    };
    let Values::Int(target) = &shape.values else {
        return Err(bad_node(
            node,
            "shape input is not an integer tensor".into(),
        ));
    };
    let total = data.values.len();
    let mut dims = Vec::with_capacity(target.len());
    let mut inferred = None;
    for (i, &d) in target.iter().enumerate() {
        match d {
            -1 if inferred.is_none() => {
                inferred = Some(i);
                dims.push(1);
            }
            0 => dims.push(
                *data
                    .dims
                    .get(i)
                    .ok_or_else(|| bad_node(node, format!("shape copies missing dimension {i}")))?,
            ),
            d => dims.push(
                usize::try_from(d)
                    .map_err(|_| bad_node(node, format!("bad target shape {target:?}")))?,
            ),
        }
    }
    let known: usize = dims.iter().product();
    if let Some(i) = inferred {
        if known == 0 || total % known != 0 {
            return Err(bad_node(
                node,
                format!("cannot reshape {:?} to {target:?}", data.dims),
            ));
        }
        dims[i] = total / known;
    }
    if dims.iter().product::<usize>() != total {
        return Err(bad_node(
            node,
            format!("cannot reshape {:?} to {target:?}", data.dims),
        ));
    }
    Ok(Some(Constant {
        dims,
        values: data.values.clone(),
    }))
}

/// Folds `DequantizeLinear(x, scale, zero_point?)` over constants into fp32 values.
fn fold_dequantize(
    node: &NodeProto,
    constants: &HashMap<String, Constant>,
) -> Result<Constant, OnnxImportError> {
    let lookup = |position: usize| -> Result<Option<&Constant>, OnnxImportError> {
        match node.input.get(position) {
            None => Ok(None),
            Some(name) if name.is_empty() => Ok(None),
            Some(name) => constants.get(name).map(Some).ok_or_else(|| {
                bad_node(
                    node,
                    format!("input `{name}` is not a constant (only weights are folded)"),
                )
            }),
        }
    };
    let data = lookup(0)?.ok_or_else(|| bad_node(node, "missing quantized input".into()))?;
    let scale = lookup(1)?.ok_or_else(|| bad_node(node, "missing scale input".into()))?;
    let zero_point = lookup(2)?;

    let rank = data.dims.len();
    let axis_attr = attribute_i64(node, "axis").unwrap_or(1);
    let block_size = attribute_i64(node, "block_size").unwrap_or(0);
    let scale_values = scale.values.to_f32();
    let zero_values = zero_point.map(|z| z.values.to_f32());
    if let Some(z) = &zero_values
        && z.len() != scale_values.len()
    {
        return Err(bad_node(
            node,
            "zero point and scale differ in size".to_string(),
        ));
    }
    let q = data.values.to_f32();

    // Per-tensor: one scale for all.
    if scale_values.len() == 1 && block_size == 0 {
        let s = scale_values[0];
        let z = zero_values.as_ref().map_or(0.0, |z| z[0]);
        let values = q.iter().map(|&x| (x - z) * s).collect();
        return Ok(Constant {
            dims: data.dims.clone(),
            values: Values::Float(values),
        });
    }

    let axis = normalize_axis(axis_attr, rank).ok_or_else(|| {
        bad_node(
            node,
            format!("axis {axis_attr} out of range for rank {rank}"),
        )
    })?;
    let axis_len = data.dims[axis];
    let inner: usize = data.dims[axis + 1..].iter().product();
    let outer: usize = data.dims[..axis].iter().product();

    // Per-axis: a 1-D scale, one per index along `axis`. Blocked: a scale of the data's rank where
    // the element at (outer o, axis a, inner i) uses the scale at (o, a / block_size, i).
    let values = if block_size == 0 {
        if scale_values.len() != axis_len {
            return Err(bad_node(
                node,
                format!(
                    "per-axis scale has {} values for an axis of {axis_len}",
                    scale_values.len()
                ),
            ));
        }
        let mut values = Vec::with_capacity(q.len());
        for o in 0..outer {
            for a in 0..axis_len {
                let s = scale_values[a];
                let z = zero_values.as_ref().map_or(0.0, |z| z[a]);
                let base = (o * axis_len + a) * inner;
                values.extend(q[base..base + inner].iter().map(|&x| (x - z) * s));
            }
        }
        values
    } else {
        let block = usize::try_from(block_size)
            .map_err(|_| bad_node(node, format!("negative block_size {block_size}")))?;
        let blocks = axis_len.div_ceil(block);
        if scale_values.len() != outer * blocks * inner {
            return Err(bad_node(
                node,
                format!(
                    "blocked scale has {} values, expected {} ({blocks} blocks of {block} along axis {axis} of {:?})",
                    scale_values.len(),
                    outer * blocks * inner,
                    data.dims
                ),
            ));
        }
        let mut values = Vec::with_capacity(q.len());
        for o in 0..outer {
            for a in 0..axis_len {
                let scale_row = (o * blocks + a / block) * inner;
                let base = (o * axis_len + a) * inner;
                for i in 0..inner {
                    let s = scale_values[scale_row + i];
                    let z = zero_values.as_ref().map_or(0.0, |z| z[scale_row + i]);
                    values.push((q[base + i] - z) * s);
                }
            }
        }
        values
    };
    Ok(Constant {
        dims: data.dims.clone(),
        values: Values::Float(values),
    })
}

fn normalize_axis(axis: i64, rank: usize) -> Option<usize> {
    let rank_i = i64::try_from(rank).ok()?;
    let axis = if axis < 0 { axis + rank_i } else { axis };
    usize::try_from(axis).ok().filter(|&a| a < rank)
}

fn attribute<'a>(node: &'a NodeProto, name: &str) -> Option<&'a AttributeProto> {
    node.attribute.iter().find(|a| a.name == name)
}

fn attribute_i64(node: &NodeProto, name: &str) -> Option<i64> {
    attribute(node, name).map(|a| a.i)
}

fn attribute_f32(node: &NodeProto, name: &str) -> Option<f32> {
    attribute(node, name).map(|a| a.f)
}

fn attribute_tensor(node: &NodeProto) -> Option<&TensorProto> {
    attribute(node, "value").and_then(|a| a.t.as_ref())
}

fn bad_node(node: &NodeProto, reason: String) -> OnnxImportError {
    OnnxImportError::BadNode {
        node: node.name.clone(),
        op_type: node.op_type.clone(),
        reason,
    }
}

fn make_tensor(name: &str, values: Vec<f32>, dims: &[usize]) -> Result<Tensor, OnnxImportError> {
    Tensor::from_vec(values, dims, &Device::Cpu).map_err(|source| OnnxImportError::Tensor {
        name: name.to_string(),
        source,
    })
}

/// Decodes a `TensorProto`'s values, from `raw_data` (little-endian) or the typed repeated fields.
fn decode_tensor(t: &TensorProto) -> Result<Constant, OnnxImportError> {
    let bad = |reason: String| OnnxImportError::BadTensor {
        name: t.name.clone(),
        reason,
    };
    // DataLocation EXTERNAL = 1.
    if t.data_location == 1 || !t.external_data.is_empty() {
        return Err(OnnxImportError::ExternalData {
            name: t.name.clone(),
        });
    }
    let dims = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| bad(format!("negative dimension {d}"))))
        .collect::<Result<Vec<_>, _>>()?;
    let count = dims
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad("element count overflows".into()))?;
    let raw = &t.raw_data;
    let from_raw = !raw.is_empty();
    let check_raw = |width: usize| -> Result<(), OnnxImportError> {
        match count.checked_mul(width) {
            Some(n) if n == raw.len() => Ok(()),
            _ => Err(bad(format!(
                "raw data has {} bytes for {count} elements of {width} bytes",
                raw.len()
            ))),
        }
    };
    let values = match t.data_type {
        data_type::FLOAT => Values::Float(if from_raw {
            check_raw(4)?;
            raw.chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        } else {
            t.float_data.clone()
        }),
        data_type::DOUBLE => Values::Float(if from_raw {
            check_raw(8)?;
            raw.chunks_exact(8)
                .map(|b| {
                    f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
                })
                .collect()
        } else {
            t.double_data.iter().map(|&v| v as f32).collect()
        }),
        data_type::FLOAT16 => Values::Float(if from_raw {
            check_raw(2)?;
            raw.chunks_exact(2)
                .map(|b| f16_to_f32(u16::from_le_bytes([b[0], b[1]])))
                .collect()
        } else {
            // float16 values are stored as their bit patterns in int32_data.
            t.int32_data.iter().map(|&v| f16_to_f32(v as u16)).collect()
        }),
        data_type::INT8 => Values::Int(if from_raw {
            check_raw(1)?;
            raw.iter().map(|&b| i64::from(b as i8)).collect()
        } else {
            t.int32_data.iter().map(|&v| i64::from(v as i8)).collect()
        }),
        data_type::UINT8 => Values::Int(if from_raw {
            check_raw(1)?;
            raw.iter().map(|&b| i64::from(b)).collect()
        } else {
            t.int32_data.iter().map(|&v| i64::from(v as u8)).collect()
        }),
        data_type::INT32 => Values::Int(if from_raw {
            check_raw(4)?;
            raw.chunks_exact(4)
                .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]])))
                .collect()
        } else {
            t.int32_data.iter().map(|&v| i64::from(v)).collect()
        }),
        data_type::INT64 => Values::Int(if from_raw {
            check_raw(8)?;
            raw.chunks_exact(8)
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]))
                .collect()
        } else {
            t.int64_data.clone()
        }),
        other => {
            return Err(OnnxImportError::UnsupportedDataType {
                name: t.name.clone(),
                data_type: other,
            });
        }
    };
    if values.len() != count {
        return Err(bad(format!(
            "{} values for shape {dims:?} ({count} elements)",
            values.len()
        )));
    }
    Ok(Constant { dims, values })
}

/// IEEE 754 half to single precision (exact; handles subnormals, infinities and NaN).
fn f16_to_f32(bits: u16) -> f32 {
    let sign = u32::from(bits >> 15) << 31;
    let exponent = u32::from((bits >> 10) & 0x1f);
    let mantissa = u32::from(bits & 0x3ff);
    let magnitude = match (exponent, mantissa) {
        (0, 0) => 0,
        (0, m) => {
            // Subnormal: value = m * 2^-24, exactly representable in f32.
            let value = (m as f32) * f32::powi(2.0, -24);
            return if sign == 0 { value } else { -value };
        }
        (0x1f, m) => 0x7f80_0000 | (m << 13),
        (e, m) => ((e + 127 - 15) << 23) | (m << 13),
    };
    f32::from_bits(sign | magnitude)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use prost::Message;

    fn tensor(name: &str, dims: &[i64], data_type: i32, raw_data: Vec<u8>) -> TensorProto {
        TensorProto {
            name: name.into(),
            dims: dims.to_vec(),
            data_type,
            raw_data,
            ..Default::default()
        }
    }

    fn floats(values: &[f32]) -> Vec<u8> {
        values.iter().flat_map(|v| v.to_le_bytes()).collect()
    }

    fn node(
        op_type: &str,
        inputs: &[&str],
        output: &str,
        attribute: Vec<AttributeProto>,
    ) -> NodeProto {
        NodeProto {
            input: inputs.iter().map(|s| (*s).to_string()).collect(),
            output: vec![output.into()],
            name: format!("{op_type}_{output}"),
            op_type: op_type.into(),
            attribute,
        }
    }

    fn int_attribute(name: &str, i: i64) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            i,
            ..Default::default()
        }
    }

    fn model(nodes: Vec<NodeProto>, initializer: Vec<TensorProto>) -> Vec<u8> {
        ModelProto {
            graph: Some(GraphProto {
                node: nodes,
                initializer,
            }),
        }
        .encode_to_vec()
    }

    #[test]
    fn folds_block_quantized_conv_weight_through_reshape() {
        // 2 output channels x 4 inputs, blocks of 2 along axis 1: scales [2, 2].
        let q: Vec<u8> = [1i8, 2, 3, 4, -1, -2, -3, -4]
            .iter()
            .map(|&v| v as u8)
            .collect();
        let zero: Vec<u8> = [0i8, 1, 0, -1].iter().map(|&v| v as u8).collect();
        let shape: Vec<u8> = [2i64, 4, 1, 1]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let bytes = model(
            vec![
                node(
                    "DequantizeLinear",
                    &["q", "scale", "zero"],
                    "w_dq",
                    vec![int_attribute("axis", 1), int_attribute("block_size", 2)],
                ),
                node("Reshape", &["w_dq", "shape"], "w", vec![]),
                node("Conv", &["input", "w", "b"], "y", vec![]),
                node("Relu", &["y"], "z", vec![]),
                node("Conv", &["z", "w", "b"], "out", vec![]),
            ],
            vec![
                tensor("q", &[2, 4], data_type::INT8, q),
                tensor(
                    "scale",
                    &[2, 2],
                    data_type::FLOAT,
                    floats(&[0.5, 2.0, 1.0, 0.25]),
                ),
                tensor("zero", &[2, 2], data_type::INT8, zero),
                tensor("shape", &[4], data_type::INT64, shape),
                tensor("b", &[2], data_type::FLOAT, floats(&[0.1, 0.2])),
            ],
        );
        let tensors = import_onnx(&bytes).unwrap();
        let names: Vec<&str> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["conv0.weight", "conv0.bias", "conv1.weight", "conv1.bias"]
        );
        let weight = &tensors[0].1;
        assert_eq!(weight.dims(), &[2, 4, 1, 1]);
        let values = weight.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        // Row 0: (1-0)*0.5, (2-0)*0.5, (3-1)*2, (4-1)*2; row 1: -1*1, -2*1, (-3+1)*0.25, (-4+1)*0.25.
        assert_eq!(values, [0.5, 1.0, 4.0, 6.0, -1.0, -2.0, -0.5, -0.75]);
    }

    #[test]
    fn gemm_weight_is_out_by_in_and_batchnorm_gets_eps() {
        let bytes = model(
            vec![
                node(
                    "Gemm",
                    &["x", "w", "c"],
                    "y",
                    vec![int_attribute("transB", 0)],
                ),
                node(
                    "BatchNormalization",
                    &["y", "g", "c", "c", "g"],
                    "z",
                    vec![AttributeProto {
                        name: "epsilon".into(),
                        f: 1e-3,
                        ..Default::default()
                    }],
                ),
            ],
            vec![
                // Stored [in = 3, out = 2].
                tensor(
                    "w",
                    &[3, 2],
                    data_type::FLOAT,
                    floats(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                ),
                tensor("c", &[2], data_type::FLOAT, floats(&[0.0, 1.0])),
                tensor("g", &[2], data_type::FLOAT, floats(&[1.0, 1.0])),
            ],
        );
        let tensors: HashMap<String, Tensor> = import_onnx(&bytes).unwrap().into_iter().collect();
        let weight = &tensors["gemm0.weight"];
        assert_eq!(weight.dims(), &[2, 3]);
        assert_eq!(
            weight.to_vec2::<f32>().unwrap(),
            [[1.0, 3.0, 5.0], [2.0, 4.0, 6.0]]
        );
        assert_eq!(
            tensors["batchnormalization0.eps"].to_vec1::<f32>().unwrap(),
            [1e-3]
        );
        assert!(tensors.contains_key("batchnormalization0.running_var"));
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(import_onnx(b"\xff\xff\xff").is_err());
        assert!(matches!(
            import_onnx(&ModelProto { graph: None }.encode_to_vec()),
            Err(OnnxImportError::MissingGraph)
        ));
        // Raw data too short for the declared shape.
        let bytes = model(
            vec![],
            vec![tensor("w", &[4], data_type::FLOAT, vec![0; 8])],
        );
        assert!(matches!(
            import_onnx(&bytes),
            Err(OnnxImportError::BadTensor { .. })
        ));
        // Dequantizing a non-constant is refused.
        let bytes = model(
            vec![node("DequantizeLinear", &["x", "s"], "y", vec![])],
            vec![tensor("s", &[1], data_type::FLOAT, floats(&[1.0]))],
        );
        assert!(matches!(
            import_onnx(&bytes),
            Err(OnnxImportError::BadNode { .. })
        ));
    }

    #[test]
    fn half_precision_converts_exactly() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), f32::powi(2.0, -24));
        assert!(f16_to_f32(0x7c00).is_infinite());
    }
}
