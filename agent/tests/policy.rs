//! End-to-end: authorization policies on a real testbed — enforced by the destination's
//! agent with the peer's verified identity (L4) and per HTTP request (L7), the pure-L4
//! denials in the source pod's kernel, live updates that close connections now denied,
//! and invalid policy files refused while the previous policies stay.
mod support;

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::Testbed;

const SPEC: &str = "
nodes:
  - name: node-a
    pods:
      - {namespace: shop, name: client, serviceAccount: client}
      - {namespace: shop, name: other, serviceAccount: other}
      - {namespace: shop, name: web, serviceAccount: web}
      - {namespace: shop, name: outsider, enrolled: false}
  - name: node-b
    pods:
      - {namespace: data, name: db, serviceAccount: db}
";

const CLIENT: &str = "cluster.local/ns/shop/sa/client";

fn http_server(tb: &Testbed, pod: &str, port: u16) -> support::Background {
    let site = tb.dir().join(format!("site-{port}"));
    std::fs::create_dir_all(site.join("public")).unwrap();
    std::fs::write(site.join("public/index.html"), "public page\n").unwrap();
    std::fs::write(site.join("private.html"), "private page\n").unwrap();
    tb.http_server(pod, port, &site)
}

/// Connects from `pod` to the echo server at `dst`: true when it answered.
fn reaches(tb: &Testbed, pod: &str, dst: SocketAddr) -> bool {
    let target = support::socat_target(dst);
    let out = tb.exec(pod, &["socat", "-t3", "-T3", "STDIO", &target]);
    String::from_utf8_lossy(&out.stdout) == "hi\n"
}

/// Writes a policy file and waits until every agent has loaded the new policies;
/// returns how long that took.
fn apply(tb: &Testbed, file: &str, yaml: &str) -> Duration {
    reload(tb, || {
        std::fs::write(tb.state.policy_dir.join(file), yaml).unwrap()
    })
}

fn remove(tb: &Testbed, file: &str) {
    reload(tb, || {
        std::fs::remove_file(tb.state.policy_dir.join(file)).unwrap()
    });
}

/// Makes `change` to the policy directory and waits until every agent has loaded the
/// result; returns how long that took.
fn reload(tb: &Testbed, change: impl FnOnce()) -> Duration {
    let marks: Vec<(String, usize)> = tb
        .state
        .nodes
        .iter()
        .map(|n| (n.name.clone(), tb.log_mark(&n.name)))
        .collect();
    let started = Instant::now();
    change();
    for (node, mark) in marks {
        tb.wait_log_after(&node, mark, Duration::from_secs(5), |v| {
            v["fields"]["message"] == "policies loaded"
        });
    }
    started.elapsed()
}

fn denial(tb: &Testbed, node: &str, mark: usize, dst: SocketAddr) -> Value {
    tb.wait_log_after(node, mark, Duration::from_secs(5), |v| {
        v["target"] == "access"
            && v["fields"]["direction"] == "inbound"
            && v["fields"]["dst"] == dst.to_string()
            && v["fields"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("RBAC: access denied"))
    })
}

