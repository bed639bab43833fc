//! The house rules that the compiler does not check: no two files of one
//! crate import each other, directly or round a circle. A file's imports are
//! the `crate::…` and `super::…` paths in its code (comments skipped),
//! resolved to the longest module path that is a file; a cycle is a strongly
//! connected component of more than one file. There is none; a new one
//! fails, naming the files. And the core crate's dependency graph holds no
//! I/O crate.
#![allow(missing_docs)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

type Module = Vec<String>;

fn files(src: &Path) -> BTreeMap<Module, PathBuf> {
    let mut out = BTreeMap::new();
    let mut stack = vec![src.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).expect("read_dir") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let rel = p.strip_prefix(src).expect("under src").with_extension("");
                let mut m: Module = rel.iter().map(|c| c.to_string_lossy().into_owned()).collect();
                if matches!(m.last().map(String::as_str), Some("mod" | "lib" | "main")) {
                    m.pop();
                }
                out.insert(m, p);
            }
        }
    }
    out
}

fn imports(module: &Module, text: &str, known: &BTreeMap<Module, PathBuf>) -> BTreeSet<Module> {
    let code: String = text.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n");
    let path = r"[a-z_][a-z0-9_]*(?:::[a-z_][a-z0-9_]*)*";
    let crate_re = regex::Regex::new(&format!(r"crate::({path})")).expect("regex");
    let super_re = regex::Regex::new(&format!(r"\b((?:super::)+)({path})")).expect("regex");
    let group_re = regex::Regex::new(r"use crate::\{([^}]*)\}").expect("regex");
    let mut refs: Vec<Module> = Vec::new();
    for c in crate_re.captures_iter(&code) {
        refs.push(c[1].split("::").map(str::to_owned).collect());
    }
    for c in super_re.captures_iter(&code) {
        let ups = c[1].matches("super::").count();
        let mut base: Module = module[..module.len().saturating_sub(ups)].to_vec();
        base.extend(c[2].split("::").map(str::to_owned));
        refs.push(base);
    }
    for c in group_re.captures_iter(&code) {
        for part in c[1].split(',') {
            let part = part.split_whitespace().next().unwrap_or("");
            if !part.is_empty() {
                refs.push(part.split("::").map(str::to_owned).collect());
            }
        }
    }
    let mut out = BTreeSet::new();
    for r in refs {
        for k in (1..=r.len()).rev() {
            if known.contains_key(&r[..k]) {
                if r[..k] != module[..] {
                    out.insert(r[..k].to_vec());
                }
                break;
            }
        }
    }
    out
}

/// Strongly connected components of more than one node (Tarjan).
fn cycles(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a BTreeMap<Module, BTreeSet<Module>>,
        index: BTreeMap<&'a Module, usize>,
        low: BTreeMap<&'a Module, usize>,
        stack: Vec<&'a Module>,
        on: BTreeSet<&'a Module>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    impl<'a> T<'a> {
        fn visit(&mut self, v: &'a Module) {
            self.index.insert(v, self.next);
            self.low.insert(v, self.next);
            self.next += 1;
            self.stack.push(v);
            self.on.insert(v);
            for w in self.g.get(v).into_iter().flatten() {
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let l = self.low[v].min(self.low[w]);
                    self.low.insert(v, l);
                } else if self.on.contains(w) {
                    let l = self.low[v].min(self.index[w]);
                    self.low.insert(v, l);
                }
            }
            if self.low[v] == self.index[v] {
                let mut c = Vec::new();
                while let Some(w) = self.stack.pop() {
                    self.on.remove(w);
                    c.push(if w.is_empty() { "lib".to_owned() } else { w.join("/") });
                    if w == v {
                        break;
                    }
                }
                if c.len() > 1 {
                    c.sort();
                    self.out.push(c);
                }
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v) {
            t.visit(v);
        }
    }
    t.out
}

