//! The `bty` flasher.
fn main() -> std::process::ExitCode {
    bty::cli::main()
}
