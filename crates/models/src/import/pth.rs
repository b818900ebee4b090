//! Importer for PyTorch's legacy (pre-1.6, non-zip) `.pth` serialization, the format of the
//! Silent-Face-Anti-Spoofing weights.
//!
//! A legacy file is five pickles back to back, then raw storage data
//! (`torch/serialization.py`, `_legacy_save`):
//! 1. the magic number `0x1950a86a20f9469cfc6c`, 2. the protocol version (1001), 3. a sys-info dict
//!    (byte order, C type sizes), 4. the pickled object (here a state dict) in which every tensor is
//!    `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride, ...)` and every
//!    storage a persistent id `('storage', <type>, key, location, numel, view_metadata)`,
//! 5. the list of storage keys, in the order their data follows;
//!
//! then, per key, an 8-byte little-endian element count and the raw little-endian elements.
//!
//! candle's `pickle` module only reads the zip format and its opcode reader is not safe on hostile
//! input (it allocates whatever length a string opcode claims, clones memoised objects and panics on
//! the 10-byte magic integer), so this file has its own small pickle machine: objects live in an
//! arena and are referred to by index, so memo lookups are O(1), every opcode adds at most one
//! object, and every length is checked against the bytes that remain before anything is allocated.
//! Nothing here recurses over the object graph, so cyclic or deeply nested pickles cannot overflow
//! the stack.

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};

/// Why a `.pth` file could not be imported.
#[derive(Debug, thiserror::Error)]
pub enum PthImportError {
    #[error("not a legacy PyTorch file (the magic number is missing)")]
    NotLegacyPth,
    #[error("this is the zip format of PyTorch >= 1.6; this importer reads only the legacy format")]
    ZipFormat,
    #[error("file truncated at byte {offset}: {needed} more bytes needed, {available} left")]
    Truncated {
        offset: usize,
        needed: usize,
        available: usize,
    },
    #[error("unsupported pickle opcode 0x{opcode:02x} at byte {offset}")]
    UnsupportedOpcode { opcode: u8, offset: usize },
    #[error("malformed pickle at byte {offset}: {reason}")]
    MalformedPickle { offset: usize, reason: &'static str },
    #[error("unexpected file structure: {0}")]
    UnexpectedStructure(String),
    #[error("the file was written on a big-endian machine, which is not supported")]
    BigEndian,
    #[error(
        "tensor `{name}` is stored as {storage_type}; only float32 (FloatStorage) and int64 (LongStorage) tensors are imported"
    )]
    UnsupportedDtype { name: String, storage_type: String },
    #[error("storage `{key}`: {reason}")]
    BadStorage { key: String, reason: String },
    #[error("tensor `{name}`: {reason}")]
    BadTensor { name: String, reason: String },
    #[error("tensor name `{0}` occurs twice (after stripping the `module.` prefix)")]
    DuplicateName(String),
    #[error("candle refused a tensor: {0}")]
    Candle(#[from] candle_core::Error),
}

/// Reads every tensor of a legacy `.pth` state dict, in file order, with the `module.` prefix that
/// `DataParallel` training adds stripped from the names.
///
/// float32 tensors come back as `F32`; int64 tensors (BatchNorm's `num_batches_tracked` counters)
/// as `I64`; any other element type is an error. Views (storage offset, sizes, strides, legacy
/// storage views) are materialised as contiguous tensors on the CPU.
pub fn import_pth(bytes: &[u8]) -> Result<Vec<(String, Tensor)>, PthImportError> {
    let mut reader = Reader { bytes, pos: 0 };
    if !bytes.starts_with(LEGACY_MAGIC_PICKLE) {
        return Err(if bytes.starts_with(b"PK\x03\x04") {
            PthImportError::ZipFormat
        } else {
            PthImportError::NotLegacyPth
        });
    }
    reader.pos = LEGACY_MAGIC_PICKLE.len();

    let version = Machine::run(&mut reader)?;
    if version.int(version.root) != Some(LEGACY_PROTOCOL_VERSION) {
        return Err(PthImportError::UnexpectedStructure(format!(
            "legacy protocol version is not {LEGACY_PROTOCOL_VERSION}"
        )));
    }

    let sys_info = Machine::run(&mut reader)?;
    check_little_endian(&sys_info)?;

    let state = Machine::run(&mut reader)?;
    let declared = storage_declarations(&state)?;
    let entries = state_dict_entries(&state)?;

    let keys_pickle = Machine::run(&mut reader)?;
    let storage_keys = keys_pickle
        .list_or_tuple(keys_pickle.root)
        .ok_or_else(|| {
            PthImportError::UnexpectedStructure("the storage key list is not a list".into())
        })?
        .iter()
        .map(|&id| {
            keys_pickle.str(id).map(str::to_owned).ok_or_else(|| {
                PthImportError::UnexpectedStructure("a storage key is not a string".into())
            })
        })
        .collect::<Result<Vec<_>, _>>()?;

    let storages = read_storages(&mut reader, &declared, &storage_keys)?;
    for entry in &entries {
        if !storages.contains_key(&entry.storage_key) {
            return Err(PthImportError::BadStorage {
                key: entry.storage_key.clone(),
                reason: "used by a tensor but absent from the data".into(),
            });
        }
    }

    let mut seen = std::collections::HashSet::new();
    let mut tensors = Vec::with_capacity(entries.len());
    for entry in &entries {
        let name = entry
            .name
            .strip_prefix("module.")
            .unwrap_or(&entry.name)
            .to_owned();
        if !seen.insert(name.clone()) {
            return Err(PthImportError::DuplicateName(name));
        }
        let tensor = materialise(&name, entry, &storages)?;
        tensors.push((name, tensor));
    }
    Ok(tensors)
}

