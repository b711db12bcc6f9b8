//! End-to-end: the testbed itself — pods reach each other across nodes, `exec` runs in the
//! pod's namespace and cgroup, bad specs are refused with their location, and `down`
//! removes everything, also what a crashed `up` left.
mod support;

use std::process::Command;

use support::{OUTRIDER, Testbed};

const SPEC: &str = "nodes:
  - name: node-a
    pods:
      - {namespace: shop, name: web, serviceAccount: web}
  - name: node-b
    pods:
      - {namespace: data, name: db, serviceAccount: db, enrolled: false}
";

#[test]
fn pods_reach_each_other_across_nodes_and_exec_runs_inside_the_pod() {
    let tb = Testbed::up(SPEC, false);
    let web = tb.pod("shop/web").clone();
    for addr in [web.ipv4.to_string(), web.ipv6.to_string()] {
        let out = tb.exec("data/db", &["ping", "-c1", "-W2", &addr]);
        assert!(out.status.success(), "data/db → {addr}: {out:?}");
    }
    let out = tb.sh(
        "shop/web",
        "cat /proc/self/cgroup; ip -o addr show dev eth0",
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!(
            "/{}/node-a/kubepods/besteffort/pod{}",
            tb.state.prefix, web.uid
        )),
        "{text}"
    );
    assert!(text.contains(&web.ipv4.to_string()), "{text}");
    let out = tb.sh("shop/web", "exit 7");
    assert_eq!(out.status.code(), Some(7), "exec passes the exit code on");
}

#[test]
fn a_bad_spec_is_refused_with_its_location_and_nothing_is_made() {
    let dir = tempfile::tempdir().unwrap();
    let spec = dir.path().join("spec.yaml");
    std::fs::write(
        &spec,
        "nodes:\n  - name: node-a\n    pods:\n      - {namespace: shop, name: Web}\n",
    )
    .unwrap();
    let out = Command::new(OUTRIDER)
        .args(["testbed", "up", "--spec"])
        .arg(&spec)
        .arg("--state")
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("spec.yaml: line 4"), "{stderr}");
    assert!(stderr.contains("nodes[0].pods[0].name"), "{stderr}");
    assert!(
        !dir.path().join("state/prefix").exists(),
        "nothing may be made for a bad spec"
    );
}

#[test]
fn down_removes_what_a_crashed_up_left() {
    let tb = Testbed::up(SPEC, false);
    let dir = tempfile::tempdir().unwrap();
    // A crash after the prefix was written and one namespace made: fake it with a second
    // prefix that shares the live testbed's tag.
    let prefix = format!("{}x", &tb.state.prefix[..tb.state.prefix.len() - 1]);
    std::fs::write(dir.path().join("prefix"), format!("{prefix}\n")).unwrap();
    let netns = format!("{prefix}-node-a");
    assert!(
        Command::new("ip")
            .args(["netns", "add", &netns])
            .status()
            .unwrap()
            .success()
    );
    let cgroup = tb
        .state
        .cgroup_root
        .with_file_name(&prefix)
        .join("node-a/pods/shop-web");
    std::fs::create_dir_all(&cgroup).unwrap();

    let out = Command::new(OUTRIDER)
        .args(["testbed", "down", "--state"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list = Command::new("ip").args(["netns", "list"]).output().unwrap();
    assert!(!String::from_utf8_lossy(&list.stdout).contains(&netns));
    assert!(!tb.state.cgroup_root.with_file_name(&prefix).exists());
    // The live testbed is untouched.
    assert!(tb.state.cgroup_root.exists());
    let out = tb.exec("shop/web", &["true"]);
    assert!(out.status.success());
}
