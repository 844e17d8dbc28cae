//! A reader for the metadata of a GGUF file (llama.cpp's model format).
//!
//! Only the header and the key/value metadata are read; tensor descriptions
//! and weights are left alone (the trainer reads those with candle). See the
//! [GGUF spec](https://github.com/ggml-org/ggml/blob/master/docs/gguf.md):
//! magic `GGUF`, a `u32` version (1, 2 or 3), tensor and key/value counts,
//! then the key/value pairs, all little-endian. Version 1 uses `u32` lengths
//! and counts; later versions `u64`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use crate::Error;

// Caps like llama.cpp's, so that a corrupt file fails instead of allocating
// without bound.
const MAX_STRING_LEN: u64 = 1 << 30;
const MAX_ARRAY_LEN: u64 = 1 << 30;
const MAX_DEPTH: usize = 16;

/// One metadata value of a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub enum GgufValue {
    /// `uint8`
    U8(u8),
    /// `int8`
    I8(i8),
    /// `uint16`
    U16(u16),
    /// `int16`
    I16(i16),
    /// `uint32`
    U32(u32),
    /// `int32`
    I32(i32),
    /// `uint64`
    U64(u64),
    /// `int64`
    I64(i64),
    /// `float32`
    F32(f32),
    /// `float64`
    F64(f64),
    /// `bool`
    Bool(bool),
    /// A UTF-8 string (invalid bytes are replaced).
    String(String),
    /// An array of values, all of one type.
    Array(Vec<GgufValue>),
}

impl GgufValue {
    /// The value as an unsigned integer, when it is a non-negative integer.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            GgufValue::U8(v) => Some(v.into()),
            GgufValue::U16(v) => Some(v.into()),
            GgufValue::U32(v) => Some(v.into()),
            GgufValue::U64(v) => Some(v),
            GgufValue::I8(v) => u64::try_from(v).ok(),
            GgufValue::I16(v) => u64::try_from(v).ok(),
            GgufValue::I32(v) => u64::try_from(v).ok(),
            GgufValue::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, when it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            GgufValue::I8(v) => Some(v.into()),
            GgufValue::I16(v) => Some(v.into()),
            GgufValue::I32(v) => Some(v.into()),
            GgufValue::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float, when it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            GgufValue::F32(v) => Some(v.into()),
            GgufValue::F64(v) => Some(v),
            _ => self.as_i64().map(|v| v as f64),
        }
    }

    /// The value as a bool.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            GgufValue::Bool(v) => Some(v),
            _ => None,
        }
    }

    /// The value as a string slice.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            GgufValue::String(s) => Some(s),
            _ => None,
        }
    }

    /// The value as an array.
    pub fn as_array(&self) -> Option<&[GgufValue]> {
        match self {
            GgufValue::Array(v) => Some(v),
            _ => None,
        }
    }
}

/// The metadata of a GGUF file: its version, tensor count and key/value pairs.
#[derive(Debug, Clone, PartialEq)]
pub struct GgufMetadata {
    version: u32,
    tensor_count: u64,
    kv: BTreeMap<String, GgufValue>,
}

impl GgufMetadata {
    /// Read the metadata of the GGUF file at `path`.
    pub fn read(path: &Path) -> Result<Self, Error> {
        let io_err = |source| Error::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io_err)?;
        Self::from_reader(BufReader::with_capacity(1 << 20, file)).map_err(|e| match e {
            ReadError::Io(source) => Error::Io { path: path.to_path_buf(), source },
            ReadError::Format(reason) => Error::Gguf { path: path.to_path_buf(), reason },
        })
    }

    fn from_reader(mut r: impl Read) -> Result<Self, ReadError> {
        let magic = read_u32(&mut r)?;
        // "GGUF" read little-endian; some big-endian writers swap it.
        if magic != 0x4655_4747 && magic != 0x4747_5546 {
            return Err(ReadError::Format(format!("not a GGUF file (magic 0x{magic:08x})")));
        }
        let version = read_u32(&mut r)?;
        if !(1..=3).contains(&version) {
            return Err(ReadError::Format(format!("unsupported GGUF version {version}")));
        }
        let mut rd = Reader { r, v1: version == 1 };
        let tensor_count = rd.len()?;
        let kv_count = rd.len()?;
        let mut kv = BTreeMap::new();
        for _ in 0..kv_count {
            let key = rd.string()?;
            let ty = read_u32(&mut rd.r)?;
            let value = rd.value(ty, 0)?;
            kv.insert(key, value);
        }
        Ok(Self { version, tensor_count, kv })
    }

    /// The GGUF version (1, 2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// How many tensors the file describes.
    pub fn tensor_count(&self) -> u64 {
        self.tensor_count
    }

    /// A metadata value by key (e.g. `general.architecture`).
    pub fn get(&self, key: &str) -> Option<&GgufValue> {
        self.kv.get(key)
    }

    /// A string value by key.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.get(key).and_then(GgufValue::as_str)
    }

    /// An unsigned integer value by key.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.get(key).and_then(GgufValue::as_u64)
    }

    /// A float value by key.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.get(key).and_then(GgufValue::as_f64)
    }

    /// A bool value by key.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.get(key).and_then(GgufValue::as_bool)
    }

    /// All key/value pairs, sorted by key.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &GgufValue)> {
        self.kv.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// `general.architecture` (e.g. `llama`, `qwen2`).
    pub fn architecture(&self) -> Option<&str> {
        self.get_str("general.architecture")
    }

    /// An architecture-scoped value: `<arch>.<name>` (e.g. `block_count`).
    pub fn arch_u64(&self, name: &str) -> Option<u64> {
        let arch = self.architecture()?;
        self.get_u64(&format!("{arch}.{name}"))
    }

    /// An array of strings by key (e.g. `tokenizer.ggml.tokens`).
    pub fn get_str_array(&self, key: &str) -> Option<Vec<&str>> {
        self.get(key)?.as_array()?.iter().map(GgufValue::as_str).collect()
    }
}

