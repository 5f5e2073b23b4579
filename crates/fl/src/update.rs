//! Client updates and their validation.
//!
//! An update carries a [`NamedDelta`]: the change a client proposes to the model's trainable
//! tensors, with each tensor's name and shape (a [`Layout`]) and the values of all of them in
//! one flat vector, tensor after tensor. The strategies work on the flat values; the names
//! and shapes are what [`validate`] checks against the global model's layout, so an update
//! for another model (a renamed, missing, extra or misshapen tensor) is refused by name, not
//! only by its length, and a non-finite value is named by its tensor and its index in it.

use std::collections::BTreeMap;
use std::sync::Arc;

use cohort_core::Score;
use serde::{Deserialize, Serialize};

use crate::FlError;
use crate::blob::{encode_blob, encode_named_blob};

/// The name of the one tensor of [`Layout::flat`]: a model whose parameters are not named.
pub const FLAT_TENSOR: &str = "delta";

/// A model's trainable tensors: each one's name and shape, in the order in which their values
/// follow one another in the flat parameter vector. A task gives its layout once
/// ([`crate::learner::Learner::layout`]), shared by `Arc` among the global model and every
/// update of a run, so that a round's updates do not each copy it.
///
/// Checked at construction: names are unique and not safetensors' reserved `__metadata__`,
/// and the number of values fits in memory.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(
    try_from = "Vec<(String, Vec<usize>)>",
    into = "Vec<(String, Vec<usize>)>"
)]
pub struct Layout {
    tensors: Vec<(String, Vec<usize>)>,
    len: usize,
}

impl Layout {
    /// The layout of `tensors` (name and shape, in flat order). A name given twice, the name
    /// `__metadata__`, or shapes whose values overflow `usize` are refused, the error naming
    /// the tensor.
    pub fn new(tensors: Vec<(String, Vec<usize>)>) -> Result<Self, FlError> {
        let bad = |reason: String| FlError::InvalidLayout { reason };
        let mut seen = std::collections::BTreeSet::new();
        let mut len = 0usize;
        for (name, shape) in &tensors {
            if name == "__metadata__" {
                return Err(bad(
                    "a tensor named __metadata__ (safetensors reserves the name)".into(),
                ));
            }
            if !seen.insert(name.as_str()) {
                return Err(bad(format!("tensor {name} appears twice")));
            }
            len = shape
                .iter()
                .try_fold(1usize, |a, &d| a.checked_mul(d))
                .and_then(|n| len.checked_add(n))
                .ok_or_else(|| {
                    bad(format!(
                        "tensor {name} of shape {shape:?} has more values than fit in memory"
                    ))
                })?;
        }
        Ok(Self { tensors, len })
    }

    /// The layout of a model whose parameters are not named: one tensor `delta` of shape
    /// `[len]`. Its blobs are written without metadata ([`encode_blob`]), as cohort always
    /// wrote them.
    pub fn flat(len: usize) -> Self {
        Self {
            tensors: vec![(FLAT_TENSOR.to_owned(), vec![len])],
            len,
        }
    }

    /// Each tensor's name and shape, in flat order.
    pub fn tensors(&self) -> &[(String, Vec<usize>)] {
        &self.tensors
    }

    /// Number of values of all tensors together: the length of the flat vector.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the model has no trainable value.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Whether this is a [`Layout::flat`] layout (one tensor named `delta`).
    pub fn is_flat(&self) -> bool {
        matches!(self.tensors.as_slice(), [(name, shape)] if name == FLAT_TENSOR && shape == &[self.len])
    }

    /// The safetensors bytes of `values` (the flat vector, in this layout's order), whose
    /// SHA-256 is what goes on the ledger: one tensor per name, sorted by name, with `{"format":
    /// "pt"}` metadata (the layout PEFT reads), or for a [`Layout::flat`] layout one tensor
    /// `delta` without metadata. Canonical: the same values give the same bytes. A vector of
    /// another length (a malformed update) is written as one `delta` tensor, so that it can
    /// still be stored, hashed and refused.
    pub fn encode(&self, values: &[f32]) -> Vec<u8> {
        if self.is_flat() || values.len() != self.len {
            encode_blob(values)
        } else {
            encode_named_blob(&self.tensors, values)
        }
    }

    /// The tensor that flat index `i` falls in, and `i`'s index within it.
    fn locate(&self, i: usize) -> Option<(&str, usize)> {
        let mut start = 0usize;
        for (name, shape) in &self.tensors {
            let n: usize = shape.iter().product();
            if i < start + n {
                return Some((name, i - start));
            }
            start += n;
        }
        None
    }

