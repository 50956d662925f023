//! The shape of the code, checked on every test run so that it stays true:
//!
//! - crates depend on each other only downwards, in the order of `LAYERS` (the order of the
//!   crate table in docs/ARCHITECTURE.md);
//! - no import cycle among the modules of any crate (`use crate::…`, `crate::…` paths and
//!   `super::…`, outside `#[cfg(test)]` code);
//! - no source file over `MAX_FILE_LINES` lines (the whole file, its unit tests included) and
//!   no function over `MAX_FN_LINES` lines outside tests.
//!
//! What the code broke before these rules existed is listed in `KNOWN_*` below, a ratchet: a
//! new violation fails, a listed one that grew fails, and a listed one that is gone fails too
//! until it is taken off the list. The lists only shrink.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

/// Crates from the bottom layer up: each may depend only on crates before it.
const LAYERS: &[&str] = &[
    "pagemesh-types",
    "pagemesh-uffd",
    "pagemesh-store",
    "pagemesh-core",
    "pagemesh-sim",
    "pagemesh-proto",
    "pagemesh-node",
    "pagemesh-cluster",
    "pagemesh-daemon",
    "pagemesh",
    "pagemesh-capi",
    "pagemesh-cli",
];

const MAX_FILE_LINES: usize = 800;
const MAX_FN_LINES: usize = 100;

/// Import cycles that predate the rule: (crate folder, the modules caught in them).
const KNOWN_CYCLES: &[(&str, &[&str])] = &[];

/// Files over the limit that predate the rule, with the most lines each may have.
const KNOWN_LONG_FILES: &[(&str, usize)] = &[];

/// Functions over the limit that predate the rule: (file, function, most lines).
const KNOWN_LONG_FNS: &[(&str, &str, usize)] = &[];

fn crates_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("crates/")
        .to_path_buf()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The source with comments, strings and char literals blanked (newlines kept), and
/// everything from the first `#[cfg(test)]` on cut (test modules come last in our files).
fn code_of(text: &str) -> String {
    let b = text.as_bytes();
    let mut out = String::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let rest = &text[i..];
        if rest.starts_with("#[cfg(test)]") {
            break;
        }
        if rest.starts_with("//") {
            let end = rest.find('\n').map_or(b.len(), |n| i + n);
            i = end;
        } else if rest.starts_with("/*") {
            let end = rest.find("*/").map_or(b.len(), |n| i + n + 2);
            out.extend(text[i..end].chars().filter(|&c| c == '\n'));
            i = end;
        } else if rest.starts_with("r#\"") || rest.starts_with("r\"") {
            let hashes = rest[1..].chars().take_while(|&c| c == '#').count();
            let close = format!("\"{}", "#".repeat(hashes));
            let body = i + 2 + hashes;
            let end = text[body..]
                .find(&close)
                .map_or(b.len(), |n| body + n + close.len());
            out.extend(text[i..end].chars().filter(|&c| c == '\n'));
            out.push_str("\"\"");
            i = end;
        } else if b[i] == b'"' {
            let mut j = i + 1;
            while j < b.len() && b[j] != b'"' {
                j += if b[j] == b'\\' { 2 } else { 1 };
            }
            out.extend(text[i..j.min(b.len())].chars().filter(|&c| c == '\n'));
            out.push_str("\"\"");
            i = (j + 1).min(b.len());
        } else if b[i] == b'\'' && i + 2 < b.len() && (b[i + 2] == b'\'' || b[i + 1] == b'\\') {
            // A char literal ('x' or '\n', '\''): not a lifetime.
            let end = text[i + 2..].find('\'').map_or(b.len(), |n| i + 2 + n + 1);
            out.push_str("' '");
            i = end;
        } else {
            let c = rest.chars().next().expect("not at the end");
            out.push(c);
            i += c.len_utf8();
        }
    }
    out
}

/// A module's path within its crate from its file (`src/a/b.rs` and `src/a/b/mod.rs` are
/// `a::b`; `lib.rs` and `main.rs` are the root, "").
fn module_of(src: &Path, file: &Path) -> String {
    let rel = file.strip_prefix(src).expect("under src");
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if matches!(
        parts.last().map(String::as_str),
        Some("mod" | "lib" | "main")
    ) {
        parts.pop();
    }
    parts.join("::")
}