/// The first pickle of every legacy file: protocol 2, `LONG1` with the 10-byte magic number, STOP.
const LEGACY_MAGIC_PICKLE: &[u8] = &[
    0x80, 0x02, 0x8a, 0x0a, 0x6c, 0xfc, 0x9c, 0x46, 0xf9, 0x20, 0x6a, 0xa8, 0x50, 0x19, 0x2e,
];
const LEGACY_PROTOCOL_VERSION: i64 = 1001;

/// Element types a storage can have. Sizes are needed to step over data even when no supported
/// tensor uses it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StorageType {
    F32,
    I64,
    /// Known element size, but not imported.
    Other(&'static str, usize),
}

impl StorageType {
    fn from_class_name(name: &str) -> Option<Self> {
        Some(match name {
            "FloatStorage" => Self::F32,
            "LongStorage" => Self::I64,
            "DoubleStorage" => Self::Other("DoubleStorage", 8),
            "HalfStorage" => Self::Other("HalfStorage", 2),
            "BFloat16Storage" => Self::Other("BFloat16Storage", 2),
            "IntStorage" => Self::Other("IntStorage", 4),
            "ShortStorage" => Self::Other("ShortStorage", 2),
            "CharStorage" => Self::Other("CharStorage", 1),
            "ByteStorage" => Self::Other("ByteStorage", 1),
            "BoolStorage" => Self::Other("BoolStorage", 1),
            _ => return None,
        })
    }

    fn element_size(self) -> usize {
        match self {
            Self::F32 => 4,
            Self::I64 => 8,
            Self::Other(_, size) => size,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::F32 => "FloatStorage",
            Self::I64 => "LongStorage",
            Self::Other(name, _) => name,
        }
    }
}

/// One tensor of the state dict as described by the pickle, before its data is read.
#[derive(Debug)]
struct TensorEntry {
    name: String,
    storage_key: String,
    storage_type: StorageType,
    /// Window of the storage the tensor sees (legacy storage views), in elements.
    view_offset: usize,
    view_len: usize,
    offset: usize,
    size: Vec<usize>,
    stride: Vec<usize>,
}

/// Raw little-endian storage data by key.
struct Storage<'a> {
    storage_type: StorageType,
    data: &'a [u8],
}

fn check_little_endian(sys_info: &Machine) -> Result<(), PthImportError> {
    let Some(items) = sys_info.dict(sys_info.root) else {
        return Err(PthImportError::UnexpectedStructure(
            "the sys-info pickle is not a dict".into(),
        ));
    };
    for &(key, value) in items {
        if sys_info.str(key) == Some("little_endian") && sys_info.bool(value) == Some(false) {
            return Err(PthImportError::BigEndian);
        }
    }
    Ok(())
}

/// Finds the state dict (the root, or a checkpoint's `state_dict` entry) and describes its tensors.
fn state_dict_entries(m: &Machine) -> Result<Vec<TensorEntry>, PthImportError> {
    let not_a_dict =
        || PthImportError::UnexpectedStructure("the pickled object is not a state dict".into());
    let mut items = m.dict(m.root).ok_or_else(not_a_dict)?;
    if let Some(&(_, inner)) = items
        .iter()
        .find(|&&(k, v)| m.str(k) == Some("state_dict") && m.dict(v).is_some())
    {
        items = m.dict(inner).ok_or_else(not_a_dict)?;
    }
    items
        .iter()
        .map(|&(key, value)| {
            let name = m.str(key).ok_or_else(|| {
                PthImportError::UnexpectedStructure("a state dict key is not a string".into())
            })?;
            tensor_entry(m, name, value)
        })
        .collect()
}

