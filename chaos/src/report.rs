//! The report of a run: `results.json` (verdict + run facts), a latency
//! plot with the fault intervals shaded (`latency.svg`), and a one-screen
//! summary for the terminal.

use std::path::Path;

use anyhow::Context;
use plotters::prelude::*;
use serde::Serialize;

use crate::checker::Verdict;
use crate::history::pair;
use crate::history::Event;
use crate::history::Function;
use crate::history::Kind;
use crate::history::Operation;

#[derive(Debug, Clone, Serialize)]
pub struct RunFacts {
    pub seed: u64,
    pub nemesis: Vec<String>,
    pub time_s: f64,
    pub nodes: usize,
    /// Node `i`'s id: `n{i + 1}` in fault labels and `nodes/n{i + 1}/`.
    pub node_ids: Vec<u64>,
    pub clients: usize,
    pub rate: f64,
    pub net: String,
    /// iptables, proxy, or none (no fault needed link control).
    pub link_faults: String,
    pub timing: String,
    /// The region latency model under the run, if one was.
    pub regions_latency: Option<String>,
    pub faults_injected: usize,
    /// Faults that could not be injected or healed cleanly, with the reason.
    pub fault_errors: Vec<String>,
    pub interrupted: bool,
}

#[derive(Serialize)]
struct Results<'a> {
    valid: bool,
    run: &'a RunFacts,
    verdict: &'a Verdict,
}

pub fn write_results(dir: &Path, facts: &RunFacts, verdict: &Verdict) -> anyhow::Result<()> {
    let path = dir.join("results.json");
    let results = Results {
        valid: verdict.valid,
        run: facts,
        verdict,
    };
    std::fs::write(&path, serde_json::to_vec_pretty(&results)?).with_context(|| format!("write {}", path.display()))
}

/// Fault intervals (start s, end s, label) from the paired nemesis
/// operations; a fault never healed lasts until `end` (s).
fn fault_intervals(ops: &[Operation], end: f64) -> Vec<(f64, f64, String)> {
    ops.iter()
        .filter(|op| op.f == Function::Nemesis)
        .map(|op| {
            (
                op.invoke_ns as f64 / 1e9,
                op.complete_ns.map_or(end, |t| t as f64 / 1e9),
                op.fault.clone().unwrap_or_default(),
            )
        })
        .collect()
}

