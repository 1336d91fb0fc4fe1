//! The layers of shared/DESIGN.md, checked on the source: every `crate::` path in a file of
//! `src/` may name only its own top-level module or one below it, so no module imports
//! upward and no two import each other. The registry, an application of the public API,
//! may name only what the crate root exports.
//!
//! The node core and the group layer, which the simulator runs deterministically, must
//! not touch channels, threads, clocks, sockets or files.
//!
//! `cargo test --test layers -- --nocapture` prints the import graph of the top-level
//! modules.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level modules, bottom-up: a module may import those before it in this list.
/// Modules on one line (a slice) are independent peers and may not import each other.
const LAYERS: &[&[&str]] = &[
    &[
        "id",
        "proto",
        "tracing_bridge",
        "bounded_decode",
        "log_pacer",
    ],
    &["storage"],
    &["error"],
    &["security"],
    &["config", "snapshot_provider", "signal", "telemetry"],
    &["group"],
    &["node"],
    &["snapshot_io", "subscriber_sink"],
    &["runtime"],
    &["node_handle"],
    &["data_structure"],
    &["copycat"],
    &["typed"],
    &["lib"],
    &["registry"],
    &["sim", "fuzzing"],
];

/// Where each top-level module sits in [`LAYERS`].
fn ranks() -> BTreeMap<&'static str, usize> {
    LAYERS
        .iter()
        .enumerate()
        .flat_map(|(rank, peers)| peers.iter().map(move |m| (*m, rank)))
        .collect()
}

/// Every `.rs` file under `dir`.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let entries = std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display()));
    for entry in entries {
        let path = entry.expect("directory entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module a file of `src/` belongs to (`lib` for `src/lib.rs`).
fn module_of(src: &Path, file: &Path) -> String {
    let relative = file.strip_prefix(src).expect("a file under src/");
    let first = relative
        .components()
        .next()
        .expect("a non-empty path")
        .as_os_str()
        .to_string_lossy()
        .into_owned();
    first.trim_end_matches(".rs").to_string()
}

/// The names a line's `crate::` paths start with: `crate::node::x` gives `node`,
/// `crate::{CopyCat, DataStructure}` gives both. Comments are skipped.
fn crate_paths(line: &str) -> Vec<String> {
    let code = line.split("//").next().unwrap_or_default();
    let mut names = Vec::new();
    for (at, _) in code.match_indices("crate::") {
        let rest = &code[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let inner = group.split('}').next().unwrap_or_default();
            names.extend(
                inner
                    .split(',')
                    .map(first_segment)
                    .filter(|n| !n.is_empty()),
            );
        } else {
            names.push(first_segment(rest));
        }
    }
    names
}

fn first_segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_alphanumeric() || *c == '_')
        .collect()
}

/// Names the crate root re-exports or defines, and the module each comes from. A
/// `pub use` may span lines (rustfmt breaks long ones): statements run to their `;`.
fn root_names(lib: &str) -> BTreeMap<String, String> {
    let mut names = BTreeMap::new();
    let mut statement = String::new();
    for line in lib.lines().map(str::trim) {
        if statement.is_empty() && !line.starts_with("pub use ") {
            if let Some(rest) = line.strip_prefix("pub fn ") {
                names.insert(first_segment(rest), "lib".to_string());
            }
            continue;
        }
        statement.push_str(line);
        if !line.ends_with(';') {
            continue;
        }
        let rest = statement.trim_start_matches("pub use ");
        let rest = rest.strip_prefix("crate::").unwrap_or(rest);
        let (module, items) = rest.split_once("::").expect("pub use module::items");
        let items = items.trim_end_matches(';').trim_matches(['{', '}']);
        for item in items
            .split(',')
            .map(first_segment)
            .filter(|i| !i.is_empty())
        {
            names.insert(item, module.to_string());
        }
        statement.clear();
    }
    names
}

