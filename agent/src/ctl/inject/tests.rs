//! `outriderctl inject`: each workload kind, lists, documents passing through, the
//! rules (idempotence, skips, clashes), errors, YAML 1.1 output, the command line.
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, ReplicaSet, StatefulSet};
use k8s_openapi::api::batch::v1::{CronJob, Job};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, ReplicationController, Service};
use serde::Deserialize;
use serde_yaml_ng::Value;

use super::emit;
use super::*;

const DEPLOYMENT: &str = r#"# The shop's front end.
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: shop
  labels: {app: web}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
      annotations:
        prometheus.io/scrape: "true"
    spec:
      someFutureField: {kept: "yes"}
      initContainers:
        - name: migrate
          image: shop/migrate:1
      containers:
        - name: web
          image: shop/web:1.2.3
          args: ["--port", "8080"]
          env:
            - name: FEATURE
              value: "on"
            - name: ZIP
              value: "01234"
          volumeMounts:
            - name: config
              mountPath: /etc/web
              readOnly: yes
      volumes:
        - name: config
          configMap:
            name: web
            defaultMode: 0644
"#;

const SERVICE: &str = "\
apiVersion: v1
kind: Service
metadata:
  name: web   # the front end
  namespace: shop
spec:
  selector: {app: web}
  ports:
    - port: 80
      targetPort: 8080
";

fn inject_ok(text: &str) -> Injected {
    match inject(text, "test.yaml", &Options::default()) {
        Ok(injected) => injected,
        Err(err) => panic!("{err:#}"),
    }
}

fn inject_err(text: &str) -> String {
    match inject(text, "test.yaml", &Options::default()) {
        Ok(injected) => panic!("injected:\n{}", injected.text),
        Err(err) => format!("{err:#}"),
    }
}

/// The documents of `text`, read back.
fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|document| Value::deserialize(document).expect("the output reads back"))
        .collect()
}

/// The documents of `text` as raw text, each without its `---` line.
fn document_texts(text: &str) -> Vec<String> {
    split_documents(text)
        .into_iter()
        .filter(|chunk| !chunk.body.trim().is_empty())
        .map(|chunk| chunk.body.to_string())
        .collect()
}

/// A workload of `kind` whose pod template is `template` (indented for its place).
fn workload(api_version: &str, kind: &str, template: &str) -> String {
    if kind == "Pod" {
        let template = template.replacen("metadata:\n", "metadata:\n  name: app\n", 1);
        return format!("apiVersion: {api_version}\nkind: Pod\n{template}");
    }
    let body = match kind {
        "CronJob" => format!(
            "spec:\n  schedule: \"*/5 * * * *\"\n  jobTemplate:\n    spec:\n      template:\n{}",
            indent(template, 8)
        ),
        _ => format!("spec:\n  template:\n{}", indent(template, 4)),
    };
    format!("apiVersion: {api_version}\nkind: {kind}\nmetadata:\n  name: app\n{body}")
}

fn indent(text: &str, by: usize) -> String {
    text.lines()
        .map(|line| format!("{}{line}\n", " ".repeat(by)))
        .collect()
}

const TEMPLATE: &str = "\
metadata:
  labels: {app: app}
spec:
  restartPolicy: OnFailure
  containers:
    - name: app
      image: app:1
";

/// The pod spec of a typed workload, checked for the sidecar.
fn assert_has_sidecar(spec: &PodSpec) {
    let init = spec.init_containers.as_deref().unwrap_or_default();
    let names: Vec<&str> = init.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(&names[..2], ["outrider-init", "outrider-proxy"]);
    let proxy: &Container = &init[1];
    assert_eq!(proxy.restart_policy.as_deref(), Some("Always"));
    assert_eq!(proxy.image.as_deref(), Some(DEFAULT_IMAGE));
    let volumes = spec.volumes.as_deref().unwrap_or_default();
    let node = volumes.iter().find(|v| v.name == "outrider-node").unwrap();
    assert_eq!(
        node.host_path.as_ref().unwrap().path,
        "/run/outrider/sidecar"
    );
    assert_eq!(spec.containers[0].name, "app");
}