    /// Why a delta of this layout does not fit `model`, or `None` when the two are the same:
    /// the first tensor `model` has that this one lacks, the first one it does not have, the
    /// first of another shape (each that applies, with how many more there are), or the same
    /// tensors in another order.
    fn mismatch(&self, model: &Layout) -> Option<String> {
        if self == model {
            return None;
        }
        let mine: BTreeMap<&str, &Vec<usize>> =
            self.tensors.iter().map(|(n, s)| (n.as_str(), s)).collect();
        let theirs: BTreeMap<&str, &Vec<usize>> =
            model.tensors.iter().map(|(n, s)| (n.as_str(), s)).collect();
        let more = |n: usize| {
            if n > 1 {
                format!(" (and {} more)", n - 1)
            } else {
                String::new()
            }
        };
        let missing: Vec<&str> = model
            .tensors
            .iter()
            .map(|(n, _)| n.as_str())
            .filter(|n| !mine.contains_key(n))
            .collect();
        let extra: Vec<(&str, &Vec<usize>)> = self
            .tensors
            .iter()
            .map(|(n, s)| (n.as_str(), s))
            .filter(|(n, _)| !theirs.contains_key(n))
            .collect();
        let shaped: Vec<(&str, &Vec<usize>, &Vec<usize>)> = model
            .tensors
            .iter()
            .filter_map(|(n, s)| mine.get(n.as_str()).map(|got| (n.as_str(), *got, s)))
            .filter(|(_, got, want)| got != want)
            .collect();
        let mut parts = Vec::new();
        if let Some(name) = missing.first() {
            parts.push(format!(
                "it has no tensor {name}, which the model has{}",
                more(missing.len())
            ));
        }
        if let Some((name, shape)) = extra.first() {
            parts.push(format!(
                "it has a tensor {name} (shape {shape:?}), which the model does not{}",
                more(extra.len())
            ));
        }
        if let Some((name, got, want)) = shaped.first() {
            parts.push(format!(
                "its tensor {name} has shape {got:?}, the model's {want:?}{}",
                more(shaped.len())
            ));
        }
        if parts.is_empty() {
            parts.push("its tensors are in another order than the model's".into());
        }
        Some(parts.join("; "))
    }
}

impl TryFrom<Vec<(String, Vec<usize>)>> for Layout {
    type Error = FlError;
    fn try_from(tensors: Vec<(String, Vec<usize>)>) -> Result<Self, FlError> {
        Self::new(tensors)
    }
}

impl From<Layout> for Vec<(String, Vec<usize>)> {
    fn from(l: Layout) -> Self {
        l.tensors
    }
}

/// A change to a model's trainable tensors (or a whole model): the tensors' names and shapes
/// ([`Layout`]) and their values, flat, tensor after tensor in the layout's order. What a
/// client's update carries and what a blob holds; [`NamedDelta::encode`] writes it,
/// [`NamedDelta::decode`] reads it back (tensors in name order), and
/// [`NamedDelta::into_layout`] checks it against the global model's layout and puts it in that
/// order, so that a strategy can work on the flat `values`.
///
/// `values.len()` is `layout.len()` for every delta this crate makes; [`validate`] refuses one
/// where it is not.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "WireDelta", into = "WireDelta")]
pub struct NamedDelta {
    /// Each tensor's name and shape, in the order of `values`.
    pub layout: Arc<Layout>,
    /// The values of every tensor, flat.
    pub values: Vec<f32>,
}

impl NamedDelta {
    /// `values` in `layout` (flat, in its order).
    pub fn new(layout: Arc<Layout>, values: Vec<f32>) -> Self {
        Self { layout, values }
    }

    /// A flat vector as one tensor named `delta` ([`Layout::flat`]).
    pub fn flat(values: Vec<f32>) -> Self {
        Self {
            layout: Arc::new(Layout::flat(values.len())),
            values,
        }
    }

    /// The safetensors bytes of this delta ([`Layout::encode`]): decoding them gives it back,
    /// tensors in name order.
    pub fn encode(&self) -> Vec<u8> {
        self.layout.encode(&self.values)
    }

    /// The named delta a safetensors blob holds: every tensor (in name order) with its shape
    /// and values, whatever the model's layout (check it with [`NamedDelta::into_layout`] or
    /// [`validate`]). Errors name what is wrong with the blob.
    ///
    /// A compressed update blob ([`crate::compress`]) decodes to the dense delta it stands
    /// for: the values it sent, zeros elsewhere.
    pub fn decode(blob: &[u8]) -> Result<Self, FlError> {
        crate::compress::decode_update(blob).map(|(d, _)| d)
    }

