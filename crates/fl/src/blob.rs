//! Update and model blobs: content-addressed safetensors bytes of a flat parameter vector,
//! one tensor named `delta` or one tensor per named parameter (the layout `safetensors` and
//! PEFT read). Encoding is canonical: the same values give the same bytes, hence the same hash
//! on the ledger.

use std::sync::Arc;

use crate::FlError;
pub use crate::update::{Layout, NamedDelta};

/// Safetensors bytes of a flat vector cut into named tensors (`spec`: name and shape, in
/// flat order), tensors sorted by name, with `{"format": "pt"}` metadata: the layout
/// `safetensors` and PEFT read. Canonical: the same values give the same bytes. A vector of
/// another length than `spec` describes (a malformed update) is written as [`encode_blob`]
/// does, so that it can still be stored, hashed and rejected.
pub fn encode_named_blob(spec: &[(String, Vec<usize>)], values: &[f32]) -> Vec<u8> {
    let total: usize = spec.iter().map(|(_, s)| s.iter().product::<usize>()).sum();
    if total != values.len() {
        return encode_blob(values);
    }
    let mut offsets = Vec::with_capacity(spec.len());
    let mut off = 0usize;
    for (name, shape) in spec {
        let n: usize = shape.iter().product();
        offsets.push((name.as_str(), shape, off, n));
        off += n;
    }
    offsets.sort_by(|a, b| a.0.cmp(b.0));
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({ "format": "pt" }));
    let mut data = Vec::with_capacity(4 * values.len());
    for (name, shape, start, n) in &offsets {
        let begin = data.len();
        for v in &values[*start..start + n] {
            data.extend_from_slice(&v.to_le_bytes());
        }
        header.insert(
            (*name).to_owned(),
            serde_json::json!({ "dtype": "F32", "shape": shape, "data_offsets": [begin, data.len()] }),
        );
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + data.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    out
}

