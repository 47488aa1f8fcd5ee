//! `netpol`: Kubernetes NetworkPolicy, explained, tabulated, compiled and enforced.
//!
//! Subcommands: `explain SRC DST` (may SRC reach DST, and which rules decide),
//! `matrix` (truth table of every endpoint pair), `compile` (each Pod's nftables ruleset),
//! `test DIR...` (golden-file policy tests: `expect.yaml` and goldens). Every command reads manifests with
//! `-f PATH` (files, directories, `-` for stdin), or the live cluster with
//! `--cluster [--context C]`, and exits 2 on invalid input.
//! `agent --manifests DIR | --kubernetes --node NODE` runs the node agent (enforcement in
//! Pod netns); `lab -f PATH` (root) runs the manifests' Pods as namespaces on this machine
//! and compares the kernel's answers with the compiler's.
//! `gen` writes a synthetic cluster for benchmarks.
//!
//! ```text
//! netpol explain x/a y/b --port 80 -f testdata/cases/upstream/
//! netpol matrix --port 80 --protocol TCP -f manifests.yaml -o json
//! netpol explain shop/web shop/db --port 5432 --cluster --context prod
//! netpol compile --all --out-dir rulesets/ -f manifests.yaml
//! netpol agent --manifests /etc/netpol/manifests --netns-map /etc/netpol/netns.map
//! netpol gen --namespaces 100 --pods 10000 --policies 1000 --seed 1 -o cluster.yaml
//! sudo netpol lab -f testdata/cases/apps/shop-multi-tier
//! ```

mod agent;
mod compile;
mod diff;
mod explain_cmd;
mod r#gen;
mod html;
mod inputs;
mod lab;
mod lint;
mod list;
mod output;
mod test;

use std::path::PathBuf;
use std::process::ExitCode;

/// mimalloc: loading a manifest allocates and frees millions of small objects (YAML
/// values, Kubernetes objects), where glibc's allocator took a sixth of `netpol list`.
/// Built without transparent huge pages (`no_thp`): the kernel zeroing 2 MiB pages on
/// first touch cost a short command more than the allocator saved. See: #14
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

use clap::{Parser, Subcommand, ValueEnum};
use policy_compiler::{MatrixQuery, MatrixWriter, Protocol};

