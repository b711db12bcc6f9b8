//! The binaries the end-to-end tests run. `outrider-testbed` is this package's own, so
//! cargo builds it for the tests. `outrider` and `outriderctl`, the product under test,
//! belong to the `outrider` package, which this one may not depend on in any way (not
//! even as a dev-dependency: that would be a cycle): they are taken from the same target
//! directory as `outrider-testbed`, where `cargo xtask test` (or
//! `cargo build --release -p outrider`) builds them first. A binary that is missing,
//! older than a source file it was built from (its cargo dep-info file, `<binary>.d`,
//! lists them), or of another version than the library the tests are built with, fails
//! the test with what to build: no test runs a stale agent silently.
use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::OnceLock,
    time::SystemTime,
};

/// The tooling's binary (`testbed …`, `loadgen …`).
pub const TESTBED: &str = env!("CARGO_BIN_EXE_outrider-testbed");

/// The `outrider` binary under test.
pub fn outrider() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| checked("outrider"))
}

/// The `outriderctl` binary under test.
pub fn outriderctl() -> &'static str {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| checked("outriderctl"))
}

/// `outrider-testbed testbed`, running the agents and sidecars of [`outrider`].
pub fn testbed() -> Command {
    let mut cmd = Command::new(TESTBED);
    cmd.arg("testbed").env("OUTRIDER_BIN", outrider());
    cmd
}

/// The path of the product binary `name`, beside `outrider-testbed`, once checked.
fn checked(name: &str) -> String {
    let path = Path::new(TESTBED).with_file_name(name);
    if let Err(why) = check(&path) {
        panic!(
            "{why}: build the product binaries before the end-to-end tests, with \
             `cargo build --release -p outrider` (`cargo xtask test` does)"
        );
    }
    path.display().to_string()
}

fn check(path: &Path) -> Result<(), String> {
    let built = modified(path).map_err(|e| format!("no {} ({e})", path.display()))?;
    if let Some(newer) = newer_source(path, built) {
        return Err(format!(
            "{} is older than {}, one of its sources",
            path.display(),
            newer.display()
        ));
    }
    let out = Command::new(path)
        .arg("--version")
        .output()
        .map_err(|e| format!("cannot run {} ({e})", path.display()))?;
    let said = String::from_utf8_lossy(&out.stdout);
    let version = said.split_whitespace().last().unwrap_or_default();
    if version != outrider::VERSION {
        return Err(format!(
            "{} is version {version:?}, the tests' library {:?} (was it built with \
             OUTRIDER_VERSION set?)",
            path.display(),
            outrider::VERSION
        ));
    }
    Ok(())
}

/// A source file that cargo's dep-info file of `binary` lists and that changed after
/// `built`; none when there is no dep-info file. (Directories it lists, the kernel
/// programs' crate, are left to cargo: their own time says little about their files.)
fn newer_source(binary: &Path, built: SystemTime) -> Option<PathBuf> {
    let mut info = binary.as_os_str().to_owned();
    info.push(".d");
    let text = std::fs::read_to_string(info).ok()?;
    // `target: dep dep …` on the first line; paths escape their spaces as `\ `.
    let deps = text
        .lines()
        .next()?
        .split_once(": ")?
        .1
        .replace("\\ ", "\0");
    deps.split_whitespace()
        .map(|d| PathBuf::from(d.replace('\0', " ")))
        .find(|d| {
            std::fs::metadata(d).is_ok_and(|m| m.is_file() && m.modified().is_ok_and(|m| m > built))
        })
}

fn modified(path: &Path) -> std::io::Result<SystemTime> {
    std::fs::metadata(path)?.modified()
}
