//! The checked-in JSON Schema files match the Rust types; `DOCKET_BLESS=1` rewrites them.

use std::path::Path;

#[test]
fn json_schema_files_are_current() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("json");
    let bless = std::env::var_os("DOCKET_BLESS").is_some();
    let mut stale = Vec::new();
    for (name, text) in docket_schemas::json_schema::files() {
        let path = dir.join(&name);
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            stale.push(name);
        }
    }
    assert!(
        stale.is_empty(),
        "stale JSON Schema files (run with DOCKET_BLESS=1): {stale:?}"
    );
}
