//! `GET /`: the dashboard. Server-rendered HTML with inline SVG charts; a
//! few lines of inline script follow running pipelines and trainings
//! through `/v1/runs/{id}/events` and move their stage, step, loss, ETA and
//! loss curve live. Aggregates only (counts, health, losses, versions), so it needs no
//! token.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;
use maud::{DOCTYPE, Markup, PreEscaped, html};
use sam_runs::MetricRecord;
use sam_store::Stats;

use crate::AppState;
use crate::chart::{self, PALETTE, Series};
use crate::deploy::SlotSummary;
use crate::pipeline::PipelineSummary;
use crate::runs::RunSummary;

/// How many runs get loss charts (the newest).
const CHARTED_RUNS: usize = 4;
/// How many runs the table lists.
const LISTED_RUNS: usize = 20;
/// How many pipeline runs the table lists.
const LISTED_PIPELINES: usize = 10;
/// How many history entries a slot shows (the newest).
const HISTORY_ROWS: usize = 15;

/// What the page shows.
pub(crate) struct Page {
    pub stats: Result<Arc<Stats>, String>,
    pub runs: Result<Vec<(RunSummary, Vec<MetricRecord>)>, String>,
    pub pipelines: Result<Vec<PipelineSummary>, String>,
    pub registry: Result<Vec<(SlotSummary, Vec<sam_deploy::HistoryEntry>)>, String>,
    pub now: i64,
}

/// The dashboard.
pub(crate) async fn page(State(s): State<Arc<AppState>>) -> Html<String> {
    let stats = crate::stats::current(&s).await.map_err(|e| e.body.message);
    let root = s.runs.clone();
    let runs = crate::blocking(move || crate::runs::all(&root)).await.map_err(|e| e.body.message);
    let home = s.home.clone();
    let pipelines =
        crate::blocking(move || crate::pipeline::all(&home, Some(LISTED_PIPELINES))).await.map_err(|e| e.body.message);
    let registry = crate::blocking(move || crate::deploy::all(&s)).await.map_err(|e| e.body.message);
    let now = sam_runs::unix_now() as i64;
    Html(render(&Page { stats, runs, pipelines, registry, now }).into_string())
}

fn tier_color(name: &str, _: usize) -> &'static str {
    match name {
        "gold" => "#d4a017",
        "silver" => "#94a3b8",
        "bronze" => "#b45309",
        _ => "#cbd5e1",
    }
}

fn palette(_: &str, i: usize) -> &'static str {
    PALETTE[i % PALETTE.len()]
}

fn when(secs: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(secs)
        .ok()
        .and_then(|t| t.format(time::macros::format_description!("[year]-[month]-[day] [hour]:[minute] UTC")).ok())
        .unwrap_or_else(|| "—".into())
}

fn duration(secs: f64) -> String {
    sam_runs::format_duration(std::time::Duration::from_secs_f64(secs.max(0.0)))
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".into(), |v| format!("{v:.digits$}"))
}

/// The whole page.
pub(crate) fn render(p: &Page) -> Markup {
    let live = p.runs.as_ref().map(|r| r.iter().any(|(s, _)| is_live(s))).unwrap_or(false)
        || p.pipelines.as_ref().map(|r| r.iter().any(|s| !s.is_final())).unwrap_or(false);
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                @if !live {
                    // Figures are cached for 5 minutes; follow them.
                    meta http-equiv="refresh" content="300";
                }
                link rel="icon" href="data:,";
                title { "sam dashboard" }
                style { (PreEscaped(CSS)) }
            }
            body {
                header {
                    h1 { "sam" }
                    span.sub { "training data, training runs and deployments on this machine" }
                    span.right { "as of " (when(p.now)) " · " a href="/v1/openapi.json" { "API" } }
                }
                main {
                    @match &p.stats {
                        Ok(stats) => (store_section(stats, training_runs(p, stats))),
                        Err(e) => section.card.error { h2 { "Store" } p { "The store could not be read: " (e) } },
                    }
                    @match &p.pipelines {
                        Ok(runs) => (pipelines_section(runs)),
                        Err(e) => section.card.error { h2 { "Pipeline runs" } p { "The pipeline's runs could not be read: " (e) } },
                    }
                    @match &p.runs {
                        Ok(runs) => (runs_section(runs)),
                        Err(e) => section.card.error { h2 { "Training runs" } p { "The runs could not be read: " (e) } },
                    }
                    @match &p.registry {
                        Ok(slots) => (registry_section(slots)),
                        Err(e) => section.card.error { h2 { "Registry" } p { "The registry could not be read: " (e) } },
                    }
                }
                footer {
                    "Capture with " code { "POST /v1/capture/{kind}" } " and the bearer token from "
                    code { "sam serve token" } ". Aggregate views need no token."
                }
                @if live {
                    script { (PreEscaped(LIVE_JS)) }
                }
            }
        }
    }
}

