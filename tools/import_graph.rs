//! The import graph of `src/`: files are nodes, a path one file names in another is an edge, and
//! the rule of ARCHITECTURE.md ("data flows one way, and imports do too") is that the graph has
//! no circle.
//!
//! What counts as an edge from file F to file G (G is the deepest module file a path resolves to):
//! - `crate::a::b::..` anywhere in F's code (in `use` trees, braces expanded, and inline), and
//!   `zipmerge::a::..` in the binary's files;
//! - `super::..` (the parent module's file, or deeper) and `self::child::..`;
//! - a child naming its parent (`super::Item`): the folder's face sits above its rooms only when
//!   the rooms do not lean on it and it does not lean on them.
//!
//! What does not: a module file naming its own descendants (`mod child;`, `pub use child::X`, a
//! call through `child::`): a folder owns its files and its face composes them; comments and doc
//! links; and the `#[cfg(test)] mod tests` block (tests may reach anywhere).
//!
//! The same rule holds one level up ([`folders`]): the top-level modules, each a folder of
//! files, form no circle either.
//!
//! Standalone: `rustc --edition 2021 -O tools/import_graph.rs -o /tmp/import_graph &&
//! /tmp/import_graph src` prints the layers and any circle (exit 1 when there is one). CI runs it
//! through `tests/import_graph.rs`.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The graph: module path (`engine::kernels::gemm`, `cli::merge_cmd` for the binary) to the
/// module paths it imports.
pub type Graph = BTreeMap<String, BTreeSet<String>>;

/// Reads every `.rs` file under `src` and builds the graph.
pub fn graph(src: &Path) -> Graph {
    let mut files = Vec::new();
    walk(src, &mut files);
    let mut modules: BTreeMap<String, Module> = BTreeMap::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        let code = strip(&text);
        modules.insert(module_of(src, f), Module::parse(&code));
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    let mut g = Graph::new();
    for (m, module) in &modules {
        let mut out = BTreeSet::new();
        let mut refs: Vec<Vec<String>> = module
            .uses
            .iter()
            .filter(|u| !u.public)
            .map(|u| u.path.clone())
            .collect();
        refs.extend(module.inline.iter().cloned());
        for path in refs {
            if let Some(abs) = absolute(m, &path, &names, module) {
                if let Some(target) = defining(&abs, &modules, 0) {
                    if &target != m && !target.is_empty() && target != "main" {
                        out.insert(target);
                    }
                }
            }
        }
        g.insert(m.clone(), out);
    }
    g
}

/// What one file says: the names it defines, its `use` bindings, and the paths in its code.
struct Module {
    defs: BTreeSet<String>,
    uses: Vec<Use>,
    inline: Vec<Vec<String>>,
}

/// One path of a `use` tree: the name it binds here, whether it is re-exported.
struct Use {
    public: bool,
    path: Vec<String>,
    name: String,
}

impl Module {
    fn parse(code: &str) -> Module {
        let mut defs = BTreeSet::new();
        let words: Vec<&str> = code
            .split(|c: char| !(c.is_alphanumeric() || c == '_' || c == '!'))
            .filter(|w| !w.is_empty())
            .collect();
        for w in words.windows(2) {
            if matches!(
                w[0],
                "struct"
                    | "enum"
                    | "fn"
                    | "trait"
                    | "type"
                    | "const"
                    | "static"
                    | "union"
                    | "mod"
                    | "macro_rules!"
            ) {
                defs.insert(w[1].to_string());
            }
        }
        let mut uses = Vec::new();
        let mut rest = code;
        let mut consumed = 0;
        let mut spans = Vec::new();
        while let Some(pos) = find_word(rest, "use") {
            let before = rest[..pos].trim_end();
            let public =
                before.ends_with("pub") || before.ends_with(')') && before.contains("pub(");
            let after = &rest[pos + 3..];
            let Some(end) = after.find(';') else { break };
            let tree: String = after[..end]
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            let tree: String = tree
                .replace(" as ", "@")
                .chars()
                .filter(|c| !c.is_whitespace())
                .collect();
            let mut out = Vec::new();
            expand(&tree, &mut Vec::new(), &mut out);
            for (path, name) in out {
                uses.push(Use { public, path, name });
            }
            spans.push((consumed + pos, consumed + pos + 3 + end));
            consumed += pos + 3 + end;
            rest = &after[end..];
        }
        // the code without its use statements, for the inline paths
        let mut body = String::new();
        let mut at = 0;
        for (a, b) in spans {
            body.push_str(&code[at..a]);
            at = b;
        }
        body.push_str(&code[at..]);
        Module {
            defs,
            uses,
            inline: inline_paths(&body),
        }
    }
}