#[test]
fn no_two_files_of_a_crate_import_each_other() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut found = Vec::new();
    let mut files_seen = 0;
    let mut names: Vec<String> = std::fs::read_dir(&crates)
        .expect("crates/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names, ["api", "core", "events", "projections", "runtime"], "every crate is checked");
    for name in &names {
        let known = files(&crates.join(name).join("src"));
        assert!(!known.is_empty(), "crates/{name}/src was read");
        files_seen += known.len();
        let graph: BTreeMap<Module, BTreeSet<Module>> = known
            .iter()
            .map(|(m, p)| (m.clone(), imports(m, &std::fs::read_to_string(p).expect("read"), &known)))
            .collect();
        for c in cycles(&graph) {
            found.push((name.clone(), c));
        }
    }
    assert!(files_seen > 60, "the source tree was read ({files_seen} files)");
    assert!(found.is_empty(), "files that import each other (move what they share into a file both import): {found:?}");
}

/// "The core does no I/O" holds by the dependency graph: no async runtime,
/// SQL, HTTP or mail crate is among cairn-core's normal dependencies, at any
/// depth, with the features the core itself turns on.
#[test]
fn the_core_depends_on_no_runtime_sql_http_or_mail_crate() {
    let out = std::process::Command::new(env!("CARGO"))
        .args(["tree", "--offline", "-p", "cairn-core", "-e", "normal", "--prefix", "none", "--format", "{p}"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    assert!(out.status.success(), "cargo tree failed: {}", String::from_utf8_lossy(&out.stderr));
    let tree = String::from_utf8_lossy(&out.stdout);
    let names: BTreeSet<&str> = tree.lines().filter_map(|l| l.split_whitespace().next()).collect();
    assert!(names.contains("cairn-core") && names.contains("cairn-events"), "the tree was read: {names:?}");
    let forbidden: Vec<&&str> = names
        .iter()
        .filter(|n| {
            ["tokio", "sqlx", "reqwest", "lettre", "hyper", "mio", "futures-util", "rustls"]
                .iter()
                .any(|f| n == &f || n.starts_with(&format!("{f}-")))
        })
        .collect();
    assert!(forbidden.is_empty(), "cairn-core depends on {forbidden:?}; keep I/O in cairn-runtime");
}

/// docs/ARCHITECTURE.md is a code map of the house as it is: every file or
/// folder it names in a crate's section (`runner.rs`, `lang/`) is in that
/// crate, and every crate has a section.
#[test]
fn the_code_map_names_only_files_that_exist() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let map = std::fs::read_to_string(root.join("docs/ARCHITECTURE.md")).expect("docs/ARCHITECTURE.md");
    let mut checked = 0;
    let mut missing = Vec::new();
    for section in map.split("\n## ").skip(1) {
        let title = section.lines().next().unwrap_or_default().trim();
        let Some(krate) = title.strip_prefix("crates/") else { continue };
        let dir = root.join("crates").join(krate);
        assert!(dir.is_dir(), "a section for crates/{krate}, which does not exist");
        let mut names = Vec::new();
        for (i, part) in section.split('`').enumerate() {
            let p = part.trim_end_matches('/');
            let shaped = p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "_/.".contains(c));
            if i % 2 == 1 && shaped && !p.is_empty() && (part.ends_with(".rs") || part.ends_with('/')) {
                names.push(p.to_owned());
            }
        }
        let all = walk(&dir);
        for name in names {
            checked += 1;
            let found = root.join(&name).exists()
                || dir.join(&name).exists()
                || all.iter().any(|f| f.ends_with(&name) || f.to_string_lossy().ends_with(&format!("/{name}")));
            if !found {
                missing.push(format!("crates/{krate}: `{name}`"));
            }
        }
    }
    for krate in ["api", "core", "events", "projections", "runtime"] {
        assert!(
            map.contains(&format!("\n## crates/{krate}\n")),
            "docs/ARCHITECTURE.md has a section for crates/{krate}"
        );
    }
    assert!(checked > 40, "the map was read ({checked} names)");
    assert!(missing.is_empty(), "docs/ARCHITECTURE.md names files that do not exist: {missing:?}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("read dir").flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p.clone());
            }
            out.push(p);
        }
    }
    out
}
