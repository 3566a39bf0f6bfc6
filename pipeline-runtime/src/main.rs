//! `pipeline-runtime`: runs one PipelineDeployment's pipeline ([`pipeline_runtime::cli`]).

fn main() -> anyhow::Result<std::process::ExitCode> {
    pipeline_runtime::cli::main_from(std::env::args_os())
}
