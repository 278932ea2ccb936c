//! Moving weights in and out of a [`nn::VarStore`]: safetensors files (through the
//! `safetensors` crate), copies with Hugging Face name candidates, and BERT's seeded
//! initialization.

use safetensors::{Dtype, SafeTensors, tensor::TensorView};
use tch::{Device, Kind, Tensor, nn};

use crate::bert::{BertConfig, initial_values};
use crate::checkpoint::FormatError;

/// The libtorch element kind of a safetensors dtype (`None` for the 4-, 6- and 8-bit
/// floats and the unsigned integers wider than a byte, which libtorch cannot hold here).
pub fn kind_of_dtype(dtype: Dtype) -> Option<Kind> {
    Some(match dtype {
        Dtype::F64 => Kind::Double,
        Dtype::F32 => Kind::Float,
        Dtype::F16 => Kind::Half,
        Dtype::BF16 => Kind::BFloat16,
        Dtype::I64 => Kind::Int64,
        Dtype::I32 => Kind::Int,
        Dtype::I16 => Kind::Int16,
        Dtype::I8 => Kind::Int8,
        Dtype::U8 => Kind::Uint8,
        Dtype::BOOL => Kind::Bool,
        _ => return None,
    })
}

/// The safetensors dtype of a libtorch element kind (`None` for complex and quantized kinds).
pub fn dtype_of_kind(kind: Kind) -> Option<Dtype> {
    Some(match kind {
        Kind::Double => Dtype::F64,
        Kind::Float => Dtype::F32,
        Kind::Half => Dtype::F16,
        Kind::BFloat16 => Dtype::BF16,
        Kind::Int64 => Dtype::I64,
        Kind::Int => Dtype::I32,
        Kind::Int16 => Dtype::I16,
        Kind::Int8 => Dtype::I8,
        Kind::Uint8 => Dtype::U8,
        Kind::Bool => Dtype::BOOL,
        _ => return None,
    })
}

/// A tensor's little-endian bytes with its dtype and shape, ready for
/// [`safetensors::serialize`].
struct HostTensor {
    dtype: Dtype,
    shape: Vec<usize>,
    data: Vec<u8>,
}

impl safetensors::View for &HostTensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(&self.data)
    }

    fn data_len(&self) -> usize {
        self.data.len()
    }
}

fn host_tensor(name: &str, var: &Tensor) -> Result<HostTensor, FormatError> {
    let torch = |source| FormatError::Torch {
        name: name.to_owned(),
        source,
    };
    let tensor = var
        .f_detach()
        .and_then(|t| t.f_to_device(Device::Cpu))
        .and_then(|t| t.f_contiguous())
        .map_err(torch)?;
    let kind = tensor.f_kind().map_err(torch)?;
    let dtype = dtype_of_kind(kind).ok_or_else(|| FormatError::Dtype {
        name: name.to_owned(),
        dtype: format!("{kind:?}"),
    })?;
    let numel = tensor.numel();
    let mut data = vec![0u8; numel * kind.elt_size_in_bytes()];
    tensor.f_copy_data_u8(&mut data, numel).map_err(torch)?;
    let shape = tensor.size().iter().map(|&d| d as usize).collect();
    Ok(HostTensor { dtype, shape, data })
}

/// Every variable of `vs` as a safetensors file, in its own element kind. The `safetensors`
/// crate orders tensors by dtype (widest alignment first), then by name, so equal weights
/// give equal bytes.
pub fn to_safetensors(vs: &nn::VarStore) -> Result<Vec<u8>, FormatError> {
    let mut tensors = Vec::new();
    for (name, var) in vs.variables() {
        let host = host_tensor(&name, &var)?;
        tensors.push((name, host));
    }
    let views = tensors.iter().map(|(name, host)| (name.as_str(), host));
    Ok(safetensors::serialize(views, None)?)
}

/// A parsed safetensors buffer.
#[derive(Debug)]
pub struct TensorFile<'a> {
    file: SafeTensors<'a>,
}

