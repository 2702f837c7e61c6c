//! The `license-batch` binary: everything lives in the library; this only hands over the exit code.

fn main() -> std::process::ExitCode {
    std::process::ExitCode::from(license_batch::cli::main())
}