    /// Euclidean norm of the values.
    pub fn norm(&self) -> f64 {
        self.values
            .iter()
            .map(|&x| f64::from(x) * f64::from(x))
            .sum::<f64>()
            .sqrt()
    }

    /// This delta in the layout `model` (the global model's tensors), its values reordered to
    /// match and the layout shared with `model`. A tensor `model` has that is missing, one it
    /// does not have, one of another shape, or values that do not fill the tensors are
    /// refused, the error naming the tensor.
    pub fn into_layout(self, model: &Arc<Layout>) -> Result<Self, FlError> {
        let bad = |reason: String| FlError::MalformedBlob { reason };
        if self.values.len() != self.layout.len() {
            return Err(bad(format!(
                "its tensors hold {} values, the delta has {}",
                self.layout.len(),
                self.values.len()
            )));
        }
        match self.layout.mismatch(model) {
            None => Ok(Self {
                layout: Arc::clone(model),
                values: self.values,
            }),
            Some(_) if self.is_permutation_of(model) => Ok(self.reorder(model)),
            Some(reason) => Err(bad(reason)),
        }
    }

    /// This delta in the layout `model` when it holds the same tensors in another order;
    /// otherwise unchanged (for [`validate`] to refuse by name).
    pub fn arranged(self, model: &Arc<Layout>) -> Self {
        if self.values.len() == self.layout.len() && self.is_permutation_of(model) {
            self.reorder(model)
        } else {
            self
        }
    }

    /// Whether this delta's tensors are `model`'s, names and shapes, in any order.
    fn is_permutation_of(&self, model: &Layout) -> bool {
        fn sorted(l: &Layout) -> Vec<&(String, Vec<usize>)> {
            let mut t: Vec<&(String, Vec<usize>)> = l.tensors.iter().collect();
            t.sort();
            t
        }
        sorted(&self.layout) == sorted(model)
    }

    /// The values in `model`'s order (the tensors being the same, in another order).
    fn reorder(self, model: &Arc<Layout>) -> Self {
        if *self.layout == **model {
            return Self {
                layout: Arc::clone(model),
                values: self.values,
            };
        }
        let mut at = BTreeMap::new();
        let mut off = 0usize;
        for (name, shape) in &self.layout.tensors {
            let n: usize = shape.iter().product();
            at.insert(name.as_str(), off..off + n);
            off += n;
        }
        let mut values = Vec::with_capacity(self.values.len());
        for (name, _) in &model.tensors {
            if let Some(r) = at.get(name.as_str()) {
                values.extend_from_slice(&self.values[r.clone()]);
            }
        }
        Self {
            layout: Arc::clone(model),
            values,
        }
    }
}

impl From<Vec<f32>> for NamedDelta {
    /// A flat vector, as one tensor named `delta` ([`NamedDelta::flat`]).
    fn from(values: Vec<f32>) -> Self {
        Self::flat(values)
    }
}

/// A [`NamedDelta`] as it is serialized: its tensors (checked into a [`Layout`] when read)
/// and its values.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct WireDelta {
    tensors: Layout,
    values: Vec<f32>,
}

impl TryFrom<WireDelta> for NamedDelta {
    type Error = FlError;
    fn try_from(w: WireDelta) -> Result<Self, FlError> {
        Ok(Self {
            layout: Arc::new(w.tensors),
            values: w.values,
        })
    }
}

impl From<NamedDelta> for WireDelta {
    fn from(d: NamedDelta) -> Self {
        Self {
            tensors: Arc::unwrap_or_clone(d.layout),
            values: d.values,
        }
    }
}

/// One client's contribution to a round: the change it proposes to the trainable tensors
/// (a [`NamedDelta`]: their names, shapes and flat values), and how many samples it used.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClientUpdate {
    /// The client.
    pub client: u32,
    /// The round the update was trained for.
    pub round: u64,
    /// Proposed change to the trainable tensors.
    pub delta: NamedDelta,
    /// Samples the client claims to have trained on.
    pub num_samples: u64,
    /// Consensus score from the validators, once known.
    pub score: Option<Score>,
}

impl ClientUpdate {
    /// An update without a score yet. A `Vec<f32>` is a flat delta ([`NamedDelta::flat`]).
    pub fn new(client: u32, round: u64, delta: impl Into<NamedDelta>, num_samples: u64) -> Self {
        Self {
            client,
            round,
            delta: delta.into(),
            num_samples,
            score: None,
        }
    }

    /// Sets the consensus score.
    pub fn with_score(mut self, s: Score) -> Self {
        self.score = Some(s);
        self
    }