#[test]
fn l4_policies_by_principal_namespace_ip_block_and_port_with_deny_first() {
    let tb = Testbed::up(SPEC, true);
    let web = tb.pod("shop/web").clone();
    let other = tb.pod("shop/other").clone();
    let _a = tb.tcp_server("shop/web", 7000, "SYSTEM:echo hi");
    let _b = tb.tcp_server("shop/web", 7001, "SYSTEM:echo hi");
    let to_7000 = SocketAddr::new(web.ipv4.into(), 7000);
    let to_7001 = SocketAddr::new(web.ipv6.into(), 7001);
    for pod in ["shop/client", "shop/other", "shop/outsider"] {
        assert!(reaches(&tb, pod, to_7000), "no policy: {pod} is allowed");
    }

    // ALLOW: only the client's identity, only port 7000.
    let took = apply(
        &tb,
        "allow.yaml",
        &format!(
            "
apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: allow-client, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  action: ALLOW
  rules:
  - from: [{{source: {{principals: ['{CLIENT}']}}}}]
    to: [{{operation: {{ports: ['7000']}}}}]
"
        ),
    );
    assert!(
        took < Duration::from_secs(1),
        "policies applied in {took:?}"
    );
    let mark = tb.log_mark("node-a");
    assert!(
        reaches(&tb, "shop/client", to_7000),
        "the client's principal is allowed on 7000"
    );
    assert!(
        !reaches(&tb, "shop/client", to_7001),
        "port 7001 is not allowed"
    );
    assert!(
        !reaches(&tb, "shop/other", to_7000),
        "another principal is not allowed"
    );
    assert!(
        !reaches(&tb, "shop/outsider", to_7000),
        "plaintext has no principal"
    );
    let line = denial(&tb, "node-a", mark, to_7001);
    assert!(
        line["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("no ALLOW policy matched"),
        "{line}"
    );

    // DENY wins over ALLOW.
    apply(
        &tb,
        "deny.yaml",
        &format!(
            "
apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: deny-client, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  action: DENY
  rules:
  - from: [{{source: {{principals: ['{CLIENT}']}}}}]
    to: [{{operation: {{notPorts: ['22']}}}}]
"
        ),
    );
    let mark = tb.log_mark("node-a");
    assert!(
        !reaches(&tb, "shop/client", to_7000),
        "DENY takes precedence"
    );
    let line = denial(&tb, "node-a", mark, to_7000);
    assert!(
        line["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("shop/deny-client"),
        "{line}"
    );
    remove(&tb, "deny.yaml");
    remove(&tb, "allow.yaml");

    // By namespace and IP block, with `not` forms.
    apply(
        &tb,
        "ns.yaml",
        &format!(
            "
apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: by-namespace-and-ip, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  action: DENY
  rules:
  - from: [{{source: {{namespaces: ['shop'], ipBlocks: ['{}/32']}}}}]
  - from: [{{source: {{notNamespaces: ['shop']}}}}]
    to: [{{operation: {{ports: ['7001']}}}}]
",
            other.ipv4
        ),
    );
    assert!(
        !reaches(&tb, "shop/other", to_7000),
        "shop namespace from other's IP is denied"
    );
    assert!(
        reaches(&tb, "shop/client", to_7000),
        "shop namespace from another IP is allowed"
    );
    assert!(
        !reaches(&tb, "shop/outsider", to_7001),
        "no namespace (plaintext) is not 'shop'"
    );
    assert!(reaches(&tb, "shop/client", to_7001));
}

#[test]
fn http_requests_are_allowed_or_denied_one_by_one_and_audit_logs() {
    let tb = Testbed::up(SPEC, true);
    let web = tb.pod("shop/web").clone();
    let _http = http_server(&tb, "shop/web", 8080);
    apply(
        &tb,
        "http.yaml",
        &format!(
            "
apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: public-get, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  rules:
  - from: [{{source: {{principals: ['{CLIENT}']}}}}]
    to: [{{operation: {{methods: ['GET', 'HEAD'], paths: ['/public/*']}}}}]
---
apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: audit-public, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  action: AUDIT
  rules: [{{to: [{{operation: {{paths: ['/public/*']}}}}]}}]
"
        ),
    );
    let base = format!("http://{}:8080", web.ipv4);
    // Three requests on one connection: allowed, denied (403), allowed again.
    let out = tb.exec(
        "shop/client",
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code} %{num_connects}\n",
            &format!("{base}/public/index.html"),
            &format!("{base}/private.html"),
            &format!("{base}/public/index.html"),
        ],
    );
    let codes = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        codes, "200 1\n403 0\n200 0\n",
        "per-request decisions on one kept-alive connection"
    );
    let out = tb.exec(
        "shop/client",
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "POST",
            &format!("{base}/public/index.html"),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "403",
        "POST is not allowed"
    );
    let out = tb.exec(
        "shop/other",
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{base}/public/index.html"),
        ],
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "403",
        "another principal is not allowed"
    );
    // HTTP/2 (prior knowledge) too.
    let out = tb.exec(
        "shop/client",
        &[
            "curl",
            "-sS",
            "--http2-prior-knowledge",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &format!("{base}/private.html"),
        ],
    );
    let code = String::from_utf8_lossy(&out.stdout);
    assert_eq!(code, "403", "HTTP/2 requests are checked too");
    // AUDIT: logged, not denied.
    let audit = tb.wait_log("node-a", Duration::from_secs(5), |v| {
        v["fields"]["message"] == "audit"
    });
    assert_eq!(audit["fields"]["policy"], "shop/audit-public", "{audit}");
}