fn tensor_entry(m: &Machine, name: &str, value: Id) -> Result<TensorEntry, PthImportError> {
    let bad = |reason: &str| PthImportError::BadTensor {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let (mut callable, mut args) = m.reduce(value).ok_or_else(|| bad("not a tensor"))?;
    // `nn.Parameter`s are pickled as `_rebuild_parameter(tensor, requires_grad, hooks)`.
    if m.global(callable) == Some(("torch._utils", "_rebuild_parameter")) {
        let inner = m
            .tuple_item(args, 0)
            .ok_or_else(|| bad("malformed parameter"))?;
        (callable, args) = m.reduce(inner).ok_or_else(|| bad("malformed parameter"))?;
    }
    match m.global(callable) {
        Some(("torch._utils", "_rebuild_tensor_v2" | "_rebuild_tensor")) => {}
        _ => return Err(bad("not built by torch._utils._rebuild_tensor_v2")),
    }
    let storage = m
        .tuple_item(args, 0)
        .ok_or_else(|| bad("missing storage"))?;
    let offset = m
        .tuple_item(args, 1)
        .and_then(|id| m.non_negative(id))
        .ok_or_else(|| bad("bad storage offset"))?;
    let size = m
        .tuple_item(args, 2)
        .and_then(|id| m.usize_tuple(id))
        .ok_or_else(|| bad("bad size"))?;
    let stride = m
        .tuple_item(args, 3)
        .and_then(|id| m.usize_tuple(id))
        .ok_or_else(|| bad("bad stride"))?;
    if size.len() != stride.len() {
        return Err(bad("size and stride have different lengths"));
    }

    let pid = m
        .persistent_id(storage)
        .ok_or_else(|| bad("storage is not a persistent id"))?;
    let declaration = parse_storage_pid(m, pid).map_err(|reason| bad(&reason))?;
    let storage_type = match declaration.storage_type {
        Ok(t) => t,
        Err(storage_type) => {
            return Err(PthImportError::UnsupportedDtype {
                name: name.to_owned(),
                storage_type,
            });
        }
    };
    Ok(TensorEntry {
        name: name.to_owned(),
        storage_key: declaration.key,
        storage_type,
        view_offset: declaration.view_offset,
        view_len: declaration.view_len,
        offset,
        size,
        stride,
    })
}

/// A storage as its persistent id declares it.
struct StorageDeclaration {
    key: String,
    /// The element type, or the class name when it is not one this importer knows.
    storage_type: Result<StorageType, String>,
    numel: usize,
    /// Window of the storage that the id refers to (legacy storage views), in elements.
    view_offset: usize,
    view_len: usize,
}

/// Parses `('storage', <class torch.FloatStorage>, key, location, numel, view_metadata)`.
fn parse_storage_pid(m: &Machine, pid: Id) -> Result<StorageDeclaration, String> {
    let items = m
        .list_or_tuple(pid)
        .filter(|items| items.len() == 6)
        .ok_or("storage persistent id is not a 6-tuple")?;
    if m.str(items[0]) != Some("storage") {
        return Err("persistent id is not a storage".into());
    }
    let (module, class) = m.global(items[1]).ok_or("storage type is not a class")?;
    let storage_type = match StorageType::from_class_name(class) {
        Some(t) if module == "torch" => Ok(t),
        _ => Err(format!("{module}.{class}")),
    };
    let key = m
        .str(items[2])
        .ok_or("storage key is not a string")?
        .to_owned();
    let numel = m.non_negative(items[4]).ok_or("bad storage size")?;
    let (view_offset, view_len) = if m.is_none(items[5]) {
        (0, numel)
    } else {
        // (view_key, offset, size) of a legacy storage view into the root storage.
        let view_offset = m
            .tuple_item(items[5], 1)
            .and_then(|id| m.non_negative(id))
            .ok_or("bad storage view offset")?;
        let view_len = m
            .tuple_item(items[5], 2)
            .and_then(|id| m.non_negative(id))
            .ok_or("bad storage view size")?;
        if view_offset
            .checked_add(view_len)
            .is_none_or(|end| end > numel)
        {
            return Err("storage view lies outside its storage".into());
        }
        (view_offset, view_len)
    };
    Ok(StorageDeclaration {
        key,
        storage_type,
        numel,
        view_offset,
        view_len,
    })
}

/// Every storage any persistent id of the pickle declares (a checkpoint may hold tensors outside
/// the state dict; their data must still be stepped over), by key: element type and count.
fn storage_declarations(
    m: &Machine,
) -> Result<HashMap<String, (StorageType, usize)>, PthImportError> {
    let mut declared = HashMap::new();
    for object in &m.arena {
        let Object::PersistentId(pid) = object else {
            continue;
        };
        let declaration =
            parse_storage_pid(m, *pid).map_err(PthImportError::UnexpectedStructure)?;
        let storage_type =
            declaration
                .storage_type
                .map_err(|class| PthImportError::BadStorage {
                    key: declaration.key.clone(),
                    reason: format!("unknown storage type {class}"),
                })?;
        let value = (storage_type, declaration.numel);
        if let Some(previous) = declared.insert(declaration.key.clone(), value)
            && previous != value
        {
            return Err(PthImportError::BadStorage {
                key: declaration.key,
                reason: "declared twice with different types or sizes".into(),
            });
        }
    }
    Ok(declared)
}

/// Reads the storage data that follows the pickles, checking each count against the pickle's
/// declaration and against the bytes that remain.
fn read_storages<'a>(
    reader: &mut Reader<'a>,
    declared: &HashMap<String, (StorageType, usize)>,
    keys: &[String],
) -> Result<HashMap<String, Storage<'a>>, PthImportError> {
    let mut storages = HashMap::with_capacity(keys.len());
    for key in keys {
        let bad = |reason: String| PthImportError::BadStorage {
            key: key.clone(),
            reason,
        };
        let &(storage_type, numel) = declared
            .get(key.as_str())
            .ok_or_else(|| bad("listed but declared by no persistent id".into()))?;
        let count = reader.u64_le()?;
        if count != numel as u64 {
            return Err(bad(format!(
                "data holds {count} elements, the pickle declares {numel}"
            )));
        }
        let len = numel
            .checked_mul(storage_type.element_size())
            .ok_or_else(|| bad("size overflows".into()))?;
        let data = reader.take(len)?;
        if storages
            .insert(key.clone(), Storage { storage_type, data })
            .is_some()
        {
            return Err(bad("listed twice".into()));
        }
    }
    Ok(storages)
}

