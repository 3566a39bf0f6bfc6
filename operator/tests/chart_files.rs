//! The Helm chart's RBAC rule files must be exactly what the operator's code generates
//! (`pipeline-operator rbac --chart-files helm/sluice-operator/files/rbac`, or this test with
//! `SLUICE_BLESS=1`).

use std::path::PathBuf;

#[test]
fn the_charts_rbac_rules_match_the_operators_code() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../helm/sluice-operator/files/rbac");
    let mut stale = Vec::new();
    for (file, generated) in pipeline_operator::backend::kube::rbac::chart_files() {
        let path = dir.join(file);
        if std::env::var_os("SLUICE_BLESS").is_some() {
            std::fs::write(&path, &generated).unwrap();
        }
        if std::fs::read_to_string(&path).unwrap_or_default() != generated {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale: {stale:?}; run `cargo run -p pipeline-operator -- rbac --chart-files helm/sluice-operator/files/rbac`"
    );
}
