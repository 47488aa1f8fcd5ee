//! `netpol lint`: the checks of `policy_compiler::lint` as text (`file:line:col:
//! warning[NP002 peer-selects-nothing]: ...`), JSON, or SARIF 2.1.0 for GitHub code
//! scanning. Exit 0 without findings, 1 with findings (notes of `--exposure` included),
//! 2 on invalid input.
//!
//! ```text
//! netpol lint -f deploy/ -f policies/ -o sarif > netpol.sarif
//! ```

use clap::ValueEnum;
use policy_compiler::lint::{Finding, LintOptions, RULES, lint};
use serde_json::{Value, json};

use crate::InputArgs;

/// Exit code when something was found.
const EXIT_FINDINGS: i32 = 1;

/// Output formats of `lint`.
#[derive(Clone, Copy, ValueEnum)]
pub(crate) enum LintFormat {
    Text,
    Json,
    Sarif,
}

/// Arguments of `lint`.
#[derive(clap::Args)]
pub(crate) struct LintArgs {
    /// Output format.
    #[arg(short, long, value_enum, default_value = "text")]
    output: LintFormat,
    /// Also report what each endpoint is exposed to (no ingress or egress isolation,
    /// reachable from 0.0.0.0/0).
    #[arg(long)]
    exposure: bool,
}

/// Runs `netpol lint`.
pub(crate) fn run(args: &LintArgs, input: &InputArgs) -> i32 {
    let c = match crate::inputs::compile_input(input) {
        Ok(c) => c,
        Err(code) => return code,
    };
    for w in c.caveats() {
        eprintln!("warning: {w}");
    }
    let findings = lint(
        &c.model,
        &c.graph,
        LintOptions {
            exposure: args.exposure,
        },
    );
    match args.output {
        LintFormat::Text => {
            let mut s = String::new();
            for f in &findings {
                s.push_str(&text_line(f));
                s.push('\n');
            }
            s.push_str(&format!("{} finding(s)\n", findings.len()));
            crate::output::emit(&s);
        }
        LintFormat::Json => crate::output::emitln(&crate::to_json(&json!({
            "findings": findings.iter().map(json_finding).collect::<Vec<_>>()
        }))),
        LintFormat::Sarif => crate::output::emitln(&crate::to_json(&sarif(&findings))),
    }
    if findings.is_empty() {
        0
    } else {
        EXIT_FINDINGS
    }
}

fn text_line(f: &Finding) -> String {
    let mut at = f.file.clone().unwrap_or_else(|| "<input>".into());
    if let (Some(l), Some(c)) = (f.line, f.column) {
        at.push_str(&format!(":{l}:{c}"));
    }
    let level = match f.rule.level {
        policy_compiler::lint::Level::Warning => "warning",
        policy_compiler::lint::Level::Note => "note",
    };
    let mut s = format!("{at}: {level}[{} {}]:", f.rule.id, f.rule.name);
    if !f.object.is_empty() {
        s.push_str(&format!(" {}:", f.object));
    }
    if let Some(field) = &f.field {
        s.push_str(&format!(" {field}:"));
    }
    s.push_str(&format!(" {}", f.message));
    s
}

fn json_finding(f: &Finding) -> Value {
    json!({
        "rule": f.rule.id,
        "name": f.rule.name,
        "level": f.rule.level,
        "object": f.object,
        "file": f.file,
        "line": f.line,
        "column": f.column,
        "field": f.field,
        "message": f.message,
    })
}

/// SARIF 2.1.0: one run, the rule table as the driver's rules, one result per finding
/// with a physical location (file relative to the repository, region line and column)
/// when known, as GitHub code scanning reads it.
pub(crate) fn sarif(findings: &[Finding]) -> Value {
    let rules: Vec<Value> = RULES
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "name": r.name,
                "shortDescription": {"text": r.summary},
                "fullDescription": {"text": r.help},
                "help": {"text": r.help},
                "defaultConfiguration": {"level": r.level},
            })
        })
        .collect();
    let results: Vec<Value> = findings
        .iter()
        .map(|f| {
            let index = RULES.iter().position(|r| r.id == f.rule.id).unwrap_or(0);
            let mut text = f.message.clone();
            if !f.object.is_empty() {
                text = format!("{}: {text}", f.object);
            }
            let mut result = json!({
                "ruleId": f.rule.id,
                "ruleIndex": index,
                "level": f.rule.level,
                "message": {"text": text},
            });
            if let Some(file) = &f.file {
                let mut region = serde_json::Map::new();
                if let Some(l) = f.line {
                    region.insert("startLine".into(), json!(l));
                }
                if let Some(c) = f.column {
                    region.insert("startColumn".into(), json!(c));
                }
                let mut physical = json!({
                    "artifactLocation": {"uri": uri(file), "uriBaseId": "%SRCROOT%"},
                });
                if !region.is_empty() {
                    physical["region"] = Value::Object(region);
                }
                result["locations"] = json!([{ "physicalLocation": physical }]);
            }
            // Stable across runs and line moves: rule, object, field.
            result["partialFingerprints"] = json!({
                "netpol/v1": format!("{}|{}|{}", f.rule.id, f.object, f.field.as_deref().unwrap_or("")),
            });
            result
        })
        .collect();
    json!({
        "$schema": "https://json.schemastore.org/sarif-2.1.0.json",
        "version": "2.1.0",
        "runs": [{
            "tool": {"driver": {
                "name": "netpol",
                "version": env!("CARGO_PKG_VERSION"),
                "informationUri": "https://github.com/netpol/netpol",
                "rules": rules,
            }},
            "columnKind": "unicodeCodePoints",
            "results": results,
        }],
    })
}

/// A relative path with `/` separators (SARIF URIs), without a leading `./`.
fn uri(file: &str) -> String {
    file.trim_start_matches("./").replace('\\', "/")
}