enum ReadError {
    Io(io::Error),
    Format(String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

struct Reader<R> {
    r: R,
    v1: bool,
}

impl<R: Read> Reader<R> {
    fn len(&mut self) -> Result<u64, ReadError> {
        Ok(if self.v1 { read_u32(&mut self.r)?.into() } else { read_u64(&mut self.r)? })
    }

    fn string(&mut self) -> Result<String, ReadError> {
        let n = self.len()?;
        if n > MAX_STRING_LEN {
            return Err(ReadError::Format(format!("string of {n} bytes")));
        }
        let mut buf = vec![0u8; n as usize];
        self.r.read_exact(&mut buf)?;
        Ok(match String::from_utf8(buf) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }

    fn value(&mut self, ty: u32, depth: usize) -> Result<GgufValue, ReadError> {
        let r = &mut self.r;
        Ok(match ty {
            0 => GgufValue::U8(read_arr::<1>(r)?[0]),
            1 => GgufValue::I8(read_arr::<1>(r)?[0] as i8),
            2 => GgufValue::U16(u16::from_le_bytes(read_arr(r)?)),
            3 => GgufValue::I16(i16::from_le_bytes(read_arr(r)?)),
            4 => GgufValue::U32(u32::from_le_bytes(read_arr(r)?)),
            5 => GgufValue::I32(i32::from_le_bytes(read_arr(r)?)),
            6 => GgufValue::F32(f32::from_le_bytes(read_arr(r)?)),
            7 => GgufValue::Bool(read_arr::<1>(r)?[0] != 0),
            8 => GgufValue::String(self.string()?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(ReadError::Format("arrays nested too deep".into()));
                }
                let elem = read_u32(&mut self.r)?;
                let n = self.len()?;
                if n > MAX_ARRAY_LEN {
                    return Err(ReadError::Format(format!("array of {n} elements")));
                }
                let mut out = Vec::with_capacity(n.min(1 << 20) as usize);
                for _ in 0..n {
                    out.push(self.value(elem, depth + 1)?);
                }
                GgufValue::Array(out)
            }
            10 => GgufValue::U64(u64::from_le_bytes(read_arr(r)?)),
            11 => GgufValue::I64(i64::from_le_bytes(read_arr(r)?)),
            12 => GgufValue::F64(f64::from_le_bytes(read_arr(r)?)),
            other => {
                return Err(ReadError::Format(format!("unknown metadata value type {other}")));
            }
        })
    }
}

fn read_arr<const N: usize>(r: &mut impl Read) -> io::Result<[u8; N]> {
    let mut b = [0u8; N];
    r.read_exact(&mut b)?;
    Ok(b)
}

fn read_u32(r: &mut impl Read) -> io::Result<u32> {
    read_arr(r).map(u32::from_le_bytes)
}

fn read_u64(r: &mut impl Read) -> io::Result<u64> {
    read_arr(r).map(u64::from_le_bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Write a tiny GGUF v3 header by hand, the way the spec lays it out.
    fn gguf_bytes(kvs: &[(&str, u32, Vec<u8>)]) -> Vec<u8> {
        let mut b = b"GGUF".to_vec();
        b.extend(3u32.to_le_bytes());
        b.extend(0u64.to_le_bytes());
        b.extend((kvs.len() as u64).to_le_bytes());
        for (k, ty, v) in kvs {
            b.extend((k.len() as u64).to_le_bytes());
            b.extend(k.as_bytes());
            b.extend(ty.to_le_bytes());
            b.extend(v);
        }
        b
    }

    fn gstr(s: &str) -> Vec<u8> {
        let mut b = (s.len() as u64).to_le_bytes().to_vec();
        b.extend(s.as_bytes());
        b
    }

    #[test]
    fn reads_scalars_strings_and_arrays() {
        let mut arr = 8u32.to_le_bytes().to_vec();
        arr.extend(2u64.to_le_bytes());
        arr.extend(gstr("a b"));
        arr.extend(gstr("<|x|>"));
        let bytes = gguf_bytes(&[
            ("general.architecture", 8, gstr("llama")),
            ("llama.block_count", 4, 30u32.to_le_bytes().to_vec()),
            ("f", 6, 0.5f32.to_le_bytes().to_vec()),
            ("b", 7, vec![1]),
            ("tokenizer.ggml.merges", 9, arr),
        ]);
        let m = GgufMetadata::from_reader(&bytes[..]).ok().unwrap();
        assert_eq!(m.version(), 3);
        assert_eq!(m.architecture(), Some("llama"));
        assert_eq!(m.arch_u64("block_count"), Some(30));
        assert_eq!(m.get_f64("f"), Some(0.5));
        assert_eq!(m.get_bool("b"), Some(true));
        assert_eq!(m.get_str_array("tokenizer.ggml.merges"), Some(vec!["a b", "<|x|>"]));
    }

    #[test]
    fn rejects_other_files_and_short_files() {
        assert!(matches!(GgufMetadata::from_reader(&b"PK\x03\x04\0\0\0\0"[..]), Err(ReadError::Format(_))));
        let bytes = gguf_bytes(&[("k", 8, gstr("value"))]);
        assert!(matches!(GgufMetadata::from_reader(&bytes[..bytes.len() - 1]), Err(ReadError::Io(_))));
    }
}
