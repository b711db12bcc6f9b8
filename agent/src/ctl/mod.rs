//! `outriderctl`: the command line of the agent's admin API.
pub fn main() -> std::process::ExitCode {
    eprintln!("outriderctl: not yet");
    std::process::ExitCode::FAILURE
}
