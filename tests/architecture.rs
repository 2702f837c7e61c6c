//! The layer rule of docs/ARCHITECTURE.md: a module of `src/` names only modules on floors below
//! its own. The floors are read from the page's `layers` block, the names from every
//! `crate::…` path (and `use crate::{…}` group) in `src/`, test modules included.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Module → floor, from the `layers` block of docs/ARCHITECTURE.md.
fn floors() -> BTreeMap<String, usize> {
    let page = std::fs::read_to_string("docs/ARCHITECTURE.md").expect("docs/ARCHITECTURE.md");
    let block = page
        .split("```layers\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a ```layers block");
    let mut floors = BTreeMap::new();
    for line in block.lines().filter(|l| !l.trim().is_empty()) {
        let (number, rest) = line.split_once(' ').expect("a floor number");
        let floor: usize = number.parse().expect("a floor number");
        let (_, modules) = rest.split_once(':').expect("floor name: modules");
        for module in modules.split_whitespace() {
            let earlier = floors.insert(module.to_string(), floor);
            assert!(earlier.is_none(), "{module} is on two floors");
        }
    }
    floors
}

/// The top-level module a file of `src/` belongs to (`None` for lib.rs and main.rs).
fn module_of(path: &Path) -> Option<String> {
    let relative = path.strip_prefix("src").ok()?;
    let first = relative.components().next()?.as_os_str().to_str()?;
    let name = first.strip_suffix(".rs").unwrap_or(first);
    (!matches!(name, "lib" | "main")).then(|| name.to_string())
}

/// Every top-level module named by `crate::name` or inside `use crate::{…}` in `text`.
fn named_in(text: &str) -> BTreeSet<String> {
    let ident = |s: &str| {
        s.chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect::<String>()
    };
    let mut named = BTreeSet::new();
    for (at, _) in text.match_indices("crate::") {
        let before = text[..at].chars().last();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue; // part of a longer name, or `$crate::` in a macro
        }
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            // Only the first segment of each item: `{a::{b, c}, d}` names a and d.
            let mut depth = 0;
            let mut item = String::new();
            for c in group.chars() {
                match c {
                    '{' => depth += 1,
                    '}' if depth == 0 => {
                        let name = ident(item.trim());
                        if !name.is_empty() {
                            named.insert(name);
                        }
                        break;
                    }
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        let name = ident(item.trim());
                        if !name.is_empty() {
                            named.insert(name);
                        }
                        item.clear();
                        continue;
                    }
                    _ => {}
                }
                item.push(c);
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                named.insert(name);
            }
        }
    }
    named
}

fn rust_files(dir: &Path, into: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, into);
        } else if path.extension().is_some_and(|e| e == "rs") {
            into.push(path);
        }
    }
}

#[test]
fn no_module_names_one_on_its_own_floor_or_above() {
    let floors = floors();
    let mut files = Vec::new();
    rust_files(Path::new("src"), &mut files);
    let mut modules = BTreeSet::new();
    let mut wrong = Vec::new();
    for file in &files {
        let Some(module) = module_of(file) else {
            continue;
        };
        modules.insert(module.clone());
        let Some(&floor) = floors.get(&module) else {
            wrong.push(format!("{}: module {module} has no floor", file.display()));
            continue;
        };
        let text = std::fs::read_to_string(file).unwrap();
        for named in named_in(&text) {
            if named == module {
                continue;
            }
            match floors.get(&named) {
                Some(&other) if other < floor => {}
                Some(&other) => wrong.push(format!(
                    "{}: {module} (floor {floor}) names {named} (floor {other})",
                    file.display()
                )),
                None => wrong.push(format!(
                    "{}: names crate::{named}, which has no floor",
                    file.display()
                )),
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "upward or sideways edges:\n{}",
        wrong.join("\n")
    );
    let unused: Vec<&String> = floors.keys().filter(|m| !modules.contains(*m)).collect();
    assert!(
        unused.is_empty(),
        "floors name modules src/ does not have: {unused:?}"
    );
}

/// The reader of the rule is itself right: it sees single paths, groups and nested groups,
/// and nothing that only looks like a path.
#[test]
fn the_rule_reads_every_form_of_a_crate_path() {
    let text = "use crate::engine::Pacer;\nuse crate::{input::{self, Row}, plan};\n\
                let x = crate::report::row_of(r);\nlet y = $crate::nothing;\n// notcrate::x";
    assert_eq!(
        named_in(text),
        ["engine", "input", "plan", "report"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    assert_eq!(
        module_of(Path::new("src/journal/read.rs")).as_deref(),
        Some("journal")
    );
    assert_eq!(
        module_of(Path::new("src/outcome.rs")).as_deref(),
        Some("outcome")
    );
    assert_eq!(module_of(Path::new("src/lib.rs")), None);
}
