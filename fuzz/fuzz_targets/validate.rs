//! Any text as a PipelineDeployment manifest: parsed and validated (the CEL filter compiled),
//! or refused, never a panic or a stack overflow.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|text: &str| {
    if let Ok(pd) = pipeline_crds::manifest::from_yaml(text, "fuzz") {
        let _ = pipeline_crds::validate(&pd.spec);
    }
});
