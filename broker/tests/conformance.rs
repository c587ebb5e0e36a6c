//! Keeps the broker's entries in `codec/CONFORMANCE.md` honest: every broker test it names as
//! `broker/tests/FILE.rs::name` exists in that file, and every broker source file or folder it
//! names (`broker/src/...`) exists. (The rule ids the broker cites are checked against the
//! table by `codec/tests/conformance.rs`, which scans the broker's sources too.)

use std::path::Path;

#[test]
fn conformance_md_names_only_existing_broker_tests() {
    let broker = Path::new(env!("CARGO_MANIFEST_DIR"));
    let md = std::fs::read_to_string(broker.join("../codec/CONFORMANCE.md"))
        .expect("codec/CONFORMANCE.md");
    let mut named = 0;
    let mut missing = Vec::new();
    let rows = md.lines().filter(|l| l.starts_with("| ["));
    for span in rows.flat_map(|row| row.split('`').skip(1).step_by(2)) {
        let Some(rest) = span.strip_prefix("broker/tests/") else {
            continue;
        };
        let Some((file, name)) = rest.split_once("::") else {
            continue;
        };
        named += 1;
        let source = std::fs::read_to_string(broker.join("tests").join(file))
            .unwrap_or_else(|e| panic!("broker/tests/{file}: {e}"));
        if !source.contains(&format!("fn {name}(")) {
            missing.push(format!("broker/tests/{file}::{name}"));
        }
    }
    assert!(named >= 10, "only {named} broker tests named");
    assert!(
        missing.is_empty(),
        "broker tests named in CONFORMANCE.md that do not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn conformance_md_names_only_existing_broker_files() {
    let broker = Path::new(env!("CARGO_MANIFEST_DIR"));
    let md = std::fs::read_to_string(broker.join("../codec/CONFORMANCE.md"))
        .expect("codec/CONFORMANCE.md");
    let mut named = 0;
    let mut missing = Vec::new();
    for span in md.lines().flat_map(|l| l.split('`').skip(1).step_by(2)) {
        let Some(rest) = span.strip_prefix("broker/src/") else {
            continue;
        };
        if rest.contains("...") {
            // A pattern in prose, not a path.
            continue;
        }
        named += 1;
        if !broker.join("src").join(rest).exists() {
            missing.push(span.to_string());
        }
    }
    assert!(named >= 100, "only {named} broker files named");
    assert!(
        missing.is_empty(),
        "broker files named in CONFORMANCE.md that do not exist:\n{}",
        missing.join("\n")
    );
}
