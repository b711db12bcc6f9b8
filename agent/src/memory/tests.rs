//! Which mappings are released, by table; and both releases, live in this process.
use super::*;

const EXE: &str = "/usr/local/bin/outrider";

/// One smaps entry: a header line and the fields `releasable` reads.
fn entry(range: &str, perms: &str, path: &str, rss_kb: u64, anon_kb: u64, swap_kb: u64) -> String {
    format!(
        "{range} {perms} 00000000 fe:00 5384738    {path}\nSize:  64 kB\nRss:  {rss_kb} kB\nPss:  {rss_kb} kB\nAnonymous:  {anon_kb} kB\nSwap:  {swap_kb} kB\nVmFlags: rd mr mw me\n"
    )
}

#[test]
fn only_read_only_mappings_of_the_executable_that_hold_the_file_alone_are_released() {
    let cases: &[(&str, String, bool)] = &[
        (
            "read-only data",
            entry("1000-3000", "r--p", EXE, 8, 0, 0),
            true,
        ),
        ("code", entry("3000-9000", "r-xp", EXE, 20, 0, 0), true),
        (
            "relocated data (RELRO)",
            entry("9000-b000", "r--p", EXE, 8, 4, 0),
            false,
        ),
        (
            "a breakpoint written into code",
            entry("3000-9000", "r-xp", EXE, 20, 4, 0),
            false,
        ),
        (
            "a written page swapped out",
            entry("9000-b000", "r--p", EXE, 4, 0, 4),
            false,
        ),
        (
            "writable data",
            entry("b000-c000", "rw-p", EXE, 4, 0, 0),
            false,
        ),
        (
            "nothing resident",
            entry("3000-9000", "r-xp", EXE, 0, 0, 0),
            false,
        ),
        (
            "another file's code",
            entry("3000-9000", "r-xp", "/usr/lib/libc.so.6", 20, 0, 0),
            false,
        ),
        (
            "a file whose name starts with ours",
            entry("3000-9000", "r-xp", "/usr/local/bin/outrider2", 20, 0, 0),
            false,
        ),
        (
            "anonymous memory",
            entry("3000-9000", "r--p", "", 20, 0, 0),
            false,
        ),
        (
            "no access",
            entry("3000-9000", "---p", EXE, 20, 0, 0),
            false,
        ),
        (
            "an unreadable range",
            entry("9000-3000", "r-xp", EXE, 20, 0, 0),
            false,
        ),
        (
            "no Anonymous field",
            format!("3000-9000 r-xp 00000000 fe:00 1 {EXE}\nRss:  20 kB\n"),
            false,
        ),
        (
            "an unreadable Rss",
            format!("3000-9000 r-xp 00000000 fe:00 1 {EXE}\nRss:  lots kB\nAnonymous:  0 kB\n"),
            false,
        ),
    ];
    for (what, smaps, released) in cases {
        let picked = releasable(smaps, EXE);
        assert_eq!(!picked.is_empty(), *released, "{what}: {picked:?}");
    }
}

#[test]
fn a_whole_smaps_yields_each_releasable_mapping_with_its_resident_bytes() {
    let smaps = [
        entry("1000-3000", "r--p", EXE, 8, 0, 0),
        entry("3000-9000", "r-xp", EXE, 20, 0, 0),
        entry("9000-b000", "r--p", EXE, 8, 8, 0),
        entry("b000-c000", "rw-p", EXE, 4, 4, 0),
        entry("7f00-8000", "r-xp", "/usr/lib/libc.so.6", 20, 0, 0),
    ]
    .concat();
    assert_eq!(
        releasable(&smaps, EXE),
        vec![
            Mapping {
                range: 0x1000..0x3000,
                resident: 8 * 1024
            },
            Mapping {
                range: 0x3000..0x9000,
                resident: 20 * 1024
            },
        ]
    );
    // An upgraded binary's mappings name the old file "(deleted)", as /proc/self/exe does.
    let deleted = format!("{EXE} (deleted)");
    let smaps = entry("3000-9000", "r-xp", &deleted, 20, 0, 0);
    assert_eq!(releasable(&smaps, &deleted).len(), 1);
    assert!(releasable(&smaps, EXE).is_empty());
}

/// Resident bytes of this process's mappings of its executable, read-only ones.
fn resident_code() -> u64 {
    let exe = std::fs::read_link("/proc/self/exe").expect("/proc/self/exe");
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
    releasable(&smaps, &exe.to_string_lossy())
        .iter()
        .map(|m| m.resident)
        .sum()
}

#[test]
fn released_code_runs_again_and_is_mapped_back_only_as_it_runs() {
    let before = resident_code();
    assert!(before > 0, "no code of the test binary is resident");
    let released = release_startup_code().expect("releasing the test binary's code");
    assert!(released.mappings >= 1 && released.bytes > 0, "{released:?}");
    let after = resident_code();
    // Other tests run meanwhile and map back what they run; not the whole binary.
    assert!(after < before, "resident code {before} → {after} bytes");
    // Code and read-only data released come back from the file as they were.
    let text = format!(
        "{:?}",
        std::collections::BTreeMap::from([(1, "one"), (2, "two")])
    );
    assert_eq!(text, r#"{1: "one", 2: "two"}"#);
}

#[cfg(target_env = "gnu")]
#[test]
fn freed_heap_below_a_live_block_goes_back_to_the_kernel() {
    // Small blocks come from this thread's arena (large ones would be mmap'd and unmapped
    // on free); the last stays live, so free() cannot give the rest back by itself.
    let mut blocks: Vec<Vec<u8>> = (0..512).map(|i| vec![i as u8; 16 * 1024]).collect();
    let last = blocks.pop();
    drop(blocks);
    assert!(
        trim_heap(),
        "8 MiB freed below a live block, and nothing to give back"
    );
    assert_eq!(last.map(|b| b[0]), Some((511 % 256) as u8));
}
