//! No import cycles between the modules of any workspace crate (STYLE.md "One crate per
//! process": a lower layer never imports a higher one). See: #9

use std::fs;

use testkit::cases::repo_root;
use testkit::imports::{cycles, module_graph};

#[test]
fn workspace_crates_have_no_module_import_cycles() {
    let root = repo_root();
    let mut checked = Vec::new();
    let mut found = Vec::new();
    let mut dirs: Vec<_> = fs::read_dir(&root)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|d| d.join("Cargo.toml").is_file() && d.join("src").is_dir())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().into_owned();
        let graph = module_graph(&dir.join("src")).unwrap();
        for c in cycles(&graph) {
            found.push(format!("{name}: {}", c.join(" -> ")));
        }
        checked.push((name, graph.len()));
    }
    assert!(found.is_empty(), "import cycles:\n{}", found.join("\n"));
    // An empty walk cannot pass: every crate of the workspace was read.
    assert!(checked.len() >= 7, "{checked:?}");
    let modules = |c: &str| checked.iter().find(|(n, _)| n == c).map_or(0, |(_, m)| *m);
    assert!(modules("enforcer") >= 10, "{checked:?}");
    assert!(modules("policy-compiler") >= 10, "{checked:?}");
}

#[test]
fn a_cycle_between_two_modules_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path();
    fs::create_dir(src.join("b")).unwrap();
    fs::write(src.join("lib.rs"), "mod a; mod b; mod c;").unwrap();
    // A doc link is no import.
    fs::write(src.join("a.rs"), "/// See [`crate::b::Y`].\npub struct X;").unwrap();
    // Through a group, from a submodule file of `b`.
    fs::write(src.join("b.rs"), "mod inner;").unwrap();
    fs::write(src.join("b/inner.rs"), "use crate::{c, a::X};").unwrap();
    // `c` reaches `b` only from its tests: not an edge.
    fs::write(
        src.join("c.rs"),
        "use super::b;\npub struct Z;\n#[cfg(test)]\nmod tests { use crate::a::X; }",
    )
    .unwrap();
    let graph = module_graph(src).unwrap();
    assert_eq!(cycles(&graph), vec![vec!["b", "c", "b"]], "{graph:?}");
    fs::write(src.join("c.rs"), "pub struct Z;").unwrap();
    assert!(cycles(&module_graph(src).unwrap()).is_empty());
    fs::write(src.join("a.rs"), "use crate::c;").unwrap();
    fs::write(src.join("c.rs"), "use crate::a;").unwrap();
    assert_eq!(
        cycles(&module_graph(src).unwrap()),
        vec![vec!["a", "c", "a"]]
    );
}