/// Gathers one tensor's elements (honouring offset and strides) into a contiguous candle tensor.
fn materialise(
    name: &str,
    entry: &TensorEntry,
    storages: &HashMap<String, Storage<'_>>,
) -> Result<Tensor, PthImportError> {
    let bad = |reason: &str| PthImportError::BadTensor {
        name: name.to_owned(),
        reason: reason.to_owned(),
    };
    let storage = storages
        .get(&entry.storage_key)
        .ok_or_else(|| bad("storage missing"))?;
    if storage.storage_type != entry.storage_type {
        return Err(bad("tensor and storage disagree on the element type"));
    }
    let dtype = match entry.storage_type {
        StorageType::F32 => DType::F32,
        StorageType::I64 => DType::I64,
        other => {
            return Err(PthImportError::UnsupportedDtype {
                name: name.to_owned(),
                storage_type: other.name().to_owned(),
            });
        }
    };
    let numel = entry
        .size
        .iter()
        .try_fold(1usize, |acc, &d| acc.checked_mul(d))
        .ok_or_else(|| bad("element count overflows"))?;
    // A view may not hold more elements than its storage: this bounds the allocation by the file
    // size (state dicts never hold broadcast, stride-0 views of a smaller storage).
    if numel > entry.view_len {
        return Err(bad("view holds more elements than its storage"));
    }
    if numel > 0 {
        let last = entry
            .size
            .iter()
            .zip(&entry.stride)
            .try_fold(entry.offset, |acc, (&d, &s)| {
                (d - 1)
                    .checked_mul(s)
                    .and_then(|span| acc.checked_add(span))
            })
            .ok_or_else(|| bad("view extent overflows"))?;
        if last >= entry.view_len {
            return Err(bad("view reaches past the end of its storage"));
        }
    }

    let element_size = storage.storage_type.element_size();
    let base = entry.view_offset + entry.offset;
    // The stride of a dimension of size 1 is never applied; zero it so that no arbitrary value
    // enters the index arithmetic.
    let stride: Vec<usize> = entry
        .size
        .iter()
        .zip(&entry.stride)
        .map(|(&d, &s)| if d == 1 { 0 } else { s })
        .collect();
    let mut indices = Vec::with_capacity(numel);
    if numel > 0 {
        strided_indices(&entry.size, &stride, base, &mut indices);
    }
    let element = |index: usize| &storage.data[index * element_size..(index + 1) * element_size];
    let shape = entry.size.clone();
    let tensor = match dtype {
        DType::F32 => {
            let values: Vec<f32> = indices
                .iter()
                .map(|&i| {
                    let b = element(i);
                    f32::from_le_bytes([b[0], b[1], b[2], b[3]])
                })
                .collect();
            Tensor::from_vec(values, shape, &Device::Cpu)?
        }
        _ => {
            let values: Vec<i64> = indices
                .iter()
                .map(|&i| {
                    let mut le = [0u8; 8];
                    le.copy_from_slice(element(i));
                    i64::from_le_bytes(le)
                })
                .collect();
            Tensor::from_vec(values, shape, &Device::Cpu)?
        }
    };
    Ok(tensor)
}

/// Storage indices of a strided view in row-major order. The caller has checked that the view is
/// non-empty and stays inside its storage.
fn strided_indices(size: &[usize], stride: &[usize], base: usize, out: &mut Vec<usize>) {
    let rank = size.len();
    let mut position = vec![0usize; rank];
    let mut index = base;
    loop {
        out.push(index);
        // Odometer increment over the dimensions, last dimension fastest.
        let mut dim = rank;
        loop {
            if dim == 0 {
                return;
            }
            dim -= 1;
            position[dim] += 1;
            index += stride[dim];
            if position[dim] < size[dim] {
                break;
            }
            index -= stride[dim] * size[dim];
            position[dim] = 0;
        }
    }
}

/// A bounds-checked cursor over the file.
struct Reader<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, len: usize) -> Result<&'a [u8], PthImportError> {
        let available = self.bytes.len() - self.pos;
        if len > available {
            return Err(PthImportError::Truncated {
                offset: self.pos,
                needed: len,
                available,
            });
        }
        let slice = &self.bytes[self.pos..self.pos + len];
        self.pos += len;
        Ok(slice)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], PthImportError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.take(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, PthImportError> {
        Ok(self.array::<1>()?[0])
    }

    fn u16_le(&mut self) -> Result<u16, PthImportError> {
        Ok(u16::from_le_bytes(self.array()?))
    }

    fn u32_le(&mut self) -> Result<u32, PthImportError> {
        Ok(u32::from_le_bytes(self.array()?))
    }

    fn u64_le(&mut self) -> Result<u64, PthImportError> {
        Ok(u64::from_le_bytes(self.array()?))
    }

    /// A length-prefixed payload; the length is checked before anything is allocated.
    fn sized(&mut self, len: u64) -> Result<&'a [u8], PthImportError> {
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        self.take(len)
    }

    /// A `\n`-terminated line (the `GLOBAL` opcode's module and class names).
    fn line(&mut self) -> Result<&'a [u8], PthImportError> {
        let rest = &self.bytes[self.pos..];
        let Some(end) = rest.iter().position(|&b| b == b'\n') else {
            return Err(PthImportError::Truncated {
                offset: self.pos,
                needed: rest.len() + 1,
                available: rest.len(),
            });
        };
        let line = &rest[..end];
        self.pos += end + 1;
        Ok(line)
    }
}

