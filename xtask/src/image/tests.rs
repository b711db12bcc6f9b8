//! The `Containerfile` and `cargo xtask image` agree: the same files at the same paths,
//! the same entrypoint, command, user and PATH (the Containerfile cannot be built here:
//! no base image can be pulled).
use super::{layout, ldd_paths};
use std::path::{Path, PathBuf};

fn containerfile() -> String {
    let path = crate::root().join("Containerfile");
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The instructions of the last stage (continuation lines joined), comments left out.
fn final_stage(text: &str) -> Vec<String> {
    let joined = text
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .collect::<Vec<_>>()
        .join("\n")
        .replace("\\\n", " ");
    let lines: Vec<String> = joined
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    let last_from = lines
        .iter()
        .rposition(|l| l.starts_with("FROM "))
        .expect("a FROM");
    lines[last_from..].to_vec()
}

fn instruction<'a>(stage: &'a [String], name: &str) -> Vec<&'a str> {
    stage
        .iter()
        .filter_map(|l| l.strip_prefix(name).map(str::trim))
        .collect()
}

fn json_list(text: &str) -> Vec<String> {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not a JSON list: {text}: {e}"))
}

#[test]
fn the_final_stage_is_scratch_configured_as_xtask_configures_the_image() {
    let text = containerfile();
    let stage = final_stage(&text);
    assert_eq!(stage[0], "FROM scratch", "{stage:?}");
    let entrypoint = instruction(&stage, "ENTRYPOINT ");
    assert_eq!(entrypoint.len(), 1);
    assert_eq!(json_list(entrypoint[0]), layout::ENTRYPOINT);
    let cmd = instruction(&stage, "CMD ");
    assert_eq!(cmd.len(), 1);
    assert_eq!(json_list(cmd[0]), layout::CMD);
    assert_eq!(instruction(&stage, "USER "), [layout::USER]);
    assert_eq!(
        instruction(&stage, "ENV "),
        [format!("PATH={}", layout::PATH).as_str()]
    );
    // Nothing runs in the final stage (there is no shell to run it).
    assert!(instruction(&stage, "RUN ").is_empty(), "{stage:?}");
}

#[test]
fn the_containerfile_puts_every_file_where_xtask_puts_it() {
    let text = containerfile();
    let stage = final_stage(&text);
    let copied: Vec<&str> = instruction(&stage, "COPY ")
        .into_iter()
        .filter_map(|c| c.split_whitespace().last())
        .collect();
    for (binary, path) in layout::BINARIES {
        assert!(copied.contains(path), "{path} is not copied: {copied:?}");
        assert!(
            text.contains(&format!(
                "strip --strip-all -o /out/{binary} target/dist/{binary}"
            )),
            "{binary} is not the stripped dist build"
        );
    }
    // The rest comes from the rootfs stage, copied whole to /.
    assert!(copied.contains(&"/"), "{copied:?}");
    for path in [
        layout::XTABLES,
        layout::XTABLES_EXTENSIONS,
        layout::PASSWD,
        layout::GROUP,
    ] {
        assert!(
            text.contains(&format!("$r{path}")),
            "{path} is not made in the rootfs stage"
        );
    }
    let escaped = |t: &str| t.replace('\n', "\\n");
    assert!(text.contains(&format!(
        "'{}' > $r/etc/passwd",
        escaped(layout::PASSWD_TEXT)
    )));
    assert!(text.contains(&format!("'{}' > $r/etc/group", escaped(layout::GROUP_TEXT))));
    // The names iptables answers to: links to the multi-call binary, beside it.
    let xtables = Path::new(layout::XTABLES);
    let target = xtables.file_name().unwrap().to_str().unwrap();
    let names_line = text
        .lines()
        .find(|l| l.trim_start().starts_with("for n in "))
        .expect("the loop that makes iptables' names");
    let names: Vec<PathBuf> = names_line
        .trim_start()
        .trim_start_matches("for n in ")
        .split(';')
        .next()
        .unwrap()
        .split_whitespace()
        .map(|n| xtables.with_file_name(n))
        .collect();
    let expected: Vec<PathBuf> = layout::XTABLES_NAMES.iter().map(PathBuf::from).collect();
    assert_eq!(names, expected);
    assert!(text.contains(&format!("ln -s {target} $r/usr/sbin/$n")));
}

#[test]
fn ldd_output_gives_library_paths() {
    let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f71)\n\
                \t/lib64/ld-linux-x86-64.so.2 (0x00007f71)\n";
    assert_eq!(
        ldd_paths(text),
        [
            PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
            PathBuf::from("/lib64/ld-linux-x86-64.so.2")
        ]
    );
}

#[test]
fn versions_must_be_image_tags() {
    for good in ["0.1.0", "0.1.0-next.1", "dev_2"] {
        super::check_version(good).unwrap();
    }
    for bad in ["", "-x", "a b", "1/2", "x:y"] {
        assert!(super::check_version(bad).is_err(), "{bad:?}");
    }
}
