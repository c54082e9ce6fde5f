//! Writing evaluation reports: `report.json` (machine-readable) and `report.md` (for people).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Serialize;

/// Machine and backend facts every report carries.
#[derive(Clone, Debug, Serialize)]
pub struct Environment {
    pub diffugpt_version: &'static str,
    pub backend: &'static str,
    pub dtype: &'static str,
    pub threads: usize,
    pub cpu: String,
}

impl Environment {
    pub fn detect() -> Self {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split(':').nth(1))
                    .map(|v| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".into());
        Environment {
            diffugpt_version: diffugpt::VERSION,
            backend: "cpu",
            dtype: "f32",
            threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu,
        }
    }
}

/// Writes `value` as `out_dir/report.json` and `markdown` as `out_dir/report.md`.
pub fn write_report<T: Serialize>(
    out_dir: &Path,
    value: &T,
    markdown: &str,
) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(out_dir).with_context(|| format!("creating {}", out_dir.display()))?;
    let json = out_dir.join("report.json");
    diffugpt::weights::write_atomic(&json, &serde_json::to_vec_pretty(value)?)?;
    let md = out_dir.join("report.md");
    diffugpt::weights::write_atomic(&md, markdown.as_bytes())?;
    Ok(vec![json, md])
}

/// A Markdown table from a header and rows.
pub fn md_table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut s = format!("| {} |\n", header.join(" | "));
    s += &format!("|{}\n", " --- |".repeat(header.len()));
    for r in rows {
        s += &format!("| {} |\n", r.join(" | "));
    }
    s
}