/// Index of an object in the machine's arena.
type Id = usize;

/// The pickle objects this importer needs to tell apart; everything else is `Opaque`.
#[derive(Debug)]
enum Object {
    None,
    Bool(bool),
    Int(i64),
    Float,
    Str(String),
    Bytes,
    Tuple(Vec<Id>),
    List(Vec<Id>),
    Dict(Vec<(Id, Id)>),
    Global { module: String, name: String },
    Reduce { callable: Id, args: Id },
    PersistentId(Id),
    Opaque,
}

/// A pickle virtual machine over one pickle, keeping the objects it built.
struct Machine {
    arena: Vec<Object>,
    root: Id,
}

impl Machine {
    /// Runs one pickle from the reader's position up to and including its STOP opcode.
    fn run(reader: &mut Reader<'_>) -> Result<Self, PthImportError> {
        let mut arena: Vec<Object> = Vec::new();
        let mut stack: Vec<Id> = Vec::new();
        let mut marks: Vec<usize> = Vec::new();
        let mut memo: HashMap<u32, Id> = HashMap::new();
        loop {
            let offset = reader.pos;
            let malformed =
                |reason: &'static str| PthImportError::MalformedPickle { offset, reason };
            let opcode = reader.u8()?;
            let push = |arena: &mut Vec<Object>, stack: &mut Vec<Id>, object: Object| {
                arena.push(object);
                stack.push(arena.len() - 1);
            };
            let pop = |stack: &mut Vec<Id>, marks: &[usize]| -> Result<Id, PthImportError> {
                if stack.len() <= marks.last().copied().unwrap_or(0) {
                    return Err(malformed("pop below the mark or from an empty stack"));
                }
                stack.pop().ok_or(malformed("empty stack"))
            };
            let pop_mark =
                |stack: &mut Vec<Id>, marks: &mut Vec<usize>| -> Result<Vec<Id>, PthImportError> {
                    let mark = marks.pop().ok_or(malformed("no mark on the stack"))?;
                    if mark > stack.len() {
                        return Err(malformed("mark above the stack"));
                    }
                    Ok(stack.split_off(mark))
                };
            match opcode {
                // PROTO: protocol number.
                0x80 => {
                    reader.u8()?;
                }
                // FRAME (protocol 4): the frame length is only a read-ahead hint.
                0x95 => {
                    reader.u64_le()?;
                }
                b'.' => {
                    let root = pop(&mut stack, &marks)?;
                    if !stack.is_empty() || !marks.is_empty() {
                        return Err(malformed("objects left on the stack at STOP"));
                    }
                    return Ok(Self { arena, root });
                }
                b'(' => marks.push(stack.len()),
                b'0' => {
                    pop(&mut stack, &marks)?;
                }
                b'1' => {
                    pop_mark(&mut stack, &mut marks)?;
                }
                b'2' => {
                    let top = *stack.last().ok_or(malformed("DUP on an empty stack"))?;
                    stack.push(top);
                }
                b'N' => push(&mut arena, &mut stack, Object::None),
                0x88 => push(&mut arena, &mut stack, Object::Bool(true)),
                0x89 => push(&mut arena, &mut stack, Object::Bool(false)),
                b'J' => {
                    let v = i32::from_le_bytes(reader.array()?);
                    push(&mut arena, &mut stack, Object::Int(v.into()));
                }
                b'K' => {
                    let v = reader.u8()?;
                    push(&mut arena, &mut stack, Object::Int(v.into()));
                }
                b'M' => {
                    let v = reader.u16_le()?;
                    push(&mut arena, &mut stack, Object::Int(v.into()));
                }
                // LONG1: little-endian two's complement of up to 255 bytes.
                0x8a => {
                    let len = reader.u8()?;
                    let digits = reader.sized(len.into())?;
                    let object = if digits.len() <= 8 {
                        let fill = if digits.last().is_some_and(|&b| b & 0x80 != 0) {
                            0xff
                        } else {
                            0
                        };
                        let mut le = [fill; 8];
                        le[..digits.len()].copy_from_slice(digits);
                        Object::Int(i64::from_le_bytes(le))
                    } else {
                        Object::Opaque
                    };
                    push(&mut arena, &mut stack, object);
                }
                b'G' => {
                    reader.u64_le()?;
                    push(&mut arena, &mut stack, Object::Float);
                }
                // BINUNICODE, SHORT_BINUNICODE, BINUNICODE8.
                b'X' | 0x8c | 0x8d => {
                    let len = match opcode {
                        b'X' => reader.u32_le()?.into(),
                        0x8c => reader.u8()?.into(),
                        _ => reader.u64_le()?,
                    };
                    let text = std::str::from_utf8(reader.sized(len)?)
                        .map_err(|_| malformed("string is not UTF-8"))?;
                    push(&mut arena, &mut stack, Object::Str(text.to_owned()));
                }
                // BINSTRING, SHORT_BINSTRING (Python 2 `str`): keys of old pickles; kept as text.
                b'T' | b'U' => {
                    let len = if opcode == b'T' {
                        reader.u32_le()?.into()
                    } else {
                        reader.u8()?.into()
                    };
                    let text = String::from_utf8_lossy(reader.sized(len)?).into_owned();
                    push(&mut arena, &mut stack, Object::Str(text));
                }
                // BINBYTES, SHORT_BINBYTES, BINBYTES8.
                b'B' | b'C' | 0x8e => {
                    let len = match opcode {
                        b'B' => reader.u32_le()?.into(),
                        b'C' => reader.u8()?.into(),
                        _ => reader.u64_le()?,
                    };
                    reader.sized(len)?;
                    push(&mut arena, &mut stack, Object::Bytes);
                }
                b')' => push(&mut arena, &mut stack, Object::Tuple(Vec::new())),
                b't' => {
                    let items = pop_mark(&mut stack, &mut marks)?;
                    push(&mut arena, &mut stack, Object::Tuple(items));
                }
                0x85..=0x87 => {
                    let n = usize::from(opcode - 0x84);
                    let floor = marks.last().copied().unwrap_or(0);
                    if stack.len() < floor + n {
                        return Err(malformed("TUPLEn with too few items"));
                    }
                    let items = stack.split_off(stack.len() - n);
                    push(&mut arena, &mut stack, Object::Tuple(items));
                }
                b']' => push(&mut arena, &mut stack, Object::List(Vec::new())),
                b'l' => {
                    let items = pop_mark(&mut stack, &mut marks)?;
                    push(&mut arena, &mut stack, Object::List(items));
                }
                b'a' | b'e' => {
                    let items = if opcode == b'a' {
                        vec![pop(&mut stack, &marks)?]
                    } else {
                        pop_mark(&mut stack, &mut marks)?
                    };
                    let target = *stack.last().ok_or(malformed("APPEND without a list"))?;
                    match &mut arena[target] {
                        Object::List(list) => list.extend(items),
                        _ => return Err(malformed("APPEND to something not a list")),
                    }
                }
                b'}' => push(&mut arena, &mut stack, Object::Dict(Vec::new())),
                b'd' => {
                    let items = pop_mark(&mut stack, &mut marks)?;
                    let pairs = pairs(items).ok_or(malformed("DICT with an odd item count"))?;
                    push(&mut arena, &mut stack, Object::Dict(pairs));
                }
                b's' | b'u' => {
                    let items = if opcode == b's' {
                        let value = pop(&mut stack, &marks)?;
                        let key = pop(&mut stack, &marks)?;
                        vec![key, value]
                    } else {
                        pop_mark(&mut stack, &mut marks)?
                    };
                    let pairs = pairs(items).ok_or(malformed("SETITEMS with an odd item count"))?;
                    let target = *stack.last().ok_or(malformed("SETITEM without a dict"))?;
                    match &mut arena[target] {
                        Object::Dict(dict) => dict.extend(pairs),
                        _ => return Err(malformed("SETITEM on something not a dict")),
                    }
                }
                b'c' => {
                    let module = String::from_utf8_lossy(reader.line()?).into_owned();
                    let name = String::from_utf8_lossy(reader.line()?).into_owned();
                    push(&mut arena, &mut stack, Object::Global { module, name });
                }
                // STACK_GLOBAL (protocol 4).
                0x93 => {
                    let name = pop(&mut stack, &marks)?;
                    let module = pop(&mut stack, &marks)?;
                    let (Object::Str(module), Object::Str(name)) = (&arena[module], &arena[name])
                    else {
                        return Err(malformed("STACK_GLOBAL without two strings"));
                    };
                    let object = Object::Global {
                        module: module.clone(),
                        name: name.clone(),
                    };
                    push(&mut arena, &mut stack, object);
                }
                // REDUCE and NEWOBJ: `callable(*args)`; an OrderedDict becomes a plain dict.
                b'R' | 0x81 => {
                    let args = pop(&mut stack, &marks)?;
                    let callable = pop(&mut stack, &marks)?;
                    let object = match &arena[callable] {
                        Object::Global { module, name }
                            if module == "collections" && name == "OrderedDict" =>
                        {
                            Object::Dict(Vec::new())
                        }
                        _ => Object::Reduce { callable, args },
                    };
                    push(&mut arena, &mut stack, object);
                }
                // BUILD: `obj.__setstate__(state)`. The only state this importer meets is a state
                // dict's `_metadata` attribute, which carries no tensor data: it is dropped.
                b'b' => {
                    pop(&mut stack, &marks)?;
                    if stack.len() <= marks.last().copied().unwrap_or(0) {
                        return Err(malformed("BUILD without an object"));
                    }
                }
                b'Q' => {
                    let id = pop(&mut stack, &marks)?;
                    push(&mut arena, &mut stack, Object::PersistentId(id));
                }
                b'h' | b'j' => {
                    let key = if opcode == b'h' {
                        reader.u8()?.into()
                    } else {
                        reader.u32_le()?
                    };
                    let id = *memo.get(&key).ok_or(malformed("memo key not set"))?;
                    stack.push(id);
                }
                b'q' | b'r' | 0x94 => {
                    let key = match opcode {
                        b'q' => reader.u8()?.into(),
                        b'r' => reader.u32_le()?,
                        _ => u32::try_from(memo.len()).map_err(|_| malformed("memo overflow"))?,
                    };
                    let top = *stack.last().ok_or(malformed("PUT on an empty stack"))?;
                    memo.insert(key, top);
                }
                _ => return Err(PthImportError::UnsupportedOpcode { opcode, offset }),
            }
        }
    }

