//! The code keeps the layout docs/architecture.md promises: no module of any crate imports
//! one that imports it back (directly or through others), and `query` depends only downward:
//! front-ends → engine → questions and functions → scan, with `error` and `output` below
//! everything.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every module of the crate whose sources are in `src`, by path (`scan::table`), with its
/// source up to its unit tests.
fn modules(src: &Path) -> BTreeMap<String, String> {
    let mut found = BTreeMap::new();
    let mut pending = vec![src.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let relative: PathBuf = path.strip_prefix(src).unwrap().with_extension("");
            let mut parts: Vec<String> = relative
                .iter()
                .map(|p| p.to_string_lossy().into_owned())
                .collect();
            if parts.last().is_some_and(|p| p == "tests") {
                continue;
            }
            if parts
                .last()
                .is_some_and(|p| ["lib", "main", "mod"].contains(&p.as_str()))
            {
                parts.pop();
            }
            let text = std::fs::read_to_string(&path).unwrap();
            found.insert(parts.join("::"), text);
        }
    }
    // Test code is left out: a `#[cfg(test)]` module declared with `mod name;` (its file and
    // those under it), and an inline one (to the end of the file, where they are kept).
    let mut test_only = BTreeSet::new();
    for (name, text) in &mut found {
        let mut code = String::new();
        let mut rest = text.as_str();
        while let Some(at) = rest.find("#[cfg(test)]") {
            code.push_str(&rest[..at]);
            let after = &rest[at..];
            let line_end = |s: &str| s.find('\n').map_or(s.len(), |i| i + 1);
            let mut item = &after[line_end(after)..];
            while item.trim_start().starts_with("#[") {
                item = &item[line_end(item)..];
            }
            let declared = item.trim_start();
            let header = &declared[..line_end(declared)];
            match header
                .trim()
                .strip_prefix("mod ")
                .or(header.trim().strip_prefix("pub(crate) mod "))
            {
                Some(module) if module.ends_with(';') => {
                    let module = module.trim_end_matches(';');
                    test_only.insert(if name.is_empty() {
                        module.to_owned()
                    } else {
                        format!("{name}::{module}")
                    });
                    rest = &declared[header.len()..];
                }
                _ => {
                    rest = "";
                }
            }
        }
        code.push_str(rest);
        *text = code;
    }
    found.retain(|name, _| {
        !test_only
            .iter()
            .any(|test| name == test || name.starts_with(&format!("{test}::")))
    });
    found
}

/// The modules each module uses (`crate::a::b`, `crate::{a, b}`, `super::a`), other than
/// itself, its ancestors and its descendants.
fn uses(modules: &BTreeMap<String, String>) -> BTreeMap<String, BTreeSet<String>> {
    let resolve = |path: &str| -> Option<String> {
        let mut parts: Vec<&str> = path.split("::").collect();
        while !parts.is_empty() {
            let name = parts.join("::");
            if modules.contains_key(&name) && !name.is_empty() {
                return Some(name);
            }
            parts.pop();
        }
        None
    };
    let mut graph = BTreeMap::new();
    for (name, code) in modules {
        let mut paths = Vec::new();
        for (prefix, base) in [("crate::", String::new()), ("super::", parent(name))] {
            for (at, _) in code.match_indices(prefix) {
                let rest = &code[at + prefix.len()..];
                let join = |item: &str| {
                    if base.is_empty() {
                        item.to_owned()
                    } else {
                        format!("{base}::{item}")
                    }
                };
                let head: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_' || *c == ':')
                    .collect();
                let head = head.trim_end_matches(':');
                if rest[head.len()..].starts_with("::{") || rest[head.len()..].starts_with('{') {
                    let group = &rest[head.len()..];
                    let group = &group[group.find('{').unwrap() + 1..group.find('}').unwrap()];
                    for item in group.split(',') {
                        let item = item.trim().split([' ', ':']).next().unwrap_or("");
                        let item = if head.is_empty() {
                            item.to_owned()
                        } else {
                            format!("{head}::{item}")
                        };
                        paths.push(join(&item));
                    }
                } else {
                    paths.push(join(head));
                }
            }
        }
        let related = |other: &str| {
            other == name
                || name.starts_with(&format!("{other}::"))
                || other.starts_with(&format!("{name}::"))
        };
        let used: BTreeSet<String> = paths
            .iter()
            .filter_map(|path| resolve(path))
            .filter(|other| !related(other))
            .collect();
        graph.insert(name.clone(), used);
    }
    graph
}

fn parent(name: &str) -> String {
    name.rsplit_once("::")
        .map_or(String::new(), |(p, _)| p.to_owned())
}

/// A module that reaches itself through the modules it uses, with the way round.
fn cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    for start in graph.keys() {
        let mut stack = vec![(start.clone(), vec![start.clone()])];
        let mut seen = BTreeSet::new();
        while let Some((at, way)) = stack.pop() {
            for next in &graph[&at] {
                if next == start {
                    let mut round = way.clone();
                    round.push(start.clone());
                    return Some(round);
                }
                if seen.insert(next.clone()) {
                    let mut longer = way.clone();
                    longer.push(next.clone());
                    stack.push((next.clone(), longer));
                }
            }
        }
    }
    None
}

fn repository() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn no_crate_has_a_module_cycle() {
    for krate in ["schemas", "collector", "query", "apiscope"] {
        let graph = uses(&modules(&repository().join(krate).join("src")));
        assert!(graph.len() > 3, "{krate}: the modules were not found");
        if let Some(round) = cycle(&graph) {
            panic!("{krate}: a module cycle: {}", round.join(" → "));
        }
    }
}

#[test]
fn query_depends_only_downward() {
    let graph = uses(&modules(&repository().join("query/src")));
    // Each stage, and the stages it may use.
    let stage = |module: &str| module.split("::").next().unwrap().to_owned();
    let below: BTreeMap<&str, &[&str]> = BTreeMap::from([
        ("http", &["engine", "error", "output"][..]),
        ("pg", &["engine", "functions", "error", "output"][..]),
        ("traces", &["engine", "error", "output"][..]),
        (
            "engine",
            &["questions", "functions", "scan", "error", "output"][..],
        ),
        ("questions", &["functions", "scan", "error", "output"][..]),
        ("functions", &["scan", "error", "output"][..]),
        ("scan", &["error", "output"][..]),
        ("output", &["error"][..]),
        ("error", &[][..]),
    ]);
    // The crate root only declares the stages and re-exports from them.
    for (module, used) in graph.iter().filter(|(module, _)| !module.is_empty()) {
        let from = stage(module);
        let Some(allowed) = below.get(from.as_str()) else {
            panic!("query::{module} is in no stage of the layout");
        };
        for other in used {
            let to = stage(other);
            assert!(
                to == from || allowed.contains(&to.as_str()),
                "query::{module} uses query::{other}: {from} may use only {allowed:?}"
            );
        }
    }
}