/// Every training run the home knows: its run folders, what `sam runs
/// list` and `GET /v1/runs` list (`sam train`, `sam run` and the scheduler
/// all make one). The store's own count misses the runs trained while the
/// home had no store, so it stands in only when the folders cannot be read.
fn training_runs(p: &Page, stats: &Stats) -> u64 {
    p.runs.as_ref().map_or(stats.training_runs, |r| r.len() as u64)
}

fn is_live(s: &RunSummary) -> bool {
    matches!(s.status.as_str(), "running" | "paused" | "queued")
}

fn store_section(s: &Stats, training_runs: u64) -> Markup {
    let tiers: Vec<(String, u64)> = s.by_tier.iter().map(|(t, n)| (t.as_str().to_string(), *n)).collect();
    let kinds: Vec<(String, u64)> = s.by_kind.iter().map(|(k, n)| (k.as_str().to_string(), *n)).collect();
    let mut sources: Vec<(String, u64)> = s.sources.iter().map(|h| (h.source.clone(), h.examples)).collect();
    sources.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let domains = s.by_domain.clone();
    let days = continuous_days(&s.daily);
    html! {
        section.totals {
            (figure("examples", s.total))
            (figure("validated", s.validated))
            (figure("sources", s.sources.len() as u64))
            (figure("quarantined", s.quarantined))
            (figure("exports", s.exports))
            (figure("training runs", training_runs))
        }
        section.grid {
            div.card { h2 { "By tier" } (chart::bars(&tiers, tier_color)) }
            div.card { h2 { "By kind" } (chart::bars(&kinds, palette)) }
            div.card { h2 { "By source" } (chart::bars(&sources, palette)) }
            div.card { h2 { "By domain" } (chart::bars(&domains, palette)) }
        }
        section.card {
            h2 { "Daily trend" span.sub { " examples per day, last 30 days with any" } }
            (chart::columns(&days))
        }
        section.card {
            h2 { "Source health" span.sub { " 100 × mean quality × share of offers that were valid" } }
            table {
                thead { tr {
                    th { "source" } th { "health" } th.num { "examples" } th.num { "new" }
                    th.num { "duplicates" } th.num { "rejected" } th.num { "mean quality" } th.num { "gold+silver" }
                } }
                tbody {
                    @if s.sources.is_empty() { tr { td.muted colspan="8" { "no sources yet" } } }
                    @for h in &s.sources {
                        @let color = match h.health { Some(v) if v >= 70.0 => "#16a34a", Some(v) if v >= 40.0 => "#ca8a04", Some(_) => "#dc2626", None => "#9ca3af" };
                        tr {
                            td { (h.source) }
                            td { (chart::gauge(h.health.map(|v| v / 100.0), color)) " " span.num { (opt(h.health, 0)) } }
                            td.num { (h.examples) } td.num { (h.inserted) } td.num { (h.duplicates) } td.num { (h.rejected) }
                            td.num { (opt(h.mean_quality, 2)) }
                            td.num { (h.good_share.map_or_else(|| "—".into(), |v| format!("{:.0}%", v * 100.0))) }
                        }
                    }
                }
            }
        }
    }
}