fn annotations(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Vec<(&str, &str)> {
    meta.annotations
        .iter()
        .flatten()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

fn typed<T: serde::de::DeserializeOwned>(text: &str) -> T {
    match serde_yaml_ng::from_str(text) {
        Ok(value) => value,
        Err(err) => panic!("{err}:\n{text}"),
    }
}

#[test]
fn every_workload_kind_gets_the_sidecar_and_stays_valid() {
    let expected_annotations = [
        ("outrider.io/injected", VERSION),
        ("outrider.io/mode", "sidecar"),
    ];
    let cases = [
        ("v1", "Pod"),
        ("apps/v1", "Deployment"),
        ("apps/v1", "StatefulSet"),
        ("apps/v1", "DaemonSet"),
        ("apps/v1", "ReplicaSet"),
        ("v1", "ReplicationController"),
        ("batch/v1", "Job"),
        ("batch/v1", "CronJob"),
    ];
    for (api_version, kind) in cases {
        let input = workload(api_version, kind, TEMPLATE);
        let done = inject_ok(&input);
        assert_eq!(
            (done.injected, done.skipped, done.unchanged),
            (1, 0, 0),
            "{kind}"
        );
        let text = &done.text;
        // Typed, as the API server would read it; the kind and version must match.
        let (spec, meta) = match kind {
            "Pod" => {
                let pod: Pod = typed(text);
                (pod.spec.unwrap(), pod.metadata)
            }
            "Deployment" => {
                let t = typed::<Deployment>(text).spec.unwrap().template;
                (t.spec.unwrap(), t.metadata.unwrap())
            }
            "StatefulSet" => {
                let t = typed::<StatefulSet>(text).spec.unwrap().template;
                (t.spec.unwrap(), t.metadata.unwrap())
            }
            "DaemonSet" => {
                let t = typed::<DaemonSet>(text).spec.unwrap().template;
                (t.spec.unwrap(), t.metadata.unwrap())
            }
            "ReplicaSet" => {
                let t = typed::<ReplicaSet>(text).spec.unwrap().template.unwrap();
                (t.spec.unwrap(), t.metadata.unwrap())
            }
            "ReplicationController" => {
                let t = typed::<ReplicationController>(text)
                    .spec
                    .unwrap()
                    .template
                    .unwrap();
                (t.spec.unwrap(), t.metadata.unwrap())
            }
            "Job" => {
                let t = typed::<Job>(text).spec.unwrap().template;
                (t.spec.unwrap(), t.metadata.unwrap())
            }
            "CronJob" => {
                let cron = typed::<CronJob>(text).spec.unwrap();
                assert_eq!(cron.schedule, "*/5 * * * *");
                let t = cron.job_template.spec.unwrap().template;
                (t.spec.unwrap(), t.metadata.unwrap())
            }
            _ => unreachable!(),
        };
        assert_has_sidecar(&spec);
        assert_eq!(spec.restart_policy.as_deref(), Some("OnFailure"), "{kind}");
        assert_eq!(annotations(&meta), expected_annotations, "{kind}");
        assert_eq!(
            meta.labels.unwrap().get("app").map(String::as_str),
            Some("app")
        );
    }
}

#[test]
fn the_containers_are_as_designed() {
    let done = inject_ok(&workload("apps/v1", "Deployment", TEMPLATE));
    // Init containers come before the containers, as they run.
    let doc = documents(&done.text).pop().unwrap();
    let keys: Vec<&str> = doc["spec"]["template"]["spec"]
        .as_mapping()
        .unwrap()
        .keys()
        .map(|k| k.as_str().unwrap())
        .collect();
    assert_eq!(
        keys,
        ["restartPolicy", "initContainers", "containers", "volumes"]
    );
    let deployment: Deployment = typed(&done.text);
    let spec = deployment.spec.unwrap().template.spec.unwrap();
    let init = spec.init_containers.unwrap();
    let (setup, proxy) = (&init[0], &init[1]);

    assert_eq!(
        setup.args.as_deref().unwrap(),
        ["sidecar-init", "--proxy-uid", "1337"]
    );
    assert_eq!(setup.restart_policy, None, "runs once");
    let sc = setup.security_context.as_ref().unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_non_root), (Some(0), Some(false)));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref().unwrap(), ["ALL"]);
    assert_eq!(caps.add.as_deref().unwrap(), ["NET_ADMIN", "NET_RAW"]);
    let res = setup.resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "10m");
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "16Mi");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "64Mi");

    assert_eq!(proxy.args.as_deref().unwrap(), ["sidecar", "--mark", "0"]);
    let env: Vec<(&str, &str)> = proxy
        .env
        .iter()
        .flatten()
        .map(|e| {
            let field = e.value_from.as_ref().unwrap().field_ref.as_ref().unwrap();
            (e.name.as_str(), field.field_path.as_str())
        })
        .collect();
    assert_eq!(
        env,
        [
            ("POD_NAME", "metadata.name"),
            ("POD_NAMESPACE", "metadata.namespace"),
            ("NODE_NAME", "spec.nodeName")
        ]
    );
    let ports: Vec<(&str, i32)> = proxy
        .ports
        .iter()
        .flatten()
        .map(|p| (p.name.as_deref().unwrap(), p.container_port))
        .collect();
    assert_eq!(ports, [("http-metrics", 15020), ("tunnel", 15008)]);
    for probe in [&proxy.startup_probe, &proxy.readiness_probe] {
        let get = probe.as_ref().unwrap().http_get.as_ref().unwrap();
        assert_eq!(get.path.as_deref(), Some(READY_PATH));
        assert_eq!(
            get.port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15020)
        );
    }
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_group), (Some(1337), Some(1337)));
    assert_eq!(sc.run_as_non_root, Some(true));
    assert_eq!(sc.read_only_root_filesystem, Some(true));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref().unwrap(), ["ALL"]);
    assert_eq!(caps.add, None);
    let res = proxy.resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "10m");
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "32Mi");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "256Mi");
    let mounts = proxy.volume_mounts.as_deref().unwrap();
    assert_eq!(
        (mounts[0].name.as_str(), mounts[0].mount_path.as_str()),
        ("outrider-node", "/run/outrider/sidecar")
    );
    let volume = spec.volumes.unwrap().pop().unwrap();
    let host_path = volume.host_path.unwrap();
    assert_eq!(host_path.type_.as_deref(), Some("Directory"));
}