/// The import graph of the top-level modules: module -> modules it names.
fn import_graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let lib = std::fs::read_to_string(src.join("lib.rs")).expect("src/lib.rs");
    let roots = root_names(&lib);
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in files {
        let from = module_of(&src, &file);
        let text = std::fs::read_to_string(&file).expect("a readable source file");
        let targets = graph.entry(from.clone()).or_default();
        for name in text.lines().flat_map(crate_paths) {
            let target = match roots.get(&name) {
                Some(_) if from == "registry" => format!("lib ({name})"),
                Some(module) => module.clone(),
                None => name,
            };
            if target != from {
                targets.insert(target);
            }
        }
    }
    graph
}

#[test]
fn no_module_imports_a_layer_above_its_own() {
    let ranks = ranks();
    let graph = import_graph();
    let mut violations = Vec::new();
    for (from, targets) in &graph {
        eprintln!(
            "{from} -> {}",
            targets.iter().cloned().collect::<Vec<_>>().join(", ")
        );
        let Some(&from_rank) = ranks.get(from.as_str()) else {
            violations.push(format!("{from} is not in LAYERS"));
            continue;
        };
        for target in targets {
            let module = target.split(' ').next().unwrap_or_default();
            match ranks.get(module) {
                Some(&rank) if rank < from_rank => {}
                Some(_) => violations.push(format!("{from} imports {target}, not below it")),
                None => violations.push(format!("{from} imports {target}, not in LAYERS")),
            }
            if from == "registry" && !target.starts_with("lib") {
                violations.push(format!(
                    "registry reaches into {target}: use the public API"
                ));
            }
        }
    }
    assert!(violations.is_empty(), "{}", violations.join("\n"));
}

/// Modules that must not name the runtime at all: the simulator swaps the runtime for its
/// own, and the public API reaches it only through `node_handle`.
const WITHOUT_RUNTIME: &[&str] = &["sim", "copycat", "data_structure", "registry", "typed"];

#[test]
fn the_simulator_and_the_api_import_nothing_from_the_runtime() {
    let graph = import_graph();
    let offenders: Vec<_> = WITHOUT_RUNTIME
        .iter()
        .filter(|m| graph.get(**m).is_some_and(|t| t.contains("runtime")))
        .collect();
    assert!(
        offenders.is_empty(),
        "these name the runtime: {offenders:?}"
    );
}

/// What the I/O-free layers (the node core and the Raft group wrapper) must not touch:
/// channels, async runtimes, threads, clocks, sockets, files. Time and randomness come in
/// as inputs; storage is read through the `LogStore` port.
const IO: &[&str] = &[
    "crossbeam",
    "tokio",
    "std::thread",
    "Instant::now",
    "SystemTime",
    "std::net::Tcp",
    "UdpSocket",
    "std::fs",
    "thread_rng",
];

#[test]
fn the_core_and_the_group_layer_do_no_io() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src.join("node"), &mut files);
    rust_files(&src.join("group"), &mut files);
    let mut found = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).expect("a readable source file");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for io in IO.iter().filter(|io| code.contains(*io)) {
                found.push(format!("{}:{}: {io}", file.display(), n + 1));
            }
        }
    }
    assert!(found.is_empty(), "I/O in the core:\n{}", found.join("\n"));
}

#[test]
fn the_checker_reads_re_exports_over_several_lines() {
    let lib = "pub use a::{\n    X,\n    Y,\n};\npub use b::Z;\npub fn f() {}";
    let names = root_names(lib);
    assert_eq!(names["X"], "a");
    assert_eq!(names["Y"], "a");
    assert_eq!(names["Z"], "b");
    assert_eq!(names["f"], "lib");
}

#[test]
fn the_checker_sees_paths_groups_and_skips_comments() {
    assert_eq!(crate_paths("use crate::node::x;"), ["node"]);
    assert_eq!(
        crate_paths("use crate::{CopyCat, DataStructure};"),
        ["CopyCat", "DataStructure"]
    );
    assert_eq!(
        crate_paths("let a = crate::id::new(); // crate::sim"),
        ["id"]
    );
    assert!(crate_paths("/// see [`crate::Config`]").is_empty());
}
