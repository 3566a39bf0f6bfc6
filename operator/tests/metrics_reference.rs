//! docs/metrics.md is generated from the registries themselves (the operator's and the
//! runtime's, each with one series in every family): name, type, unit, labels and help. This test
//! fails when the document and the code drift; `SLUICE_BLESS=1` rewrites it.

use std::collections::BTreeMap;

use pipeline_operator::metrics::OperatorMetrics;
use pipeline_runtime::metrics::Metrics;

/// One family as the exposition describes it.
#[derive(Default)]
struct Family {
    kind: String,
    help: String,
    labels: Vec<String>,
    sampled: bool,
}

/// Families by name (as `# TYPE` names them) from a text exposition.
fn families(exposition: &str) -> BTreeMap<String, Family> {
    let mut families: BTreeMap<String, Family> = BTreeMap::new();
    for line in exposition.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            families.entry(name.to_owned()).or_default().help = help.to_owned();
        } else if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            families.entry(name.to_owned()).or_default().kind = kind.to_owned();
        } else if !line.starts_with('#') && !line.is_empty() {
            let series = line.split(' ').next().unwrap_or_default();
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            let family = families
                .keys()
                .filter(|f| name.starts_with(f.as_str()))
                .max_by_key(|f| f.len())
                .cloned()
                .unwrap_or_else(|| panic!("{name} belongs to no family"));
            let family = families.get_mut(&family).unwrap();
            family.sampled = true;
            for pair in labels
                .trim_end_matches('}')
                .split(',')
                .filter(|p| !p.is_empty())
            {
                let label = pair.split_once('=').map_or(pair, |(k, _)| k).to_owned();
                if label != "le" && !family.labels.contains(&label) {
                    family.labels.push(label);
                }
            }
        }
    }
    families
}

/// The unit a family's name says (Prometheus naming: the unit before `_total`).
fn unit(name: &str) -> &'static str {
    let base = name.strip_suffix("_total").unwrap_or(name);
    [
        ("_seconds", "seconds"),
        ("_bytes", "bytes"),
        ("_records", "records"),
        ("_rate", "records/s"),
        ("_rows", "rows"),
    ]
    .into_iter()
    .find(|(suffix, _)| base.ends_with(suffix))
    .map_or("", |(_, unit)| unit)
}

fn table(exposition: &str) -> String {
    let mut out =
        String::from("| Metric | Type | Unit | Labels | Meaning |\n|---|---|---|---|---|\n");
    for (name, family) in families(exposition) {
        assert!(
            family.sampled,
            "{name} has no series in example(): add one so its labels are documented"
        );
        let scraped = if family.kind == "counter" {
            format!("{name}_total")
        } else {
            name.clone()
        };
        let labels = family
            .labels
            .iter()
            .map(|l| format!("`{l}`"))
            .collect::<Vec<_>>()
            .join(", ");
        out.push_str(&format!(
            "| `{scraped}` | {} | {} | {labels} | {} |\n",
            family.kind,
            unit(&scraped),
            family.help.replace('|', "\\|")
        ));
    }
    out
}

fn reference() -> String {
    format!(
        "# Metrics reference\n\n\
         Generated from the code by `operator/tests/metrics_reference.rs` (`SLUICE_BLESS=1 cargo \
         test -p pipeline-operator --test metrics_reference` rewrites it; the test fails when it \
         drifts). Counters are listed as scraped, with `_total`; histograms also have `_bucket` \
         (label `le`), `_sum` and `_count`. The unit is the one the name carries.\n\n\
         ## The operator (`sluice-operator`, port 8080 `/metrics`)\n\n{}\n\
         ## The runtime (each runtime pod, port 9249 `/metrics`)\n\n\
         Every series carries `pipeline`, `namespace` and `pod`; per-slot series `slot`, \
         per-partition series `topic` and `partition`. docs/runtime.md says how they are used and \
         docs/autoscaler.md which ones the autoscaler reads.\n\n{}",
        table(&OperatorMetrics::example().encode()),
        table(&Metrics::example().encode()),
    )
}

#[test]
fn docs_metrics_md_lists_every_metric_of_the_operator_and_the_runtime_as_the_code_registers_it() {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/metrics.md");
    let generated = reference();
    if std::env::var_os("SLUICE_BLESS").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let written = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        written == generated,
        "docs/metrics.md is stale: run SLUICE_BLESS=1 cargo test -p pipeline-operator --test metrics_reference"
    );
}