/// The days from the first to the last with examples, those without any
/// as zero (so that the trend's gaps show), at most the last 30.
fn continuous_days(daily: &[sam_store::DailyCount]) -> Vec<(String, u64)> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    let parsed: Option<Vec<(time::Date, u64)>> =
        daily.iter().map(|d| time::Date::parse(&d.day, fmt).ok().map(|t| (t, d.examples))).collect();
    let Some(parsed) = parsed.filter(|p| !p.is_empty()) else {
        return daily.iter().map(|d| (d.day.clone(), d.examples)).collect();
    };
    let (first, last) = (parsed[0].0, parsed[parsed.len() - 1].0);
    let first = first.max(last - time::Duration::days(29));
    let mut out = Vec::new();
    let mut day = first;
    while day <= last {
        let n = parsed.iter().find(|(d, _)| *d == day).map_or(0, |p| p.1);
        out.push((day.format(fmt).unwrap_or_default(), n));
        let Some(next) = day.next_day() else { break };
        day = next;
    }
    out
}

fn figure(name: &str, n: u64) -> Markup {
    html! { div.figure data-figure=(name) { div.n { (n) } div.label { (name) } } }
}

fn runs_section(runs: &[(RunSummary, Vec<MetricRecord>)]) -> Markup {
    html! {
        section.card {
            h2 { "Training runs" }
            table {
                thead { tr {
                    th { "run" } th { "status" } th { "phase" } th { "progress" } th.num { "train loss" }
                    th.num { "best val loss" } th.num { "tokens/s" } th.num { "ETA" } th { "updated" }
                } }
                tbody {
                    @if runs.is_empty() { tr { td.muted colspan="9" { "no training runs yet (" code { "sam run" } " or " code { "sam train" } ")" } } }
                    @for (s, metrics) in runs.iter().take(LISTED_RUNS) {
                        tr data-live-run=[is_live(s).then_some(&s.id)] data-metrics=(metrics.len()) {
                            td { code { (s.id) } }
                            td { span class={ "badge " (s.status) } data-field="status" { (s.status) }
                                 @if let Some(r) = &s.reason { " " span.muted { (r) } } }
                            td { (s.phase.as_deref().unwrap_or("—")) }
                            td { progress max="1" value=(if s.total_steps > 0 { s.step as f64 / s.total_steps as f64 } else { 0.0 }) {}
                                 " " span data-field="step" { (s.step) " / " (s.total_steps) } }
                            td.num data-field="loss" { (opt(s.train_loss, 4)) }
                            td.num { (opt(s.best_val_loss, 4)) }
                            td.num { (opt(s.tokens_per_sec, 0)) }
                            td.num data-field="eta" { (s.eta_s.map_or_else(|| "—".into(), duration)) }
                            td { (when(s.updated_at as i64)) }
                        }
                    }
                }
            }
            div.grid {
                @for (s, metrics) in runs.iter().filter(|(_, m)| !m.is_empty()).take(CHARTED_RUNS) {
                    @for (phase, legend, chart) in loss_charts(s, metrics) {
                        div.lossplot {
                            h3 { code { (s.id) } " · " (phase) " loss" }
                            div { (legend) }
                            (chart)
                        }
                    }
                }
            }
        }
    }
}