    fn int(&self, id: Id) -> Option<i64> {
        match self.arena.get(id)? {
            Object::Int(v) => Some(*v),
            _ => None,
        }
    }

    fn non_negative(&self, id: Id) -> Option<usize> {
        usize::try_from(self.int(id)?).ok()
    }

    fn bool(&self, id: Id) -> Option<bool> {
        match self.arena.get(id)? {
            Object::Bool(v) => Some(*v),
            _ => None,
        }
    }

    fn is_none(&self, id: Id) -> bool {
        matches!(self.arena.get(id), Some(Object::None))
    }

    fn str(&self, id: Id) -> Option<&str> {
        match self.arena.get(id)? {
            Object::Str(s) => Some(s),
            _ => None,
        }
    }

    fn list_or_tuple(&self, id: Id) -> Option<&[Id]> {
        match self.arena.get(id)? {
            Object::Tuple(items) | Object::List(items) => Some(items),
            _ => None,
        }
    }

    fn tuple_item(&self, id: Id, index: usize) -> Option<Id> {
        self.list_or_tuple(id)?.get(index).copied()
    }

    fn usize_tuple(&self, id: Id) -> Option<Vec<usize>> {
        self.list_or_tuple(id)?
            .iter()
            .map(|&item| self.non_negative(item))
            .collect()
    }