#[derive(Parser)]
#[command(
    name = "netpol",
    version,
    about = "Kubernetes NetworkPolicy: explain, matrix, compile, enforce"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct InputArgs {
    /// Manifests: files, directories (recursive: *.yaml, *.yml, *.json) or - for stdin.
    #[arg(
        short = 'f',
        long = "filename",
        value_name = "PATH",
        required_unless_present = "cluster",
        conflicts_with = "cluster"
    )]
    pub(crate) files: Vec<PathBuf>,
    /// Read the live cluster instead of files: Namespaces, Pods, workloads and
    /// NetworkPolicies listed through the kubeconfig ($KUBECONFIG or ~/.kube/config).
    #[arg(long)]
    pub(crate) cluster: bool,
    /// Kubeconfig context for --cluster (default: the current context).
    #[arg(long, value_name = "CONTEXT", requires = "cluster")]
    pub(crate) context: Option<String>,
    /// Endpoints declared by namespace and labels (Pods an operator creates at run
    /// time): a YAML file `endpoints: [{namespace, name, labels, ports, replicas}]`
    /// (repeatable). See docs/analysis.md.
    #[arg(long = "endpoints", value_name = "FILE")]
    pub(crate) endpoints: Vec<PathBuf>,
    /// List skipped objects (kinds that do not affect connectivity).
    #[arg(short, long)]
    pub(crate) verbose: bool,
    /// Largest input read, per file and for all files together, in MiB.
    #[arg(long, value_name = "MIB", default_value_t = inputs::DEFAULT_MAX_INPUT_MIB)]
    pub(crate) max_input_mib: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum ExplainFormat {
    Text,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum MatrixFormat {
    Text,
    Json,
    Csv,
    Md,
}

#[derive(Subcommand)]
enum Command {
    /// May SRC reach DST? Which policies isolate each side and which rules allow or miss.
    Explain {
        /// Source: ns/name (Pod), name (Pod in default), ns/kind/name (workload), an IP, or
        /// node/NAME (the node's first address).
        src: String,
        /// Destination: as SRC (without node/NAME), or a Service ns/service/name (alias
        /// svc): answered per backend, after DNAT.
        dst: String,
        /// Port to ask about: a number, a range LO-HI (allowed when every port is) or a
        /// port name of DST (for a Service: its port number or name; without it, every
        /// Service port); without it, the answer covers all ports and protocols.
        #[arg(long)]
        port: Option<String>,
        /// Protocol of --port (default TCP).
        #[arg(long, value_parser = parse_protocol)]
        protocol: Option<Protocol>,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: ExplainFormat,
        /// Exit 1 when the answer is denied (0 when allowed), for scripts.
        #[arg(long)]
        exit_code: bool,
        #[command(flatten)]
        input: InputArgs,
    },
    /// Truth table of every ordered endpoint pair (rows: sources, columns: destinations).
    Matrix {
        /// Port; without it a cell says whether any traffic may flow.
        #[arg(long)]
        port: Option<u16>,
        /// Protocol (default TCP when --port is given).
        #[arg(long, value_parser = parse_protocol)]
        protocol: Option<Protocol>,
        /// Columns are Service ports instead of endpoints: each connection judged per
        /// backend after DNAT (`.` every backend, `X` none, `N/M` some, `-` no backends);
        /// --port/--protocol keep the Service ports of that number/protocol.
        #[arg(long)]
        via_services: bool,
        /// Output format.
        #[arg(short, long, value_enum, default_value = "text")]
        output: MatrixFormat,
        #[command(flatten)]
        filter: list::FilterArgs,
        #[command(flatten)]
        input: InputArgs,
    },
    /// Every ordered pair that may talk, with the exact allowed ports (IP ranges of
    /// ipBlocks as endpoints): text, json, csv, md, dot, html.
    List {
        #[command(flatten)]
        args: list::ListArgs,
        #[command(flatten)]
        input: InputArgs,
    },
    /// What changed between two policy sets (OLD NEW, or --base REV -f PATH): every pair
    /// whose allowed set changed, as added/removed/changed. Exit 1 when anything changed.
    Diff(diff::DiffArgs),
    /// Policies that are valid but probably wrong (rule ids, file:line): text, json, or
    /// SARIF for code scanning. Exit 1 when something was found.
    Lint {
        #[command(flatten)]
        args: lint::LintArgs,
        #[command(flatten)]
        input: InputArgs,
    },
    /// Golden-file policy tests: check expect.yaml and golden outputs of every case under DIR.
    Test(test::TestArgs),
    /// Each Pod's nftables ruleset (`table inet netpol` for the Pod's own netns).
    ///
    /// Only Pods get rulesets: workloads (Deployments, ...) have no network namespace and
    /// hostNetwork Pods share the node's. Output is deterministic.
    Compile {
        #[command(flatten)]
        args: compile::CompileArgs,
        #[command(flatten)]
        input: InputArgs,
    },
    /// Node agent: keeps each local Pod's nftables table equal to the compiled policy of
    /// a watched manifest directory or of the Kubernetes API (fail closed; /metrics,
    /// /healthz, /readyz).
    Agent {
        #[command(flatten)]
        args: agent::AgentArgs,
    },
    /// Writes a synthetic cluster (Namespaces, Pods, NetworkPolicies) as YAML, for
    /// benchmarks; the same arguments give the same bytes.
    Gen {
        /// Namespaces, kube-system included.
        #[arg(long, default_value_t = 10)]
        namespaces: usize,
        /// Pods.
        #[arg(long, default_value_t = 1000)]
        pods: usize,
        /// NetworkPolicies.
        #[arg(long, default_value_t = 100)]
        policies: usize,
        /// Seed of the random stream.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Output file (default: stdout).
        #[arg(short, long, value_name = "FILE")]
        output: Option<PathBuf>,
    },
    /// Lab on this machine (root): a network namespace per Pod, rulesets applied by the
    /// agent, every Pod pair probed with real packets and compared with `netpol matrix`.
    ///
    /// Exit codes: 0 the kernel agrees, 1 a disagreement, 2 invalid input, 3 not root or
    /// no kernel support.
    Lab(lab::LabArgs),
}

fn parse_protocol(s: &str) -> Result<Protocol, String> {
    s.parse()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let code = match cli.command {
        Command::Explain {
            src,
            dst,
            port,
            protocol,
            output,
            exit_code,
            input,
        } => explain_cmd::run(&explain_cmd::ExplainArgs {
            src: &src,
            dst: &dst,
            port,
            protocol,
            output,
            exit_code,
            input: &input,
        }),
        Command::Matrix {
            port,
            protocol,
            via_services,
            output,
            filter,
            input,
        } => run_matrix(port, protocol, via_services, output, &filter, &input),
        Command::List { args, input } => list::run(&args, &input),
        Command::Diff(args) => diff::run(&args),
        Command::Lint { args, input } => lint::run(&args, &input),
        Command::Test(args) => test::run(&args),
        Command::Compile { args, input } => compile::run(&args, &input),
        Command::Agent { args } => agent::run(&args),
        Command::Gen {
            namespaces,
            pods,
            policies,
            seed,
            output,
        } => r#gen::run(
            &policy_compiler::synth::SynthParams {
                namespaces,
                pods,
                policies,
                seed,
            },
            output.as_deref(),
        ),
        Command::Lab(args) => lab::run(&args),
    };
    ExitCode::from(u8::try_from(code).unwrap_or(1))
}