fn pipelines_section(runs: &[PipelineSummary]) -> Markup {
    html! {
        section.card {
            h2 { "Pipeline runs" span.sub { " mine → clean → export → prep → train → evaluate → report" } }
            table {
                thead { tr {
                    th { "run" } th { "status" } th { "stage" } th { "training" } th.num { "train loss" }
                    th.num { "val loss" } th.num { "ETA" } th { "training run" } th { "stages done" }
                } }
                tbody {
                    @if runs.is_empty() { tr { td.muted colspan="9" { "no pipeline runs yet (" code { "sam run" } " or " code { "sam schedule" } ")" } } }
                    @for s in runs.iter().take(LISTED_PIPELINES) {
                        @let at = s.stage.as_ref().and_then(|st| s.stages.iter().position(|n| n == st));
                        tr data-live-pipeline=[(!s.is_final()).then_some(&s.id)] {
                            td { code { (s.id) } }
                            td { span class={ "badge " (s.status) } data-field="status" { (s.status.replace('_', " ")) }
                                 @if let Some(e) = &s.error { " " span.muted.why data-field="error" { (e) } } }
                            td data-field="stage" { (stage_text(s, at)) }
                            td { progress max="1" value=(if s.total_steps > 0 { s.step as f64 / s.total_steps as f64 } else { 0.0 }) {}
                                 " " span data-field="step" { (train_text(s)) } }
                            td.num data-field="loss" { (opt(s.train_loss, 4)) }
                            td.num data-field="val" { (opt(s.val_loss, 4)) }
                            td.num data-field="eta" { (s.eta_s.map_or_else(|| "—".into(), duration)) }
                            td data-field="train_run" { code { (s.train_run.as_deref().unwrap_or("—")) } }
                            td.stages data-field="done" { (done_text(s)) }
                        }
                    }
                }
            }
        }
    }
}

/// `5/7 train`, or `—` once nothing runs.
fn stage_text(s: &PipelineSummary, at: Option<usize>) -> String {
    match (&s.stage, at) {
        (Some(st), Some(i)) => format!("{}/{} {st}", i + 1, s.stages.len()),
        (Some(st), None) => st.clone(),
        (None, _) => "—".into(),
    }
}

/// `sft 12 / 40`.
fn train_text(s: &PipelineSummary) -> String {
    match &s.phase {
        Some(p) => format!("{p} {} / {}", s.step, s.total_steps),
        None => "—".into(),
    }
}

/// `mine 2s · clean 1s · …`.
fn done_text(s: &PipelineSummary) -> String {
    let parts: Vec<String> = s.finished.iter().map(|f| format!("{} {}", f.stage, duration(f.seconds))).collect();
    if parts.is_empty() { "—".into() } else { parts.join(" · ") }
}

