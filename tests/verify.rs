//! Offline verification catches tampering done directly in RocksDB, and exports verify independently.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;
use proptest::prelude::*;

/// A small real ledger made by `docket demo` (in-process transport, real RocksDB), shared by the tests.
fn demo_ledger() -> &'static Path {
    static DIR: std::sync::OnceLock<(tempfile::TempDir, PathBuf)> = std::sync::OnceLock::new();
    &DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("ledger");
        let o = docket(&["demo", "--seconds", "1", "--data", data.to_str().unwrap()]);
        assert!(
            o.status.success(),
            "demo failed: {}{}",
            stdout(&o),
            String::from_utf8_lossy(&o.stderr)
        );
        (dir, data)
    })
    .1
}

fn tampered(edit: impl FnOnce(&rocksdb::DB)) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("ledger");
    copy_dir(demo_ledger(), &copy);
    {
        let names = rocksdb::DB::list_cf(&rocksdb::Options::default(), copy.join("db")).unwrap();
        let db =
            rocksdb::DB::open_cf(&rocksdb::Options::default(), copy.join("db"), names).unwrap();
        edit(&db);
    }
    (dir, copy)
}

fn entries(db: &rocksdb::DB) -> &rocksdb::ColumnFamily {
    db.cf_handle("entries").unwrap()
}

fn first_bad_seq(data: &Path) -> (i32, String) {
    let (code, out) = verify(data);
    (code, out)
}

#[test]
fn demo_runs_and_its_ledger_verifies() {
    let (code, out) = verify(demo_ledger());
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("intact: "), "{out}");
}

#[test]
fn a_changed_byte_is_named_by_seq() {
    let (_d, data) = tampered(|db| {
        let mut v = db
            .get_cf(entries(db), 40u64.to_be_bytes())
            .unwrap()
            .unwrap();
        let last = v.len() - 5;
        v[last] ^= 0x01;
        db.put_cf(entries(db), 40u64.to_be_bytes(), v).unwrap();
    });
    let (code, out) = first_bad_seq(&data);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("first bad seq 40"), "{out}");
}

#[test]
fn a_deleted_entry_is_named_by_seq() {
    let (_d, data) = tampered(|db| db.delete_cf(entries(db), 17u64.to_be_bytes()).unwrap());
    let (code, out) = first_bad_seq(&data);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("first bad seq 17"), "{out}");
    assert!(out.contains("missing"), "{out}");
}

#[test]
fn swapped_entries_are_named_by_seq() {
    let (_d, data) = tampered(|db| {
        let a = db
            .get_cf(entries(db), 30u64.to_be_bytes())
            .unwrap()
            .unwrap();
        let b = db
            .get_cf(entries(db), 31u64.to_be_bytes())
            .unwrap()
            .unwrap();
        db.put_cf(entries(db), 30u64.to_be_bytes(), b).unwrap();
        db.put_cf(entries(db), 31u64.to_be_bytes(), a).unwrap();
    });
    let (code, out) = first_bad_seq(&data);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("first bad seq 30"), "{out}");
}

#[test]
fn truncating_the_tail_is_caught_by_the_tip_and_checkpoints() {
    let (_d, data) = tampered(|db| {
        let last = db
            .iterator_cf(entries(db), rocksdb::IteratorMode::End)
            .next()
            .unwrap()
            .unwrap()
            .0;
        db.delete_cf(entries(db), last).unwrap();
    });
    let (code, out) = first_bad_seq(&data);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("tip records seq"), "{out}");
}

