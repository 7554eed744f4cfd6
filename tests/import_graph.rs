//! The house rule of ARCHITECTURE.md, held by CI: no import circle among the files of `src/`
//! (the checker is `tools/import_graph.rs`; its module docs say what counts as an edge).

#[path = "../tools/import_graph.rs"]
mod import_graph;

use std::path::Path;

#[test]
fn src_has_no_import_circle() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let g = import_graph::graph(&src);
    assert!(g.len() > 50, "the checker found only {} modules", g.len());
    let circles = import_graph::circles(&g);
    let described: Vec<String> = circles
        .iter()
        .map(|c| import_graph::circle_edges(&g, c).join(", "))
        .collect();
    assert!(circles.is_empty(), "import circles: {described:#?}");
    let folders = import_graph::folders(&g);
    let circles = import_graph::circles(&folders);
    let described: Vec<String> = circles
        .iter()
        .map(|c| import_graph::circle_edges(&folders, c).join(", "))
        .collect();
    assert!(
        circles.is_empty(),
        "import circles between folders: {described:#?}"
    );
}

/// The checker itself, on hand-made trees: a circle through a parent's re-export is seen, a
/// face re-exporting its rooms is not one, and test modules are ignored.
#[test]
fn checker_sees_circles_and_only_circles() {
    let dir = std::env::temp_dir().join(format!("zipmerge-import-graph-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let w = |p: &str, s: &str| {
        let f = dir.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, s).unwrap();
    };
    w("lib.rs", "pub mod a;\npub mod b;\n");
    // a's face re-exports its room; the room leans on b; b names a's item through the face
    w("a/mod.rs", "pub mod room;\npub use room::Thing;\n");
    w("a/room.rs", "use crate::b::Other;\npub struct Thing;\n");
    w(
        "b.rs",
        "pub struct Other;\n#[cfg(test)]\nmod tests {\n    use crate::a::Thing;\n}\n",
    );
    let g = import_graph::graph(&dir);
    assert!(import_graph::circles(&g).is_empty(), "{g:?}");
    assert!(g["a::room"].contains("b"));
    // now b uses a::Thing outside its tests: a::room -> b -> a::room
    w(
        "b.rs",
        "pub struct Other;\npub fn f(_: crate::a::Thing) {}\n",
    );
    let g = import_graph::graph(&dir);
    assert_eq!(
        import_graph::circles(&g),
        vec![vec!["a::room".to_string(), "b".to_string()]]
    );
    // no file circle, but the folders lean on each other: a's room uses b, b uses a's other room
    w(
        "b.rs",
        "pub struct Other;\npub fn f(_: crate::a::other::Leaf) {}\n",
    );
    w(
        "a/mod.rs",
        "pub mod other;\npub mod room;\npub use room::Thing;\n",
    );
    w("a/other.rs", "pub struct Leaf;\n");
    let g = import_graph::graph(&dir);
    assert!(import_graph::circles(&g).is_empty(), "{g:?}");
    assert_eq!(
        import_graph::circles(&import_graph::folders(&g)),
        vec![vec!["a".to_string(), "b".to_string()]]
    );
    let _ = std::fs::remove_dir_all(&dir);
}