/// Content-addressed safetensors blob of a flat f32 vector named `delta`.
pub fn encode_blob(values: &[f32]) -> Vec<u8> {
    let header = format!(
        r#"{{"delta":{{"dtype":"F32","shape":[{}],"data_offsets":[0,{}]}}}}"#,
        values.len(),
        4 * values.len()
    );
    let mut h = header.into_bytes();
    while !h.len().is_multiple_of(8) {
        h.push(b' ');
    }
    let mut out = Vec::with_capacity(8 + h.len() + 4 * values.len());
    out.extend_from_slice(&(h.len() as u64).to_le_bytes());
    out.extend_from_slice(&h);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

/// The flat vector of a safetensors blob written by [`encode_named_blob`] (`spec` given: its
/// tensors, in `spec`'s order, with the shapes it names) or [`encode_blob`] (one `delta`
/// tensor, any length). Bit for bit the values that were encoded. Errors name what is wrong:
/// a short or unparsable header, a tensor missing or of another shape or dtype, data out of
/// range.
pub fn decode_blob(
    spec: Option<&[(String, Vec<usize>)]>,
    blob: &[u8],
) -> Result<Vec<f32>, FlError> {
    let bad = |reason: String| FlError::MalformedBlob { reason };
    let (header, start) = header_of(blob)?;
    let data = &blob[start..];
    let tensor = |name: &str| -> Result<(Vec<usize>, Vec<f32>), FlError> {
        let t = header
            .get(name)
            .ok_or_else(|| bad(format!("no tensor {name}")))?;
        if t["dtype"] != "F32" {
            return Err(bad(format!("{name} has dtype {}, not F32", t["dtype"])));
        }
        let shape: Vec<usize> = serde_json::from_value(t["shape"].clone())
            .map_err(|e| bad(format!("{name}: shape: {e}")))?;
        let [begin, end]: [usize; 2] = serde_json::from_value(t["data_offsets"].clone())
            .map_err(|e| bad(format!("{name}: data_offsets: {e}")))?;
        let count = shape
            .iter()
            .try_fold(1usize, |a, &d| a.checked_mul(d))
            .ok_or_else(|| {
                bad(format!(
                    "{name}: shape {shape:?} has more values than fit in memory"
                ))
            })?;
        let bytes = data
            .get(begin..end)
            .filter(|b| Some(b.len()) == count.checked_mul(4))
            .ok_or_else(|| {
                bad(format!(
                    "{name}: offsets {begin}..{end} do not hold {count} f32 values in {} data bytes",
                    data.len()
                ))
            })?;
        let values = bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        Ok((shape, values))
    };
    let names: Vec<&String> = header.keys().filter(|k| *k != "__metadata__").collect();
    if names.len() == 1 && names[0] == "delta" {
        return Ok(tensor("delta")?.1);
    }
    let spec =
        spec.ok_or_else(|| bad(format!("expected one tensor named delta, found {names:?}")))?;
    if names.len() != spec.len() {
        return Err(bad(format!(
            "{} tensors, the model has {}",
            names.len(),
            spec.len()
        )));
    }
    let mut out = Vec::new();
    for (name, shape) in spec {
        let (got, values) = tensor(name)?;
        if &got != shape {
            return Err(bad(format!("{name} has shape {got:?}, expected {shape:?}")));
        }
        out.extend(values);
    }
    Ok(out)
}

/// The named delta a safetensors blob holds: every tensor (in name order) with its shape and
/// values, whatever the model's layout (check it with [`NamedDelta::into_layout`]). Errors
/// name what is wrong, as [`decode_blob`]'s do.
pub fn decode_named_blob(blob: &[u8]) -> Result<NamedDelta, FlError> {
    let (header, _) = header_of(blob)?;
    let mut tensors = Vec::new();
    for (name, t) in header.iter().filter(|(k, _)| *k != "__metadata__") {
        let shape: Vec<usize> =
            serde_json::from_value(t["shape"].clone()).map_err(|e| FlError::MalformedBlob {
                reason: format!("{name}: shape: {e}"),
            })?;
        tensors.push((name.clone(), shape));
    }
    if tensors.is_empty() {
        return Err(FlError::MalformedBlob {
            reason: "no tensors".to_owned(),
        });
    }
    let layout = Layout::new(tensors).map_err(|e| FlError::MalformedBlob {
        reason: match e {
            FlError::InvalidLayout { reason } => reason,
            other => other.to_string(),
        },
    })?;
    let values = decode_blob(Some(layout.tensors()), blob)?;
    Ok(NamedDelta::new(Arc::new(layout), values))
}

/// The JSON header of a safetensors blob and the offset of its data.
pub(crate) fn header_of(
    blob: &[u8],
) -> Result<(serde_json::Map<String, serde_json::Value>, usize), FlError> {
    let bad = |reason: String| FlError::MalformedBlob { reason };
    let n = blob
        .get(..8)
        .map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
        .ok_or_else(|| {
            bad(format!(
                "{} bytes, shorter than the 8-byte header length",
                blob.len()
            ))
        })?;
    let header = usize::try_from(n)
        .ok()
        .and_then(|n| blob.get(8..8usize.checked_add(n)?))
        .ok_or_else(|| {
            bad(format!(
                "header of {n} bytes does not fit in {} bytes",
                blob.len()
            ))
        })?;
    let map = serde_json::from_slice(header)
        .map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
    Ok((map, 8 + header.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blobs_decode_bit_for_bit_and_bad_ones_are_named() {
        let spec = vec![("b".to_owned(), vec![2]), ("a".to_owned(), vec![1, 2])];
        let values = [1.5, -0.0, f32::MIN_POSITIVE, 3.25e-9];
        let back = decode_blob(Some(&spec), &encode_named_blob(&spec, &values)).unwrap();
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&back), bits(&values));
        assert_eq!(decode_blob(None, &encode_blob(&values)).unwrap().len(), 4);
        // A malformed update's single `delta` tensor decodes, whatever its length.
        assert_eq!(
            decode_blob(Some(&spec), &encode_named_blob(&spec, &[1.0])).unwrap(),
            vec![1.0]
        );
        let err = |r: Result<Vec<f32>, FlError>| r.unwrap_err().to_string();
        assert!(err(decode_blob(None, b"abc")).contains("shorter"));
        let mut cut = encode_named_blob(&spec, &values);
        cut.truncate(cut.len() - 4);
        assert!(err(decode_blob(Some(&spec), &cut)).contains("do not hold"));
        let other = vec![("b".to_owned(), vec![1, 2]), ("a".to_owned(), vec![2])];
        assert!(
            err(decode_blob(
                Some(&other),
                &encode_named_blob(&spec, &values)
            ))
            .contains("shape")
        );
        assert!(err(decode_blob(None, &encode_named_blob(&spec, &values))).contains("delta"));
    }

    /// A blob with `header` as its JSON header and `data` after it.
    fn raw(header: &str, data: &[u8]) -> Vec<u8> {
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend_from_slice(header.as_bytes());
        out.extend_from_slice(data);
        out
    }

    #[test]
    fn named_deltas_round_trip_and_a_wrong_layout_is_refused_by_tensor_name() {
        let spec = vec![("b".to_owned(), vec![2]), ("a".to_owned(), vec![1, 2])];
        let model = Arc::new(Layout::new(spec.clone()).unwrap());
        let values = vec![1.0, 2.0, 3.0, 4.0];
        let d = decode_named_blob(&encode_named_blob(&spec, &values)).unwrap();
        // Tensors come back in name order, each with its values.
        assert_eq!(
            d.layout.tensors(),
            [("a".to_owned(), vec![1, 2]), ("b".to_owned(), vec![2])]
        );
        assert_eq!(d.values, vec![3.0, 4.0, 1.0, 2.0]);
        let d = d.into_layout(&model).unwrap();
        assert!(Arc::ptr_eq(&d.layout, &model));
        assert_eq!(d.values, values);
        assert_eq!(d.encode(), model.encode(&values));
        assert_eq!(
            NamedDelta::decode(&d.encode())
                .unwrap()
                .into_layout(&model)
                .unwrap(),
            d
        );
        let tensors = |t: &[(&str, &[usize])]| {
            Arc::new(
                Layout::new(
                    t.iter()
                        .map(|(n, s)| ((*n).to_owned(), s.to_vec()))
                        .collect(),
                )
                .unwrap(),
            )
        };
        let err = |d: NamedDelta| d.into_layout(&model).unwrap_err().to_string();
        // Missing, extra and misshapen tensors are named.
        let one = NamedDelta::new(tensors(&[("b", &[2])]), vec![1.0, 2.0]);
        assert!(err(one).contains("no tensor a"));
        let three = NamedDelta::new(
            tensors(&[("a", &[1, 2]), ("b", &[2]), ("c", &[1])]),
            vec![0.0; 5],
        );
        assert!(err(three).contains("a tensor c (shape [1]), which the model does not"));
        let shaped = NamedDelta::new(tensors(&[("a", &[2, 1]), ("b", &[2])]), vec![0.0; 4]);
        assert!(err(shaped).contains("tensor a has shape [2, 1], the model's [1, 2]"));
        let short = NamedDelta::new(Arc::clone(&model), vec![0.0; 3]);
        assert!(err(short).contains("its tensors hold 4 values, the delta has 3"));
        // A flat update is one `delta` tensor: against a named model it is refused by name.
        let flat = decode_named_blob(&encode_blob(&values)).unwrap();
        assert_eq!(flat, NamedDelta::flat(values.clone()));
        assert_eq!(
            flat.encode(),
            encode_blob(&values),
            "flat blobs keep their bytes"
        );
        let e = err(flat);
        assert!(
            e.contains("no tensor b, which the model has (and 1 more)"),
            "{e}"
        );
        assert!(
            e.contains("a tensor delta (shape [4]), which the model does not"),
            "{e}"
        );
        assert!(
            decode_named_blob(b"abc")
                .unwrap_err()
                .to_string()
                .contains("shorter")
        );
    }

    #[test]
    fn hostile_headers_are_refused_without_a_panic() {
        let dec = |h: &str| {
            decode_named_blob(&raw(h, &[0; 16]))
                .unwrap_err()
                .to_string()
        };
        // Shapes whose sizes overflow, in one tensor or across two.
        let e =
            dec(r#"{"a":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,16]}}"#);
        assert!(e.contains("tensor a of shape"), "{e}");
        let e = dec(r#"{"a":{"dtype":"F32","shape":[4611686018427387904],"data_offsets":[0,16]}}"#);
        assert!(e.contains("a: offsets 0..16 do not hold"), "{e}");
        let e = decode_blob(
            None,
            &raw(
                r#"{"delta":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,16]}}"#,
                &[0; 16],
            ),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("more values than fit"), "{e}");
        // safetensors' reserved name as a tensor, offsets backwards, no tensors at all.
        let e = dec(r#"{"__metadata__":{"format":"pt"}}"#);
        assert!(e.contains("no tensors"), "{e}");
        let e = dec(r#"{"a":{"dtype":"F32","shape":[1],"data_offsets":[8,4]}}"#);
        assert!(e.contains("do not hold"), "{e}");
        let e = dec(r#"{"a":{"dtype":"F16","shape":[1],"data_offsets":[0,2]}}"#);
        assert!(e.contains("not F32"), "{e}");
    }
}