/// A path as an absolute module path plus item names, or `None` when it leaves the crate.
fn absolute(
    from: &str,
    path: &[String],
    names: &BTreeSet<String>,
    module: &Module,
) -> Option<Vec<String>> {
    absolute_at(from, path, names, module, 0)
}

fn absolute_at(
    from: &str,
    path: &[String],
    names: &BTreeSet<String>,
    module: &Module,
    depth: usize,
) -> Option<Vec<String>> {
    if depth > 8 {
        return None;
    }
    let in_bin = from == "main" || from.starts_with("cli");
    let here: Vec<String> = if from.is_empty() {
        vec![]
    } else {
        from.split("::").map(String::from).collect()
    };
    match path[0].as_str() {
        "crate" if in_bin => {
            // the binary's crate root is main.rs, whose modules are `cli`
            (path.get(1).map(String::as_str) == Some("cli")).then(|| path[1..].to_vec())
        }
        "crate" => Some(path[1..].to_vec()),
        "zipmerge" if in_bin => Some(path[1..].to_vec()),
        "super" => {
            let mut up = here.clone();
            let mut k = 0;
            while path.get(k).map(String::as_str) == Some("super") {
                up.pop();
                k += 1;
            }
            up.extend(path[k..].iter().cloned());
            Some(up)
        }
        "self" => {
            let mut p = here.clone();
            p.extend(path[1..].iter().cloned());
            Some(p)
        }
        first => {
            let mut child = here.clone();
            child.push(first.to_string());
            if names.contains(&child.join("::")) {
                child.extend(path[1..].iter().cloned());
                return Some(child);
            }
            // a name bound by a `use` of this file (`use crate::models; models::Net`)
            let u = module
                .uses
                .iter()
                .find(|u| u.name == first && u.path[0] != first)?;
            let mut base = absolute_at(from, &u.path, names, module, depth + 1)?;
            base.extend(path[1..].iter().cloned());
            Some(base)
        }
    }
}

/// The module file that defines what an absolute path names, following re-exports and `use`
/// bindings (a child reaching `super::StateDict` depends on the file that defines `StateDict`).
fn defining(abs: &[String], modules: &BTreeMap<String, Module>, depth: usize) -> Option<String> {
    if depth > 16 {
        return None;
    }
    let names: BTreeSet<String> = modules.keys().cloned().collect();
    let mut at: Vec<String> = Vec::new();
    let mut i = 0;
    while i < abs.len() {
        let mut next = at.clone();
        next.push(abs[i].clone());
        if names.contains(&next.join("::")) {
            at = next;
            i += 1;
            continue;
        }
        let key = at.join("::");
        let module = modules.get(&key)?;
        let name = &abs[i];
        if module.defs.contains(name) {
            return Some(key);
        }
        if let Some(u) = module.uses.iter().find(|u| &u.name == name) {
            let mut target = absolute(&key, &u.path, &names, module)?;
            target.extend(abs[i + 1..].iter().cloned());
            return defining(&target, modules, depth + 1).or(Some(key));
        }
        // glob re-exports (`pub use x::*`)
        for u in module.uses.iter().filter(|u| u.name == "*") {
            if let Some(mut target) = absolute(&key, &u.path[..u.path.len() - 1], &names, module) {
                target.push(name.clone());
                if let Some(t) = defining(&target, modules, depth + 1) {
                    if modules.get(&t).is_some_and(|m| m.defs.contains(name)) {
                        return Some(t);
                    }
                }
            }
        }
        return Some(key);
    }
    Some(at.join("::"))
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut entries: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    entries.sort();
    for p in entries {
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// `src/engine/kernels/gemm.rs` -> `engine::kernels::gemm`; `src/engine/mod.rs` -> `engine`;
/// `src/lib.rs` -> `` and `src/main.rs` -> `main` (the binary's root).
fn module_of(src: &Path, f: &Path) -> String {
    let rel = f.strip_prefix(src).unwrap_or(f);
    let mut parts: Vec<String> = rel
        .iter()
        .map(|s| s.to_string_lossy().into_owned())
        .collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs").to_string();
    match stem.as_str() {
        "mod" => {}
        "lib" if parts.is_empty() => {}
        _ => parts.push(stem),
    }
    parts.join("::")
}

/// The code of a file without comments, string literals' contents and the trailing test module.
fn strip(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        let t = line.trim_start();
        if t.starts_with("#[cfg(test)]") {
            if let Some(next) = lines.peek() {
                if next.trim_start().starts_with("mod tests") {
                    break;
                }
            }
        }
        if t.starts_with("//") {
            continue;
        }
        // drop a trailing comment (`//` outside a string) and string contents
        let mut in_str = false;
        let mut prev = ' ';
        let mut kept = String::new();
        let chars: Vec<char> = line.chars().collect();
        let mut i = 0;
        while i < chars.len() {
            let c = chars[i];
            if !in_str && c == '/' && chars.get(i + 1) == Some(&'/') {
                break;
            }
            if c == '"' && prev != '\\' {
                in_str = !in_str;
                kept.push(c);
            } else if !in_str {
                kept.push(c);
            }
            prev = if prev == '\\' && c == '\\' { ' ' } else { c };
            i += 1;
        }
        out.push_str(&kept);
        out.push('\n');
    }
    out
}

/// Inline chains in code: identifiers joined by `::` (`crate::a::b`, `super::X`, `child::f`).
fn inline_paths(code: &str) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let bytes: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let starts = (c.is_alphabetic() || c == '_')
            && (i == 0
                || !(bytes[i - 1].is_alphanumeric() || bytes[i - 1] == '_' || bytes[i - 1] == ':'));
        if starts {
            let mut j = i;
            let mut segs = Vec::new();
            let mut cur = String::new();
            while j < bytes.len() {
                let d = bytes[j];
                if d.is_alphanumeric() || d == '_' {
                    cur.push(d);
                    j += 1;
                } else if d == ':' && bytes.get(j + 1) == Some(&':') {
                    segs.push(std::mem::take(&mut cur));
                    j += 2;
                } else {
                    break;
                }
            }
            if !cur.is_empty() {
                segs.push(cur);
            }
            if segs.len() >= 2 {
                out.push(segs);
            }
            i = j.max(i + 1);
        } else {
            i += 1;
        }
    }
    out
}