fn registry_section(slots: &[(SlotSummary, Vec<sam_deploy::HistoryEntry>)]) -> Markup {
    let short = |id: &str| id.chars().take(8).collect::<String>();
    // An alias's end of a move: a version, else nothing (production on no
    // version is the base model, as `sam deploy history` says).
    let end = |alias: &str, id: Option<&str>| match id {
        Some(id) => short(id),
        None if alias == "production" => "base".to_string(),
        None => "—".to_string(),
    };
    html! {
        section.card {
            h2 { "Registry" span.sub { " adapter versions, aliases and every deployment with its verdict" } }
            @if slots.is_empty() {
                p.muted { "no slots yet (" code { "sam deploy register RUN" } " creates one)" }
            }
            @for (slot, history) in slots {
                h3 { "slot " code { (slot.name) } " · base " code { (slot.base_id) } " "
                    @for (alias, id) in &slot.aliases {
                        span class={ "badge " (alias) } { (alias) " → " (short(id))
                            @if alias == "canary" { @if let Some(p) = slot.canary_percent { " (" (p) "%)" } } }
                        " "
                    }
                    @if !slot.aliases.contains_key("production") { span.badge.production { "production → base model" } }
                }
                table {
                    thead { tr {
                        th { "#" } th { "version" } th { "aliases" } th { "registered" } th { "run" }
                        th.num { "rank" } th.num { "modules" } th { "last verdict" }
                    } }
                    tbody {
                        @if slot.versions.is_empty() { tr { td.muted colspan="8" { "no versions yet" } } }
                        @for v in slot.versions.iter().rev() {
                            tr {
                                td { (v.number) } td { code { (short(&v.id)) } }
                                td { @for a in &v.aliases { span class={ "badge " (a) } { (a) } " " } }
                                td { (when(v.created_at)) } td { code { (v.run_id.as_deref().unwrap_or("—")) } }
                                td.num { (v.rank) } td.num { (v.modules) }
                                td { @match &v.verdict {
                                    Some(d) => { (verdict_badge(d.pass)) " vs " code { (short(&d.against)) }
                                        @if !d.pass { " " span.muted.why { (d.summary) } } },
                                    None => span.muted { "not judged" },
                                } }
                            }
                        }
                    }
                }
                table.history {
                    thead { tr {
                        th { "seq" } th { "when" } th { "action" } th { "version" } th { "alias" } th { "verdict" } th { "why" }
                    } }
                    tbody {
                        @for e in history.iter().rev().take(HISTORY_ROWS) {
                            tr {
                                td { (e.seq) } td { (when(e.at)) }
                                td { (action(e.action)) @if e.forced { " " span.badge.fail { "forced" } } }
                                td { code { (e.version.as_deref().map(short).unwrap_or_else(|| "—".into())) } }
                                td { @if let Some(a) = &e.alias {
                                    (a) ": " (end(a, e.from.as_deref())) " → " (end(a, e.to.as_deref()))
                                } }
                                td.verdict { @if let Some(v) = &e.verdict {
                                    (verdict_badge(v.pass))
                                    @for leaf in v.leaves() {
                                        " " span class={ "gate " (if leaf.pass { "ok" } else { "no" }) } title=(leaf.summary()) {
                                            (if leaf.pass { "✓ " } else { "✗ " }) (leaf.gate)
                                        }
                                    }
                                } }
                                td.why { (e.why) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn verdict_badge(pass: bool) -> Markup {
    html! { @if pass { span.badge.pass { "pass" } } @else { span.badge.fail { "refused" } } }
}

fn action(a: sam_deploy::Action) -> String {
    serde_json::to_value(a).ok().and_then(|v| v.as_str().map(str::to_string)).unwrap_or_default()
}

/// One chart per phase: train loss as a line, validation loss as dots.
fn loss_charts(s: &RunSummary, metrics: &[MetricRecord]) -> Vec<(String, Markup, Markup)> {
    let mut phases: Vec<Option<String>> = Vec::new();
    for m in metrics {
        if !phases.contains(&m.phase) {
            phases.push(m.phase.clone());
        }
    }
    phases
        .into_iter()
        .map(|phase| {
            let of = || metrics.iter().filter(|m| m.phase == phase);
            let train = of().filter_map(|m| m.train_loss.map(|l| (m.step as f64, l))).collect();
            let valid = of().filter_map(|m| m.val_loss.map(|l| (m.step as f64, l))).collect();
            let name = phase.clone().unwrap_or_else(|| "train".into());
            let current = phase == s.phase && is_live(s);
            let x_max = current.then_some(s.total_steps as f64);
            let series = [
                Series { name: "train loss", color: PALETTE[0], points: train, dots: false },
                Series { name: "validation loss", color: PALETTE[1], points: valid, dots: true },
            ];
            let id = format!("loss-{}-{name}", s.id);
            (name, chart::legend(&series), chart::lines(&series, "step", x_max, &id))
        })
        .collect()
}

const CSS: &str = r#"
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: #111827; background: #f3f4f6; }
header { display: flex; align-items: baseline; gap: 14px; padding: 14px 28px; background: #111827; color: #f9fafb; }
header h1 { margin: 0; font-size: 22px; letter-spacing: .5px; }
header .sub { color: #9ca3af; }
header .right { margin-left: auto; color: #d1d5db; }
header a { color: #93c5fd; }
main { max-width: 1480px; margin: 0 auto; padding: 18px 28px; display: flex; flex-direction: column; gap: 16px; }
.card { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 14px 18px; }
.card.error { border-color: #fca5a5; background: #fef2f2; }
h2 { font-size: 16px; margin: 0 0 10px; }
h3 { font-size: 13px; margin: 4px 0; font-weight: 600; }
h2 .sub { font-weight: normal; color: #6b7280; font-size: 13px; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(270px, 1fr)); gap: 16px; }
.totals { display: grid; grid-template-columns: repeat(auto-fit, minmax(150px, 1fr)); gap: 16px; }
.figure { background: #fff; border: 1px solid #e5e7eb; border-radius: 8px; padding: 12px 18px; }
.figure .n { font-size: 26px; font-weight: 650; font-variant-numeric: tabular-nums; }
.figure .label { color: #6b7280; }
svg.chart { display: block; font-size: 12px; fill: #374151; }
svg.chart .tick { fill: #6b7280; font-size: 11px; }
table { width: 100%; border-collapse: collapse; }
th, td { text-align: left; padding: 6px 8px; border-bottom: 1px solid #f1f5f9; white-space: nowrap; }
th { color: #6b7280; font-weight: 600; font-size: 12px; }
.num { text-align: right; font-variant-numeric: tabular-nums; }
.muted { color: #6b7280; }
code { font: 12px ui-monospace, SFMono-Regular, Menlo, monospace; }
.badge { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; background: #e5e7eb; }
.badge.running, .badge.pass, .badge.production { background: #dcfce7; color: #166534; }
.badge.paused, .badge.queued, .badge.canary { background: #fef9c3; color: #854d0e; }
.badge.failed, .badge.fail { background: #fee2e2; color: #991b1b; }
.badge.completed, .badge.previous { background: #dbeafe; color: #1e40af; }
progress { width: 90px; height: 8px; vertical-align: middle; }
table.history { margin: 8px 0 18px; }
table.history td.why, .why { white-space: normal; color: #374151; min-width: 260px; }
td.verdict { white-space: normal; max-width: 360px; }
td.stages { white-space: normal; font-size: 12px; color: #374151; }
.gate { display: inline-block; font-size: 11px; padding: 0 5px; border-radius: 4px; margin: 1px 0; }
.gate.ok { background: #f0fdf4; color: #166534; } .gate.no { background: #fef2f2; color: #991b1b; }
.lossplot { border: 1px solid #f1f5f9; border-radius: 6px; padding: 6px; }
.legend { font-weight: normal; color: #6b7280; margin-left: 8px; }
.legend .key { display: inline-block; width: 12px; height: 4px; margin: 0 4px 2px 10px; vertical-align: middle; }
footer { max-width: 1480px; margin: 0 auto; padding: 4px 28px 24px; color: #6b7280; }
"#;

/// Follows running runs: `status` events move step, loss and ETA; `metric`
/// events add points to the loss chart of their phase. The first
/// `data-metrics` metric events replay what the page already drew. Running
/// pipeline runs: their `status` events move stage, training step, losses,
/// ETA and the finished stages.
const LIVE_JS: &str = r#"
(function () {
  function fmt(s) {
    s = Math.max(0, Math.round(s));
    var h = Math.floor(s / 3600), m = Math.floor(s % 3600 / 60), x = s % 60;
    if (h) return h + 'h' + String(m).padStart(2, '0') + 'm';
    if (m) return m + 'm' + String(x).padStart(2, '0') + 's';
    return x + 's';
  }
  function set(row, field, text) {
    var el = row.querySelector('[data-field="' + field + '"]');
    if (el) el.textContent = text;
  }
  function plot(id, phase, series, x, y) {
    var svg = document.getElementById('loss-' + id + '-' + phase);
    if (!svg) return;
    var d = svg.dataset, x0 = +d.x0, x1 = +d.x1, y0 = +d.y0, y1 = +d.y1;
    var px = +d.left + (x - x0) / (x1 - x0) * (+d.right - +d.left);
    var yy = Math.min(Math.max(y, y0), y1);
    var py = +d.top + (1 - (yy - y0) / (y1 - y0)) * (+d.bottom - +d.top);
    var line = svg.querySelector('polyline[data-series="' + series + '"]');
    if (line) line.setAttribute('points', ((line.getAttribute('points') || '') + ' ' + px.toFixed(1) + ',' + py.toFixed(1)).trim());
  }
  document.querySelectorAll('[data-live-run]').forEach(function (row) {
    var id = row.dataset.liveRun, drawn = +(row.dataset.metrics || 0), n = 0;
    var events = new EventSource('/v1/runs/' + encodeURIComponent(id) + '/events');
    events.addEventListener('status', function (e) {
      var s = JSON.parse(e.data);
      set(row, 'status', s.status);
      var badge = row.querySelector('[data-field="status"]');
      if (badge) badge.className = 'badge ' + s.status;
      set(row, 'step', s.step + ' / ' + s.total_steps);
      set(row, 'eta', s.eta_s == null ? '—' : fmt(s.eta_s));
      if (s.train_loss != null) set(row, 'loss', s.train_loss.toFixed(4));
      var bar = row.querySelector('progress');
      if (bar) bar.value = s.total_steps ? s.step / s.total_steps : 0;
    });
    events.addEventListener('metric', function (e) {
      n += 1;
      if (n <= drawn) return;
      var m = JSON.parse(e.data), phase = m.phase || 'train';
      if (m.train_loss != null) plot(id, phase, 'train loss', m.step, m.train_loss);
      if (m.val_loss != null) plot(id, phase, 'validation loss', m.step, m.val_loss);
    });
    events.addEventListener('reset', function () { n = 0; });
    events.addEventListener('end', function () { events.close(); set(row, 'eta', '—'); });
  });
  document.querySelectorAll('[data-live-pipeline]').forEach(function (row) {
    var id = row.dataset.livePipeline;
    var events = new EventSource('/v1/runs/' + encodeURIComponent(id) + '/events');
    events.addEventListener('status', function (e) {
      var s = JSON.parse(e.data);
      set(row, 'status', s.status.replace('_', ' '));
      var badge = row.querySelector('[data-field="status"]');
      if (badge) badge.className = 'badge ' + s.status;
      var at = s.stage == null ? -1 : s.stages.indexOf(s.stage);
      set(row, 'stage', s.stage == null ? '—' : (at < 0 ? s.stage : (at + 1) + '/' + s.stages.length + ' ' + s.stage));
      set(row, 'step', s.phase == null ? '—' : s.phase + ' ' + s.step + ' / ' + s.total_steps);
      set(row, 'eta', s.eta_s == null ? '—' : fmt(s.eta_s));
      if (s.train_loss != null) set(row, 'loss', s.train_loss.toFixed(4));
      if (s.val_loss != null) set(row, 'val', s.val_loss.toFixed(4));
      if (s.train_run != null) set(row, 'train_run', s.train_run);
      set(row, 'done', s.finished.length ? s.finished.map(function (f) { return f.stage + ' ' + fmt(f.seconds); }).join(' · ') : '—');
      var bar = row.querySelector('progress');
      if (bar) bar.value = s.total_steps ? s.step / s.total_steps : 0;
    });
    events.addEventListener('end', function () { events.close(); set(row, 'eta', '—'); });
  });
})();
"#;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_daily_trend_shows_the_days_without_examples() {
        let d = |day: &str, examples| sam_store::DailyCount { day: day.into(), examples };
        let days = continuous_days(&[d("2025-02-27", 3), d("2025-03-02", 1)]);
        let names: Vec<&str> = days.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["2025-02-27", "2025-02-28", "2025-03-01", "2025-03-02"]);
        assert_eq!(days.iter().map(|d| d.1).collect::<Vec<_>>(), [3, 0, 0, 1]);
        assert_eq!(continuous_days(&[d("2025-01-01", 1), d("2025-06-01", 2)]).len(), 30);
    }

    #[test]
    fn an_empty_home_renders_and_names_what_is_missing() {
        let page = Page {
            stats: Ok(Arc::new(Stats::default())),
            runs: Ok(Vec::new()),
            pipelines: Ok(Vec::new()),
            registry: Ok(Vec::new()),
            now: 1_700_000_000,
        };
        let html = render(&page).into_string();
        assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
        assert!(
            html.contains("no training runs yet")
                && html.contains("no pipeline runs yet")
                && html.contains("no sources yet")
                && html.contains("no slots yet")
        );
        assert!(html.contains("2023-11-14 22:13 UTC"));
        assert!(!html.contains("<script>"), "no live run, no script");
        let page = Page {
            stats: Err("database is locked".into()),
            runs: Ok(Vec::new()),
            pipelines: Ok(Vec::new()),
            registry: Ok(Vec::new()),
            now: 0,
        };
        assert!(render(&page).into_string().contains("database is locked"));
    }
}
