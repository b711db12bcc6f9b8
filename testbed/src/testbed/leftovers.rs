//! `testbed leftovers --prefix P`: what testbeds whose prefix starts with `P` left on the
//! machine — network namespaces, cgroups, bpf filesystems — and any kernel program of
//! ours still loaded.
//! `cargo xtask test` runs it after the tests with the run's tag; it exits 1 if anything
//! is left.
use std::process::{Command, ExitCode};

use anyhow::{Context, bail};

use super::cgroup;

pub fn run(prefix: &str) -> anyhow::Result<ExitCode> {
    if !prefix.starts_with("or") || prefix.len() < 3 {
        bail!("--prefix {prefix:?}: testbed prefixes start with \"or\" and a tag, e.g. or1a2b");
    }
    let mut left = Vec::new();

    let out = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .context("cannot run `ip netns list`")?;
    left.extend(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter(|n| n.starts_with(prefix))
            .map(|n| format!("network namespace {n}")),
    );

    let mount = cgroup::find_mount()?;
    for entry in std::fs::read_dir(&mount)
        .with_context(|| format!("cannot list {}", mount.display()))?
        .flatten()
    {
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            left.push(format!("cgroup {}", entry.path().display()));
        }
    }

    if let Ok(text) = std::fs::read_to_string("/proc/self/mountinfo") {
        left.extend(
            super::bpffs::mount_points(&text)
                .into_iter()
                .filter(|p| {
                    std::path::Path::new(p).file_name().is_some_and(|n| {
                        n.to_string_lossy().starts_with(&format!("bpffs-{prefix}"))
                    })
                })
                .map(|p| format!("bpf filesystem {p}")),
        );
    }

    // Programs are freed when their agent exits and their cgroup goes; one still loaded
    // is held by a live agent or a pin.
    for info in aya::programs::loaded_programs().flatten() {
        if let Some(name) = info.name_as_str()
            && name.starts_with(agent_ebpf::PROG_PREFIX)
        {
            left.push(format!(
                "kernel program {name} (id {}; an agent still running, or pinned)",
                info.id()
            ));
        }
    }

    if left.is_empty() {
        println!("no leftovers of testbeds {prefix}*");
        return Ok(ExitCode::SUCCESS);
    }
    println!("leftovers of testbeds {prefix}*:");
    for item in &left {
        println!("  {item}");
    }
    Ok(ExitCode::FAILURE)
}
