//! The `dledger` command line, built in the test package (see Cargo.toml).

fn main() -> std::process::ExitCode {
    dledger::cli::main()
}