#[test]
fn export_verifies_with_the_independent_python_verifier() {
    let dir = tempfile::tempdir().unwrap();
    let export = dir.path().join("export.jsonl");
    let o = docket(&[
        "export",
        "--data",
        demo_ledger().to_str().unwrap(),
        "--out",
        export.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tools/verify_export.py");
    let run = |file: &Path| {
        Command::new("python3")
            .arg(&script)
            .arg(file)
            .output()
            .expect("python3")
    };
    let ok = run(&export);
    assert!(
        ok.status.success(),
        "{}{}",
        stdout(&ok),
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(stdout(&ok).starts_with("intact:"));
    // Change one entry's receipt time in the export: the independent verifier must notice.
    let text = std::fs::read_to_string(&export).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    let i = lines
        .iter()
        .position(|l| l.contains("\"seq\":25,"))
        .unwrap();
    let mut v: serde_json::Value = serde_json::from_str(&lines[i]).unwrap();
    v["received_us"] = serde_json::json!(v["received_us"].as_i64().unwrap() + 1);
    lines[i] = v.to_string();
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(&bad, lines.join("\n")).unwrap();
    let out = run(&bad);
    assert_eq!(out.status.code(), Some(1), "{}", stdout(&out));
    assert!(
        stdout(&out).contains("first bad seq 25"),
        "{}",
        stdout(&out)
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    /// Any single-bit change to any stored entry is detected and attributed to that entry.
    #[test]
    fn any_single_bit_flip_in_a_stored_entry_is_detected(seq_pick in 1u64..10_000, bit_pick in any::<u64>()) {
        let n = head(demo_ledger()).unwrap().0;
        let seq = 1 + seq_pick % n;
        let (_d, data) = tampered(|db| {
            let mut v = db.get_cf(entries(db), seq.to_be_bytes()).unwrap().unwrap();
            let bit = (bit_pick % (v.len() as u64 * 8)) as usize;
            v[bit / 8] ^= 1 << (bit % 8);
            db.put_cf(entries(db), seq.to_be_bytes(), v).unwrap();
        });
        let store = docket_ledger::store::Store::open_reader(&data.join("db")).unwrap();
        let report = docket_ledger::verify::verify(&store, &Default::default(), &mut |_, _| {}).unwrap();
        prop_assert!(!report.intact());
        let first = report.first_bad_seq.unwrap();
        prop_assert_eq!(first, seq, "flip at seq {} reported at {}", seq, first);
    }
}

#[test]
fn a_projection_that_disagrees_with_the_chain_is_named_by_seq() {
    let (_d, data) = tampered(|db| {
        let state = db.cf_handle("state").unwrap();
        let (key, value) = db
            .iterator_cf(
                state,
                rocksdb::IteratorMode::From(b"t/", rocksdb::Direction::Forward),
            )
            .next()
            .unwrap()
            .unwrap();
        let mut token: serde_json::Value = serde_json::from_slice(&value).unwrap();
        token["uses"] = serde_json::json!(token["uses"].as_u64().unwrap() + 1000);
        db.put_cf(state, key, serde_json::to_vec(&token).unwrap())
            .unwrap();
    });
    let o = docket(&["state", "rebuild", "--data", data.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", stdout(&o));
    let out = stdout(&o);
    assert!(
        out.contains("STATE DIVERGES")
            && out.contains("first divergent seq: ")
            && out.contains("differs: token "),
        "{out}"
    );
    assert!(
        docket(&[
            "state",
            "rebuild",
            "--data",
            demo_ledger().to_str().unwrap()
        ])
        .status
        .success()
    );
}

/// The demo keeps its ledger where it says, prints commands that work on it, replaces only
/// a directory a demo made, and refuses to touch anything else.
#[test]
fn demo_keeps_its_ledger_and_prints_commands_that_work() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("docket-demo");
    let run = || docket(&["demo", "--seconds", "1", "--data", data.to_str().unwrap()]);
    let o = run();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let out = stdout(&o);
    let shown = data.canonicalize().unwrap();
    assert!(
        out.contains(&format!("kept in {}", shown.display())),
        "{out}"
    );
    // Every printed command runs, as printed, after the demo has exited.
    let commands: Vec<&str> = out
        .lines()
        .filter(|l| l.contains(&format!("--data {}", shown.display())) && l.contains(" verify "))
        .collect();
    assert_eq!(commands.len(), 1, "{out}");
    let verify_line = commands[0].trim();
    let exe = verify_line
        .find(DOCKET)
        .map(|i| &verify_line[i..])
        .expect("the command names the binary that ran");
    let words: Vec<&str> = exe.split_whitespace().collect();
    let o = Command::new(words[0]).args(&words[1..]).output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(stdout(&o).starts_with("intact"), "{}", stdout(&o));
    // A second demo replaces the first one's ledger.
    assert!(run().status.success());
    // A directory the demo did not make is never deleted.
    let other = dir.path().join("mine");
    std::fs::create_dir_all(&other).unwrap();
    std::fs::write(other.join("precious.txt"), "keep").unwrap();
    let o = docket(&["demo", "--seconds", "1", "--data", other.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("was not made by `docket demo`"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(other.join("precious.txt").exists());
}

#[test]
fn the_demo_on_a_terminal_opens_watch_where_its_user_approves_and_q_ends_in_a_verified_ledger() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("demo");
    let exit_file = dir.path().join("demo.exit");
    let command = format!(
        "{DOCKET} demo --data {}; echo $? > {}; sleep 60",
        data.display(),
        exit_file.display()
    );
    let term = Tmux::start(dir.path(), &command);
    term.wait_for("connected");
    term.wait_for("Waiting for you");
    term.keys(&[":ap", "Enter", "/", "agent-0", "Enter"]);
    term.wait_for("repo:write: open a pull request");
    term.keys(&["a"]);
    term.wait_for("the vault agreed");
    let screen = term.screen();
    let approval = screen
        .split_whitespace()
        .find(|w| w.starts_with("appr-"))
        .map(|w| w.trim_end_matches(':').to_string())
        .unwrap_or_else(|| panic!("no approval id on the screen:\n{screen}"));
    // agent-0 was polling; the approval now gives it its token, on the chain.
    let sql = format!("SELECT count(*) AS n FROM tokens WHERE approval_id = '{approval}'");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let o = docket(&[
            "sql",
            "--data",
            data.to_str().unwrap(),
            "--format",
            "csv",
            &sql,
        ]);
        if stdout(&o).lines().nth(1) == Some("1") {
            break;
        }
        assert!(
            std::time::Instant::now() < until,
            "no token issued under {approval}: {}{}",
            stdout(&o),
            String::from_utf8_lossy(&o.stderr)
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    term.keys(&["q"]);
    let until = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while !exit_file.exists() {
        assert!(
            std::time::Instant::now() < until,
            "the demo did not end after q:\n{}",
            term.screen()
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    let printed = term.history();
    assert!(printed.contains("verify: intact"), "{printed}");
    assert_eq!(term.alternate_screen(), "0", "the terminal is given back");
}
