//! Every manifest in `examples/` parses, and every pipeline in them compiles.

use corral_core::manifest::{Document, parse_documents};
use corral_core::pipeline::PriorityClasses;

#[test]
fn the_examples_are_valid() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("examples/") {
        let path = entry.expect("entry").path();
        let text = std::fs::read_to_string(&path).expect("readable");
        if !text.lines().any(|l| l.starts_with("kind:")) {
            continue;
        }
        let docs = parse_documents(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        for doc in docs {
            if let Document::Pipeline(spec) = doc {
                PriorityClasses::default()
                    .resolve(&spec.priority)
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
                spec.compile()
                    .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            }
        }
        checked += 1;
    }
    assert!(
        checked >= 5,
        "only {checked} manifests found in {}",
        dir.display()
    );
}
