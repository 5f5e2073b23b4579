//! Where a training step of the reference model spends its time (gradients vs. optimiser), for
//! full training and LoRA r8 on all linear layers, through the hand-written backward pass and
//! through candle's autograd.
//!
//! cargo run --release -p cohort-model --example profile_step [steps] [fused|autograd] [full|lora] [llama]

use std::time::Instant;

use candle_core::Device;
use cohort_core::SplitMix64;
use cohort_model::data::sample_batch;
use cohort_model::optim::{AdamW, AdamWConfig};
use cohort_model::train::Trainer;
use cohort_model::{Gpt, GptConfig, LanguageModel, Llama, LlamaConfig, Lora, LoraConfig};

fn main() -> cohort_model::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let steps: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let filters = &args[args.len().min(2)..];
    let keep = |pair: [&str; 2], name: &str| {
        !filters.iter().any(|f| pair.contains(&f.as_str())) || filters.iter().any(|f| f == name)
    };
    for autograd in [false, true] {
        for lora in [false, true] {
            let path = if autograd { "autograd" } else { "fused" };
            let mode = if lora { "lora" } else { "full" };
            if !keep(["fused", "autograd"], path) || !keep(["full", "lora"], mode) {
                continue;
            }
            // `llama`: the reference shape as a Llama (RMSNorm, RoPE, SwiGLU of width 688, two
            // key/value heads for four query heads, tied embeddings).
            let mut m: Box<dyn LanguageModel> = if filters.iter().any(|f| f == "llama") {
                let mut c = LlamaConfig::small("llama", 65, 256, 4, 4, 2);
                c.intermediate_size = 688;
                c.max_position_embeddings = Some(128);
                c.tie_word_embeddings = true;
                Box::new(Llama::new(c, 0, &Device::Cpu)?)
            } else {
                Box::new(Gpt::new(
                    GptConfig::preset("reference", 65)?,
                    0,
                    &Device::Cpu,
                )?)
            };
            if lora {
                let linears = m.linear_modules();
                let w = m.weights_mut();
                let cfg = LoraConfig::new(8, 16.0, &["all-linear"]);
                w.lora = Some(Lora::attach(&mut w.params, &linears, cfg, 0)?);
            }
            let mut opt = AdamW::new(m.params(), AdamWConfig::default());
            let mut rng = SplitMix64::new(1);
            let tokens: Vec<u32> = (0..50_000).map(|_| rng.below(65) as u32).collect();
            let (mut tg, mut to) = (0f64, 0f64);
            for i in 0..steps + 1 {
                let batch = sample_batch(&tokens, 16, 128, &mut rng, &Device::Cpu)?;
                let s0 = Instant::now();
                let (_, grads) = Trainer::gradients(m.as_ref(), &[batch], autograd)?;
                let s1 = Instant::now();
                opt.step(m.params(), &grads)?;
                if !autograd {
                    // As the trainer does: the next step writes its gradients into these.
                    cohort_model::fast::recycle(grads);
                }
                if i > 0 {
                    tg += (s1 - s0).as_secs_f64() / steps as f64;
                    to += s1.elapsed().as_secs_f64() / steps as f64;
                }
            }
            println!(
                "{path:8} {mode:5}  gradients {:7.1} ms  adamw {:5.1} ms  {:6.0} tokens/s",
                tg * 1e3,
                to * 1e3,
                2048.0 / (tg + to)
            );
        }
    }
    Ok(())
}