#[test]
fn pure_l4_denials_refuse_connect_in_the_source_kernel() {
    let tb = Testbed::up(SPEC, true);
    let db = tb.pod("data/db").clone();
    let _e = tb.tcp_server("data/db", 7000, "SYSTEM:echo hi");
    let dst = SocketAddr::new(db.ipv4.into(), 7000);
    assert!(reaches(&tb, "shop/client", dst));
    apply(
        &tb,
        "deny-db.yaml",
        &format!(
            "
apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: no-client-to-db, namespace: data}}
spec:
  action: DENY
  rules:
  - from: [{{source: {{principals: ['{CLIENT}']}}}}]
    to: [{{operation: {{ports: ['7000']}}}}]
"
        ),
    );
    tb.wait_log("node-a", Duration::from_secs(5), |v| {
        v["fields"]["message"] == "kernel policy denials updated"
    });
    let (mark_a, mark_b) = (tb.log_mark("node-a"), tb.log_mark("node-b"));
    let script = format!(
        "import socket, time, errno\n\
         t = time.monotonic()\n\
         try:\n\
         \x20   socket.create_connection(('{}', 7000), timeout=5)\n\
         \x20   print('connected')\n\
         except OSError as e:\n\
         \x20   print(errno.errorcode.get(e.errno, e.errno), round((time.monotonic() - t) * 1000, 3))",
        db.ipv4
    );
    let out = tb.exec("shop/client", &["python3", "-c", &script]);
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    assert_eq!(words.next(), Some("ECONNREFUSED"), "{text}");
    let ms: f64 = words.next().unwrap().parse().unwrap();
    assert!(ms < 50.0, "refused in {ms} ms");
    // Other pods still reach db; the port not named is still open.
    assert!(reaches(&tb, "shop/other", dst));
    std::thread::sleep(Duration::from_millis(300));
    let about = |node: &str, mark: usize| {
        tb.agent_log(node)
            .into_iter()
            .skip(mark)
            .filter(|v| {
                v["target"] == "access"
                    && v["fields"]["dst"] == dst.to_string()
                    && v["fields"]["pod"] != "shop/other"
                    && !(v["fields"]["pod"] == "data/db"
                        && v["fields"]["src_identity"] == "spiffe://cluster.local/ns/shop/sa/other")
            })
            .count()
    };
    assert_eq!(
        about("node-a", mark_a),
        0,
        "the source agent never saw the refused connection"
    );
    assert_eq!(about("node-b", mark_b), 0, "nor did the destination's");
}

#[test]
fn a_policy_change_closes_established_connections_it_now_denies() {
    let tb = Testbed::up(SPEC, true);
    let db = tb.pod("data/db").clone();
    let _cat = tb.spawn(
        "data/db",
        &[
            "socat",
            "TCP6-LISTEN:7100,fork,reuseaddr,ipv6only=0",
            "EXEC:cat",
        ],
    );
    tb.wait_listening("data/db", 7100);
    let dst = SocketAddr::new(db.ipv6.into(), 7100);
    let mut conn = tb.spawn_piped("shop/client", &["socat", "STDIO", &format!("TCP6:{dst}")]);
    let mut stdin = conn.child.stdin.take().unwrap();
    let mut stdout = BufReader::new(conn.child.stdout.take().unwrap());
    let mut line = String::new();
    stdin.write_all(b"hello\n").unwrap();
    stdout.read_line(&mut line).unwrap();
    assert_eq!(line, "hello\n");

    // A DENY on the destination that the kernel cannot apply (it names an HTTP-free
    // source namespace rule with notPorts), so the destination agent must close it.
    let started = Instant::now();
    apply(
        &tb,
        "deny.yaml",
        "
apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: shop-out, namespace: data}
spec:
  action: DENY
  rules:
  - from: [{source: {namespaces: ['shop']}}]
    to: [{operation: {notPorts: ['22']}}]
",
    );
    let closed = tb.wait_log("node-b", Duration::from_secs(5), |v| {
        v["target"] == "access"
            && v["fields"]["dst"] == dst.to_string()
            && v["fields"]["error"]
                .as_str()
                .is_some_and(|e| e.contains("RBAC: access denied"))
    });
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "closed after {:?}",
        started.elapsed()
    );
    assert!(
        closed["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("data/shop-out"),
        "{closed}"
    );
    let mut rest = String::new();
    let n = stdout.read_line(&mut rest).unwrap_or(0);
    assert_eq!(n, 0, "the client's connection ended");
}

#[test]
fn an_invalid_policy_file_is_refused_with_its_location_and_the_previous_policies_stay() {
    let tb = Testbed::up(SPEC, true);
    let web = tb.pod("shop/web").clone();
    let _e = tb.tcp_server("shop/web", 7000, "SYSTEM:echo hi");
    let dst = SocketAddr::new(web.ipv4.into(), 7000);
    apply(
        &tb,
        "deny.yaml",
        &format!(
            "
apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: deny-client, namespace: shop}}
spec:
  action: DENY
  rules: [{{from: [{{source: {{principals: ['{CLIENT}']}}}}]}}]
"
        ),
    );
    assert!(!reaches(&tb, "shop/client", dst));
    let mark = tb.log_mark("node-a");
    std::fs::write(
        tb.state.policy_dir.join("bad.yaml"),
        "
apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: bad, namespace: shop}
spec:
  action: DENY
  rules: [{from: [{source: {ipBlocks: ['10.0.0.0/33']}}]}]
",
    )
    .unwrap();
    let err = tb.wait_log_after("node-a", mark, Duration::from_secs(5), |v| {
        v["fields"]["message"] == "policies rejected; the previous version stays in force"
    });
    let text = err["fields"]["error"].as_str().unwrap();
    assert!(text.contains("bad.yaml"), "{text}");
    assert!(text.contains("ipBlocks"), "{text}");
    assert!(
        !reaches(&tb, "shop/client", dst),
        "the previous policies stay in force"
    );
    assert!(reaches(&tb, "shop/other", dst));
}
