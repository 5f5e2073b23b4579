//! A task's failure keeps the model's error as its source: `FlError` is not a flattened
//! string, so a caller (the runtime, the CLI) can walk `source()` down to `cohort_model::Error`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::error::Error as _;
use std::path::Path;

use cohort_fl::FlError;
use cohort_tasks::Learner;
use cohort_tasks::imdb::{ImdbModel, ImdbTask, ImdbTaskConfig};

#[test]
fn a_model_error_in_training_is_the_task_errors_source() {
    let cfg = ImdbTaskConfig {
        data: Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/imdb"),
        model: ImdbModel::Gpt,
        train_samples: 200,
        test_samples: 32,
        local_steps: 1,
        ..ImdbTaskConfig::default()
    };
    let task = ImdbTask::new(cfg, 2, 1, 3).unwrap();
    let mut global = task.init();
    // A global model of the wrong length: the model refuses to load it.
    global.pop();
    let err = task
        .train(0, &global, &mut cohort_core::Rng::new(1))
        .unwrap_err();
    let FlError::TaskFailed { context, .. } = &err else {
        panic!("not a TaskFailed: {err:?}");
    };
    assert_eq!(context, "training an IMDB client");
    let source = err.source().expect("the model error is kept as the source");
    let model_err = source
        .downcast_ref::<cohort_model::Error>()
        .unwrap_or_else(|| panic!("the source is not a cohort_model::Error: {source:?}"));
    // The message still says everything, as before: context and the model's own words.
    assert_eq!(
        err.to_string(),
        format!("task: training an IMDB client: {model_err}")
    );
}
