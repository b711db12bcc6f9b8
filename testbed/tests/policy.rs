//! End-to-end: authorization policies on a real testbed — enforced by the destination's
//! agent with the peer's verified identity (L4) and per HTTP request (L7), the pure-L4
//! denials in the source pod's kernel, live updates that close connections now denied,
//! invalid policy files refused while the previous policies stay; hostile HTTP paths
//! (`..`, `%2e%2e`, `..%2f`, `..;`, absolute-form) that never reach a page the policy
//! denies while the app gets the path that was checked, in node and sidecar mode; and
//! `hosts` matched with their ports as Istio does.
mod support;

use std::{
    io::{BufRead, BufReader, Write},
    net::SocketAddr,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{Testbed, specs};

/// The two-node testbed with shop/other, shop/web and shop/outsider beside the client.
fn spec() -> String {
    let node_a = [
        specs::meshed("shop/other"),
        specs::meshed("shop/web"),
        specs::outsider(),
    ];
    specs::client_and_db(&node_a, &[])
}

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

/// An ALLOW policy for the client's principal on port 7000 only, applied within a
/// second: the client reaches web's 7000 and nothing else; other principals and
/// plaintext are denied, and the denial says no ALLOW policy matched.
fn allow_only_the_client_on_7000(tb: &Testbed, to_7000: SocketAddr, to_7001: SocketAddr) {
    let took = apply(
        tb,
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
        reaches(tb, "shop/client", to_7000),
        "the client's principal is allowed on 7000"
    );
    assert!(
        !reaches(tb, "shop/client", to_7001),
        "port 7001 is not allowed"
    );
    assert!(
        !reaches(tb, "shop/other", to_7000),
        "another principal is not allowed"
    );
    assert!(
        !reaches(tb, "shop/outsider", to_7000),
        "plaintext has no principal"
    );
    let line = denial(tb, "node-a", mark, to_7001);
    assert!(
        line["fields"]["error"]
            .as_str()
            .unwrap()
            .contains("no ALLOW policy matched"),
        "{line}"
    );
}

/// A DENY policy by namespace and IP block (other's IP within shop) and by `notNamespaces`
/// on 7001: other is denied, the client allowed on both ports, plaintext denied on 7001.
fn deny_by_namespace_and_ip_block(tb: &Testbed, to_7000: SocketAddr, to_7001: SocketAddr) {
    let other = tb.pod("shop/other").clone();
    apply(
        tb,
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
        !reaches(tb, "shop/other", to_7000),
        "shop namespace from other's IP is denied"
    );
    assert!(
        reaches(tb, "shop/client", to_7000),
        "shop namespace from another IP is allowed"
    );
    assert!(
        !reaches(tb, "shop/outsider", to_7001),
        "no namespace (plaintext) is not 'shop'"
    );
    assert!(reaches(tb, "shop/client", to_7001));
}

#[test]
fn l4_policies_by_principal_namespace_ip_block_and_port_with_deny_first() {
    let tb = Testbed::up(&spec(), true);
    let web = tb.pod("shop/web").clone();
    let _a = tb.tcp_server("shop/web", 7000, "SYSTEM:echo hi");
    let _b = tb.tcp_server("shop/web", 7001, "SYSTEM:echo hi");
    let to_7000 = SocketAddr::new(web.ipv4.into(), 7000);
    let to_7001 = SocketAddr::new(web.ipv6.into(), 7001);
    for pod in ["shop/client", "shop/other", "shop/outsider"] {
        assert!(reaches(&tb, pod, to_7000), "no policy: {pod} is allowed");
    }

    // ALLOW: only the client's identity, only port 7000.
    allow_only_the_client_on_7000(&tb, to_7000, to_7001);

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
    deny_by_namespace_and_ip_block(&tb, to_7000, to_7001);
}

#[test]
fn http_requests_are_allowed_or_denied_one_by_one_and_audit_logs() {
    let tb = Testbed::up(&spec(), true);
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
    let public = format!("{base}/public/index.html");
    let (status, body) = curl(&tb, "shop/client", &["-X", "POST"], &public);
    assert_eq!(status, 403, "POST is not allowed: {body}");
    let (status, body) = curl(&tb, "shop/other", &[], &public);
    assert_eq!(status, 403, "another principal is not allowed: {body}");
    // HTTP/2 (prior knowledge) too, to an app that speaks it: Python's server does not,
    // and its closing the agent's HTTP/2 connection to it makes the agent end the
    // client's connection (GOAWAY), racing the request.
    let _h2 = tb.h2_server("shop/web", 8081, &tb.dir().join("site-8080"));
    let (status, body) = curl(
        &tb,
        "shop/client",
        &["--http2-prior-knowledge"],
        &format!("http://{}:8081/private.html", web.ipv4),
    );
    assert_eq!(status, 403, "HTTP/2 requests are checked too: {body}");
    // AUDIT: logged, not denied.
    let audit = tb.wait_log("node-a", Duration::from_secs(5), |v| {
        v["fields"]["message"] == "audit"
    });
    assert_eq!(audit["fields"]["policy"], "shop/audit-public", "{audit}");
}

#[test]
fn pure_l4_denials_refuse_connect_in_the_source_kernel() {
    let tb = Testbed::up(&spec(), true);
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
    let tb = Testbed::up(&spec(), true);
    let db = tb.pod("data/db").clone();
    let mut cat = tb.spawn(
        "data/db",
        &[
            "socat",
            "TCP6-LISTEN:7100,fork,reuseaddr,ipv6only=0",
            "EXEC:cat",
        ],
    );
    tb.wait_server_listening(&mut cat, "data/db", 7100);
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
    let tb = Testbed::up(&spec(), true);
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

/// `curl --path-as-is` from `pod` to `url` (the path sent exactly as written), with
/// `args` before it: the status and the body.
fn curl(tb: &Testbed, pod: &str, args: &[&str], url: &str) -> (u16, String) {
    let mut argv = vec!["curl", "-sS", "--path-as-is", "-w", "\n%{http_code}"];
    argv.extend_from_slice(args);
    argv.push(url);
    let out = tb.exec(pod, &argv);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status = status
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("curl {url}: {text:?} {:?}", out.stderr));
    (status, body.to_owned())
}

/// Writes `request` (raw HTTP/1.1, `\r\n` line ends) from `pod` to `dst` with socat:
/// the response's status and the whole response.
fn raw(tb: &Testbed, pod: &str, dst: SocketAddr, request: &str) -> (u16, String) {
    let script = format!(
        "printf '{}' | socat -t5 -T5 STDIO {}",
        request.replace('%', "%%"),
        support::socat_target(dst)
    );
    let out = tb.sh(pod, &script);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no response to {request:?}: {text:?}"));
    (status, text)
}

/// The paths the app (Python's http.server) logged, in order.
fn app_paths(app: &support::Background) -> Vec<String> {
    app.output()
        .lines()
        .filter_map(|l| l.split('"').nth(1))
        .filter_map(|request| request.split(' ').nth(1))
        .map(str::to_owned)
        .collect()
}

/// The value of `outrider_refusals_total` for `shop/web`, inbound, `reason`.
fn refusals(tb: &Testbed, node: &str, reason: &str) -> u64 {
    support::refusals(&tb.scrape(node), "shop/web", "inbound", reason)
}

/// An HTTP/2 server (nginx) in `pod` on `port`, serving the same site as
/// [`http_server`] and logging each request line.
fn h2_server(tb: &Testbed, pod: &str, port: u16) -> support::Background {
    let site = tb.dir().join(format!("site-{port}"));
    std::fs::create_dir_all(site.join("public")).unwrap();
    std::fs::write(site.join("public/index.html"), "public page\n").unwrap();
    std::fs::write(site.join("private.html"), "private page\n").unwrap();
    tb.h2_server(pod, port, &site)
}

/// The paths nginx logged, in order.
fn nginx_paths(app: &support::Background) -> Vec<String> {
    app.output()
        .lines()
        .filter(|l| l.ends_with(" HTTP/2.0"))
        .filter_map(|l| l.split(' ').nth(1))
        .map(str::to_owned)
        .collect()
}

const PUBLIC_ONLY: &str = "
apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: public-only, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - to: [{operation: {paths: ['/public/*']}}]
";

/// The attacks on `ALLOW paths: [/public/*]`, each with the status it must get: 403 when
/// its normal form is outside `/public/`, 400 when it has none. Never the private page.
const HOSTILE_PATHS: &[(&str, u16)] = &[
    ("/public/../private.html", 403),
    ("/public/%2e%2e/private.html", 403),
    ("/public/%2E%2E/private.html", 403),
    ("/public/.%2e/private.html", 403),
    ("//public/../private.html", 403),
    ("/public/./../private.html", 403),
    ("/PUBLIC/../private.html", 403),
    ("/public/..%2fprivate.html", 400),
    ("/public/..%2Fprivate.html", 400),
    ("/public/..%5cprivate.html", 400),
    ("/public/..;/private.html", 400),
    ("/public/%2e%2e;/private.html", 400),
];

/// Sends each of [`HOSTILE_PATHS`] from the client over HTTP/1 (`base`) and HTTP/2
/// (`base2`): each gets its status and never the private page. Returns how many were
/// denied (403) and how many refused as invalid.
fn try_hostile_paths(tb: &Testbed, base: &str, base2: &str) -> (u64, u64) {
    let (mut denied, mut invalid) = (0, 0);
    for &(path, expected) in HOSTILE_PATHS {
        for h2 in [false, true] {
            let (args, base): (&[&str], _) = if h2 {
                (&["--http2-prior-knowledge"], base2)
            } else {
                (&[], base)
            };
            let (status, body) = curl(tb, "shop/client", args, &format!("{base}{path}"));
            assert_eq!(status, expected, "{path} (HTTP/2: {h2}): {body}");
            assert!(!body.contains("private page"), "{path}: {body}");
            match status {
                403 => denied += 1,
                _ => invalid += 1,
            }
        }
    }
    (denied, invalid)
}

/// node-a counted `denied` policy and `invalid` invalid-path refusals, and logged each
/// once; an invalid path's line names the pod, the peer, its identity and the reason.
fn assert_refusals_counted_and_logged(tb: &Testbed, denied: u64, invalid: u64) {
    assert_eq!(refusals(tb, "node-a", "policy"), denied);
    assert_eq!(refusals(tb, "node-a", "invalid_path"), invalid);
    let logged = tb.log_lines_when(
        "node-a",
        0,
        Duration::from_secs(5),
        |v| v["fields"]["message"] == "request refused",
        |lines| lines.len() as u64 >= denied + invalid,
    );
    assert_eq!(logged.len() as u64, denied + invalid);
    let line = logged
        .iter()
        .find(|v| v["fields"]["refusal"] == "invalid_path")
        .unwrap();
    assert_eq!(line["fields"]["pod"], "shop/web", "{line}");
    assert_eq!(
        line["fields"]["peer_identity"],
        format!("spiffe://{CLIENT}"),
        "{line}"
    );
    assert!(
        line["fields"]["peer"]
            .as_str()
            .is_some_and(|p| p.starts_with(&client_ip(tb))),
        "{line}"
    );
    assert!(
        line["fields"]["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("invalid path: ")),
        "{line}"
    );
}

#[test]
fn hostile_paths_never_reach_a_page_the_policy_denies_and_the_app_gets_the_checked_path() {
    let tb = Testbed::up(&spec(), true);
    let web = tb.pod("shop/web").clone();
    let app = http_server(&tb, "shop/web", 8080);
    let app2 = h2_server(&tb, "shop/web", 8081);
    apply(&tb, "public.yaml", PUBLIC_ONLY);
    let base = format!("http://{}:8080", web.ipv4);
    let base2 = format!("http://{}:8081", web.ipv4);
    let dst = SocketAddr::new(web.ipv4.into(), 8080);
    let (mut denied, mut invalid) = try_hostile_paths(&tb, &base, &base2);
    // Absolute-form targets are matched on their path.
    let (status, text) = raw(
        &tb,
        "shop/client",
        dst,
        "GET http://web.shop:8080/public/%2e%2e/private.html HTTP/1.1\r\nHost: web.shop\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 403, "{text}");
    denied += 1;
    let (status, text) = raw(
        &tb,
        "shop/client",
        dst,
        "GET http://web.shop:8080/public/..;/private.html HTTP/1.1\r\nHost: web.shop\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 400, "{text}");
    invalid += 1;
    // Double encoding stays literal: allowed under /public/, and the app, decoding once,
    // looks for a directory named `%2e%2e`.
    let (status, body) = curl(
        &tb,
        "shop/client",
        &[],
        &format!("{base}/public/%252e%252e/private.html"),
    );
    assert_eq!(status, 404, "{body}");
    // What is allowed reaches the app in normal form: dot segments gone, unreserved
    // characters decoded, slashes merged, the query untouched; absolute-form as
    // origin-form.
    for path in [
        "/public/./index.html?a=..%2f&b",
        "/public/%69ndex.html?a=..%2f&b",
        "/public//x/../index.html?a=..%2f&b",
    ] {
        let (status, body) = curl(&tb, "shop/client", &[], &format!("{base}{path}"));
        assert_eq!((status, body.as_str()), (200, "public page\n"), "{path}");
    }
    let (status, text) = raw(
        &tb,
        "shop/client",
        dst,
        "GET http://web.shop:8080/public/./index.html?a=..%2f&b HTTP/1.1\r\nHost: evil.shop\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 200, "{text}");
    // HTTP/2 likewise.
    let (status, body) = curl(
        &tb,
        "shop/client",
        &["--http2-prior-knowledge"],
        &format!("{base2}/public//x/../%69ndex.html?a=..%2f&b"),
    );
    assert_eq!((status, body.as_str()), (200, "public page\n"));
    let expected = "/public/index.html?a=..%2f&b";
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut seen = app_paths(&app);
    while seen.len() < 5 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        seen = app_paths(&app);
    }
    assert_eq!(
        seen,
        [
            "/public/%252e%252e/private.html",
            expected,
            expected,
            expected,
            expected
        ],
        "what the app received:\n{}",
        app.output()
    );
    assert_eq!(nginx_paths(&app2), [expected], "{}", app2.output());
    // Each refusal counted, and logged once with the pod, the peer and the reason.
    assert_refusals_counted_and_logged(&tb, denied, invalid);
}

fn client_ip(tb: &Testbed) -> String {
    tb.pod("shop/client").ipv4.to_string()
}

/// `hosts` as Istio matches them: on the `Host`/`:authority` as sent, port included,
/// ignoring case; one form per README example.
#[test]
fn hosts_match_with_their_ports_as_istio_does() {
    let tb = Testbed::up(&spec(), true);
    let web = tb.pod("shop/web").clone();
    let _app = http_server(&tb, "shop/web", 8080);
    let _app2 = h2_server(&tb, "shop/web", 8081);
    apply(
        &tb,
        "hosts.yaml",
        "
apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {name: hosts, namespace: shop}
spec:
  selector: {matchLabels: {app: web}}
  rules:
  - to:
    - operation:
        hosts: [web.shop, 'admin.shop:8080', 'api.shop:*', '*.example.com', 'static.*']
",
    );
    let url = format!("http://{}:8080/public/index.html", web.ipv4);
    let url2 = format!("http://{}:8081/public/index.html", web.ipv4);
    let dst = SocketAddr::new(web.ipv4.into(), 8080);
    for (host, allowed) in [
        ("web.shop", true),
        ("WEB.Shop", true),
        ("web.shop:8080", false),
        ("admin.shop:8080", true),
        ("admin.shop", false),
        ("admin.shop:9090", false),
        ("api.shop:1234", true),
        ("api.shop", false),
        ("a.example.com", true),
        ("a.example.com:8080", false),
        ("static.shop:8080", true),
        ("evil.shop", false),
    ] {
        let expected = if allowed { 200 } else { 403 };
        let header = format!("Host: {host}");
        for h2 in [false, true] {
            let mut args = vec!["-H", header.as_str()];
            let mut url = &url;
            if h2 {
                // curl sends the Host header as `:authority`.
                args.push("--http2-prior-knowledge");
                url = &url2;
            }
            let (status, body) = curl(&tb, "shop/client", &args, url);
            assert_eq!(status, expected, "{host} (HTTP/2: {h2}): {body}");
        }
    }
    // An absolute-form target's authority is the host, whatever `Host` says.
    let request = |target: &str, host: &str| {
        format!("GET {target} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
    };
    let (status, text) = raw(
        &tb,
        "shop/client",
        dst,
        &request("http://admin.shop:8080/public/index.html", "evil.shop"),
    );
    assert_eq!(status, 200, "{text}");
    let (status, text) = raw(
        &tb,
        "shop/client",
        dst,
        &request("http://evil.shop/public/index.html", "web.shop"),
    );
    assert_eq!(status, 403, "{text}");
    // Two Host headers: ambiguous, refused before policy.
    let (status, text) = raw(
        &tb,
        "shop/client",
        dst,
        "GET /public/index.html HTTP/1.1\r\nHost: web.shop\r\nHost: evil.shop\r\nConnection: close\r\n\r\n",
    );
    assert_eq!(status, 400, "{text}");
    assert_eq!(refusals(&tb, "node-a", "invalid_host"), 1);
}

/// Sidecar mode serves HTTP with the same code (`proxy::inbound`): the same attacks
/// fail the same way there.
#[test]
fn a_sidecar_normalizes_paths_before_policy_too() {
    let node_a = [specs::meshed("shop/client"), specs::sidecar("shop/web")];
    let tb = Testbed::up(&specs::nodes(&[("node-a", &node_a)]), true);
    let web = tb.pod("shop/web").clone();
    let app = http_server(&tb, "shop/web", 8080);
    let file = tb.dir().join("public.yaml");
    std::fs::write(&file, PUBLIC_ONLY).unwrap();
    tb.ctl_ok(
        "node-a",
        &["policies", "apply", "-f", &file.display().to_string()],
    );
    tb.wait_sidecar_log("shop/web", Duration::from_secs(5), |v| {
        v["fields"]["message"] == "policies in force" && v["fields"]["policies"] == 1
    });
    let base = format!("http://{}:8080", web.ipv4);
    for &(path, expected) in HOSTILE_PATHS {
        let (status, body) = curl(&tb, "shop/client", &[], &format!("{base}{path}"));
        assert_eq!(status, expected, "{path}: {body}");
    }
    let (status, body) = curl(
        &tb,
        "shop/client",
        &[],
        &format!("{base}/public/./%69ndex.html"),
    );
    assert_eq!((status, body.as_str()), (200, "public page\n"));
    let refused = tb.wait_sidecar_log("shop/web", Duration::from_secs(5), |v| {
        v["fields"]["message"] == "request refused" && v["fields"]["refusal"] == "invalid_path"
    });
    assert_eq!(refused["fields"]["pod"], "shop/web", "{refused}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while app_paths(&app).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(app_paths(&app), ["/public/index.html"], "{}", app.output());
}