/// Every path that follows `crate::` or `super::`, expanded over `{…}` groups, as segments.
fn paths_after(code: &str, root: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let pat = format!("{root}::");
    let mut at = 0;
    while let Some(n) = code[at..].find(&pat) {
        let start = at + n;
        at = start + pat.len();
        let before = code[..start].chars().next_back();
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        use_tree(&code[at..], Vec::new(), &mut out);
    }
    out
}

/// Parse one use tree at the start of `s` (segments `a::b::c`, or a `{…}` group of trees).
fn use_tree(s: &str, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut path = prefix;
    let mut i = 0;
    let b = s.as_bytes();
    loop {
        while i < b.len() && b[i].is_ascii_whitespace() {
            i += 1;
        }
        if i < b.len() && b[i] == b'{' {
            i += 1;
            loop {
                while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b',') {
                    i += 1;
                }
                if i >= b.len() || b[i] == b'}' {
                    return i + 1;
                }
                i += use_tree(&s[i..], path.clone(), out);
            }
        }
        let id: String = s[i..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        if id.is_empty() {
            out.push(path);
            return i;
        }
        i += id.len();
        path.push(id);
        if s[i..].starts_with("::") {
            i += 2;
        } else {
            out.push(path);
            return i;
        }
    }
}

/// The longest module named by the start of `path`, if any.
fn resolve(path: &[String], modules: &BTreeSet<String>) -> Option<String> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].join("::"))
        .find(|m| modules.contains(m))
}

/// Strongly connected components with more than one module (Tarjan).
fn cycles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<BTreeSet<String>> {
    struct T<'a> {
        g: &'a BTreeMap<String, BTreeSet<String>>,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        out: Vec<BTreeSet<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        let n = t.index.len();
        t.index.insert(v, n);
        t.low.insert(v, n);
        t.stack.push(v);
        t.on.insert(v);
        for w in t.g.get(v).into_iter().flatten() {
            if !t.index.contains_key(w.as_str()) {
                visit(t, w.as_str());
                let lw = t.low[w.as_str()];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(lw);
            } else if t.on.contains(w.as_str()) {
                let iw = t.index[w.as_str()];
                let lv = t.low.get_mut(v).expect("visited");
                *lv = (*lv).min(iw);
            }
        }
        if t.low[v] == t.index[v] {
            let mut scc = BTreeSet::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                scc.insert(w.to_string());
                if w == v {
                    break;
                }
            }
            if scc.len() > 1 {
                t.out.push(scc);
            }
        }
    }
    let mut t = T {
        g: graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v.as_str());
        }
    }
    t.out
}

/// The module graph of one crate: an edge from each module to every module it names.
fn module_graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.retain(|f| !f.strip_prefix(src).is_ok_and(|r| r.starts_with("bin")));
    let modules: BTreeSet<String> = files.iter().map(|f| module_of(src, f)).collect();
    let mut graph = BTreeMap::new();
    for f in &files {
        let me = module_of(src, f);
        let code = code_of(&fs::read_to_string(f).expect("readable"));
        let mut deps = BTreeSet::new();
        for p in paths_after(&code, "crate") {
            if let Some(m) = resolve(&p, &modules) {
                deps.insert(m);
            }
        }
        // `super::` from `a::b` (file b.rs or b/mod.rs) names `a`.
        let parent = me.rsplit_once("::").map_or("", |(p, _)| p).to_string();
        for p in paths_after(&code, "super") {
            let full: Vec<String> = parent
                .split("::")
                .filter(|s| !s.is_empty())
                .map(String::from)
                .chain(p)
                .collect();
            if let Some(m) = resolve(&full, &modules) {
                deps.insert(m);
            }
        }
        if me.is_empty() {
            // The crate root declares and re-exports its modules: that is its face, not a
            // dependency. Its own code's imports are checked in the modules it names.
            deps.clear();
        }
        deps.remove(&me);
        graph.insert(me, deps);
    }
    graph
}

