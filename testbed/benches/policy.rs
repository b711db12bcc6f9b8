//! What one authorization decision costs with 10,000 rules spread as a real cluster might
//! have them: 100 namespaces, a root namespace with mesh-wide policies, and the evaluated
//! workload (`shop`, `app=web`) selected by about 220 policies (900 rules) of all three
//! actions, a third of the rules with HTTP fields. TCP and HTTP requests, allowed and
//! denied; plus the kernel denials of one source pod against 1,000 destinations.
//!
//! `cargo bench -p outrider-testbed --bench policy` (add `-- --quick` for a shorter run).
use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::BTreeMap,
    fmt::Write,
    hint::black_box,
    net::IpAddr,
    path::Path,
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use criterion::{Criterion, criterion_group, criterion_main};
use outrider::policy::{
    AuthorizationPolicy, DestinationRef, Http, PolicySet, Request, Source, SourcePod, WorkloadRef,
    parse_yaml,
};

/// Counts allocations, to show that a decision makes none.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards to the system allocator unchanged; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const ROOT: &str = "outrider-system";
const TOTAL_RULES: usize = 10_000;
const RULES_PER_POLICY: usize = 4;

/// A small deterministic generator (no dependency needed for this).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self, below: u64) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        (self.0 >> 33) % below
    }
}

/// One rule: two sources (principals; namespace + IP block), one operation (a port, and for
/// every third rule methods, paths and hosts). DENY and AUDIT rules always name sources
/// from `ns-evil-*`, so that they stay narrow over TCP too.
fn rule(out: &mut String, rng: &mut Lcg, action: &str, http: bool) {
    let ns = |rng: &mut Lcg| {
        if action == "ALLOW" {
            format!("ns-{:02}", rng.next(99))
        } else {
            format!("ns-evil-{}", rng.next(9))
        }
    };
    let (a, b) = (ns(rng), ns(rng));
    let _ = write!(
        out,
        "  - from:\n    - source:\n        principals: [cluster.local/ns/{a}/sa/sa-{}, cluster.local/ns/{b}/sa/sa-{}]\n",
        rng.next(20),
        rng.next(20)
    );
    let _ = write!(
        out,
        "    - source:\n        namespaces: [{}]\n        ipBlocks: [10.{}.0.0/16]\n",
        ns(rng),
        rng.next(250)
    );
    let _ = write!(
        out,
        "    to:\n    - operation:\n        ports: ['{}']\n",
        8000 + rng.next(100)
    );
    if http {
        let _ = write!(
            out,
            "        methods: [GET, HEAD]\n        paths: ['/api/v{}/*', '*.css']\n        hosts: ['web.shop*']\n",
            rng.next(3)
        );
    }
}

fn policy(out: &mut String, rng: &mut Lcg, ns: &str, name: &str, selector: &str, action: &str) {
    let _ = write!(
        out,
        "---\napiVersion: security.outrider.io/v1alpha1\nkind: AuthorizationPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n"
    );
    if !selector.is_empty() {
        let _ = writeln!(out, "  selector: {{matchLabels: {{{selector}}}}}");
    }
    let _ = write!(out, "  action: {action}\n  rules:\n");
    for r in 0..RULES_PER_POLICY {
        rule(out, rng, action, (r + name.len()).is_multiple_of(3));
    }
}

fn action_for(i: usize) -> &'static str {
    if i % 25 == 7 {
        "DENY"
    } else if i % 50 == 13 {
        "AUDIT"
    } else {
        "ALLOW"
    }
}