    /// Euclidean norm of the delta.
    pub fn norm(&self) -> f64 {
        self.delta.norm()
    }
}

/// Checks an update before it can be scored or aggregated: the right round, the global
/// model's `layout` (the same tensors, by name and shape, in its order: a missing, unexpected
/// or misshapen tensor is named), finite values (a non-finite one is named by its tensor and
/// its index in it), a positive sample count.
pub fn validate(u: &ClientUpdate, round: u64, layout: &Layout) -> Result<(), FlError> {
    let reject = |reason: String| FlError::UpdateRejected {
        client: u.client,
        round: u.round,
        reason,
    };
    if u.round != round {
        return Err(reject(format!(
            "it is for round {}, the open round is {round}",
            u.round
        )));
    }
    let d = &u.delta;
    if !std::ptr::eq(&*d.layout, layout)
        && let Some(reason) = d.layout.mismatch(layout)
    {
        return Err(reject(reason));
    }
    if d.values.len() != layout.len() {
        return Err(reject(format!(
            "it has {} parameters, the model has {}",
            d.values.len(),
            layout.len()
        )));
    }
    if let Some(i) = d.values.iter().position(|x| !x.is_finite()) {
        let (name, j) = layout.locate(i).unwrap_or((FLAT_TENSOR, i));
        return Err(reject(format!(
            "value {j} of tensor {name} is {} (parameter {i})",
            d.values[i]
        )));
    }
    if u.num_samples == 0 {
        return Err(reject("it claims zero samples".into()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout(tensors: &[(&str, &[usize])]) -> Arc<Layout> {
        Arc::new(
            Layout::new(
                tensors
                    .iter()
                    .map(|(n, s)| ((*n).to_owned(), s.to_vec()))
                    .collect(),
            )
            .unwrap(),
        )
    }

    /// A LoRA-like model: two tensors, 4 + 6 values.
    fn model() -> Arc<Layout> {
        layout(&[("lora_A.weight", &[2, 2]), ("lora_B.weight", &[3, 2])])
    }

    fn update(l: Arc<Layout>, values: Vec<f32>) -> ClientUpdate {
        ClientUpdate::new(3, 2, NamedDelta::new(l, values), 10)
    }

    fn refused(u: &ClientUpdate) -> String {
        validate(u, 2, &model()).unwrap_err().to_string()
    }

    #[test]
    fn validation_names_the_problem() {
        let flat = Layout::flat(4);
        let ok = ClientUpdate::new(3, 2, vec![0.0; 4], 10);
        assert!(validate(&ok, 2, &flat).is_ok());
        let msg = |u: &ClientUpdate| validate(u, 2, &flat).unwrap_err().to_string();
        assert!(msg(&ClientUpdate::new(3, 1, vec![0.0; 4], 10)).contains("round 1"));
        assert!(
            msg(&ClientUpdate::new(3, 2, vec![0.0; 5], 10))
                .contains("tensor delta has shape [5], the model's [4]")
        );
        let nan = msg(&ClientUpdate::new(3, 2, vec![0.0, f32::NAN, 0.0, 0.0], 10));
        assert!(nan.contains("value 1 of tensor delta is NaN"), "{nan}");
        assert!(msg(&ClientUpdate::new(3, 2, vec![0.0; 4], 0)).contains("zero samples"));
        // Values that do not fill the layout they claim: refused by count.
        let short = ClientUpdate::new(3, 2, NamedDelta::new(Arc::new(flat.clone()), vec![0.0]), 1);
        assert!(msg(&short).contains("1 parameters, the model has 4"));
    }

    #[test]
    fn an_update_in_the_models_layout_passes_shared_or_equal() {
        let m = model();
        assert!(validate(&update(Arc::clone(&m), vec![0.5; 10]), 2, &m).is_ok());
        // An equal layout of its own (decoded from a blob) passes too.
        let own = layout(&[("lora_A.weight", &[2, 2]), ("lora_B.weight", &[3, 2])]);
        assert!(validate(&update(own, vec![0.5; 10]), 2, &m).is_ok());
    }

    #[test]
    fn a_renamed_tensor_is_refused_by_name() {
        let l = layout(&[("lora_A.weight", &[2, 2]), ("lora_C.weight", &[3, 2])]);
        let e = refused(&update(l, vec![0.0; 10]));
        assert!(
            e.contains(
                "it has no tensor lora_B.weight, which the model has; \
                 it has a tensor lora_C.weight (shape [3, 2]), which the model does not"
            ),
            "{e}"
        );
        assert!(
            e.starts_with("update from client 3 for round 2 rejected"),
            "{e}"
        );
    }

    #[test]
    fn a_missing_tensor_is_refused_by_name() {
        let l = layout(&[("lora_B.weight", &[3, 2])]);
        let e = refused(&update(l, vec![0.0; 6]));
        assert!(
            e.contains("no tensor lora_A.weight, which the model has"),
            "{e}"
        );
    }

    #[test]
    fn an_extra_tensor_is_refused_by_name() {
        let l = layout(&[
            ("lora_A.weight", &[2, 2]),
            ("lora_B.weight", &[3, 2]),
            ("score.bias", &[1]),
        ]);
        let e = refused(&update(l, vec![0.0; 11]));
        assert!(
            e.contains("a tensor score.bias (shape [1]), which the model does not"),
            "{e}"
        );
    }

    #[test]
    fn a_wrongly_shaped_tensor_is_refused_by_name_even_at_the_right_length() {
        // Same names, same number of values: only the shape tells.
        let l = layout(&[("lora_A.weight", &[2, 2]), ("lora_B.weight", &[2, 3])]);
        let e = refused(&update(l, vec![0.0; 10]));
        assert!(
            e.contains("tensor lora_B.weight has shape [2, 3], the model's [3, 2]"),
            "{e}"
        );
    }

    #[test]
    fn a_nan_in_the_second_tensor_is_named_by_tensor_and_index() {
        let mut v = vec![0.0; 10];
        v[4 + 5] = f32::NAN;
        let e = refused(&update(model(), v));
        assert!(
            e.contains("value 5 of tensor lora_B.weight is NaN (parameter 9)"),
            "{e}"
        );
        let mut v = vec![0.0; 10];
        v[1] = f32::NEG_INFINITY;
        let e = refused(&update(model(), v));
        assert!(e.contains("value 1 of tensor lora_A.weight is -inf"), "{e}");
    }

    #[test]
    fn tensors_in_another_order_are_refused_unless_arranged() {
        let swapped = layout(&[("lora_B.weight", &[3, 2]), ("lora_A.weight", &[2, 2])]);
        let values: Vec<f32> = (0..10).map(|x| x as f32).collect();
        let u = update(Arc::clone(&swapped), values.clone());
        assert!(refused(&u).contains("another order"));
        // Arranged into the model's layout: the values follow their tensors.
        let m = model();
        let d = NamedDelta::new(swapped, values).arranged(&m);
        assert!(Arc::ptr_eq(&d.layout, &m));
        assert_eq!(
            d.values,
            vec![6.0, 7.0, 8.0, 9.0, 0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
        );
        // A delta that does not fit is left as it is, for validation to name.
        let other = layout(&[("x", &[10])]);
        let d = NamedDelta::new(Arc::clone(&other), vec![0.0; 10]).arranged(&m);
        assert!(Arc::ptr_eq(&d.layout, &other));
    }

    #[test]
    fn layouts_refuse_duplicates_reserved_names_and_overflow() {
        let err = |t: Vec<(&str, Vec<usize>)>| {
            Layout::new(t.into_iter().map(|(n, s)| (n.to_owned(), s)).collect())
                .unwrap_err()
                .to_string()
        };
        assert!(err(vec![("a", vec![1]), ("a", vec![2])]).contains("tensor a appears twice"));
        assert!(err(vec![("__metadata__", vec![1])]).contains("__metadata__"));
        assert!(err(vec![("a", vec![usize::MAX, 2])]).contains("tensor a of shape"));
        assert!(err(vec![("a", vec![usize::MAX]), ("b", vec![1])]).contains("tensor b"));
        let l = Layout::new(vec![("a".into(), vec![2, 3]), ("b".into(), vec![])]).unwrap();
        assert_eq!((l.len(), l.is_flat()), (7, false));
        assert!(Layout::flat(3).is_flat());
        assert_eq!(l.locate(6), Some(("b", 0)));
        assert_eq!(l.locate(7), None);
    }

    #[test]
    fn named_deltas_serialize_and_a_bad_layout_does_not_deserialize() {
        let d = NamedDelta::new(model(), (0..10).map(|x| x as f32).collect());
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains("lora_B.weight"), "{json}");
        let back: NamedDelta = serde_json::from_str(&json).unwrap();
        assert_eq!(back, d);
        let twice = r#"{"tensors":[["a",[1]],["a",[1]]],"values":[0.0,0.0]}"#;
        let e = serde_json::from_str::<NamedDelta>(twice).unwrap_err();
        assert!(e.to_string().contains("tensor a appears twice"), "{e}");
    }
}
