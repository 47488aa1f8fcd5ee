//! `netpol lab`: the manifests' Pods as network namespaces on this machine, enforced by
//! the agent's code, probed with real packets, compared with `netpol matrix`
//! (see docs/lab.md).
//!
//! Exit codes: 0 the kernel agrees with the compiler, 1 a disagreement, 2 invalid input,
//! 3 not root / no kernel support / the lab could not be built.

use std::io::IsTerminal as _;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use netpol_lab::lab::plan::{LabPlan, PlanError};
use netpol_lab::lab::{
    ErrorChain, KeptLab, LAB_PREFIX, Lab, LabOptions, cleanup_dead_labs, running_labs,
};
use netpol_lab::topology::Topology;

use crate::inputs::{self, EXIT_INVALID};

/// Exit code when the kernel and the compiler disagree.
const EXIT_DISAGREE: i32 = 1;
/// Exit code when the lab cannot run here (not root, no netns/nft support, …).
const EXIT_KERNEL: i32 = 3;

/// Output format of `lab`.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum LabFormat {
    /// Tables side by side, disagreements, drop reports.
    Text,
    /// One JSON object (see docs/lab.md).
    Json,
}

/// Flags of `netpol lab`.
#[derive(Args)]
pub(crate) struct LabArgs {
    /// Manifests: files, directories (recursive: *.yaml, *.yml, *.json) or - for stdin.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "PATH",
        required_unless_present = "down"
    )]
    files: Vec<PathBuf>,
    /// List skipped objects (kinds that do not affect connectivity).
    #[arg(short, long)]
    verbose: bool,
    /// Leave the namespaces (with their nftables tables) up after the run.
    #[arg(long)]
    keep: bool,
    /// Remove a lab left by --keep or by a crashed run, and exit.
    #[arg(long, conflicts_with_all = ["files", "keep"])]
    down: bool,
    /// Output format.
    #[arg(short, long, value_enum, default_value = "text")]
    output: LabFormat,
    /// How long one probe waits for an answer, in milliseconds (a denied probe costs
    /// this much; an allowed one that timed out is retried once with 2 s).
    #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(10..=60_000))]
    timeout_ms: u64,
}

fn kernel_check() -> Result<(), i32> {
    enforcer::netns::kernel_support().map_err(|reason| {
        eprintln!("error: netpol lab needs root and network namespaces (ip, nft): {reason}");
        EXIT_KERNEL
    })
}

/// Runs `lab`; returns the exit code.
pub(crate) fn run(args: &LabArgs) -> i32 {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .init();
    if args.down {
        return down();
    }
    let (loaded, _) =
        match inputs::load_and_compile(&args.files, &[], args.verbose, inputs::Limits::default()) {
            Ok(c) => c,
            Err(code) => return code,
        };
    let plan = match LabPlan::new(loaded) {
        Ok(p) => p,
        Err(PlanError::Invalid(diags)) => {
            inputs::print_diagnostics(&diags, None);
            return EXIT_INVALID;
        }
        Err(e) => {
            eprintln!("error: {e}");
            return EXIT_INVALID;
        }
    };
    if plan.pods().is_empty() {
        for s in plan.skipped() {
            eprintln!("note: {s}");
        }
        eprintln!(
            "error: no Pods to put in a lab (workloads and hostNetwork Pods get no network namespace)"
        );
        return EXIT_INVALID;
    }
    if let Err(code) = kernel_check() {
        return code;
    }
    // This process's prefix (`netpollab<pid>`): other labs running at the same time
    // keep their namespaces.
    let opts = LabOptions {
        timeout: Duration::from_millis(args.timeout_ms),
        ..LabOptions::default()
    };
    if let Err(e) = teardown_on_signal(&opts.prefix) {
        eprintln!("error: cannot handle SIGINT/SIGTERM: {e}");
        return EXIT_KERNEL;
    }
    let mut lab = match Lab::start(plan, &opts) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {}", ErrorChain(&e));
            return EXIT_KERNEL;
        }
    };
    let report = match lab.probe() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {}", ErrorChain(&e));
            if let Err(e) = lab.teardown() {
                eprintln!("error: {}", ErrorChain(&e));
            }
            return EXIT_KERNEL;
        }
    };
    match args.output {
        LabFormat::Text => {
            let color = std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none();
            crate::output::emit(&report.to_text(color));
        }
        LabFormat::Json => crate::output::emitln(&crate::to_json(&report)),
    }
    if args.keep {
        print_kept(&lab.keep());
    } else if let Err(e) = lab.teardown() {
        eprintln!("error: {}", ErrorChain(&e));
        return EXIT_KERNEL;
    }
    if report.agree { 0 } else { EXIT_DISAGREE }
}

fn print_kept(k: &KeptLab) {
    // On stderr, so `-o json` output stays one document.
    eprintln!(
        "\nlab kept: {} namespace(s) with their nftables tables (servers stopped; the agent is not running)",
        k.pods.len() + 1
    );
    let w = k.pods.iter().map(|(p, _)| p.len()).max().unwrap_or(0);
    for (pod, ns) in &k.pods {
        eprintln!("  {pod:<w$}  sudo ip netns exec {ns} bash");
    }
    if let Some((pod, ns)) = k.pods.first() {
        eprintln!("table of {pod}: sudo ip netns exec {ns} nft list table inet netpol");
    }
    eprintln!(
        "node:         sudo ip netns exec {} nft list ruleset",
        k.hub
    );
    eprintln!("remove it:    sudo netpol lab --down   (the next `netpol lab` run removes it too)");
}

/// `--down`: removes the namespaces of every lab whose process is gone (kept or
/// crashed); labs of running processes stay.
fn down() -> i32 {
    if let Err(code) = kernel_check() {
        return code;
    }
    for (prefix, n) in running_labs() {
        eprintln!("left running: {prefix}-* ({n} namespace(s)): its `netpol lab` still runs");
    }
    match cleanup_dead_labs() {
        Ok(removed) if removed.is_empty() => {
            eprintln!("no lab namespaces ({LAB_PREFIX}<pid>-*) of a finished run found");
            0
        }
        Ok(removed) => {
            eprintln!("removed {}", removed.join(" "));
            0
        }
        Err(e) => {
            eprintln!("error: {}", ErrorChain(&e));
            EXIT_KERNEL
        }
    }
}

/// On SIGINT or SIGTERM: remove every namespace of `prefix` and exit (130 / 143). The
/// handler runs on its own thread with a small tokio runtime, so it works whatever the
/// main thread is doing (building, probing, tearing down: removal is idempotent).
fn teardown_on_signal(prefix: &str) -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let prefix = prefix.to_owned();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<std::io::Result<()>>();
    std::thread::Builder::new()
        .name("lab-signals".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            rt.block_on(async move {
                let (mut int, mut term) = match (
                    signal(SignalKind::interrupt()),
                    signal(SignalKind::terminate()),
                ) {
                    (Ok(i), Ok(t)) => (i, t),
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                let code = tokio::select! {
                    _ = int.recv() => 130,
                    _ = term.recv() => 143,
                };
                eprintln!("\nnetpol lab: interrupted: removing the lab's namespaces");
                match Topology::cleanup_stale(&prefix) {
                    Ok(removed) => eprintln!("removed {}", removed.join(" ")),
                    Err(e) => eprintln!("error: {}", ErrorChain(&e)),
                }
                std::process::exit(code);
            });
        })?;
    ready_rx
        .recv()
        .unwrap_or_else(|_| Err(std::io::Error::other("signal thread died")))
}