#[test]
fn keeping_the_source_ip_gives_the_proxy_net_admin_as_root_and_the_init_step_the_way_back() {
    let options = Options {
        keep_source_ip: true,
        ..Options::default()
    };
    let done = inject(&workload("v1", "Pod", TEMPLATE), "x", &options).unwrap();
    let pod: Pod = typed(&done.text);
    let init = pod.spec.unwrap().init_containers.unwrap();
    let (setup, proxy) = (&init[0], &init[1]);
    assert_eq!(
        setup.args.as_deref().unwrap(),
        ["sidecar-init", "--proxy-uid", "1337", "--keep-source-ip"]
    );
    assert_eq!(
        proxy.args.as_deref().unwrap(),
        ["sidecar", "--keep-source-ip"]
    );
    let sc = proxy.security_context.as_ref().unwrap();
    assert_eq!((sc.run_as_user, sc.run_as_non_root), (Some(0), Some(false)));
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let caps = sc.capabilities.as_ref().unwrap();
    assert_eq!(caps.drop.as_deref().unwrap(), ["ALL"]);
    assert_eq!(caps.add.as_deref().unwrap(), ["NET_ADMIN"]);
}

#[test]
fn image_and_proxy_resources_come_from_the_options() {
    let options = Options {
        image: "registry.local/outrider:dev".into(),
        proxy_cpu_request: "0.5".into(),
        proxy_memory_request: "64Mi".into(),
        proxy_memory_limit: "1Gi".into(),
        keep_source_ip: false,
    };
    let done = inject(&workload("v1", "Pod", TEMPLATE), "x", &options).unwrap();
    let pod: Pod = typed(&done.text);
    let init = pod.spec.unwrap().init_containers.unwrap();
    assert!(
        init.iter()
            .all(|c| c.image.as_deref() == Some("registry.local/outrider:dev"))
    );
    let res = init[1].resources.as_ref().unwrap();
    assert_eq!(res.requests.as_ref().unwrap()["cpu"].0, "0.5");
    assert_eq!(res.requests.as_ref().unwrap()["memory"].0, "64Mi");
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "1Gi");
    // The init container's own resources do not change.
    let res = init[0].resources.as_ref().unwrap();
    assert_eq!(res.limits.as_ref().unwrap()["memory"].0, "64Mi");
}

