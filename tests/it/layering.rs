//! The library's modules form layers: `src/lib.rs` declares them bottom-up, and each module
//! imports (`crate::Y`, in `use` lines and inline paths) only modules declared before it, so
//! there is no circle. The server, in particular, knows the endpoint only through the
//! `transport` contract: nothing under `src/server` names `endpoint`, `routes`, `stream` or
//! `sse`.
//!
//! A name the crate root re-exports (`crate::Redisse`) counts as an import of the module it
//! comes from (`instance`), as lib.rs's `pub use` lines say. Comments (doc comments and their
//! intra-doc links included) and string literals are not imports. The checker itself is tested
//! on small in-memory crates first, so that a pass of the real check means something.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Modules of the server that stand above the transport and that it must not import.
const ABOVE_THE_SERVER: [&str; 4] = ["endpoint", "routes", "stream", "sse"];

/// One `mod X;` of lib.rs.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Declared {
    name: String,
    /// 1-based line in lib.rs.
    line: usize,
}

/// The `mod X;` / `pub mod X;` declarations of lib.rs, in order (inline modules, `mod x { .. }`,
/// are not files of their own and are left out).
fn declared_modules(lib_rs: &str) -> Vec<Declared> {
    let code = code_only(lib_rs);
    let mut out = Vec::new();
    for (i, line) in code.lines().enumerate() {
        let mut rest = line.trim();
        if let Some(r) = rest.strip_prefix("pub") {
            let r = r.trim_start();
            rest = match r.strip_prefix('(') {
                Some(r) => r.split_once(')').map_or(r, |(_, after)| after).trim_start(),
                None => r,
            };
        }
        let Some(r) = rest.strip_prefix("mod ") else {
            continue;
        };
        let Some(name) = r.trim().strip_suffix(';') else {
            continue;
        };
        let name = name.trim();
        if !name.is_empty() && name.chars().all(|c| c.is_alphanumeric() || c == '_') {
            out.push(Declared {
                name: name.to_owned(),
                line: i + 1,
            });
        }
    }
    out
}

/// What lib.rs re-exports at the crate root: name -> the module it comes from.
fn root_reexports(lib_rs: &str) -> BTreeMap<String, String> {
    let code = code_only(lib_rs);
    let mut out = BTreeMap::new();
    // `pub use module::Name;` or `pub use module::{A, B as C};`, possibly over several lines.
    for statement in code.split(';') {
        let Some(at) = statement.find("pub use ") else {
            continue;
        };
        let path = &statement[at + "pub use ".len()..];
        let path = path
            .trim()
            .trim_start_matches("crate::")
            .trim_start_matches("self::");
        let Some((module, items)) = path.split_once("::") else {
            continue;
        };
        let items = items.trim();
        let items = items
            .strip_prefix('{')
            .and_then(|i| i.strip_suffix('}'))
            .unwrap_or(items);
        for item in items.split(',') {
            let item = item.trim();
            let name = match item.split_once(" as ") {
                Some((_, alias)) => alias.trim(),
                None => item.rsplit("::").next().unwrap_or(item),
            };
            if !name.is_empty() && name != "*" && name != "self" {
                out.insert(name.to_owned(), module.trim().to_owned());
            }
        }
    }
    out
}

