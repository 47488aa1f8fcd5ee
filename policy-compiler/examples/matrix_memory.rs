//! `netpol matrix` memory and time, held (the whole matrix built, then rendered: the
//! behaviour before #11) against streamed ([`MatrixWriter`]: one row at a time), on
//! synthetic clusters (`netpol gen`'s generator). Each measurement runs in a child process
//! of this binary, so peak RSS (`VmHWM`) is that variant's alone.
//!
//! ```text
//! cargo run --release -p policy-compiler --example matrix_memory -- 1000 5000 50000
//! ```
//!
//! Output goes to a sink that counts bytes. With `--rows R` (default: all rows up to 5,000
//! endpoints, 200 rows above) the streamed variant stops after R rows, as `| head` would:
//! a full 50,000-endpoint matrix is 2.5e9 cells (hours, and tens of GB of text), so its
//! time is extrapolated from the rows written while its memory is measured directly. The
//! held variant is not run above 5,000 endpoints (it needs O(endpoints²) memory: #11 saw it
//! abort at 8 GB for 50,000).

use std::io::{self, Write};
use std::process::Command;
use std::time::Instant;

use policy_compiler::synth::{SynthParams, generate};
use policy_compiler::{
    AllowGraph, MatrixFormat, MatrixQuery, MatrixWriter, Model, SourceText, load, matrix,
};

/// Counts bytes; fails like a closed pipe once `limit` newlines were written.
struct Sink {
    bytes: u64,
    lines: u64,
    limit: u64,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.lines >= self.limit {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        self.bytes += buf.len() as u64;
        self.lines += buf.iter().filter(|b| **b == b'\n').count() as u64;
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn kib(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|r| r.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn child(variant: &str, n: usize, rows: u64) {
    let text = generate(&SynthParams::scaled(n, 1));
    let (inputs, diags) = load(&[SourceText {
        name: "synth",
        text: &text,
    }]);
    assert!(
        diags.iter().all(|d| !d.is_error()),
        "synthetic input is valid"
    );
    drop(text);
    let (model, _) = Model::build(&inputs);
    drop(inputs);
    let graph = AllowGraph::build(&model);
    let before = kib("VmRSS:");
    let q = MatrixQuery::default();
    // Header line + rows (+ legend).
    let mut sink = Sink {
        bytes: 0,
        lines: 0,
        limit: rows + 1,
    };
    let t = Instant::now();
    let written_rows = match variant {
        "held" => {
            let m = matrix(&model, &graph, q);
            let _ = sink.write_all(m.to_text().as_bytes());
            m.endpoints.len() as u64
        }
        _ => {
            let _ = MatrixWriter::new(&model, &graph, q).write(MatrixFormat::Text, &mut sink);
            sink.lines
                .saturating_sub(1)
                .min(model.endpoints.len() as u64)
        }
    };
    let secs = t.elapsed().as_secs_f64();
    println!(
        "{} {} {:.3} {} {} {}",
        model.endpoints.len(),
        written_rows,
        secs,
        before,
        kib("VmHWM:"),
        sink.bytes
    );
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--child") {
        let n = args[2].parse().expect("n");
        let rows = args[3].parse().expect("rows");
        child(&args[1], n, rows);
        return;
    }
    let mut rows_flag = None;
    let mut sizes = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if a == "--rows" {
            rows_flag = it.next().and_then(|r| r.parse::<u64>().ok());
        } else if let Ok(n) = a.parse::<usize>() {
            sizes.push(n);
        }
    }
    if sizes.is_empty() {
        sizes = vec![1000, 5000, 50000];
    }
    let exe = std::env::current_exe().expect("own path");
    println!(
        "| endpoints | variant | rows written | time | s per 1,000 rows | RSS before matrix | peak RSS |"
    );
    println!("|---:|---|---:|---:|---:|---:|---:|");
    for n in sizes {
        for variant in ["held", "streamed"] {
            if variant == "held" && n > 5000 {
                println!(
                    "| {n} | held | - | not run: O(endpoints²), aborted at 8 GB in #11 | | | |"
                );
                continue;
            }
            let rows = rows_flag.unwrap_or(if n > 5000 { 200 } else { u64::MAX / 2 });
            let out = Command::new(&exe)
                .args(["--child", variant, &n.to_string(), &rows.to_string()])
                .output()
                .expect("run child");
            let line = String::from_utf8_lossy(&out.stdout);
            let f: Vec<&str> = line.split_whitespace().collect();
            if !out.status.success() || f.len() < 6 {
                println!(
                    "| {n} | {variant} | failed: {} | | | | |",
                    String::from_utf8_lossy(&out.stderr)
                        .lines()
                        .last()
                        .unwrap_or("")
                );
                continue;
            }
            let (eps, written, secs): (u64, u64, f64) = (
                f[0].parse().unwrap_or(0),
                f[1].parse().unwrap_or(0),
                f[2].parse().unwrap_or(0.0),
            );
            let mib = |k: &str| k.parse::<u64>().unwrap_or(0) as f64 / 1024.0;
            println!(
                "| {eps} | {variant} | {written} | {secs:.1} s | {:.2} s | {:.0} MiB | {:.0} MiB |",
                secs / written.max(1) as f64 * 1000.0,
                mib(f[3]),
                mib(f[4]),
            );
        }
    }
}
