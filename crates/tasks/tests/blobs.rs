//! The blobs cohort-fl writes are safetensors files that candle (and so PEFT and Hugging Face
//! tools) read with the names and shapes given, and each task's layout is what its blobs carry.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use cohort_fl::blob::encode_named_blob;
use cohort_fl::{Layout, NamedDelta};
use cohort_tasks::imdb::{ImdbTask, ImdbTaskConfig};
use cohort_tasks::lm::{LmTask, LmTaskConfig};
use cohort_tasks::{Learner, LinearTask, LinearTaskConfig};

#[test]
fn named_blobs_are_safetensors_with_the_given_names_and_shapes() {
    let spec = vec![("b".to_owned(), vec![2]), ("a".to_owned(), vec![1, 2])];
    let bytes = encode_named_blob(&spec, &[1.0, 2.0, 3.0, 4.0]);
    let map = candle_core::safetensors::load_buffer(&bytes, &candle_core::Device::Cpu).unwrap();
    assert_eq!(map["b"].to_vec1::<f32>().unwrap(), vec![1.0, 2.0]);
    assert_eq!(map["a"].to_vec2::<f32>().unwrap(), vec![vec![3.0, 4.0]]);
    assert_eq!(bytes, encode_named_blob(&spec, &[1.0, 2.0, 3.0, 4.0]));
    // A malformed (wrong-length) vector is still stored, as one tensor.
    let bad = encode_named_blob(&spec, &[1.0]);
    let map = candle_core::safetensors::load_buffer(&bad, &candle_core::Device::Cpu).unwrap();
    assert_eq!(map["delta"].to_vec1::<f32>().unwrap(), vec![1.0]);
}

fn shared(rel: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../../shared/data")
        .join(rel)
}

/// The tensors of `layout`'s blob of `values` as candle reads them: name, shape, values.
fn read_back(layout: &Layout, values: &[f32]) -> Vec<(String, Vec<usize>, Vec<f32>)> {
    let blob = layout.encode(values);
    let map = candle_core::safetensors::load_buffer(&blob, &candle_core::Device::Cpu).unwrap();
    // In the layout's (flat) order, each tensor's values flattened.
    layout
        .tensors()
        .iter()
        .map(|(name, _)| {
            let t = &map[name];
            let v = t.flatten_all().unwrap().to_vec1::<f32>().unwrap();
            (name.clone(), t.dims().to_vec(), v)
        })
        .collect()
}

/// Each task's layout is what its blobs carry: the tensors candle reads from a blob are the
/// layout's, by name and shape, their values the flat vector cut in the layout's order; and a
/// blob decodes back to the named delta bit for bit.
fn blobs_carry_the_layout(task: &dyn Learner) {
    let layout = task.layout();
    let values: Vec<f32> = (0..layout.len()).map(|i| (i as f32).sin()).collect();
    assert_eq!(layout.len(), task.init().len());
    let read = read_back(&layout, &values);
    assert_eq!(
        read.len(),
        layout.tensors().len(),
        "every tensor, nothing else"
    );
    let flat: Vec<f32> = read.iter().flat_map(|(_, _, v)| v.clone()).collect();
    assert_eq!(flat, values);
    for ((name, shape, _), (n, s)) in read.iter().zip(layout.tensors()) {
        assert_eq!((name, shape), (n, s));
    }
    let back = NamedDelta::decode(&layout.encode(&values))
        .unwrap()
        .into_layout(&layout)
        .unwrap();
    assert!(Arc::ptr_eq(&back.layout, &layout));
    assert_eq!(back.values, values);
    assert!(Arc::ptr_eq(&task.layout(), &layout), "one layout, shared");
}

#[test]
fn the_tasks_layouts_name_their_tensors_as_their_blobs_do() {
    // Least squares: one unnamed tensor, written as cohort always wrote it.
    let linear = LinearTask::new(LinearTaskConfig::default(), 2, 1, 1);
    assert_eq!(*linear.layout(), Layout::flat(32));
    blobs_carry_the_layout(&linear);
    // IMDB's bag of words: the classifier's weight and bias.
    let imdb = ImdbTask::new(
        ImdbTaskConfig {
            data: shared("imdb"),
            train_samples: 200,
            test_samples: 32,
            ..ImdbTaskConfig::default()
        },
        2,
        1,
        3,
    )
    .unwrap();
    assert_eq!(
        imdb.layout().tensors(),
        [
            ("classifier.weight".to_owned(), vec![1, 500]),
            ("classifier.bias".to_owned(), vec![1])
        ]
    );
    blobs_carry_the_layout(&imdb);
    // The language model: its LoRA adapter under PEFT's names, A and B for every target.
    let cache = tempfile::tempdir().unwrap();
    let lm = LmTask::new(
        LmTaskConfig {
            corpus: shared("tinyshakespeare/input.txt"),
            pretrain_steps: 1,
            ..LmTaskConfig::default()
        },
        2,
        1,
        6,
        cache.path(),
    )
    .unwrap();
    let layout = lm.layout();
    let names: Vec<&str> = layout.tensors().iter().map(|(n, _)| n.as_str()).collect();
    assert!(
        names.contains(&"base_model.model.transformer.h.0.attn.c_attn.lora_A.weight"),
        "{names:?}"
    );
    for (n, shape) in layout.tensors() {
        let (a, b) = (n.ends_with(".lora_A.weight"), n.ends_with(".lora_B.weight"));
        assert!(n.starts_with("base_model.model.") && (a || b), "{n}");
        // Rank 4: A is [4, in], B is [out, 4].
        assert_eq!(if a { shape[0] } else { shape[1] }, 4, "{n} {shape:?}");
    }
    blobs_carry_the_layout(&lm);
}