#[test]
fn a_deployment_keeps_what_it_had() {
    let done = inject_ok(DEPLOYMENT);
    let [doc] = &documents(&done.text)[..] else {
        panic!("one document: {}", done.text)
    };
    let template = &doc["spec"]["template"];
    let spec = &template["spec"];
    // Unknown fields, the app's init container after ours, its volume before ours.
    assert_eq!(spec["someFutureField"]["kept"], Value::from("yes"));
    let init: Vec<&str> = spec["initContainers"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(init, ["outrider-init", "outrider-proxy", "migrate"]);
    let volumes: Vec<&str> = spec["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v["name"].as_str().unwrap())
        .collect();
    assert_eq!(volumes, ["config", "outrider-node"]);
    // Field order, and the annotations after the ones it had.
    let keys = |v: &Value| -> Vec<String> {
        v.as_mapping()
            .unwrap()
            .keys()
            .map(|k| k.as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(keys(doc), ["apiVersion", "kind", "metadata", "spec"]);
    assert_eq!(keys(&doc["spec"]), ["replicas", "selector", "template"]);
    assert_eq!(
        keys(spec),
        ["someFutureField", "initContainers", "containers", "volumes"]
    );
    assert_eq!(
        keys(&template["metadata"]["annotations"]),
        [
            "prometheus.io/scrape",
            "outrider.io/mode",
            "outrider.io/injected"
        ]
    );
    assert_eq!(
        keys(&spec["initContainers"][1])[..3],
        ["name", "image", "restartPolicy"]
    );
    // Typed: strings stay strings ("on", "01234"), YAML 1.1 values keep their meaning.
    let deployment: Deployment = typed(&done.text);
    let pod = deployment.spec.unwrap().template.spec.unwrap();
    let env: Vec<&str> = pod.containers[0]
        .env
        .iter()
        .flatten()
        .map(|e| e.value.as_deref().unwrap())
        .collect();
    assert_eq!(env, ["on", "01234"]);
    let mount = &pod.containers[0].volume_mounts.as_ref().unwrap()[0];
    assert_eq!(mount.read_only, Some(true));
    let volume = &pod.volumes.as_ref().unwrap()[0];
    assert_eq!(
        volume.config_map.as_ref().unwrap().default_mode,
        Some(0o644)
    );
    assert_eq!(done.notes, Vec::<String>::new());
    assert_eq!(
        done.summary(),
        "injected 1, skipped 0, unchanged 0 documents"
    );
}

#[test]
fn yaml_1_1_readers_read_what_was_meant() {
    let text = inject_ok(DEPLOYMENT).text;
    // What kubectl would misread without quotes, quoted; YAML 1.1's `yes` and octal
    // made plain for any reader.
    for line in [
        "value: \"on\"",
        "value: \"01234\"",
        "readOnly: true",
        "defaultMode: 420",
        "prometheus.io/scrape: \"true\"",
        &format!("outrider.io/injected: \"{VERSION}\""),
        "kept: \"yes\"",
        "- --port",
        "- \"8080\"",
        "image: shop/web:1.2.3",
        "cpu: 10m",
        "memory: 256Mi",
        "path: /run/outrider/sidecar",
    ] {
        assert!(
            text.lines().any(|l| l.trim_start() == line),
            "{line:?} in:\n{text}"
        );
    }
    // Comments of a changed document are gone; the others keep theirs.
    assert!(!text.contains("# The shop's front end."));
}

#[test]
fn other_documents_pass_through_as_they_were_in_order() {
    let input = format!(
        "# shop: front end and its service\n---\n{SERVICE}---\n{DEPLOYMENT}--- # config\n\
         apiVersion: v1\nkind: ConfigMap\nmetadata: {{name: web}}\ndata:\n  mode: \"0644\"\n"
    );
    let done = inject_ok(&input);
    assert_eq!((done.injected, done.skipped, done.unchanged), (1, 0, 2));
    let texts = document_texts(&done.text);
    assert_eq!(texts.len(), 4, "{}", done.text);
    assert_eq!(texts[0], "# shop: front end and its service\n");
    assert_eq!(texts[1], SERVICE, "byte for byte, comments too");
    assert!(texts[2].contains("outrider-proxy"));
    assert!(
        done.text
            .ends_with("--- # config\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: web}\ndata:\n  mode: \"0644\"\n"),
        "{}",
        done.text
    );
    let docs = documents(&done.text);
    let kinds: Vec<&str> = docs.iter().filter_map(|d| d["kind"].as_str()).collect();
    assert_eq!(kinds, ["Service", "Deployment", "ConfigMap"]);
    let service: Service = typed(&texts[1]);
    assert_eq!(service.metadata.name.as_deref(), Some("web"));
}

#[test]
fn a_list_gets_the_sidecar_in_its_items() {
    let input = "\
apiVersion: v1
kind: List
metadata: {}
items:
  - apiVersion: v1
    kind: Service
    metadata: {name: web}
    spec:
      ports: [{port: 80}]
  - apiVersion: apps/v1
    kind: Deployment
    metadata: {name: web}
    spec:
      selector: {matchLabels: {app: web}}
      template:
        metadata: {labels: {app: web}}
        spec:
          containers: [{name: web, image: web:1}]
  - apiVersion: apps/v1
    kind: DaemonSet
    metadata: {name: node-thing}
    spec:
      selector: {matchLabels: {app: n}}
      template:
        metadata: {labels: {app: n}}
        spec:
          hostNetwork: true
          containers: [{name: n, image: n:1}]
";
    let done = inject_ok(input);
    assert_eq!((done.injected, done.skipped, done.unchanged), (1, 1, 1));
    let doc = documents(&done.text).pop().unwrap();
    let items = doc["items"].as_sequence().unwrap();
    let kinds: Vec<&str> = items.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, ["Service", "Deployment", "DaemonSet"]);
    let deployment: Deployment = serde_yaml_ng::from_value(items[1].clone()).unwrap();
    assert_has_sidecar_named(deployment.spec.unwrap().template.spec.as_ref().unwrap());
    let daemon_set: DaemonSet = serde_yaml_ng::from_value(items[2].clone()).unwrap();
    let spec = daemon_set.spec.unwrap().template.spec.unwrap();
    assert_eq!(spec.init_containers, None, "skipped");
    assert_eq!(
        done.notes,
        [
            "DaemonSet/node-thing: hostNetwork pod (the sidecar's iptables rules would capture the node's traffic), skipped"
        ]
    );
    // A list with nothing to change stays as it was.
    let untouched = "kind: List\napiVersion: v1\nitems: [] # none\n";
    assert_eq!(inject_ok(untouched).text, untouched);
}

fn assert_has_sidecar_named(spec: &PodSpec) {
    let init = spec.init_containers.as_deref().unwrap();
    assert_eq!(init[0].name, "outrider-init");
    assert_eq!(init[1].name, "outrider-proxy");
}

#[test]
fn injecting_twice_is_injecting_once() {
    let input = format!(
        "{SERVICE}---\n{DEPLOYMENT}---\n{}",
        workload("batch/v1", "CronJob", TEMPLATE)
    );
    let once = inject_ok(&input);
    assert_eq!((once.injected, once.skipped, once.unchanged), (2, 0, 1));
    let twice = inject_ok(&once.text);
    assert_eq!(twice.text, once.text);
    assert_eq!((twice.injected, twice.skipped, twice.unchanged), (0, 2, 1));
    assert_eq!(
        twice.notes,
        [
            format!("Deployment/web: already injected (by outriderctl {VERSION}), skipped"),
            format!("CronJob/app: already injected (by outriderctl {VERSION}), skipped"),
        ]
    );
}

#[test]
fn host_network_pods_and_opted_out_pods_are_skipped() {
    for (template, note) in [
        (
            TEMPLATE.replace("spec:\n", "spec:\n  hostNetwork: true\n"),
            "Pod/app: hostNetwork pod (the sidecar's iptables rules would capture the node's traffic), skipped",
        ),
        // YAML 1.1's spelling, as Kubernetes reads it.
        (
            TEMPLATE.replace("spec:\n", "spec:\n  hostNetwork: yes\n"),
            "Pod/app: hostNetwork pod (the sidecar's iptables rules would capture the node's traffic), skipped",
        ),
        (
            TEMPLATE.replace(
                "metadata:\n",
                "metadata:\n  annotations:\n    outrider.io/inject: \"false\"\n",
            ),
            "Pod/app: annotated outrider.io/inject: \"false\", skipped",
        ),
    ] {
        let input = workload("v1", "Pod", &template);
        let done = inject_ok(&input);
        assert_eq!(done.text, input, "unchanged");
        assert_eq!((done.injected, done.skipped, done.unchanged), (0, 1, 0));
        assert_eq!(done.notes, [note]);
    }
    // `outrider.io/inject: "true"` changes nothing.
    let template = TEMPLATE.replace(
        "metadata:\n",
        "metadata:\n  annotations:\n    outrider.io/inject: \"true\"\n",
    );
    assert_eq!(inject_ok(&workload("v1", "Pod", &template)).injected, 1);
}

#[test]
fn a_mode_annotation_is_overridden_with_a_note() {
    let template = TEMPLATE.replace(
        "metadata:\n",
        "metadata:\n  annotations:\n    outrider.io/mode: node\n",
    );
    let done = inject_ok(&workload("apps/v1", "Deployment", &template));
    assert_eq!(done.injected, 1);
    assert_eq!(
        done.notes,
        ["Deployment/app: outrider.io/mode was \"node\", now \"sidecar\""]
    );
    let doc = documents(&done.text).pop().unwrap();
    assert_eq!(
        doc["spec"]["template"]["metadata"]["annotations"]["outrider.io/mode"],
        "sidecar"
    );
}

#[test]
fn names_that_clash_are_errors_and_nothing_is_written() {
    let clash_container = TEMPLATE.replace("- name: app\n", "- name: outrider-proxy\n");
    let clash_volume =
        format!("{TEMPLATE}  volumes:\n    - name: outrider-node\n      emptyDir: {{}}\n");
    let clash_init =
        format!("{TEMPLATE}  initContainers:\n    - name: outrider-init\n      image: x\n");
    let input = |template: &str| {
        format!(
            "{SERVICE}---\n{}",
            workload("apps/v1", "StatefulSet", template)
        )
    };
    let err = inject_err(&input(&clash_container));
    assert!(
        err.starts_with("test.yaml: document 2 (StatefulSet/app, line 12): the pod already has a container named \"outrider-proxy\", which outriderctl inject adds"),
        "{err}"
    );
    let err = inject_err(&input(&clash_volume));
    assert!(err.contains("document 2 (StatefulSet/app, line 12): the pod already has a volume named \"outrider-node\""), "{err}");
    let err = inject_err(&input(&clash_init));
    assert!(
        err.contains("an init container named \"outrider-init\""),
        "{err}"
    );
    // An outrider-proxy container with the annotation is ours: skipped, not a clash.
    let ours = clash_container.replace(
        "metadata:\n",
        &format!("metadata:\n  annotations:\n    outrider.io/injected: \"{VERSION}\"\n"),
    );
    assert_eq!(inject_ok(&input(&ours)).skipped, 1);
}

#[test]
fn run_writes_the_output_file_only_on_success() {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("app.yaml");
    let output = dir.path().join("out.yaml");
    let args = |file: &Path| InjectArgs {
        file: file.to_path_buf(),
        output: Some(OutputArg::File(output.clone())),
        image: DEFAULT_IMAGE.into(),
        proxy_cpu_request: "10m".into(),
        proxy_memory_request: "32Mi".into(),
        proxy_memory_limit: "256Mi".into(),
        keep_source_ip: false,
    };
    std::fs::write(
        &input,
        format!("{DEPLOYMENT}---\napiVersion: v1\nkind: Pod\n"),
    )
    .unwrap();
    let err = run(args(&input)).unwrap_err();
    let line = DEPLOYMENT.lines().count() + 2;
    let expected = format!("document 2 (Pod/?, line {line}): no pod template: spec is missing");
    assert!(format!("{err:#}").contains(&expected), "{err:#}");
    assert!(!output.exists(), "nothing written");
    std::fs::write(&input, DEPLOYMENT).unwrap();
    run(args(&input)).unwrap();
    let written = std::fs::read_to_string(&output).unwrap();
    assert_eq!(written, inject_ok(DEPLOYMENT).text);
    let err = run(args(&dir.path().join("missing.yaml"))).unwrap_err();
    assert!(format!("{err:#}").starts_with("cannot read "), "{err:#}");
}

#[test]
fn bad_input_says_what_and_where() {
    // Malformed YAML in the second document: its number, the line in the file.
    let err = inject_err(&format!(
        "{SERVICE}---\napiVersion: v1\nkind: Pod\nmetadata: {{name: [x\n"
    ));
    assert!(
        err.starts_with("test.yaml: document 2: line 15 column 1: did not find expected"),
        "{err}"
    );
    let err = inject_err(&format!("{SERVICE}---\nkind: Pod\nkind: Pod\n"));
    assert!(
        err.starts_with(
            "test.yaml: document 2: line 12 column 1: duplicate entry with key \"kind\""
        ),
        "{err}"
    );
    // A workload without its pod template; a list item; a template of the wrong type.
    let err = inject_err(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  replicas: 1\n",
    );
    assert_eq!(
        err,
        "test.yaml: document 1 (Deployment/web, line 1): no pod template: spec.template is missing"
    );
    let err = inject_err(
        "apiVersion: v1\nkind: List\nitems:\n  - apiVersion: batch/v1\n    kind: CronJob\n    metadata: {name: c}\n    spec:\n      jobTemplate:\n        spec: {}\n",
    );
    assert_eq!(
        err,
        "test.yaml: document 1, items[0] (CronJob/c, list from line 1): no pod template: spec.jobTemplate.spec.template is missing"
    );
    let err = inject_err(
        "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers: [{name: a}]\n  initContainers: nope\n",
    );
    assert_eq!(
        err,
        "test.yaml: document 1 (Pod/p, line 1): spec.initContainers is a string, expected a list"
    );
    let err = inject_err(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\nspec:\n  template:\n    metadata: {annotations: [a]}\n    spec: {containers: []}\n",
    );
    assert_eq!(
        err,
        "test.yaml: document 1 (Deployment/d, line 1): spec.template.metadata.annotations is a list, expected a mapping"
    );
    let err = inject_err("---\n- just\n- a list\n");
    assert_eq!(
        err,
        "test.yaml: document 1 (line 2): expected a Kubernetes object (a mapping with apiVersion and kind), found a list"
    );
    let err = inject_err("# nothing but a comment\n---\n");
    assert_eq!(
        err,
        "test.yaml has no documents: expected Kubernetes manifests (YAML)"
    );
}

#[test]
fn kinds_of_other_api_groups_pass_through() {
    let input = "apiVersion: example.com/v1\nkind: Job\nmetadata: {name: j}\nspec: {steps: 3}\n";
    let done = inject_ok(input);
    assert_eq!(done.text, input);
    assert_eq!((done.injected, done.skipped, done.unchanged), (0, 0, 1));
}

#[test]
fn merge_keys_are_applied() {
    let input = "\
apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  containers:
    - &base {name: a, image: a:1, ports: [{containerPort: 80}]}
    - <<: *base
      name: b
";
    let done = inject_ok(input);
    let pod: Pod = typed(&done.text);
    let containers = pod.spec.unwrap().containers;
    assert_eq!(containers[1].name, "b");
    assert_eq!(containers[1].image.as_deref(), Some("a:1"));
    assert!(!done.text.contains("<<"));
}

#[test]
fn the_example_manifest_is_injected() {
    let example = include_str!("../../../../deploy/examples/sidecar-app.yaml");
    let done = inject(
        example,
        "deploy/examples/sidecar-app.yaml",
        &Options::default(),
    )
    .unwrap();
    assert_eq!(
        done.summary(),
        "injected 1, skipped 0, unchanged 1 documents"
    );
    let texts = document_texts(&done.text);
    let [deployment, service] = &texts[..] else {
        panic!("two documents:\n{}", done.text)
    };
    let deployment: Deployment = typed(deployment);
    assert_eq!(deployment.metadata.namespace.as_deref(), Some("shop"));
    let template = deployment.spec.unwrap().template;
    assert_has_sidecar_named(template.spec.as_ref().unwrap());
    assert_eq!(template.spec.unwrap().containers[0].name, "web");
    // The Service, byte for byte.
    assert!(example.ends_with(service.as_str()));
    let service: Service = typed(service);
    assert_eq!(service.metadata.namespace.as_deref(), Some("shop"));
}

#[test]
fn documents_are_cut_at_markers_only() {
    let text = "a: 1\n---\nb: |\n  --- not a marker (indented)\n---x: 2\n...\n--- # c\nc: 3\n";
    let chunks = split_documents(text);
    let bodies: Vec<(Option<&str>, &str, usize)> =
        chunks.iter().map(|c| (c.marker, c.body, c.line)).collect();
    assert_eq!(
        bodies,
        [
            (None, "a: 1\n", 1),
            (
                Some("---"),
                "b: |\n  --- not a marker (indented)\n---x: 2\n",
                2
            ),
            (None, "", 7),
            (Some("--- # c"), "c: 3\n", 7),
        ]
    );
}

#[test]
fn the_writer_quotes_what_yaml_1_1_would_misread() {
    for plain in [
        "web",
        "shop/web:1.2.3",
        "ghcr.io/outrider-mesh/outrider:0.1.0",
        "/run/outrider",
        "--proxy-uid",
        "-listen=:8080",
        "16Mi",
        "10m",
        "1Gi",
        "30s",
        "Always",
        "app.kubernetes.io/name",
        "hello world",
        "a,b",
        "$(POD_NAME)",
        "x:y",
        "yesterday",
    ] {
        assert!(emit::plain_is_exact(plain), "{plain:?} plain");
    }
    for quoted in [
        "",
        "yes",
        "No",
        "on",
        "OFF",
        "y",
        "n",
        "true",
        "False",
        "null",
        "~",
        "0644",
        "1_000",
        "12:30",
        "1e3",
        "0x1F",
        "0o17",
        "0b101",
        "1.5",
        ".5",
        ".inf",
        "-.inf",
        "+1",
        "-1",
        "8080",
        "2026-01-02",
        "2026-01-02T10:00:00Z",
        "0.1.0",
        "1d",
        "a: b",
        "key:",
        " x",
        "x ",
        "#x",
        "x #y",
        "&a",
        "*a",
        "!t",
        "|",
        ">",
        "'q'",
        "\"q\"",
        "%x",
        "@x",
        "`x",
        "[a]",
        "{a}",
        "? x",
        "- x",
        "-",
        "---",
        "...",
        "a\tb",
        "é",
    ] {
        assert!(!emit::plain_is_exact(quoted), "{quoted:?} quoted");
    }
}

#[test]
fn the_writer_gives_back_every_value() {
    let strings = [
        "plain",
        "",
        "yes",
        "0644",
        "two\nlines",
        "trailing\n",
        "kept\n\n",
        "  indented\nfirst",
        "\nleading newline",
        "tab\there",
        "trailing space \nline",
        "quote \" and \\ backslash",
        "ctrl \u{1}\u{7f} and \u{85}\u{2028}\u{feff}",
        "ünïcödé ✓",
        "#!/bin/sh\nset -e\n\nexec app \"$@\"\n",
        "---\nnot a marker",
        "a: b\n- c\n",
    ];
    let mut map = serde_yaml_ng::Mapping::new();
    for (i, s) in strings.iter().enumerate() {
        map.insert(Value::from(*s), Value::from(*s));
        map.insert(
            Value::from(format!("k{i}")),
            Value::Sequence(vec![Value::from(*s), Value::from(*s)]),
        );
    }
    map.insert(
        "numbers".into(),
        Value::Sequence(vec![
            1.into(),
            (-2).into(),
            1.5.into(),
            f64::INFINITY.into(),
            u64::MAX.into(),
        ]),
    );
    map.insert(
        "nested".into(),
        Value::Sequence(vec![
            Value::Sequence(vec!["a".into(), Value::Sequence(vec![])]),
            Value::Mapping(serde_yaml_ng::Mapping::new()),
            Value::Null,
            true.into(),
        ]),
    );
    map.insert(1.into(), "number key".into());
    map.insert(true.into(), "bool key".into());
    let value = Value::Mapping(map);
    let text = emit::document(&value).unwrap();
    let back: Value = serde_yaml_ng::from_str(&text).unwrap_or_else(|err| panic!("{err}:\n{text}"));
    assert_eq!(back, value, "{text}");
    // Multi-line strings that fit are literal blocks.
    assert!(
        text.contains("k14:\n  - |\n    #!/bin/sh\n    set -e\n\n    exec app \"$@\"\n"),
        "{text}"
    );
    // Top-level values that are not mappings.
    for value in [
        Value::from("x"),
        Value::Sequence(vec![1.into()]),
        Value::from("multi\nline\n"),
    ] {
        let text = emit::document(&value).unwrap();
        assert_eq!(
            serde_yaml_ng::from_str::<Value>(&text).unwrap(),
            value,
            "{text}"
        );
    }
}

#[test]
fn yaml_1_1_integers() {
    assert_eq!(yaml11_int("0644"), Some(0o644));
    assert_eq!(yaml11_int("0400"), Some(256));
    assert_eq!(yaml11_int("1_000"), Some(1000));
    assert_eq!(yaml11_int("-010"), Some(-8));
    assert_eq!(yaml11_int("0"), Some(0));
    assert_eq!(yaml11_int("09"), None);
    assert_eq!(yaml11_int("rw"), None);
    assert_eq!(yaml11_int(""), None);
}

#[test]
fn quantities_and_images_are_checked() {
    for good in [
        "10m", "0.5", "1", "64Mi", "1G", "2Gi", "1e3", "1E-2", ".5", "100k",
    ] {
        assert_eq!(parse_quantity(good), Ok(good.to_string()));
    }
    for bad in ["", "m", "-1", "1.2.3", "10 m", "1mi", "1e", "64MB", "1Gi "] {
        assert!(parse_quantity(bad).is_err(), "{bad:?}");
    }
    assert!(parse_image("repo/x:1").is_ok());
    assert!(parse_image("").is_err());
    assert!(parse_image("a b").is_err());
}

#[test]
fn the_command_line() {
    use clap::{CommandFactory, FromArgMatches};

    use super::super::{Cli, Command};

    Cli::command().debug_assert();
    let parse = |argv: &[&str]| {
        let matches = Cli::command().try_get_matches_from(argv)?;
        Cli::from_arg_matches(&matches)
    };
    let inject_args = |argv: &[&str]| match parse(argv) {
        Ok(Cli {
            command: Command::Inject(args),
            ..
        }) => args,
        other => panic!("{argv:?}: {other:?}"),
    };
    // `-o FILE` after `inject` is the file; before it, the global format.
    let args = inject_args(&["outriderctl", "inject", "-f", "app.yaml", "-o", "out.yaml"]);
    assert_eq!(args.file, Path::new("app.yaml"));
    assert_eq!(args.output, Some(OutputArg::File("out.yaml".into())));
    assert_eq!(args.image, DEFAULT_IMAGE);
    let args = inject_args(&["outriderctl", "inject", "--filename", "-"]);
    assert_eq!(args.output, Some(OutputArg::Format(Format::Table)));
    let args = inject_args(&["outriderctl", "-o", "yaml", "inject", "--file", "x.yaml"]);
    assert_eq!(args.output, Some(OutputArg::Format(Format::Yaml)));
    let args = inject_args(&[
        "outriderctl",
        "inject",
        "-f",
        "x",
        "--image",
        "r/o:1",
        "--proxy-cpu-request",
        "50m",
        "--proxy-memory-request",
        "64Mi",
        "--proxy-memory-limit",
        "1Gi",
    ]);
    assert_eq!(
        (args.image.as_str(), args.proxy_cpu_request.as_str()),
        ("r/o:1", "50m")
    );
    assert_eq!(
        (
            args.proxy_memory_request.as_str(),
            args.proxy_memory_limit.as_str()
        ),
        ("64Mi", "1Gi")
    );
    for argv in [
        &["outriderctl", "inject"][..],
        &[
            "outriderctl",
            "inject",
            "-f",
            "x",
            "--proxy-memory-limit",
            "1GB",
        ],
        &["outriderctl", "inject", "-f", "x", "--image", ""],
        &["outriderctl", "-o", "out.yaml", "inject", "-f", "x"],
    ] {
        assert!(parse(argv).is_err(), "{argv:?}");
    }
    // The agent's commands keep their -o.
    let cli = parse(&["outriderctl", "workloads", "-o", "json"]).unwrap();
    assert_eq!(cli.output.format(), Format::Json);
    // `-o json` does not apply to inject.
    let args = inject_args(&["outriderctl", "-o", "json", "inject", "-f", "x"]);
    let err = run(args).unwrap_err();
    assert!(err.to_string().contains("-o json does not apply"), "{err}");
}
