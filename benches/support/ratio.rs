//! Prints ours beside the peer after a criterion group: the medians criterion
//! just wrote (`<target>/criterion/…/new/estimates.json`) and their ratio, so
//! a run says at once where a layer stands against its target.

// Each bench includes this file and uses part of it.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

/// Where criterion writes its results.
fn criterion_dir() -> PathBuf {
    if let Some(home) = std::env::var_os("CRITERION_HOME") {
        return PathBuf::from(home);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target"));
    target.join("criterion")
}

/// The median (ns per iteration) criterion measured for `function` in
/// `group` in this run, if it ran.
pub(crate) fn median_ns(group: &str, function: &str) -> Option<f64> {
    find(&criterion_dir(), group, function, 0)
}

fn find(dir: &Path, group: &str, function: &str, depth: usize) -> Option<f64> {
    if depth > 4 {
        return None;
    }
    let new = dir.join("new");
    if let Ok(text) = std::fs::read_to_string(new.join("benchmark.json"))
        && let Ok(id) = serde_json::from_str::<serde_json::Value>(&text)
        && id["group_id"] == group
        && id["function_id"] == function
    {
        let text = std::fs::read_to_string(new.join("estimates.json")).ok()?;
        let estimates: serde_json::Value = serde_json::from_str(&text).ok()?;
        return estimates["median"]["point_estimate"].as_f64();
    }
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
        .find_map(|e| find(&e.path(), group, function, depth + 1))
}

fn ns(v: f64) -> String {
    if v >= 1_000.0 {
        format!("{:.2} µs", v / 1_000.0)
    } else {
        format!("{v:.1} ns")
    }
}

/// Prints `ours / peer` (time per operation: below 1 is faster) with both
/// medians and the target.
pub(crate) fn time_ratio(group: &str, ours: &str, peer: &str, target: &str) {
    match (median_ns(group, ours), median_ns(group, peer)) {
        (Some(o), Some(p)) => println!(
            "ratio [{group}] {ours} {} / {peer} {} = {:.2}× the time (target: {target})",
            ns(o),
            ns(p),
            o / p
        ),
        _ => println!("ratio [{group}] {ours} / {peer}: not measured in this run"),
    }
}

/// Prints what `ours` and `peer` each add to `bare` (time per operation).
pub(crate) fn added(group: &str, bare: &str, ours: &str, peer: Option<&str>, target: &str) {
    let Some(b) = median_ns(group, bare) else {
        println!("added [{group}]: {bare} not measured in this run");
        return;
    };
    let line = |name: &str| {
        median_ns(group, name).map_or_else(
            || format!("{name}: not measured"),
            |v| format!("{name} +{}", ns(v - b)),
        )
    };
    match peer {
        Some(peer) => println!(
            "added [{group}] over {bare} {}: {}, {} (target: {target})",
            ns(b),
            line(ours),
            line(peer)
        ),
        None => println!(
            "added [{group}] over {bare} {}: {} (target: {target})",
            ns(b),
            line(ours)
        ),
    }
}
