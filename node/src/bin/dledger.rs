//! `dledger`: see `dledger_node::cli`.

fn main() -> std::process::ExitCode {
    dledger_node::cli::main()
}