fn find_word(s: &str, w: &str) -> Option<usize> {
    let mut from = 0;
    while let Some(p) = s[from..].find(w) {
        let at = from + p;
        let before = s[..at].chars().last();
        let after = s[at + w.len()..].chars().next();
        let boundary = |c: Option<char>| c.is_none_or(|c| !(c.is_alphanumeric() || c == '_'));
        if boundary(before) && after.is_some_and(char::is_whitespace) {
            return Some(at);
        }
        from = at + w.len();
    }
    None
}

/// Expands a use tree (`a::{b, c::{d as e}}`) into (path, bound name) pairs; `self` in braces
/// binds the prefix's last segment.
fn expand(tree: &str, prefix: &mut Vec<String>, out: &mut Vec<(Vec<String>, String)>) {
    let mut depth = 0;
    let mut start = 0;
    let chars: Vec<char> = tree.chars().collect();
    let mut parts = Vec::new();
    for (i, &c) in chars.iter().enumerate() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                parts.push(chars[start..i].iter().collect::<String>());
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(chars[start..].iter().collect::<String>());
    for part in parts {
        if part.is_empty() {
            continue;
        }
        if let Some(b) = part.find('{') {
            let head = part[..b].trim_end_matches("::");
            let inner = &part[b + 1..part.len().saturating_sub(1)];
            let n = prefix.len();
            prefix.extend(head.split("::").filter(|s| !s.is_empty()).map(String::from));
            expand(inner, prefix, out);
            prefix.truncate(n);
        } else {
            // `a::b as c` arrives as `a::b@c`
            let (head, alias) = match part.split_once('@') {
                Some((h, a)) => (h.to_string(), a.to_string()),
                None => (
                    part.clone(),
                    part.rsplit("::").next().unwrap_or(&part).to_string(),
                ),
            };
            let mut p = prefix.clone();
            p.extend(head.split("::").filter(|s| !s.is_empty()).map(String::from));
            if alias == "self" {
                p.pop();
                let name = p.last().cloned().unwrap_or_default();
                if p.len() >= 2 {
                    out.push((p, name));
                }
            } else if p.len() >= 2 {
                out.push((p, alias));
            }
        }
    }
}