#[test]
fn crates_depend_only_downwards() {
    let mut bad = Vec::new();
    for (rank, name) in LAYERS.iter().enumerate() {
        let dir = crates_dir().join(match *name {
            "pagemesh" => "client".to_string(),
            n => n.trim_start_matches("pagemesh-").to_string(),
        });
        let toml = fs::read_to_string(dir.join("Cargo.toml")).expect("every layer is a crate");
        assert!(
            toml.contains(&format!("name = \"{name}\"")),
            "{dir:?} is {name}"
        );
        let deps = toml.split("[dev-dependencies]").next().expect("some text");
        for (other_rank, other) in LAYERS.iter().enumerate() {
            let dep = deps
                .lines()
                .any(|l| l.trim_start().starts_with(&format!("{other} ")));
            if dep && other_rank >= rank {
                bad.push(format!("{name} depends on {other}, a layer above it"));
            }
        }
    }
    assert!(bad.is_empty(), "{bad:#?}");
    // Every crate of the workspace is placed in a layer.
    for e in fs::read_dir(crates_dir()).expect("crates/").flatten() {
        let toml = fs::read_to_string(e.path().join("Cargo.toml")).unwrap_or_default();
        let name = toml
            .lines()
            .find_map(|l| l.strip_prefix("name = \""))
            .map(|n| n.trim_end_matches('"'));
        if let Some(n) = name {
            assert!(LAYERS.contains(&n), "crate {n} is in no layer of LAYERS");
        }
    }
}