/// Operation latency over time, like Jepsen's latency-raw plot: one point
/// per client operation at its invoke time, coloured by function and
/// outcome (`info` points drawn at the timeout), faults shaded.
pub fn plot_latency(path: &Path, events: &[Event], op_timeout_ms: f64, title: &str) -> anyhow::Result<()> {
    let ops = pair(events)?;
    let end = events.last().map_or(0.0, |e| e.time_ns as f64 / 1e9);
    let faults = fault_intervals(&ops, end);
    let client_ops: Vec<_> = ops
        .iter()
        .filter(|op| matches!(op.f, Function::Append | Function::Read))
        .collect();
    let t_max = end.max(1.0);
    let y_max = (op_timeout_ms * 1.5).max(10.0);
    let y_min = 0.1;

    let root = SVGBackend::new(path, (1280, 640)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 18))
        .margin(10)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..t_max, (y_min..y_max).log_scale())?;
    chart
        .configure_mesh()
        .x_desc("time since start (s)")
        .y_desc("latency (ms)")
        .draw()?;
    chart.draw_series(
        faults
            .iter()
            .map(|(a, b, _)| Rectangle::new([(*a, y_min), (*b, y_max)], RGBColor(250, 200, 120).mix(0.35).filled())),
    )?;
    chart.draw_series(faults.iter().map(|(a, _, label)| {
        Text::new(
            label.clone(),
            (*a, y_max / 1.4),
            ("sans-serif", 10).into_font().color(&BLACK),
        )
    }))?;
    let series: [(&str, Function, Kind, RGBColor); 5] = [
        ("append ok", Function::Append, Kind::Ok, RGBColor(31, 119, 180)),
        ("read ok", Function::Read, Kind::Ok, RGBColor(44, 160, 44)),
        ("append info", Function::Append, Kind::Info, RGBColor(255, 127, 14)),
        ("append fail", Function::Append, Kind::Fail, RGBColor(214, 39, 40)),
        ("read fail", Function::Read, Kind::Fail, RGBColor(148, 103, 189)),
    ];
    for (label, f, kind, color) in series {
        let points = client_ops
            .iter()
            .filter(|op| op.f == f && op.outcome == kind)
            .map(|op| {
                let latency_ms = match op.complete_ns {
                    Some(done) => (done - op.invoke_ns) as f64 / 1e6,
                    None => op_timeout_ms,
                };
                (op.invoke_ns as f64 / 1e9, latency_ms.clamp(y_min, y_max))
            });
        chart
            .draw_series(points.map(|p| Circle::new(p, 1, color.filled())))?
            .label(label)
            .legend(move |(x, y)| Circle::new((x + 10, y), 3, color.filled()));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// The one-screen summary printed at the end of a run.
pub fn summary(facts: &RunFacts, verdict: &Verdict, dir: &Path) -> String {
    let mut out = String::new();
    let line = |out: &mut String, s: String| {
        out.push_str(&s);
        out.push('\n');
    };
    line(
        &mut out,
        format!(
            "seed {}  ·  {:.0} s  ·  nemesis {}  ·  {} nodes ({}, links via {}, {} timing)  ·  {} clients at {}/s{}",
            facts.seed,
            facts.time_s,
            if facts.nemesis.is_empty() {
                "none".to_string()
            } else {
                facts.nemesis.join(",")
            },
            facts.nodes,
            facts.net,
            facts.link_faults,
            facts.timing,
            facts.clients,
            facts.rate,
            if facts.interrupted { "  ·  INTERRUPTED" } else { "" }
        ),
    );
    line(
        &mut out,
        format!("node ids   {}", crate::node_ids::describe(&facts.node_ids)),
    );
    if let Some(model) = &facts.regions_latency {
        line(&mut out, format!("latency    region model under the run: {model}"));
    }
    line(
        &mut out,
        format!(
            "faults     {} injected{}",
            facts.faults_injected,
            if facts.fault_errors.is_empty() {
                String::new()
            } else {
                format!(", {} with errors (see results.json)", facts.fault_errors.len())
            }
        ),
    );
    line(
        &mut out,
        format!(
            "appends    ok {:>7}  info {:>5}  fail {:>5}   ({} of the info ones committed)",
            verdict.appends.ok, verdict.appends.info, verdict.appends.fail, verdict.info_appends_applied
        ),
    );
    line(
        &mut out,
        format!(
            "reads      ok {:>7}  info {:>5}  fail {:>5}",
            verdict.reads.ok, verdict.reads.info, verdict.reads.fail
        ),
    );
    line(
        &mut out,
        format!(
            "available  {:.1} % of operations ok; final log {} records, read from {} nodes",
            verdict.availability * 100.0,
            verdict.final_log_length,
            verdict.final_reads
        ),
    );
    let found: Vec<String> = verdict
        .anomaly_counts
        .iter()
        .filter(|(_, &n)| n > 0)
        .map(|(k, n)| format!("{k} {n}"))
        .collect();
    if found.is_empty() {
        line(&mut out, "anomalies  none".into());
    } else {
        line(&mut out, format!("anomalies  {}", found.join(", ")));
        for a in verdict.anomalies.iter().take(5) {
            line(&mut out, format!("  {}: {}", a.kind.name(), a.detail));
        }
    }
    line(&mut out, format!("report     {}", dir.display()));
    line(
        &mut out,
        if verdict.valid {
            "verdict    VALID".into()
        } else {
            "verdict    INVALID".into()
        },
    );
    out
}
