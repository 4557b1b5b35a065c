//! The `bty-web` lab server.
fn main() -> std::process::ExitCode {
    bty::web::main()
}
