//! Writes a GGUF file (qwen2 architecture) of a given shape with random
//! weights, its matrices in one llama.cpp block type — the input of the load
//! benchmark (`load_bench`) for shapes sam has no quantized file of:
//!
//! ```text
//! cargo run --release -p sam-trainer --example random_gguf -- OUT.gguf [qwen2.5-coder-1.5b|tiny] [q4k|q4_0|q4_1|q5k|q6k|q8_0]
//! ```
//!
//! Norms and biases are f32, as llama.cpp writes them. The file has no
//! tokenizer (sam loads the model without one).

use candle_core::quantized::gguf_file::Value;
use candle_core::quantized::{GgmlDType, QTensor, gguf_file};
use candle_core::{Device, Tensor};
use sam_trainer::ModelConfig;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let out = args.get(1).ok_or("usage: random_gguf OUT.gguf [shape] [type]")?;
    let cfg = match args.get(2).map(String::as_str).unwrap_or("qwen2.5-coder-1.5b") {
        "qwen2.5-coder-1.5b" => ModelConfig::qwen2_5_coder_1_5b(),
        "qwen2.5-3b" => ModelConfig::qwen2_5_3b(),
        "tiny" => ModelConfig {
            hidden_size: 256,
            intermediate_size: 512,
            head_dim: 64,
            attention_bias: true,
            ..ModelConfig::tiny()
        },
        other => return Err(format!("unknown shape `{other}`").into()),
    };
    let dtype = match args.get(3).map(String::as_str).unwrap_or("q4k") {
        "q4k" => GgmlDType::Q4K,
        "q5k" => GgmlDType::Q5K,
        "q6k" => GgmlDType::Q6K,
        "q4_0" => GgmlDType::Q4_0,
        "q4_1" => GgmlDType::Q4_1,
        "q8_0" => GgmlDType::Q8_0,
        other => return Err(format!("unknown type `{other}`").into()),
    };
    let dev = Device::Cpu;
    let mut seed = 1u64;
    let mut random = |rows: usize, cols: usize| -> Result<QTensor, Box<dyn std::error::Error>> {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let t = (Tensor::rand(-0.035f32, 0.035, (rows, cols), &dev)? + (seed % 7) as f64 * 1e-4)?;
        Ok(QTensor::quantize(&t, dtype)?)
    };
    let vector = |n: usize, v: f32| -> Result<QTensor, Box<dyn std::error::Error>> {
        Ok(QTensor::quantize(&Tensor::full(v, n, &dev)?, GgmlDType::F32)?)
    };
    let (h, q, kv, i) =
        (cfg.hidden_size, cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim, cfg.intermediate_size);
    let mut tensors: Vec<(String, QTensor)> =
        vec![("token_embd.weight".into(), random(cfg.vocab_size, h)?), ("output_norm.weight".into(), vector(h, 1.0)?)];
    for l in 0..cfg.num_layers {
        let p = format!("blk.{l}");
        tensors.push((format!("{p}.attn_norm.weight"), vector(h, 1.0)?));
        tensors.push((format!("{p}.ffn_norm.weight"), vector(h, 1.0)?));
        tensors.push((format!("{p}.attn_q.weight"), random(q, h)?));
        tensors.push((format!("{p}.attn_k.weight"), random(kv, h)?));
        tensors.push((format!("{p}.attn_v.weight"), random(kv, h)?));
        if cfg.attention_bias {
            tensors.push((format!("{p}.attn_q.bias"), vector(q, 0.01)?));
            tensors.push((format!("{p}.attn_k.bias"), vector(kv, 0.01)?));
            tensors.push((format!("{p}.attn_v.bias"), vector(kv, 0.01)?));
        }
        tensors.push((format!("{p}.attn_output.weight"), random(h, q)?));
        tensors.push((format!("{p}.ffn_gate.weight"), random(i, h)?));
        tensors.push((format!("{p}.ffn_up.weight"), random(i, h)?));
        tensors.push((format!("{p}.ffn_down.weight"), random(h, i)?));
    }
    if !cfg.tie_word_embeddings {
        tensors.push(("output.weight".into(), random(cfg.vocab_size, h)?));
    }
    let u = |v: usize| Value::U32(v as u32);
    let metadata: Vec<(&str, Value)> = vec![
        ("general.architecture", Value::String("qwen2".into())),
        ("qwen2.vocab_size", u(cfg.vocab_size)),
        ("qwen2.embedding_length", u(h)),
        ("qwen2.feed_forward_length", u(i)),
        ("qwen2.block_count", u(cfg.num_layers)),
        ("qwen2.attention.head_count", u(cfg.num_heads)),
        ("qwen2.attention.head_count_kv", u(cfg.num_kv_heads)),
        ("qwen2.attention.key_length", u(cfg.head_dim)),
        ("qwen2.rope.freq_base", Value::F32(cfg.rope_theta as f32)),
        ("qwen2.attention.layer_norm_rms_epsilon", Value::F32(cfg.rms_norm_eps as f32)),
        ("qwen2.context_length", u(cfg.max_position_embeddings)),
    ];
    let md: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let ts: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::io::BufWriter::new(std::fs::File::create(out)?);
    gguf_file::write(&mut f, &md, &ts)?;
    println!("wrote {out} ({dtype:?}, {} tensors)", ts.len());
    Ok(())
}