    fn dict(&self, id: Id) -> Option<&[(Id, Id)]> {
        match self.arena.get(id)? {
            Object::Dict(items) => Some(items),
            _ => None,
        }
    }

    fn global(&self, id: Id) -> Option<(&str, &str)> {
        match self.arena.get(id)? {
            Object::Global { module, name } => Some((module, name)),
            _ => None,
        }
    }

    fn reduce(&self, id: Id) -> Option<(Id, Id)> {
        match self.arena.get(id)? {
            Object::Reduce { callable, args } => Some((*callable, *args)),
            _ => None,
        }
    }

    fn persistent_id(&self, id: Id) -> Option<Id> {
        match self.arena.get(id)? {
            Object::PersistentId(pid) => Some(*pid),
            _ => None,
        }
    }
}

/// Pairs up `[k0, v0, k1, v1, ...]`.
fn pairs(items: Vec<Id>) -> Option<Vec<(Id, Id)>> {
    if !items.len().is_multiple_of(2) {
        return None;
    }
    Some(items.chunks_exact(2).map(|kv| (kv[0], kv[1])).collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// One tensor for the test writer: name, storage key, element offset, size, stride.
    struct TestTensor<'a> {
        name: &'a str,
        storage: &'a str,
        storage_class: &'a str,
        offset: u32,
        size: &'a [u32],
        stride: &'a [u32],
    }

    impl<'a> TestTensor<'a> {
        /// A view of storage "1", which holds `f32`s.
        fn float(name: &'a str, offset: u32, size: &'a [u32], stride: &'a [u32]) -> Self {
            Self {
                name,
                storage: "1",
                storage_class: "FloatStorage",
                offset,
                size,
                stride,
            }
        }
    }

    fn unicode(out: &mut Vec<u8>, s: &str) {
        out.push(b'X');
        out.extend((s.len() as u32).to_le_bytes());
        out.extend(s.as_bytes());
    }

    fn int(out: &mut Vec<u8>, v: u32) {
        out.push(b'J');
        out.extend(v.to_le_bytes());
    }

    /// Writes a legacy file the way `torch.save(..., _use_new_zipfile_serialization=False)` does
    /// (same opcode shapes, without the memo traffic), with storages given as raw bytes.
    fn legacy_file(tensors: &[TestTensor<'_>], storages: &[(&str, usize, Vec<u8>)]) -> Vec<u8> {
        let mut out = LEGACY_MAGIC_PICKLE.to_vec();
        out.extend([0x80, 0x02, b'M', 0xe9, 0x03, b'.']);
        out.extend([0x80, 0x02, b'}', b'(']);
        unicode(&mut out, "protocol_version");
        out.extend([b'M', 0xe9, 0x03]);
        unicode(&mut out, "little_endian");
        out.push(0x88);
        out.extend([b'u', b'.']);

        out.extend([0x80, 0x02]);
        out.extend(b"ccollections\nOrderedDict\n)R(");
        for t in tensors {
            unicode(&mut out, t.name);
            out.extend(b"ctorch._utils\n_rebuild_tensor_v2\n((");
            unicode(&mut out, "storage");
            out.extend(format!("ctorch\n{}\n", t.storage_class).as_bytes());
            unicode(&mut out, t.storage);
            unicode(&mut out, "cpu");
            let numel = storages.iter().find(|s| s.0 == t.storage).unwrap().1;
            int(&mut out, numel as u32);
            out.extend([b'N', b't', b'Q']);
            int(&mut out, t.offset);
            out.push(b'(');
            for &d in t.size {
                int(&mut out, d);
            }
            out.push(b't');
            out.push(b'(');
            for &s in t.stride {
                int(&mut out, s);
            }
            out.push(b't');
            out.push(0x89);
            out.extend(b"ccollections\nOrderedDict\n)R");
            out.extend([b't', b'R']);
        }
        out.push(b'u');
        // The `_metadata` attribute, set through BUILD.
        out.extend([b'}', b'(']);
        unicode(&mut out, "_metadata");
        out.extend(b"ccollections\nOrderedDict\n)R");
        out.extend([b'u', b'b', b'.']);

        out.extend([0x80, 0x02, b']', b'(']);
        for (key, _, _) in storages {
            unicode(&mut out, key);
        }
        out.extend([b'e', b'.']);
        for (_, numel, data) in storages {
            out.extend((*numel as u64).to_le_bytes());
            out.extend(data);
        }
        out
    }

    fn f32_bytes(values: impl IntoIterator<Item = f32>) -> Vec<u8> {
        values.into_iter().flat_map(f32::to_le_bytes).collect()
    }

    fn sample_file() -> Vec<u8> {
        let storage: Vec<f32> = (0..12).map(|v| v as f32).collect();
        legacy_file(
            &[
                TestTensor::float("module.a.weight", 0, &[3, 4], &[4, 1]),
                // Transposed view of the same storage.
                TestTensor::float("module.a.weight_t", 0, &[4, 3], &[1, 4]),
                // Offset, strided 1-d view: elements 5, 7, 9.
                TestTensor::float("module.b", 5, &[3], &[2]),
                TestTensor {
                    storage: "2",
                    storage_class: "LongStorage",
                    ..TestTensor::float("module.bn.num_batches_tracked", 0, &[], &[])
                },
            ],
            &[
                ("1", 12, f32_bytes(storage)),
                ("2", 1, 7i64.to_le_bytes().to_vec()),
            ],
        )
    }

    #[test]
    fn reads_contiguous_strided_offset_and_long_tensors() {
        let tensors = import_pth(&sample_file()).unwrap();
        let names: Vec<_> = tensors.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["a.weight", "a.weight_t", "b", "bn.num_batches_tracked"]
        );
        let a = tensors[0].1.to_vec2::<f32>().unwrap();
        assert_eq!(a[1], [4.0, 5.0, 6.0, 7.0]);
        let at = tensors[1].1.to_vec2::<f32>().unwrap();
        assert_eq!(at[1], [1.0, 5.0, 9.0]);
        assert_eq!(at.len(), 4);
        assert_eq!(tensors[2].1.to_vec1::<f32>().unwrap(), [5.0, 7.0, 9.0]);
        assert_eq!(tensors[3].1.dtype(), DType::I64);
        assert_eq!(tensors[3].1.to_scalar::<i64>().unwrap(), 7);
    }

    #[test]
    fn refuses_other_dtypes_by_name() {
        let file = legacy_file(
            &[TestTensor {
                storage_class: "HalfStorage",
                ..TestTensor::float("half", 0, &[2], &[1])
            }],
            &[("1", 2, vec![0; 4])],
        );
        let err = import_pth(&file).unwrap_err();
        assert!(
            matches!(&err, PthImportError::UnsupportedDtype { name, storage_type } if name == "half" && storage_type == "HalfStorage"),
            "{err}"
        );
    }

    #[test]
    fn refuses_views_outside_their_storage() {
        let file = legacy_file(
            &[TestTensor::float("w", 2, &[2, 2], &[2, 1])],
            &[("1", 4, f32_bytes([0.0; 4]))],
        );
        assert!(matches!(
            import_pth(&file),
            Err(PthImportError::BadTensor { .. })
        ));
        // A stride-0 view larger than its storage would multiply the allocation: refused.
        let file = legacy_file(
            &[TestTensor::float("w", 0, &[1_000_000, 1_000_000], &[0, 0])],
            &[("1", 1, f32_bytes([0.0]))],
        );
        assert!(matches!(
            import_pth(&file),
            Err(PthImportError::BadTensor { .. })
        ));
    }

    #[test]
    fn refuses_a_storage_count_larger_than_the_file() {
        let mut file = sample_file();
        // The first storage's element count sits right after the key-list pickle.
        let data_start = file.len() - (8 + 48) - (8 + 8);
        file[data_start..data_start + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(
            import_pth(&file),
            Err(PthImportError::BadStorage { .. })
        ));
    }

    #[test]
    fn refuses_the_zip_format_and_other_files() {
        assert!(matches!(
            import_pth(b"PK\x03\x04rest"),
            Err(PthImportError::ZipFormat)
        ));
        assert!(matches!(import_pth(b""), Err(PthImportError::NotLegacyPth)));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let file = sample_file();
        for len in 0..file.len() {
            assert!(import_pth(&file[..len]).is_err(), "truncated at {len}");
        }
    }

    #[test]
    fn corrupted_bytes_never_panic() {
        let file = sample_file();
        // Deterministic pseudo-random corruption (xorshift), several bytes at a time.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..5000 {
            let mut corrupted = file.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() as usize) % corrupted.len();
                corrupted[at] = next() as u8;
            }
            let _ = import_pth(&corrupted);
        }
    }

    #[test]
    fn a_huge_string_length_is_refused_before_allocating() {
        let mut file = LEGACY_MAGIC_PICKLE.to_vec();
        file.extend([0x80, 0x02, b'X', 0xff, 0xff, 0xff, 0xff, b'.']);
        assert!(matches!(
            import_pth(&file),
            Err(PthImportError::Truncated { .. })
        ));
    }
}
