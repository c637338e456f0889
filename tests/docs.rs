//! The docs run as written: every `sh` block of README.md and docs/QUERIES.md, in order, in one shell.
//!
//! The blocks are the walkthrough a new user follows: start NATS and the ledger,
//! make and register keys, publish, use the vault, ask SQL questions, verify.
//! They run with `set -euo pipefail` in a fresh directory, with the test build of
//! `docket` first on PATH, so a command that fails or an example that stops
//! working fails this test with the block's line in the file. A block preceded
//! by `<!-- not run: REASON -->` is skipped (the quick start, which builds).

mod common;

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Longest the whole walkthrough may take before it counts as hung.
const WALKTHROUGH_TIMEOUT: Duration = Duration::from_secs(240);

/// One fenced `sh` block: where it starts in its file, and its text.
#[derive(Debug)]
struct Block {
    file: &'static str,
    line: usize,
    text: String,
    skipped: bool,
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The `sh` blocks of a markdown file, in order.
fn shell_blocks(file: &'static str) -> Vec<Block> {
    let text = std::fs::read_to_string(repo().join(file)).expect("read markdown");
    let mut blocks = Vec::new();
    let mut current: Option<Block> = None;
    let mut last_text_line = "";
    for (i, line) in text.lines().enumerate() {
        if current.is_some() && line.trim_start().starts_with("```") {
            blocks.extend(current.take());
            continue;
        }
        match &mut current {
            Some(b) => {
                b.text.push_str(line);
                b.text.push('\n');
            }
            None if line.trim() == "```sh" => {
                current = Some(Block {
                    file,
                    line: i + 2,
                    text: String::new(),
                    skipped: last_text_line.starts_with("<!-- not run:"),
                });
            }
            None => {
                if !line.trim().is_empty() {
                    last_text_line = line.trim();
                }
            }
        }
    }
    assert!(current.is_none(), "{file}: unclosed code block");
    blocks
}

/// One script of every runnable block, each announced so a failure names its place.
fn script(blocks: &[Block]) -> String {
    let mut s = String::from("set -euo pipefail\n");
    for b in blocks.iter().filter(|b| !b.skipped) {
        s.push_str(&format!("echo '### {}:{}' >&2\n", b.file, b.line));
        s.push_str(&b.text);
    }
    s
}

/// Runs the script in `dir` with the test's `docket` first on PATH; returns (success, output).
fn run(script_text: &str, dir: &Path) -> (bool, String) {
    let bin_dir = Path::new(common::DOCKET).parent().expect("binary dir");
    let path = format!(
        "{}:{}",
        bin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // The README walks in a directory inside the clone and runs `../tools/verify_export.py`.
    std::os::unix::fs::symlink(repo().join("tools"), dir.join("tools")).unwrap();
    let dir = &dir.join("walk");
    std::fs::create_dir(dir).unwrap();
    std::fs::write(dir.join("walkthrough.sh"), script_text).unwrap();
    let log = dir.join("walkthrough.log");
    let out = std::fs::File::create(&log).unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg("walkthrough.sh")
        .current_dir(dir)
        .env("PATH", path)
        .env("HOME", dir)
        .env_remove("DOCKET_DATA")
        .env_remove("DOCKET_NATS")
        .env_remove("DOCKET_KEY")
        .env_remove("DOCKET_CONFIG")
        .env_remove("DOCKET_ADMIN_KEY")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out)
        // Its own process group, so the servers it starts in the background end with it.
        .process_group(0);
    let mut child = cmd.spawn().expect("run bash");
    let deadline = Instant::now() + WALKTHROUGH_TIMEOUT;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // The group may be gone already (the script ended and took its jobs with it).
    let _ = Command::new("kill")
        .args(["-TERM", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    std::thread::sleep(Duration::from_millis(300));
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .stderr(Stdio::null())
        .status();
    let _ = child.wait();
    let mut text = String::new();
    std::fs::File::open(&log)
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    match status {
        Some(s) => (s.success(), text),
        None => (
            false,
            format!("{text}\n(timed out after {WALKTHROUGH_TIMEOUT:?})"),
        ),
    }
}

#[test]
fn readme_and_queries_run_as_written() {
    let mut blocks = shell_blocks("README.md");
    blocks.extend(shell_blocks("docs/QUERIES.md"));
    let runnable = blocks.iter().filter(|b| !b.skipped).count();
    assert!(
        runnable >= 6,
        "expected the walkthrough's blocks, found {runnable} runnable of {}",
        blocks.len()
    );
    let dir = tempfile::tempdir().unwrap();
    let (ok, output) = run(&script(&blocks), dir.path());
    let last_block = output
        .lines()
        .rfind(|l| l.starts_with("### "))
        .unwrap_or("(before the first block)");
    assert!(
        ok,
        "the docs' examples failed in the block at {}:\n{output}",
        last_block.trim_start_matches("### ")
    );
    // Every block ran: the last one announced is the last runnable one.
    let last = blocks.iter().rfind(|b| !b.skipped).unwrap();
    assert_eq!(
        last_block.trim_start_matches("### "),
        format!("{}:{}", last.file, last.line)
    );
}

#[test]
fn a_failing_example_fails_the_walkthrough() {
    // The harness itself must be able to fail: a command that exits non-zero stops the script.
    let dir = tempfile::tempdir().unwrap();
    let (ok, output) = run(
        "set -euo pipefail\necho '### x.md:1' >&2\ndocket verify --data ./nowhere\necho after\n",
        dir.path(),
    );
    assert!(!ok);
    assert!(output.contains("no ledger here"), "{output}");
    assert!(!output.contains("after"), "{output}");
}

#[test]
fn quick_start_is_skipped_and_marked() {
    let blocks = shell_blocks("README.md");
    let skipped: Vec<&Block> = blocks.iter().filter(|b| b.skipped).collect();
    assert_eq!(
        skipped.len(),
        1,
        "only the quick start is skipped: {skipped:?}"
    );
    assert!(skipped[0].text.contains("./scripts/demo.sh"));
    assert!(skipped[0].text.contains("./scripts/test.sh"));
}

#[test]
fn the_independent_verifier_explains_itself() {
    let o = Command::new("python3")
        .arg(repo().join("tools/verify_export.py"))
        .arg("--help")
        .output()
        .expect("run python3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let help = String::from_utf8_lossy(&o.stdout);
    assert!(
        help.contains("--admin-key") && help.contains("docket export"),
        "{help}"
    );
    let missing = Command::new("python3")
        .arg(repo().join("tools/verify_export.py"))
        .arg("/nonexistent/export.jsonl")
        .output()
        .expect("run python3");
    assert_eq!(missing.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("cannot read"));
}

#[test]
fn format_lists_every_rule_with_its_severity_and_architecture_counts_them() {
    use docket_ledger::state::Rule;
    let format = std::fs::read_to_string(repo().join("docs/FORMAT.md")).unwrap();
    for rule in Rule::ALL {
        let severity = serde_json::to_value(rule.severity()).unwrap();
        let row = format!(
            "| `{}` | {} | {} |",
            rule.as_str(),
            severity.as_str().unwrap(),
            rule.meaning()
        );
        assert!(format.contains(&row), "docs/FORMAT.md lacks the row {row}");
    }
    let architecture = std::fs::read_to_string(repo().join("ARCHITECTURE.md")).unwrap();
    let count = format!("{} rules", Rule::ALL.len());
    assert!(
        architecture.contains(&count),
        "ARCHITECTURE.md does not say {count:?}"
    );
}

#[test]
fn the_core_crate_depends_on_no_runtime_store_or_transport() {
    // The normal dependencies of a package, one crate per line.
    let tree = |package: &str| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let out = std::process::Command::new(cargo)
            .args([
                "tree",
                "--offline",
                "-p",
                package,
                "-e",
                "normal",
                "--prefix",
                "none",
            ])
            .current_dir(repo())
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success() && text.starts_with(&format!("{package} ")),
            "cargo tree failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        text
    };
    let core = tree("docket-core");
    for banned in ["tokio ", "rocksdb ", "async-nats ", "librocksdb-sys "] {
        assert!(
            !core.lines().any(|l| l.starts_with(banned)),
            "docket-core depends on {banned}:\n{core}"
        );
    }
    // The check can fail: the shell does depend on them.
    assert!(
        tree("docket-ledger")
            .lines()
            .any(|l| l.starts_with("rocksdb "))
    );
}
