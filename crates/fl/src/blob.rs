//! Update and model blobs: content-addressed safetensors bytes of a flat parameter vector,
//! one tensor named `delta` or one tensor per named parameter (the layout `safetensors` and
//! PEFT read). Encoding is canonical: the same values give the same bytes, hence the same hash
//! on the ledger.

use crate::FlError;

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
    let data = &blob[8 + header.len()..];
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(header)
        .map_err(|e| bad(format!("header is not a JSON object: {e}")))?;
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
        let count: usize = shape.iter().product();
        let bytes = data
            .get(begin..end)
            .filter(|b| b.len() == 4 * count)
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
}
