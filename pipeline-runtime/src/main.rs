//! `pipeline-runtime`: runs one PipelineDeployment's pipeline ([`pipeline_runtime::cli`]).

/// mimalloc, not glibc's allocator: decoding allocates small strings and maps for every record,
/// and glibc's malloc and free were a tenth of a slot thread's CPU (docs/performance.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> anyhow::Result<std::process::ExitCode> {
    pipeline_runtime::cli::main_from(std::env::args_os())
}
