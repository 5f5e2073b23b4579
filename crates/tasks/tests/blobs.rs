//! The blobs cohort-fl writes are safetensors files that candle (and so PEFT and Hugging Face
//! tools) read with the names and shapes given.

use cohort_fl::blob::encode_named_blob;

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