/// `source` with comments and the contents of string and character literals blanked out
/// (newlines kept, so line numbers still hold).
fn code_only(source: &str) -> String {
    let chars: Vec<char> = source.chars().collect();
    let mut out = String::with_capacity(source.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r'
            && (next == Some('"') || next == Some('#'))
            && (i == 0 || !is_ident(chars[i - 1]) || byte_prefix(&chars[..i]))
            && raw_string_start(&chars[i + 1..]).is_some()
        {
            let hashes = raw_string_start(&chars[i + 1..]).unwrap();
            // r, the hashes, the quote.
            for _ in 0..hashes + 2 {
                out.push(' ');
            }
            i += hashes + 2;
            while i < chars.len() {
                if chars[i] == '"' && chars[i + 1..].iter().take(hashes).all(|&h| h == '#') {
                    let end = (i + 1 + hashes).min(chars.len());
                    for _ in i..end {
                        out.push(' ');
                    }
                    i = end;
                    break;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            out.push(' ');
            i += 1;
        } else if c == '\'' {
            // A character literal ('x', '\n', '\u{..}'), else a lifetime ('a).
            let end = if next == Some('\\') {
                // After the backslash and the escaped character.
                chars
                    .get(i + 3..)
                    .and_then(|rest| rest.iter().position(|&q| q == '\''))
                    .map(|p| i + 3 + p)
            } else if chars.get(i + 2) == Some(&'\'') {
                Some(i + 2)
            } else {
                None
            };
            match end {
                Some(end) => {
                    for _ in i..=end {
                        out.push(' ');
                    }
                    i = end + 1;
                }
                None => {
                    out.push(c);
                    i += 1;
                }
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// After an `r`: the number of `#` of a raw string's opening, if this is one.
fn raw_string_start(after_r: &[char]) -> Option<usize> {
    let hashes = after_r.iter().take_while(|&&c| c == '#').count();
    (after_r.get(hashes) == Some(&'"')).then_some(hashes)
}

/// Whether `before` ends with a lone `b` (a byte string's prefix, as in `br"..."`).
fn byte_prefix(before: &[char]) -> bool {
    match before {
        [.., prev, 'b'] => !is_ident(*prev),
        ['b'] => true,
        _ => false,
    }
}

fn is_ident(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Every `crate::Y` in `source` (comments and strings aside): the line and `Y`, the first
/// segment after `crate::`; for a group, `crate::{a::B, c}`, each of its members' first segment.
fn crate_paths(source: &str) -> Vec<(usize, String)> {
    let code: Vec<char> = code_only(source).chars().collect();
    let mut out = Vec::new();
    let mut line = 1;
    let mut i = 0;
    while i < code.len() {
        if code[i] == '\n' {
            line += 1;
            i += 1;
            continue;
        }
        let starts_word = i == 0 || !(is_ident(code[i - 1]) || code[i - 1] == '$');
        if !(starts_word && code[i..].starts_with(&['c', 'r', 'a', 't', 'e'])) {
            i += 1;
            continue;
        }
        let mut j = i + 5;
        if code.get(j).is_some_and(|&c| is_ident(c)) {
            i = j;
            continue;
        }
        j = skip_space(&code, j, &mut line);
        if !(code.get(j) == Some(&':') && code.get(j + 1) == Some(&':')) {
            i = j;
            continue;
        }
        j = skip_space(&code, j + 2, &mut line);
        if code.get(j) == Some(&'{') {
            i = group_members(&code, j, &mut line, &mut out);
        } else {
            let (word, end) = ident_at(&code, j);
            if !word.is_empty() {
                out.push((line, word));
            }
            i = end.max(j + 1);
        }
    }
    out
}

fn skip_space(code: &[char], mut j: usize, line: &mut usize) -> usize {
    while j < code.len() && code[j].is_whitespace() {
        if code[j] == '\n' {
            *line += 1;
        }
        j += 1;
    }
    j
}

fn ident_at(code: &[char], j: usize) -> (String, usize) {
    let end = (j..code.len())
        .find(|&k| !is_ident(code[k]))
        .unwrap_or(code.len());
    (code[j..end].iter().collect(), end)
}

/// The first segment of each member of the group whose `{` is at `open`; returns the index
/// after its `}`.
fn group_members(
    code: &[char],
    open: usize,
    line: &mut usize,
    out: &mut Vec<(usize, String)>,
) -> usize {
    let mut depth = 0;
    let mut expect_member = true;
    let mut k = open;
    while k < code.len() {
        match code[k] {
            '{' => {
                depth += 1;
                expect_member = depth == 1;
            }
            '}' => {
                depth -= 1;
                if depth == 0 {
                    return k + 1;
                }
            }
            ',' if depth == 1 => expect_member = true,
            '\n' => *line += 1,
            c if expect_member && depth == 1 && is_ident(c) => {
                let (word, end) = ident_at(code, k);
                if word != "self" {
                    out.push((*line, word));
                }
                expect_member = false;
                k = end;
                continue;
            }
            _ => {}
        }
        k += 1;
    }
    k
}

/// One source file of a module: its path (for messages) and text.
struct SourceFile {
    module: String,
    path: String,
    text: String,
}

/// What the check found wrong, one message per import.
fn violations(lib_rs: &str, files: &[SourceFile]) -> Vec<String> {
    let order = declared_modules(lib_rs);
    let reexports = root_reexports(lib_rs);
    let position = |name: &str| order.iter().position(|d| d.name == name);
    let mut out = Vec::new();
    for file in files {
        let Some(mine) = position(&file.module) else {
            out.push(format!(
                "{}: module `{}` is not declared in lib.rs",
                file.path, file.module
            ));
            continue;
        };
        for (line, first) in crate_paths(&file.text) {
            let (target, via) = if position(&first).is_some() {
                (first.clone(), String::new())
            } else if let Some(module) = reexports.get(&first) {
                (
                    module.clone(),
                    format!(" (through the re-export crate::{first})"),
                )
            } else {
                // An item of lib.rs itself (`crate::fuzzing`) or a macro: no module to order.
                continue;
            };
            let Some(theirs) = position(&target) else {
                continue;
            };
            if theirs > mine {
                out.push(format!(
                    "{}:{line}: `{}` (lib.rs line {}) imports `{target}`{via}, declared after it \
                     (lib.rs line {}): modules import only modules declared before them",
                    file.path, file.module, order[mine].line, order[theirs].line
                ));
            }
            let in_server = file.path.starts_with("src/server/") || file.path == "src/server.rs";
            if in_server && ABOVE_THE_SERVER.contains(&target.as_str()) {
                out.push(format!(
                    "{}:{line}: the server imports `crate::{target}`{via}: it may know the \
                     endpoint only through `transport`",
                    file.path
                ));
            }
        }
    }
    out
}

/// A bottom-up order of the modules that satisfies every import, keeping lib.rs's order where
/// it can; `Err` with the modules that cannot be placed (those in a circle, and those above
/// one) when there is none.
fn satisfying_order(lib_rs: &str, files: &[SourceFile]) -> Result<Vec<String>, Vec<String>> {
    let order: Vec<String> = declared_modules(lib_rs)
        .into_iter()
        .map(|d| d.name)
        .collect();
    let reexports = root_reexports(lib_rs);
    let mut needs: BTreeMap<&str, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        for (_, first) in crate_paths(&file.text) {
            let target = if order.contains(&first) {
                first
            } else if let Some(m) = reexports.get(&first) {
                m.clone()
            } else {
                continue;
            };
            if target != file.module {
                needs.entry(&file.module).or_default().insert(target);
            }
        }
    }
    let mut placed: Vec<String> = Vec::new();
    let mut left = order.clone();
    while !left.is_empty() {
        let ready = left.iter().position(|m| {
            needs
                .get(m.as_str())
                .is_none_or(|n| n.iter().all(|d| placed.contains(d) || !order.contains(d)))
        });
        match ready {
            Some(i) => placed.push(left.remove(i)),
            None => return Err(left),
        }
    }
    Ok(placed)
}

/// The files of module `name`: `src/name.rs`, and everything under `src/name/`.
fn module_files(src: &Path, name: &str) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let single = src.join(format!("{name}.rs"));
    if single.is_file() {
        files.push(single);
    }
    let mut dirs = vec![src.join(name)];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

#[test]
fn every_module_imports_only_modules_declared_before_it() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let src = root.join("src");
    let lib_rs = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let declared = declared_modules(&lib_rs);
    assert!(
        declared.len() > 10 && declared.iter().any(|d| d.name == "server"),
        "lib.rs's module list was not found: {declared:?}"
    );
    let mut files = Vec::new();
    for module in &declared {
        let paths = module_files(&src, &module.name);
        assert!(
            !paths.is_empty(),
            "no file for module `{}` (lib.rs line {})",
            module.name,
            module.line
        );
        for path in paths {
            files.push(SourceFile {
                module: module.name.clone(),
                path: path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned(),
                text: std::fs::read_to_string(&path).expect("a source file"),
            });
        }
    }
    // The check sees the imports: the server's own files do import the transport.
    let server_imports: BTreeSet<String> = files
        .iter()
        .filter(|f| f.module == "server")
        .flat_map(|f| crate_paths(&f.text).into_iter().map(|(_, m)| m))
        .collect();
    assert!(
        server_imports.contains("transport"),
        "the server imports no crate::transport? {server_imports:?}"
    );
    let found = violations(&lib_rs, &files);
    if !found.is_empty() {
        let hint = match satisfying_order(&lib_rs, &files) {
            Ok(order) => format!("an order that satisfies every import: {}", order.join(", ")),
            Err(circle) => {
                format!("no order satisfies the imports; in a circle or above one: {circle:?}")
            }
        };
        panic!(
            "{} layering violation(s):\n{}\n\n{hint}\n(rustfmt sorts a run of `mod` lines \
             alphabetically: separate the layers with blank lines or comments)",
            found.len(),
            found.join("\n")
        );
    }
}

// The checker, on small crates.

fn file(module: &str, path: &str, text: &str) -> SourceFile {
    SourceFile {
        module: module.to_owned(),
        path: path.to_owned(),
        text: text.to_owned(),
    }
}

const SMALL_LIB: &str = "\
//! A crate. mod nope;
pub mod config;
#[cfg(feature = \"x\")]
mod transport;
mod sse;
pub(crate) mod endpoint;
pub mod server;
pub mod inline { }

pub use config::Config;
pub use sse::{SseBody, SlowClient as Slow};
";

#[test]
fn the_checker_reads_the_declarations_and_reexports() {
    let names: Vec<(String, usize)> = declared_modules(SMALL_LIB)
        .into_iter()
        .map(|d| (d.name, d.line))
        .collect();
    let expected = [
        ("config", 2),
        ("transport", 4),
        ("sse", 5),
        ("endpoint", 6),
        ("server", 7),
    ];
    let expected: Vec<(String, usize)> =
        expected.iter().map(|(n, l)| (n.to_string(), *l)).collect();
    assert_eq!(names, expected);
    let re = root_reexports(SMALL_LIB);
    assert_eq!(re.get("Config").map(String::as_str), Some("config"));
    assert_eq!(re.get("SseBody").map(String::as_str), Some("sse"));
    assert_eq!(re.get("Slow").map(String::as_str), Some("sse"));
    assert_eq!(re.len(), 3, "{re:?}");
}

#[test]
fn the_checker_finds_paths_in_code_only() {
    let source = r####"
use crate::config::Config;
use crate::{
    sse::{SseBody, self},
    transport as t,
};
// use crate::commented;
/// [`crate::doc_link`]
/* use crate::blocked; /* nested */ still comment crate::blocked2 */
fn f<'a>(x: &'a str) -> char {
    let _ = "crate::in_a_string";
    let _ = r#"crate::in_a_raw "string""#;
    let _ = 'c';
    let _ = '\'';
    let _ = br"crate::bytes";
    let _ = mycrate::not_ours();
    let _ = crate :: spaced :: Thing;
    crate::inline::call();
    'x'
}
pub(crate) fn g() {}
"####;
    let found: Vec<(usize, String)> = crate_paths(source);
    let expected = [
        (2, "config"),
        (4, "sse"),
        (5, "transport"),
        (17, "spaced"),
        (18, "inline"),
    ];
    let expected: Vec<(usize, String)> =
        expected.iter().map(|(l, n)| (*l, n.to_string())).collect();
    assert_eq!(found, expected);
}

#[test]
fn the_checker_refuses_an_upward_import_and_the_server_above_the_transport() {
    let fine = [
        file("config", "src/config.rs", "use std::fmt;"),
        file("transport", "src/transport.rs", "use crate::config::X;"),
        file("sse", "src/sse.rs", "use crate::{transport::H, sse::Y};"),
        file("endpoint", "src/endpoint.rs", "use crate::SseBody;"),
        file("server", "src/server.rs", "use crate::transport::H;"),
        file("server", "src/server/plain.rs", "use crate::Config;"),
    ];
    assert_eq!(violations(SMALL_LIB, &fine), Vec::<String>::new());
    assert!(satisfying_order(SMALL_LIB, &fine).is_ok());

    // An upward import: `transport` (line 4) imports `endpoint` (line 6).
    let upward = [file(
        "transport",
        "src/transport.rs",
        "//! The contract.\n\nuse crate::endpoint::SseEndpoint;\n",
    )];
    let found = violations(SMALL_LIB, &upward);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0].starts_with("src/transport.rs:3: `transport` (lib.rs line 4) imports `endpoint`")
            && found[0].contains("(lib.rs line 6)"),
        "{}",
        found[0]
    );
    // Through a re-export, and inline in an expression.
    let upward = [file(
        "config",
        "src/config.rs",
        "fn f() { let _ = crate::Slow; }",
    )];
    let found = violations(SMALL_LIB, &upward);
    assert_eq!(found.len(), 1, "{found:?}");
    assert!(
        found[0]
            .contains("`config` (lib.rs line 2) imports `sse` (through the re-export crate::Slow)"),
        "{}",
        found[0]
    );

    // The server may not name what stands above the transport, even where the order allows it.
    let server = [
        file("server", "src/server/slow.rs", "use crate::sse::SseBody;"),
        file(
            "server",
            "src/server/deep/x.rs",
            "\n\nfn f() { crate::SseBody::full(); }",
        ),
    ];
    let found = violations(SMALL_LIB, &server);
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].starts_with("src/server/slow.rs:1: the server imports `crate::sse`"));
    assert!(found[1].starts_with("src/server/deep/x.rs:3: the server imports `crate::sse`"));

    // A circle has no satisfying order; a mere misordering has one.
    let circle = [
        file("config", "src/config.rs", "use crate::sse::X;"),
        file("sse", "src/sse.rs", "use crate::config::Y;"),
    ];
    assert_eq!(
        satisfying_order(SMALL_LIB, &circle),
        Err(vec!["config".to_owned(), "sse".to_owned()])
    );
    let misordered = [file("config", "src/config.rs", "use crate::server::X;")];
    assert_eq!(
        satisfying_order(SMALL_LIB, &misordered).unwrap(),
        ["transport", "sse", "endpoint", "server", "config"]
    );
}
