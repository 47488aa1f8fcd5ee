//! Running the built `netpol` binary, and the repository's golden cases.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// Repository root (the workspace).
pub(crate) fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("cli is inside the workspace")
        .to_path_buf()
}

/// A case directory under testdata/cases, e.g. `upstream/port-81-only`.
pub(crate) fn case(name: &str) -> PathBuf {
    repo_root().join("testdata/cases").join(name)
}

/// `-f cluster.yaml -f policies.yaml` of a repository case (not expect.yaml).
pub(crate) fn manifests_of(name: &str) -> Vec<String> {
    let dir = case(name);
    ["cluster.yaml", "policies.yaml"]
        .iter()
        .flat_map(|f| ["-f".to_string(), dir.join(f).display().to_string()])
        .collect()
}

/// What a run printed and returned.
pub(crate) struct Run {
    pub(crate) code: i32,
    pub(crate) stdout: String,
    pub(crate) stderr: String,
}

impl Run {
    /// What a finished process printed and returned.
    pub(crate) fn from_output(o: Output) -> Run {
        Run::from(o)
    }

    fn from(o: Output) -> Run {
        Run {
            code: o
                .status
                .code()
                .expect("netpol exits, not killed by a signal"),
            stdout: String::from_utf8(o.stdout).expect("stdout is UTF-8"),
            stderr: String::from_utf8(o.stderr).expect("stderr is UTF-8"),
        }
    }

    /// Asserts the exit code, showing the output otherwise.
    #[track_caller]
    pub(crate) fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code, code,
            "exit code\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// Runs `netpol ARGS` in `cwd`.
pub(crate) fn netpol_in<S: AsRef<std::ffi::OsStr>>(cwd: &Path, args: &[S]) -> Run {
    let o = Command::new(env!("CARGO_BIN_EXE_netpol"))
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .expect("run netpol");
    Run::from(o)
}

/// Runs `netpol ARGS` in the repository root.
pub(crate) fn netpol<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> Run {
    netpol_in(&repo_root(), args)
}

/// Runs `netpol ARGS` with `input` on stdin.
pub(crate) fn netpol_stdin<S: AsRef<std::ffi::OsStr>>(args: &[S], input: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_netpol"))
        .args(args)
        .current_dir(repo_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run netpol");
    child
        .stdin
        .take()
        .expect("stdin is piped")
        .write_all(input.as_bytes())
        .expect("write stdin");
    Run::from(child.wait_with_output().expect("wait for netpol"))
}

/// cluster.yaml and policies.yaml of a repository case as one multi-document stream.
pub(crate) fn manifest_stream(name: &str) -> String {
    let dir = case(name);
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("read case file");
    format!("{}\n---\n{}", read("cluster.yaml"), read("policies.yaml"))
}

/// Copies a repository case (all its files) into `to`.
pub(crate) fn copy_case(name: &str, to: &Path) {
    std::fs::create_dir_all(to).expect("create case dir");
    for e in std::fs::read_dir(case(name)).expect("read case dir") {
        let p = e.expect("dir entry").path();
        std::fs::copy(&p, to.join(p.file_name().expect("file name"))).expect("copy case file");
    }
}

/// A manifest with an `except` outside its `cidr`: invalid, at policies.yaml line 17.
pub(crate) const EXCEPT_OUTSIDE_CIDR: &str = "\
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: bad-except
  namespace: x
spec:
  podSelector:
    matchLabels:
      pod: a
  policyTypes:
  - Egress
  egress:
  - to:
    - ipBlock:
        cidr: 10.0.0.0/16
        except:
        - 192.168.0.0/24
";

/// The last line of `s`.
pub(crate) fn last_line(s: &str) -> &str {
    s.lines().last().unwrap_or("")
}