fn to_json<T: serde::Serialize>(v: &T) -> String {
    // Serializing plain data structs with string keys cannot fail.
    serde_json::to_string_pretty(v).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
}

fn run_matrix(
    port: Option<u16>,
    protocol: Option<Protocol>,
    via_services: bool,
    output: MatrixFormat,
    filter: &list::FilterArgs,
    input: &InputArgs,
) -> i32 {
    let c = match inputs::compile_input(input) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if via_services {
        // The audited count beside the enforced one, when audit policies exist (#12).
        let m = policy_compiler::service_matrix_with_audit(
            &c.model,
            &c.graph,
            c.graph.audit(),
            port,
            protocol,
        );
        match output {
            MatrixFormat::Text => crate::output::emit(&m.to_text()),
            MatrixFormat::Json => crate::output::emitln(&to_json(&m)),
            MatrixFormat::Csv | MatrixFormat::Md => {
                eprintln!("error: --via-services prints text or json");
                return inputs::EXIT_INVALID;
            }
        }
        return 0;
    }
    // Row by row: memory O(endpoints), not O(endpoints²). See: #11
    // The audited verdict beside the enforced one, when audit policies exist (#12).
    let mut w = MatrixWriter::new(&c.model, &c.graph, MatrixQuery { protocol, port })
        .with_audit(c.graph.audit());
    let f = filter.filter();
    if !f.is_empty() {
        let keep: Vec<bool> = c.model.endpoints.iter().map(|e| f.matches(e)).collect();
        w.retain(&keep);
    }
    let format = match output {
        MatrixFormat::Text => policy_compiler::MatrixFormat::Text,
        MatrixFormat::Json => policy_compiler::MatrixFormat::Json,
        MatrixFormat::Csv => policy_compiler::MatrixFormat::Csv,
        MatrixFormat::Md => policy_compiler::MatrixFormat::Markdown,
    };
    match w.write(format, &mut std::io::stdout().lock()) {
        Ok(()) => 0,
        // `netpol matrix | head`: the reader has what it wanted. See: #14
        Err(e) => crate::output::exit_on(&e),
    }
}
