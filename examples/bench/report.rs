//! The report: a table of rows (one per workload and server) and the list
//! of targets met or missed, printed as Markdown.

use std::fmt::Write as _;

use crate::child::Usage;
use crate::stats::Latencies;

/// One line of the results table.
pub(crate) struct Row {
    pub(crate) workload: String,
    pub(crate) server: &'static str,
    pub(crate) rate: f64,
    pub(crate) unit: &'static str,
    pub(crate) p50: Option<f64>,
    pub(crate) p99: Option<f64>,
    pub(crate) peak_kib: u64,
    pub(crate) cpu_us_per_op: Option<f64>,
    pub(crate) ratio: Option<f64>,
    pub(crate) note: String,
}

pub(crate) struct Check {
    pub(crate) target: String,
    pub(crate) measured: String,
    pub(crate) met: bool,
}

#[derive(Default)]
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) checks: Vec<Check>,
    pub(crate) notes: Vec<String>,
}

impl Report {
    pub(crate) fn check(&mut self, target: impl Into<String>, measured: impl Into<String>, met: bool) {
        let check = Check {
            target: target.into(),
            measured: measured.into(),
            met,
        };
        eprintln!(
            "  [{}] {} — {}",
            if check.met { "met" } else { "MISSED" },
            check.target,
            check.measured
        );
        self.checks.push(check);
    }

    pub(crate) fn note(&mut self, note: impl Into<String>) {
        let note = note.into();
        eprintln!("  note: {note}");
        self.notes.push(note);
    }

    #[allow(clippy::too_many_arguments)]
    pub(crate) fn row(
        &mut self,
        workload: &str,
        server: &'static str,
        rate: f64,
        unit: &'static str,
        latency: &mut Latencies,
        usage: Usage,
        cpu_used: f64,
        ratio: Option<f64>,
        note: impl Into<String>,
    ) {
        let ops = latency.len();
        let row = Row {
            workload: workload.to_string(),
            server,
            rate,
            unit,
            p50: latency.percentile_ms(50.0),
            p99: latency.percentile_ms(99.0),
            peak_kib: usage.peak_rss_kib,
            cpu_us_per_op: (ops > 0 && cpu_used > 0.0).then(|| cpu_used * 1e6 / ops as f64),
            ratio,
            note: note.into(),
        };
        eprintln!(
            "  {:<34} {:<9} {:>10.0} {}/s  p50 {} ms  p99 {} ms  peak {:.0} MiB{}",
            row.workload,
            row.server,
            row.rate,
            row.unit,
            fmt_ms(row.p50),
            fmt_ms(row.p99),
            row.peak_kib as f64 / 1024.0,
            row.ratio.map(|r| format!("  ratio {r:.3}")).unwrap_or_default()
        );
        self.rows.push(row);
    }

    pub(crate) fn print(&self, header: &str) {
        let mut out = String::new();
        let _ = writeln!(out, "\n{header}\n");
        let _ = writeln!(
            out,
            "| workload | server | throughput | p50 ms | p99 ms | peak RSS MiB | server CPU µs/op | otpgate / baseline | note |"
        );
        let _ = writeln!(out, "|---|---|---:|---:|---:|---:|---:|---:|---|");
        for r in &self.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} {}/s | {} | {} | {:.1} | {} | {} | {} |",
                r.workload,
                r.server,
                thousands(r.rate),
                r.unit,
                fmt_ms(r.p50),
                fmt_ms(r.p99),
                r.peak_kib as f64 / 1024.0,
                r.cpu_us_per_op.map(|c| format!("{c:.0}")).unwrap_or_else(|| "–".into()),
                r.ratio.map(|x| format!("{x:.3}")).unwrap_or_else(|| "–".into()),
                r.note
            );
        }
        let _ = writeln!(out, "\n| target | measured | |\n|---|---|---|");
        for c in &self.checks {
            let _ = writeln!(
                out,
                "| {} | {} | {} |",
                c.target,
                c.measured,
                if c.met { "met" } else { "**missed**" }
            );
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out);
            for n in &self.notes {
                let _ = writeln!(out, "- {n}");
            }
        }
        println!("{out}");
    }
}

pub(crate) fn fmt_ms(v: Option<f64>) -> String {
    match v {
        Some(v) if v < 10.0 => format!("{v:.2}"),
        Some(v) => format!("{v:.0}"),
        None => "–".into(),
    }
}

pub(crate) fn thousands(v: f64) -> String {
    let n = v.round() as u64;
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}
