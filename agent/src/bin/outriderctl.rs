//! `outriderctl`: the admin API's command line (see `outrider::ctl`).
fn main() -> std::process::ExitCode {
    outrider::ctl::main()
}
