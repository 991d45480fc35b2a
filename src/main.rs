//! The `walbust` binary: everything it does lives in [`walbust::cli`].

fn main() -> std::process::ExitCode {
    walbust::cli::main()
}