/// The cluster's policies, and how many of them select `shop`'s `app=web` workload.
fn cluster() -> (Vec<AuthorizationPolicy>, usize) {
    let mut rng = Lcg(42);
    let mut yaml = String::new();
    let mut rules = 0;
    // Mesh-wide: 50 policies, 10 for every workload, 40 for some apps.
    for i in 0..50 {
        let selector = match i % 5 {
            0 => String::new(),
            1 => "version: v1".to_string(),
            _ => format!("app: svc-{i}"),
        };
        policy(
            &mut yaml,
            &mut rng,
            ROOT,
            &format!("mesh-{i:03}"),
            &selector,
            action_for(i),
        );
        rules += RULES_PER_POLICY;
    }
    // The workload's namespace: 300 policies, 210 selecting it.
    for i in 0..300 {
        let selector = match i % 10 {
            0 => String::new(),
            1..=4 => "app: web".to_string(),
            5 => "version: v1".to_string(),
            6 => "app: web, tier: frontend".to_string(),
            _ => format!("app: other-{i}"),
        };
        policy(
            &mut yaml,
            &mut rng,
            "shop",
            &format!("p-{i:03}"),
            &selector,
            action_for(i),
        );
        rules += RULES_PER_POLICY;
    }
    // The rules the benchmark's requests are about (last by name in their buckets).
    let _ = write!(
        yaml,
        "---
apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: zz-allow-front, namespace: shop}}
spec:
  selector: {{matchLabels: {{app: web}}}}
  rules:
  - from: [{{source: {{principals: [cluster.local/ns/front/sa/gateway]}}}}]
    to: [{{operation: {{ports: ['8080']}}}}]
  - from: [{{source: {{principals: [cluster.local/ns/front/sa/browser]}}}}]
    to: [{{operation: {{ports: ['8080'], methods: [GET], paths: [/api/*]}}}}]
---
apiVersion: security.outrider.io/v1alpha1
kind: AuthorizationPolicy
metadata: {{name: zz-deny-admin, namespace: shop}}
spec:
  action: DENY
  rules:
  - to: [{{operation: {{ports: ['8443'], paths: [/admin/*]}}}}]
"
    );
    rules += 3;
    // Everything else over 99 namespaces.
    let mut i = 0;
    while rules + RULES_PER_POLICY <= TOTAL_RULES {
        let ns = format!("ns-{:02}", i % 99);
        let selector = if i % 4 == 0 {
            String::new()
        } else {
            format!("app: app-{}", i % 7)
        };
        policy(
            &mut yaml,
            &mut rng,
            &ns,
            &format!("p-{i:04}"),
            &selector,
            action_for(i),
        );
        rules += RULES_PER_POLICY;
        i += 1;
    }
    let policies = parse_yaml(Path::new("bench.yaml"), &yaml).unwrap_or_else(|e| panic!("{e}"));
    let total: usize = policies.iter().map(|p| p.spec.rules.len()).sum();
    assert!(
        total <= TOTAL_RULES && total > TOTAL_RULES - RULES_PER_POLICY,
        "{total} rules"
    );
    let web = web_labels();
    let selecting = policies
        .iter()
        .filter(|p| p.metadata.namespace == "shop" || p.metadata.namespace == ROOT)
        .filter(|p| {
            p.spec
                .selector
                .iter()
                .flat_map(|s| &s.match_labels)
                .all(|(k, v)| web.get(k) == Some(v))
        })
        .count();
    (policies, selecting)
}

fn web_labels() -> BTreeMap<String, String> {
    [
        ("app", "web"),
        ("version", "v1"),
        ("tier", "frontend"),
        ("pod-template-hash", "5d8f7c"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect()
}

fn request(principal: &'static str, port: u16, http: Option<Http<'static>>) -> Request<'static> {
    Request {
        source: Source {
            principal: Some(principal),
            namespace: Some("front"),
            ip: IpAddr::from([198, 19, 1, 5]),
        },
        port,
        http,
    }
}

fn bench(c: &mut Criterion) {
    let (policies, selecting) = cluster();
    let count = policies.len();
    let set = PolicySet::compile(policies, "cluster.local", ROOT).unwrap_or_else(|e| panic!("{e}"));
    eprintln!(
        "{count} policies, {TOTAL_RULES} rules; {selecting} policies select the evaluated workload"
    );
    let labels = web_labels();
    let web = WorkloadRef {
        namespace: "shop",
        labels: &labels,
    };
    let get = |path| {
        Some(Http {
            method: "GET",
            path,
            host: "web.shop.svc.cluster.local",
        })
    };

    let cases = [
        (
            "tcp allowed",
            request("cluster.local/ns/front/sa/gateway", 8080, None),
            true,
        ),
        (
            "tcp denied (no ALLOW matched)",
            request("cluster.local/ns/front/sa/stranger", 8080, None),
            false,
        ),
        (
            "http allowed",
            request(
                "cluster.local/ns/front/sa/browser",
                8080,
                get("/api/v1/items?page=2"),
            ),
            true,
        ),
        (
            "http denied (no ALLOW matched)",
            request(
                "cluster.local/ns/front/sa/stranger",
                8080,
                get("/api/v1/items"),
            ),
            false,
        ),
        (
            "http denied (DENY matched)",
            request(
                "cluster.local/ns/front/sa/browser",
                8443,
                get("/admin/users"),
            ),
            false,
        ),
    ];
    let mut group = c.benchmark_group("policy decision, 10k rules");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for (name, req, expect) in cases {
        let before = ALLOCATIONS.load(Ordering::Relaxed);
        let d = set.evaluate(&web, &req);
        let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
        assert_eq!(d.allowed, expect, "{name}: {d}");
        assert_eq!(allocations, 0, "{name}: a decision allocated");
        eprintln!("{name}: {d} (0 allocations)");
        group.bench_function(name, |b| {
            b.iter(|| black_box(set.evaluate(black_box(&web), black_box(&req))).allowed)
        });
    }
    group.bench_function("is_http_sensitive", |b| {
        b.iter(|| set.is_http_sensitive(black_box(&web)))
    });
    group.finish();

    // Kernel denials at reload: one pod against 1,000 destinations.
    let ips: Vec<[IpAddr; 1]> = (0..1000u32)
        .map(|i| [IpAddr::from((0xc613_0000u32 + i).to_be_bytes())])
        .collect();
    let dest_labels: Vec<BTreeMap<String, String>> = (0..1000)
        .map(|i| {
            [("app".to_string(), format!("app-{}", i % 7))]
                .into_iter()
                .collect()
        })
        .collect();
    let namespaces: Vec<String> = (0..1000).map(|i| format!("ns-{:02}", i % 99)).collect();
    let destinations: Vec<DestinationRef<'_>> = (0..1000)
        .map(|i| DestinationRef {
            namespace: &namespaces[i],
            labels: &dest_labels[i],
            ips: &ips[i],
        })
        .collect();
    let pod_ips = [IpAddr::from([10, 3, 0, 9])];
    let pod = SourcePod {
        principal: Some("cluster.local/ns/ns-evil-3/sa/sa-4"),
        namespace: Some("ns-evil-3"),
        ips: &pod_ips,
    };
    eprintln!(
        "kernel denials for one pod: {}",
        set.kernel_denials(&pod, &destinations).len()
    );
    let mut group = c.benchmark_group("kernel denials, 10k rules");
    group
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20);
    group.bench_function("one pod, 1000 destinations", |b| {
        b.iter(|| {
            set.kernel_denials(black_box(&pod), black_box(&destinations))
                .len()
        })
    });
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