impl<'a> TensorFile<'a> {
    /// Parses (and validates the header of) a safetensors buffer.
    pub fn parse(bytes: &'a [u8]) -> Result<TensorFile<'a>, FormatError> {
        Ok(TensorFile {
            file: SafeTensors::deserialize(bytes)?,
        })
    }

    /// The names of the tensors.
    pub fn names(&self) -> Vec<&str> {
        self.file.names()
    }

    /// The tensor `name` on the CPU in its own element kind, `Ok(None)` if the file has
    /// no such tensor.
    pub fn tensor(&self, name: &str) -> Result<Option<Tensor>, FormatError> {
        match self.file.tensor(name) {
            Ok(view) => tensor_of_view(name, &view).map(Some),
            Err(safetensors::SafeTensorError::TensorNotFound(_)) => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

fn tensor_of_view(name: &str, view: &TensorView<'_>) -> Result<Tensor, FormatError> {
    let kind = kind_of_dtype(view.dtype()).ok_or_else(|| FormatError::Dtype {
        name: name.to_owned(),
        dtype: view.dtype().to_string(),
    })?;
    let shape: Vec<i64> = view.shape().iter().map(|&d| d as i64).collect();
    Tensor::f_from_data_size(view.data(), &shape, kind).map_err(|source| FormatError::Torch {
        name: name.to_owned(),
        source,
    })
}

/// Copies `src` into the variable `name` (converting the element kind and device) without
/// gradient; the shapes must be equal.
pub fn copy_into(name: &str, var: &Tensor, src: &Tensor) -> Result<(), FormatError> {
    if var.size() != src.size() {
        return Err(FormatError::Shape {
            name: name.to_owned(),
            found: src.size(),
            expected: var.size(),
        });
    }
    let mut dst = var.shallow_clone();
    tch::no_grad(|| dst.f_copy_(src)).map_err(|source| FormatError::Torch {
        name: name.to_owned(),
        source,
    })
}

/// Fills every variable of `vs` from the tensor of the same name in `file`; a missing
/// tensor, a tensor that names no variable, or a shape mismatch is an error.
pub fn load_exact(vs: &nn::VarStore, file: &TensorFile<'_>) -> Result<(), FormatError> {
    load_named(vs, &file.names(), |name| file.tensor(name))
}

/// Fills every variable of `vs` from `tensor(name)`, given the `names` of every tensor at
/// hand; a missing tensor, a tensor that names no variable, or a shape mismatch is an error.
pub fn load_named(
    vs: &nn::VarStore,
    names: &[&str],
    tensor: impl Fn(&str) -> Result<Option<Tensor>, FormatError>,
) -> Result<(), FormatError> {
    let vars = vs.variables();
    if let Some(extra) = names.iter().find(|n| !vars.contains_key(**n)) {
        return Err(FormatError::Extra {
            name: (*extra).to_owned(),
        });
    }
    for (name, var) in &vars {
        let src = tensor(name)?.ok_or_else(|| FormatError::Missing { name: name.clone() })?;
        copy_into(name, var, &src)?;
    }
    Ok(())
}

/// The names under which a Hugging Face checkpoint may store the BERT variable `name`:
/// itself, TensorFlow's `gamma`/`beta` for LayerNorm weights and biases, and each of those
/// under a `bert.` prefix.
pub fn hf_name_candidates(name: &str) -> Vec<String> {
    let mut names = vec![name.to_owned()];
    if let Some(stem) = name.strip_suffix("LayerNorm.weight") {
        names.push(format!("{stem}LayerNorm.gamma"));
    } else if let Some(stem) = name.strip_suffix("LayerNorm.bias") {
        names.push(format!("{stem}LayerNorm.beta"));
    }
    let prefixed: Vec<String> = names.iter().map(|n| format!("bert.{n}")).collect();
    names.extend(prefixed);
    names
}

/// Fills the variables of `vs` that `bert_name` maps to a BERT variable name from `file`,
/// trying [`hf_name_candidates`] of that name; variables it maps to `None` are left alone.
pub fn load_pretrained(
    vs: &nn::VarStore,
    file: &TensorFile<'_>,
    bert_name: impl Fn(&str) -> Option<&str>,
) -> Result<(), FormatError> {
    for (name, var) in vs.variables() {
        let Some(stem) = bert_name(&name) else {
            continue;
        };
        let mut found = None;
        for candidate in hf_name_candidates(stem) {
            if let Some(t) = file.tensor(&candidate)? {
                found = Some((candidate, t));
                break;
            }
        }
        let (candidate, src) = found.ok_or_else(|| FormatError::Missing {
            name: stem.to_owned(),
        })?;
        copy_into(&candidate, &var, &src)?;
    }
    Ok(())
}

/// Overwrites the variables of `vs` that `select` picks with BERT's initialization
/// ([`initial_values`]), drawn from a generator seeded by `seed` and each variable's name,
/// so the values depend on nothing else.
pub fn reinitialize(
    vs: &nn::VarStore,
    config: &BertConfig,
    seed: i64,
    select: impl Fn(&str) -> bool,
) -> Result<(), FormatError> {
    let mut vars: Vec<(String, Tensor)> = vs
        .variables()
        .into_iter()
        .filter(|(name, _)| select(name))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    for (name, var) in vars {
        let size = var.size();
        let numel: usize = size.iter().map(|&d| d as usize).product();
        let values = initial_values(config, &name, numel, seed);
        let src = Tensor::f_from_slice(&values)
            .and_then(|t| t.f_view(size.as_slice()))
            .map_err(|source| FormatError::Torch {
                name: name.clone(),
                source,
            })?;
        copy_into(&name, &var, &src)?;
    }
    Ok(())
}