/// The circles: strongly connected components with more than one module (Tarjan), each sorted.
pub fn circles(g: &Graph) -> Vec<Vec<String>> {
    struct T<'a> {
        g: &'a Graph,
        index: BTreeMap<&'a str, usize>,
        low: BTreeMap<&'a str, usize>,
        stack: Vec<&'a str>,
        on: BTreeSet<&'a str>,
        next: usize,
        out: Vec<Vec<String>>,
    }
    fn visit<'a>(t: &mut T<'a>, v: &'a str) {
        t.index.insert(v, t.next);
        t.low.insert(v, t.next);
        t.next += 1;
        t.stack.push(v);
        t.on.insert(v);
        if let Some(ws) = t.g.get(v) {
            for w in ws {
                let w = w.as_str();
                if !t.index.contains_key(w) {
                    visit(t, w);
                    let l = t.low[w].min(t.low[v]);
                    t.low.insert(v, l);
                } else if t.on.contains(w) {
                    let l = t.index[w].min(t.low[v]);
                    t.low.insert(v, l);
                }
            }
        }
        if t.low[v] == t.index[v] {
            let mut comp = Vec::new();
            while let Some(w) = t.stack.pop() {
                t.on.remove(w);
                comp.push(w.to_string());
                if w == v {
                    break;
                }
            }
            if comp.len() > 1 {
                comp.sort();
                t.out.push(comp);
            }
        }
    }
    let mut t = T {
        g,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on: BTreeSet::new(),
        next: 0,
        out: Vec::new(),
    };
    for v in g.keys() {
        if !t.index.contains_key(v.as_str()) {
            visit(&mut t, v);
        }
    }
    t.out.sort();
    t.out
}

/// The graph of the top-level modules (`engine`, `models`, ... ; `cli` for the binary): an
/// edge where any file of one imports a file of another. A folder is one room of the house, so
/// it may not lean on a folder that leans back on it, even through different files.
pub fn folders(g: &Graph) -> Graph {
    let top = |m: &str| m.split("::").next().unwrap_or("").to_string();
    let mut out = Graph::new();
    for (a, bs) in g {
        let ta = top(a);
        let entry = out.entry(ta.clone()).or_default();
        for b in bs {
            let tb = top(b);
            if tb != ta {
                entry.insert(tb);
            }
        }
    }
    out
}

/// The layer of each module when the graph has no circle: 0 for a module that imports nothing of
/// the crate, else one more than the highest layer it imports.
pub fn layers(g: &Graph) -> BTreeMap<String, usize> {
    fn depth(
        g: &Graph,
        m: &str,
        memo: &mut BTreeMap<String, usize>,
        seen: &mut BTreeSet<String>,
    ) -> usize {
        if let Some(&d) = memo.get(m) {
            return d;
        }
        if !seen.insert(m.to_string()) {
            return 0; // a circle: reported by `circles`
        }
        let d = g
            .get(m)
            .map(|ws| {
                ws.iter()
                    .map(|w| depth(g, w, memo, seen) + 1)
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        memo.insert(m.to_string(), d);
        d
    }
    let mut memo = BTreeMap::new();
    for m in g.keys() {
        depth(g, m, &mut memo, &mut BTreeSet::new());
    }
    memo
}

/// The edges of a circle, `a -> b`, for the report.
pub fn circle_edges(g: &Graph, circle: &[String]) -> Vec<String> {
    let set: BTreeSet<&String> = circle.iter().collect();
    let mut out = Vec::new();
    for a in circle {
        for b in &g[a] {
            if set.contains(b) {
                out.push(format!("{a} -> {b}"));
            }
        }
    }
    out
}

fn main() {
    let src = std::env::args().nth(1).unwrap_or_else(|| "src".into());
    let g = graph(Path::new(&src));
    let mut cs = circles(&g);
    let fg = folders(&g);
    let fcs = circles(&fg);
    for c in &fcs {
        println!(
            "folder circle of {}: {}",
            c.len(),
            circle_edges(&fg, c).join(", ")
        );
    }
    if !fcs.is_empty() && cs.is_empty() {
        cs = fcs;
    }
    if cs.is_empty() {
        let l = layers(&g);
        let mut by: BTreeMap<usize, Vec<&String>> = BTreeMap::new();
        for (m, d) in &l {
            by.entry(*d).or_default().push(m);
        }
        for (d, ms) in by {
            println!(
                "layer {d}: {}",
                ms.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        println!(
            "{} modules, {} edges, no circle",
            g.len(),
            g.values().map(BTreeSet::len).sum::<usize>()
        );
    } else {
        for c in &cs {
            println!("circle of {}: {}", c.len(), circle_edges(&g, c).join(", "));
        }
        std::process::exit(1);
    }
}
