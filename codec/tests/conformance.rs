//! Keeps `codec/CONFORMANCE.md` honest: every test it names exists, every rule id the code (the
//! codec's and the broker's) cites is listed in it, and no citation is a placeholder.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable directory") {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The source of `codec/src`, `codec/tests`, `broker/src` and `broker/tests`.
fn sources() -> Vec<(PathBuf, String)> {
    let mut files = Vec::new();
    rust_files(&root().join("src"), &mut files);
    rust_files(&root().join("tests"), &mut files);
    rust_files(&root().join("../broker/src"), &mut files);
    rust_files(&root().join("../broker/tests"), &mut files);
    files
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("source file");
            (p, text)
        })
        .collect()
}

/// The names of every `fn` in the sources.
fn functions() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (_, text) in sources() {
        for part in text.split("fn ").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                names.insert(name);
            }
        }
    }
    names
}

fn conformance() -> String {
    std::fs::read_to_string(root().join("CONFORMANCE.md")).expect("CONFORMANCE.md")
}

/// The table rows of CONFORMANCE.md as (rule, covered-by) cells.
fn rows(md: &str) -> Vec<(String, String)> {
    md.lines()
        .filter(|l| l.starts_with("| ") && !l.starts_with("| rule") && !l.starts_with("| property"))
        .filter_map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split(" | ").collect();
            match cells.as_slice() {
                [rule, _, covered] | [rule, covered] => {
                    Some((rule.trim().to_owned(), covered.trim().to_owned()))
                }
                _ => None,
            }
        })
        .collect()
}

/// The backticked words of a cell.
fn backticked(cell: &str) -> Vec<&str> {
    cell.split('`').skip(1).step_by(2).collect()
}

#[test]
fn conformance_md_names_only_existing_tests() {
    let md = conformance();
    let functions = functions();
    let rows = rows(&md);
    assert!(rows.len() > 300, "only {} rows parsed", rows.len());
    let mut missing = Vec::new();
    for (rule, covered) in &rows {
        assert!(!covered.is_empty(), "{rule} has no coverage");
        for name in backticked(covered) {
            // Broker files, module paths and other code spans are not test names.
            if name.contains('/') || name.contains('.') || !name.contains('_') {
                continue;
            }
            if !functions.contains(name) {
                missing.push(format!("{rule}: {name}"));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "tests named in CONFORMANCE.md that do not exist:\n{}",
        missing.join("\n")
    );
}

#[test]
fn conformance_md_covers_every_row_with_a_test_a_broker_file_or_a_client_rule() {
    for (rule, covered) in rows(&conformance()) {
        let ok = !backticked(&covered).is_empty()
            || covered.starts_with("client obligation")
            || covered.starts_with("not applicable");
        assert!(
            ok,
            "{rule}: `{covered}` names no test, broker file or reason"
        );
    }
}

/// Rule ids cited in the code: `[MQTT-x.y.z-n]` in comments and `"MQTT-x.y.z-n"` in errors; a
/// range `[MQTT-x.y.z-n..m]` cites each of them.
fn cited_rules() -> BTreeSet<String> {
    let mut rules = BTreeSet::new();
    for (path, text) in sources() {
        if path.ends_with("conformance.rs") {
            continue;
        }
        for part in text.split("MQTT-").skip(1) {
            let id: String = part
                .chars()
                .take_while(|c| c.is_ascii_digit() || *c == '.' || *c == '-')
                .collect();
            let id = id.trim_end_matches(['.', '-']);
            if !id.contains('-') || !id.chars().next().is_some_and(|c| c.is_ascii_digit()) {
                continue;
            }
            match id.split_once("..") {
                Some((first, last)) => {
                    let (section, from) = first.rsplit_once('-').expect("a rule number");
                    let (from, to): (u32, u32) = (
                        from.parse().expect("a rule number"),
                        last.parse().expect("a rule number"),
                    );
                    for n in from..=to {
                        rules.insert(format!("MQTT-{section}-{n}"));
                    }
                }
                None => {
                    rules.insert(format!("MQTT-{id}"));
                }
            }
        }
    }
    rules
}

#[test]
fn the_sources_scanned_include_the_broker() {
    let sources = sources();
    for file in ["broker/src/connection/publish.rs", "codec/src/topic.rs"] {
        assert!(
            sources.iter().any(|(p, _)| p.ends_with(file)),
            "{file} is not scanned"
        );
    }
}

#[test]
fn no_citation_is_a_placeholder() {
    let mut found = Vec::new();
    for (path, text) in sources() {
        if path.ends_with("conformance.rs") {
            continue;
        }
        for (n, line) in text.lines().enumerate() {
            if line.contains(concat!("-", "?]")) {
                found.push(format!("{}:{}: {}", path.display(), n + 1, line.trim()));
            }
        }
    }
    assert!(
        found.is_empty(),
        "rule citations without a number:\n{}",
        found.join("\n")
    );
}

#[test]
fn every_rule_the_code_cites_is_listed() {
    let md = conformance();
    let missing: Vec<String> = cited_rules()
        .into_iter()
        .filter(|r| !md.contains(&format!("[{r}]")))
        .collect();
    assert!(
        missing.is_empty(),
        "rules cited in the code but not in CONFORMANCE.md: {missing:?}"
    );
}
