//! The example manifests are valid at every layer, and each invalid manifest under
//! `crds/testdata/invalid/` is rejected at the layer and field path its `# expect:` lines name.

mod common;

use common::{problems, repo_root, yaml_files};

#[test]
fn every_example_manifest_passes_schema_cel_and_validate() {
    let mut files = yaml_files(&repo_root().join("manifests/examples"));
    assert!(
        files.len() >= 2,
        "expected the example manifests, found {files:?}"
    );
    // The dev setup's pipeline, and the demo's.
    files.push(repo_root().join("manifests/dev/iot-autoscaling.yaml"));
    files.push(repo_root().join("operator/demo/iot-autoscaling.yaml"));
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let found = problems(&text);
        assert!(
            found.is_empty(),
            "{} is rejected: {found:#?}",
            file.display()
        );
    }
}

#[test]
fn every_invalid_manifest_is_rejected_at_the_expected_field() {
    let files = yaml_files(&repo_root().join("crds/testdata/invalid"));
    assert!(
        files.len() >= 10,
        "expected invalid manifests, found {files:?}"
    );
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        let expected: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix("# expect: "))
            .collect();
        assert!(
            !expected.is_empty(),
            "{} has no `# expect:` line",
            file.display()
        );
        let found = problems(&text);
        for want in expected {
            assert!(
                found.iter().any(|f| f == want),
                "{}: expected `{want}`, found {found:#?}",
                file.display()
            );
        }
    }
}