#[test]
fn no_import_cycle_within_a_crate() {
    let mut problems = Vec::new();
    for e in fs::read_dir(crates_dir()).expect("crates/").flatten() {
        let krate = e.file_name().to_string_lossy().to_string();
        let src = e.path().join("src");
        if !src.is_dir() {
            continue;
        }
        let known: BTreeSet<&str> = KNOWN_CYCLES
            .iter()
            .filter(|(c, _)| *c == krate)
            .flat_map(|(_, m)| m.iter().copied())
            .collect();
        let found = cycles(&module_graph(&src));
        for scc in &found {
            let new: Vec<&String> = scc.iter().filter(|m| !known.contains(m.as_str())).collect();
            if !new.is_empty() {
                problems.push(format!(
                    "{krate}: import cycle through {scc:?} (new: {new:?})"
                ));
            }
        }
        let still: BTreeSet<&str> = found.iter().flatten().map(String::as_str).collect();
        for m in &known {
            if !still.contains(m) {
                problems.push(format!(
                    "{krate}: {m} is in no cycle any more: take it off KNOWN_CYCLES"
                ));
            }
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

/// Each function's name and length in lines (from its `fn` line to its closing brace).
fn functions(code: &str) -> Vec<(String, usize)> {
    let lines: Vec<&str> = code.lines().collect();
    let mut out = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let Some(at) = find_fn(line) else { continue };
        let name: String = line[at + 3..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || *c == '_')
            .collect();
        // Find the body's opening brace (or a `;`: a declaration without a body).
        let mut depth = 0i64;
        let mut opened = false;
        'scan: for (m, l) in lines.iter().enumerate().skip(n) {
            let from = if m == n { at } else { 0 };
            for c in l[from..].chars() {
                match c {
                    ';' if !opened && depth == 0 => break 'scan,
                    '{' => {
                        opened = true;
                        depth += 1;
                    }
                    '}' => {
                        depth -= 1;
                        if opened && depth == 0 {
                            out.push((name.clone(), m - n + 1));
                            break 'scan;
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    out
}

/// Where a line declares a function (`fn name`), if it does.
fn find_fn(line: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(n) = line[from..].find("fn ") {
        let at = from + n;
        let before = line[..at].chars().next_back();
        if before.is_none_or(|c| !(c.is_alphanumeric() || c == '_')) {
            return Some(at);
        }
        from = at + 3;
    }
    None
}

#[test]
fn no_long_files_or_functions() {
    let root = crates_dir();
    let mut files = Vec::new();
    for e in fs::read_dir(&root).expect("crates/").flatten() {
        rust_files(&e.path().join("src"), &mut files);
    }
    files.sort();
    let mut problems = Vec::new();
    let mut seen_files = BTreeSet::new();
    let mut seen_fns = BTreeSet::new();
    for f in &files {
        let rel = f
            .strip_prefix(&root)
            .expect("under crates/")
            .to_string_lossy()
            .to_string();
        let text = fs::read_to_string(f).expect("readable");
        let code = code_of(&text);
        let lines = text.lines().count();
        match KNOWN_LONG_FILES.iter().find(|(p, _)| *p == rel) {
            Some((_, most)) if lines > *most => problems.push(format!(
                "{rel}: {lines} lines, more than the {most} it had (split it, do not grow it)"
            )),
            Some(_) if lines <= MAX_FILE_LINES => problems.push(format!(
                "{rel}: {lines} lines now: take it off KNOWN_LONG_FILES"
            )),
            Some(_) => {
                seen_files.insert(rel.clone());
            }
            None if lines > MAX_FILE_LINES => problems.push(format!(
                "{rel}: {lines} lines outside tests (at most {MAX_FILE_LINES})"
            )),
            None => {}
        }
        // Unit tests kept in files of their own (`#[path = "x_tests.rs"] mod tests;`) are
        // tests: their functions are not held to the limit.
        let fns = if rel.ends_with("_tests.rs") {
            Vec::new()
        } else {
            functions(&code)
        };
        for (name, len) in fns {
            let known = KNOWN_LONG_FNS
                .iter()
                .find(|(p, n, _)| *p == rel && *n == name);
            match known {
                Some((_, _, most)) if len > *most => problems.push(format!(
                    "{rel}: fn {name} has {len} lines, more than the {most} it had"
                )),
                Some(_) if len <= MAX_FN_LINES => problems.push(format!(
                    "{rel}: fn {name} has {len} lines now: take it off KNOWN_LONG_FNS"
                )),
                Some(_) => {
                    seen_fns.insert((rel.clone(), name));
                }
                None if len > MAX_FN_LINES => problems.push(format!(
                    "{rel}: fn {name} has {len} lines (at most {MAX_FN_LINES})"
                )),
                None => {}
            }
        }
    }
    for (p, _) in KNOWN_LONG_FILES {
        if !seen_files.contains(*p) && !problems.iter().any(|m| m.starts_with(p)) {
            problems.push(format!("{p}: listed in KNOWN_LONG_FILES but not found"));
        }
    }
    for (p, n, _) in KNOWN_LONG_FNS {
        if !seen_fns.contains(&(p.to_string(), n.to_string()))
            && !problems.iter().any(|m| m.starts_with(p) && m.contains(n))
        {
            problems.push(format!(
                "{p}: fn {n} listed in KNOWN_LONG_FNS but not found"
            ));
        }
    }
    assert!(problems.is_empty(), "{problems:#?}");
}

#[test]
fn the_checks_see_what_they_check() {
    // The parsers on a small sample, so that a checker that sees nothing cannot pass.
    let code = code_of(
        "use crate::{a::b, c};\n// crate::commented\nfn f() {\n let s = \"crate::x {\";\n let c = '{';\n crate::d::e();\n}\n#[cfg(test)]\nmod tests { use crate::t; }\n",
    );
    let paths = paths_after(&code, "crate");
    let flat: Vec<String> = paths.iter().map(|p| p.join("::")).collect();
    assert_eq!(flat, ["a::b", "c", "d::e"]);
    assert_eq!(functions(&code), [("f".to_string(), 5)]);
    let mut g = BTreeMap::new();
    g.insert("a".to_string(), BTreeSet::from(["b".to_string()]));
    g.insert("b".to_string(), BTreeSet::from(["a".to_string()]));
    g.insert("c".to_string(), BTreeSet::from(["a".to_string()]));
    let found = cycles(&g);
    assert_eq!(found, [BTreeSet::from(["a".to_string(), "b".to_string()])]);
    // The real graphs are seen at all (the local fault path names the segment module; the
    // cluster engine names its transport through `crate::`).
    let node = module_graph(&crates_dir().join("node/src"));
    assert!(node["fault"].contains("segment"), "{node:?}");
    let cluster = module_graph(&crates_dir().join("cluster/src"));
    assert!(cluster["engine"].contains("transport"), "{cluster:?}");
}
