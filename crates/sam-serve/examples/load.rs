//! Load test of the capture endpoint over real HTTP on loopback.
//!
//! Starts a server in this process on a fresh home (a temporary folder
//! unless `--home DIR`), sends `--captures` captures (default 10,000) from
//! `--clients` concurrent clients (default 16, one keep-alive connection
//! each), then stops the server, counts what is in the store and prints the
//! latency percentiles and throughput:
//!
//! ```text
//! cargo run --release -p sam-serve --example load -- --captures 10000 --clients 16
//! ```
//!
//! `--max-batch 1` turns group commit off (one transaction per capture), to
//! compare.
//!
//! Every capture is unique and carries an email address (so each is redacted
//! and none is a duplicate); the run fails unless every request got a 201
//! and the store holds exactly `--captures` examples afterwards.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use sam_serve::{CaptureAck, ServeConfig, Server, Settings};
use sam_store::prelude::*;
use sam_store::{Filter, SqliteStore};

struct Args {
    captures: usize,
    clients: usize,
    home: Option<std::path::PathBuf>,
    max_batch: Option<usize>,
    json: bool,
}

fn args() -> Args {
    let mut a = Args { captures: 10_000, clients: 16, home: None, max_batch: None, json: false };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |name: &str| it.next().unwrap_or_else(|| panic!("{name} needs a value"));
        match arg.as_str() {
            "--captures" => a.captures = value("--captures").parse().expect("--captures N"),
            "--clients" => a.clients = value("--clients").parse().expect("--clients N"),
            "--home" => a.home = Some(value("--home").into()),
            "--max-batch" => a.max_batch = Some(value("--max-batch").parse().expect("--max-batch N")),
            "--json" => a.json = true,
            "-h" | "--help" => {
                println!("load [--captures N] [--clients N] [--max-batch N] [--home DIR] [--json]");
                std::process::exit(0);
            }
            other => panic!("unknown argument {other:?} (see --help)"),
        }
    }
    assert!(a.captures > 0 && a.clients > 0, "--captures and --clients must be positive");
    a
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let a = args();
    let tmp = tempfile::tempdir()?;
    let dir = a.home.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&dir)?;
    let home = sam_home::SamHome::new(&dir);
    let mut settings = Settings::new(&home);
    settings.config = ServeConfig { port: 0, ..Default::default() };
    if let Some(n) = a.max_batch {
        settings.capture.max_batch = n;
    }
    let server = Server::bind(settings, false)?;
    let (url, token) = (server.url(), server.token().secret().to_string());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let serving = std::thread::spawn(move || {
        server.run_blocking(async {
            let _ = stop_rx.await;
        })
    });

    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(a.captures)));
    let batches = Arc::new(Mutex::new(Vec::with_capacity(a.captures)));
    let errors = Arc::new(Mutex::new(Vec::new()));
    let started = Instant::now();
    let clients: Vec<_> = (0..a.clients)
        .map(|c| {
            let (next, latencies, batches, errors) = (next.clone(), latencies.clone(), batches.clone(), errors.clone());
            let (url, token, total) = (format!("{url}/v1/capture/feedback"), format!("Bearer {token}"), a.captures);
            std::thread::spawn(move || {
                let agent: ureq::Agent = ureq::Agent::config_builder().http_status_as_error(false).build().into();
                let (mut mine, mut my_batches) = (Vec::new(), Vec::new());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= total {
                        break;
                    }
                    let body = serde_json::json!({
                        "prompt": format!("How do I rotate log file number {i} from client {c}?"),
                        "response": format!("Use logrotate with a daily rule for file {i}; questions to ops{i}@example.com."),
                    });
                    let t = Instant::now();
                    let res = agent.post(&url).header("Authorization", &token).send_json(&body);
                    let took = t.elapsed();
                    match res {
                        Ok(mut r) if r.status().as_u16() == 201 => {
                            mine.push(took);
                            if let Ok(ack) = r.body_mut().read_json::<CaptureAck>() {
                                my_batches.push(ack.batch);
                            }
                        }
                        Ok(mut r) => {
                            let text = r.body_mut().read_to_string().unwrap_or_default();
                            errors.lock().unwrap().push(format!("{}: {text}", r.status()));
                        }
                        Err(e) => errors.lock().unwrap().push(e.to_string()),
                    }
                }
                latencies.lock().unwrap().extend(mine);
                batches.lock().unwrap().extend(my_batches);
            })
        })
        .collect();
    for c in clients {
        c.join().expect("a client thread panicked");
    }
    let wall = started.elapsed();
    let _ = stop_tx.send(());
    serving.join().expect("the server thread panicked")?;

    let stored = SqliteStore::open(home.store_db())?.count(&Filter::default())?;
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort();
    let errors = errors.lock().unwrap().clone();
    let batches = batches.lock().unwrap().clone();
    let mean_batch = batches.iter().sum::<usize>() as f64 / batches.len().max(1) as f64;
    let ok = lat.len();
    let report = serde_json::json!({
        "captures": a.captures,
        "clients": a.clients,
        "acknowledged": ok,
        "stored": stored,
        "errors": errors.len(),
        "wall_s": wall.as_secs_f64(),
        "throughput_per_s": ok as f64 / wall.as_secs_f64(),
        "latency_ms": if ok > 0 { serde_json::json!({
            "p50": ms(percentile(&lat, 0.50)),
            "p90": ms(percentile(&lat, 0.90)),
            "p99": ms(percentile(&lat, 0.99)),
            "max": ms(*lat.last().unwrap()),
        }) } else { serde_json::Value::Null },
        "mean_group_commit": mean_batch,
    });
    if a.json {
        println!("{report}");
    } else if ok > 0 {
        println!(
            "{ok}/{} captures acknowledged from {} clients in {:.2} s: {:.0} captures/s",
            a.captures,
            a.clients,
            wall.as_secs_f64(),
            ok as f64 / wall.as_secs_f64()
        );
        println!(
            "latency p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {:.1} captures per commit on average",
            ms(percentile(&lat, 0.50)),
            ms(percentile(&lat, 0.90)),
            ms(percentile(&lat, 0.99)),
            ms(*lat.last().unwrap()),
            mean_batch
        );
        println!("store holds {stored} examples");
    }
    for e in errors.iter().take(5) {
        eprintln!("error: {e}");
    }
    if !errors.is_empty() || ok != a.captures || stored != a.captures as u64 {
        return Err(format!(
            "{} errors, {ok} of {} acknowledged, {stored} stored: every capture must be stored",
            errors.len(),
            a.captures
        )
        .into());
    }
    Ok(())
}
