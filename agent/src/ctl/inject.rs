//! `outriderctl inject -f FILE`: Kubernetes manifests with Outrider's sidecar added to
//! every pod template (as `istioctl kube-inject` does), for `kubectl apply -f -`.
//!
//! Each pod gets the init container `outrider-init` (the iptables rules that steer the
//! pod's traffic to the proxy, run as root with NET_ADMIN and NET_RAW), the proxy
//! `outrider-proxy` as a native sidecar (an init container with `restartPolicy: Always`:
//! it is up before the app containers start and stops after them), the node agent's
//! socket directory for sidecars as the volume `outrider-node`, and the annotations
//! `outrider.io/mode: sidecar` (the node agent leaves the pod to its sidecar) and
//! `outrider.io/injected: <version>`.
//!
//! Documents are read as `serde_yaml_ng` values, so that fields this command does not
//! know survive; the ones it does not change are written back as they were, byte for
//! byte (comments too); the ones it changes are written by [`emit`], for YAML 1.1
//! readers. Nothing is written unless every document could be handled.
mod emit;

use std::fmt;
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use serde_yaml_ng::{Mapping, Value};

use super::output::{Format, OutputArg};

/// The image of both containers unless `--image` says otherwise: the release's image, the
/// one the DaemonSet uses (see `crate::image`).
pub(crate) const DEFAULT_IMAGE: &str = crate::image::REFERENCE;
const VERSION: &str = crate::VERSION;

const INIT: &str = "outrider-init";
const PROXY: &str = "outrider-proxy";
const VOLUME: &str = "outrider-node";
/// The node agent's directory for sidecars: its socket (`sidecar.sock`, see
/// `config::SidecarConfig`), through which the sidecar gets its certificate and the
/// mesh's state. Only this directory, not all of `/run/outrider` (the admin socket).
const NODE_DIR: &str = "/run/outrider/sidecar";
/// The proxy's user and group; the init container's rules exempt its traffic.
const PROXY_UID: u32 = 1337;
/// Metrics and readiness, as the node agent serves them (`telemetry::endpoint`).
const METRICS_PORT: u32 = 15020;
const READY_PATH: &str = "/healthz/ready";
const TUNNEL_PORT: u32 = 15008;

const MODE_ANNOTATION: &str = "outrider.io/mode";
const INJECTED_ANNOTATION: &str = "outrider.io/injected";
const INJECT_ANNOTATION: &str = "outrider.io/inject";

#[derive(Debug, clap::Args)]
#[command(
    after_help = "Writes the manifest with the sidecar added to every Pod, Deployment, \
                        StatefulSet, DaemonSet, ReplicaSet, ReplicationController, Job and \
                        CronJob; other documents pass through as they are. Pods already \
                        injected, with hostNetwork, or annotated outrider.io/inject: \"false\" \
                        are left alone. Example:\n  outriderctl inject -f app.yaml | kubectl \
                        apply -f -"
)]
pub struct InjectArgs {
    /// The manifest: YAML, one or more documents (a `kind: List` too); `-` reads stdin.
    #[arg(
        short = 'f',
        long = "filename",
        visible_alias = "file",
        value_name = "FILE"
    )]
    file: PathBuf,
    /// Write the result to FILE instead of stdout (nothing is written on an error).
    #[arg(
        short = 'o',
        long = "output",
        value_name = "FILE",
        value_parser = OutputArg::file_parser()
    )]
    output: Option<OutputArg>,
    /// The image of the sidecar's containers.
    #[arg(long, value_name = "IMAGE", default_value = DEFAULT_IMAGE, value_parser = parse_image)]
    image: String,
    /// The proxy's CPU request (a Kubernetes quantity).
    #[arg(long, value_name = "QUANTITY", default_value = "10m", value_parser = parse_quantity)]
    proxy_cpu_request: String,
    /// The proxy's memory request.
    #[arg(long, value_name = "QUANTITY", default_value = "32Mi", value_parser = parse_quantity)]
    proxy_memory_request: String,
    /// The proxy's memory limit.
    #[arg(long, value_name = "QUANTITY", default_value = "256Mi", value_parser = parse_quantity)]
    proxy_memory_limit: String,
    /// The app sees its clients' own IPs, not 127.0.0.6: the proxy then runs as root with
    /// NET_ADMIN (to bind another address), and the init step also sets up the way back
    /// for its deliveries. Off by default: the proxy holds no capability.
    #[arg(long)]
    keep_source_ip: bool,
}

/// What goes into each pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub image: String,
    pub proxy_cpu_request: String,
    pub proxy_memory_request: String,
    pub proxy_memory_limit: String,
    /// `--keep-source-ip`.
    pub keep_source_ip: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            image: DEFAULT_IMAGE.to_string(),
            proxy_cpu_request: "10m".to_string(),
            proxy_memory_request: "32Mi".to_string(),
            proxy_memory_limit: "256Mi".to_string(),
            keep_source_ip: false,
        }
    }
}

/// The manifest with the sidecar added, and what was done.
#[derive(Debug, Default)]
pub struct Injected {
    pub text: String,
    /// One line per object left alone (`Deployment/web: already injected, skipped`) or
    /// worth a word.
    pub notes: Vec<String>,
    /// Objects that got the sidecar.
    pub injected: usize,
    /// Pods and workloads left without it (already injected, hostNetwork, opted out).
    pub skipped: usize,
    /// Objects that have no pods (Services, ConfigMaps…), passed through.
    pub unchanged: usize,
}

impl Injected {
    pub fn summary(&self) -> String {
        format!(
            "injected {}, skipped {}, unchanged {} documents",
            self.injected, self.skipped, self.unchanged
        )
    }
}

pub fn run(args: InjectArgs) -> Result<()> {
    // `-o` before `inject` is the global flag, a format.
    let output = match args.output {
        Some(OutputArg::Format(Format::Json)) => bail!(
            "inject writes YAML; -o json does not apply to it (`inject -o FILE` writes to a file)"
        ),
        Some(OutputArg::File(path)) if path != Path::new("-") => Some(path),
        _ => None,
    };
    let (text, source) = super::read_input(&args.file, "Kubernetes manifests (YAML)")?;
    let options = Options {
        image: args.image,
        proxy_cpu_request: args.proxy_cpu_request,
        proxy_memory_request: args.proxy_memory_request,
        proxy_memory_limit: args.proxy_memory_limit,
        keep_source_ip: args.keep_source_ip,
    };
    let injected = inject(&text, &source, &options)?;
    match output {
        Some(path) => std::fs::write(&path, &injected.text)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            let mut stdout = std::io::stdout().lock();
            stdout.write_all(injected.text.as_bytes())?;
            stdout.flush()?;
        }
    }
    let mut stderr = std::io::stderr().lock();
    for note in &injected.notes {
        writeln!(stderr, "{note}")?;
    }
    writeln!(stderr, "{}", injected.summary())?;
    Ok(())
}

/// `text` (YAML documents, read from `source`) with the sidecar in every pod template.
pub fn inject(text: &str, source: &str, options: &Options) -> Result<Injected> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut done = Injected::default();
    let mut pieces: Vec<String> = Vec::new();
    let mut number = 0;
    for chunk in split_documents(text) {
        let mut value = chunk.parse().map_err(|(line, column, reason)| {
            anyhow::anyhow!(
                "{source}: document {}: line {line} column {column}: {reason}",
                number + 1
            )
        })?;
        if value.is_null() {
            // Nothing but comments, or nothing: kept as it was (a header stays on top).
            if !chunk.body.trim().is_empty() {
                pieces.push(chunk.verbatim());
            }
            continue;
        }
        number += 1;
        let place = Place {
            document: number,
            // Its first line after `---`.
            line: chunk.line + usize::from(chunk.marker.is_some()),
            item: None,
            object: String::new(),
        };
        // Aliases are expanded when read; `<<` merges must be applied here, or they
        // would come out as keys named `<<`.
        value
            .apply_merge()
            .map_err(|err| anyhow::anyhow!("{source}: {place}: {err}"))?;
        let changed = object(&mut value, &place, options, &mut done)
            .map_err(|err| anyhow::anyhow!("{source}: {err}"))?;
        if changed {
            yaml11_fixups(&mut value);
            let text = emit::document(&value)
                .map_err(|err| anyhow::anyhow!("{source}: {place}: {err}"))?;
            pieces.push(format!("---\n{text}"));
        } else {
            pieces.push(chunk.verbatim());
        }
    }
    if number == 0 {
        bail!("{source} has no documents: expected Kubernetes manifests (YAML)");
    }
    // The first document needs no `---`.
    if let Some(first) = pieces.first_mut()
        && let Some(rest) = first.strip_prefix("---\n")
    {
        *first = rest.to_string();
    }
    done.text = pieces.concat();
    Ok(done)
}

/// Where an object is, for messages: `document 2 (Deployment/web, line 14)`.
#[derive(Debug, Clone)]
struct Place {
    /// From 1, counting documents that are not empty.
    document: usize,
    /// The line its document starts on.
    line: usize,
    /// Its index in a `List`'s items.
    item: Option<usize>,
    /// `Kind/name` once known.
    object: String,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "document {}", self.document)?;
        if let Some(item) = self.item {
            write!(f, ", items[{item}]")?;
        }
        let from = if self.item.is_some() {
            "list from line"
        } else {
            "line"
        };
        if self.object.is_empty() {
            write!(f, " ({from} {})", self.line)
        } else {
            write!(f, " ({}, {from} {})", self.object, self.line)
        }
    }
}

/// Adds the sidecar to `value`'s pods if it is a workload (or to its items if it is a
/// list); whether it changed. Errors say where (`place`).
fn object(
    value: &mut Value,
    place: &Place,
    options: &Options,
    done: &mut Injected,
) -> Result<bool> {
    let Value::Mapping(map) = value else {
        bail!(
            "{place}: expected a Kubernetes object (a mapping with apiVersion and kind), \
             found {}",
            kind_of(value)
        );
    };
    let text = |key: &str| {
        map.get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let (kind, api_version) = (text("kind"), text("apiVersion"));
    let here = Place {
        object: format!(
            "{}/{}",
            if kind.is_empty() { "?" } else { &kind },
            object_name(map)
        ),
        ..place.clone()
    };
    if kind.ends_with("List")
        && let Some(items) = map.get_mut("items")
    {
        let Value::Sequence(items) = items else {
            bail!("{here}: items is {}, expected a list", kind_of(items));
        };
        let mut changed = false;
        for (i, item) in items.iter_mut().enumerate() {
            let at = Place {
                item: Some(i),
                ..place.clone()
            };
            changed |= object(item, &at, options, done)?;
        }
        return Ok(changed);
    }
    let Some(path) = pod_template_path(&api_version, &kind) else {
        done.unchanged += 1;
        return Ok(false);
    };
    let template = template_at(map, path).map_err(|why| anyhow::anyhow!("{here}: {why}"))?;
    match pod(template, path, options).map_err(|why| anyhow::anyhow!("{here}: {why}"))? {
        Outcome::Injected { mode_was } => {
            done.injected += 1;
            if let Some(was) = mode_was {
                done.notes.push(format!(
                    "{}: {MODE_ANNOTATION} was {was:?}, now \"sidecar\"",
                    here.object
                ));
            }
            Ok(true)
        }
        Outcome::Skipped(why) => {
            done.skipped += 1;
            done.notes.push(format!("{}: {why}, skipped", here.object));
            Ok(false)
        }
    }
}

/// `metadata.name` (or `generateName…`), or `?`.
fn object_name(map: &Mapping) -> String {
    let metadata = map.get("metadata");
    let get = |key: &str| metadata.and_then(|m| m.get(key)).and_then(Value::as_str);
    match (get("name"), get("generateName")) {
        (Some(name), _) if !name.is_empty() => name.to_string(),
        (_, Some(prefix)) if !prefix.is_empty() => format!("{prefix}…"),
        _ => "?".to_string(),
    }
}

/// Where a kind keeps its pod template (the mapping with `metadata` and `spec`): the
/// object itself for a Pod. None for kinds without pods, and for kinds of the same name
/// in other API groups (a custom resource's `Job` is not ours to change).
fn pod_template_path(api_version: &str, kind: &str) -> Option<&'static [&'static str]> {
    let group = api_version.rsplit_once('/').map_or("", |(group, _)| group);
    match (group, kind) {
        ("", "Pod") => Some(&[]),
        ("", "ReplicationController")
        | ("apps" | "extensions", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("batch", "Job") => Some(&["spec", "template"]),
        ("batch", "CronJob") => Some(&["spec", "jobTemplate", "spec", "template"]),
        _ => None,
    }
}

/// The pod template at `path`, which must have a `spec` mapping.
fn template_at<'a>(map: &'a mut Mapping, path: &[&str]) -> Result<&'a mut Mapping, String> {
    let mut current = map;
    for (depth, key) in path.iter().enumerate() {
        current = match current.get_mut(*key) {
            Some(Value::Mapping(next)) => next,
            found => return Err(not_a_mapping(&path[..=depth], found.map(|v| &*v))),
        };
    }
    match current.get("spec") {
        Some(Value::Mapping(_)) => Ok(current),
        found => Err(not_a_mapping(&[path, &["spec"]].concat(), found)),
    }
}

fn not_a_mapping(path: &[&str], found: Option<&Value>) -> String {
    let path = path.join(".");
    match found {
        None | Some(Value::Null) => format!("no pod template: {path} is missing"),
        Some(other) => format!("{path} is {}, expected a mapping", kind_of(other)),
    }
}

/// What became of a pod template.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// `mode_was`: the `outrider.io/mode` it had, when not `sidecar`.
    Injected { mode_was: Option<String> },
    /// Left as it was, for this reason.
    Skipped(String),
}

/// Adds the sidecar to the pod template `template` (found at `path`, for messages).
/// Errors are the reason alone; the caller says where.
fn pod(template: &mut Mapping, path: &[&str], options: &Options) -> Result<Outcome, String> {
    let at = |field: &str| [path, &[field]].concat().join(".");
    let annotations = match template.get("metadata").and_then(|m| m.get("annotations")) {
        None | Some(Value::Null) => None,
        Some(Value::Mapping(annotations)) => Some(annotations),
        Some(other) => {
            return Err(format!(
                "{} is {}, expected a mapping",
                at("metadata.annotations"),
                kind_of(other)
            ));
        }
    };
    let annotation = |key: &str| annotations.and_then(|a| a.get(key));
    let Some(Value::Mapping(spec)) = template.get("spec") else {
        return Err(format!("{} is missing", at("spec")));
    };
    let spec_at = |field: &str| at(&format!("spec.{field}"));
    let init_containers = names(spec, "initContainers").map_err(|why| spec_at(&why))?;
    let containers = names(spec, "containers").map_err(|why| spec_at(&why))?;
    let volumes = names(spec, "volumes").map_err(|why| spec_at(&why))?;

    let has_proxy = init_containers.contains(&PROXY) || containers.contains(&PROXY);
    if has_proxy && let Some(version) = annotation(INJECTED_ANNOTATION) {
        let version = version.as_str().unwrap_or("?");
        return Ok(Outcome::Skipped(format!(
            "already injected (by outriderctl {version})"
        )));
    }
    if annotation(INJECT_ANNOTATION).and_then(yaml11_bool) == Some(false) {
        return Ok(Outcome::Skipped(format!(
            "annotated {INJECT_ANNOTATION}: \"false\""
        )));
    }
    if spec.get("hostNetwork").and_then(yaml11_bool) == Some(true) {
        return Ok(Outcome::Skipped(
            "hostNetwork pod (the sidecar's iptables rules would capture the node's traffic)"
                .to_string(),
        ));
    }
    let mut clashes = Vec::new();
    for name in [INIT, PROXY] {
        if init_containers.contains(&name) {
            clashes.push(format!("an init container named {name:?}"));
        }
        if containers.contains(&name) {
            clashes.push(format!("a container named {name:?}"));
        }
    }
    if volumes.contains(&VOLUME) {
        clashes.push(format!("a volume named {VOLUME:?}"));
    }
    if !clashes.is_empty() {
        return Err(format!(
            "the pod already has {}, which outriderctl inject adds, but was not injected \
             by it (that leaves both the {PROXY} container and the {INJECTED_ANNOTATION} \
             annotation); rename or remove what clashes",
            clashes.join(" and ")
        ));
    }
    let mode_was = annotation(MODE_ANNOTATION)
        .map(|mode| {
            mode.as_str()
                .map_or_else(|| format!("{mode:?}"), str::to_string)
        })
        .filter(|mode| mode != "sidecar");

    // The checks are done: change the template.
    let Some(Value::Mapping(spec)) = template.get_mut("spec") else {
        return Err(format!("{} is missing", at("spec")));
    };
    if !spec.contains_key("initContainers") {
        // Before `containers`, as they run.
        for (key, value) in std::mem::take(spec) {
            if key == "containers" {
                spec.insert("initContainers".into(), Value::Sequence(Vec::new()));
            }
            spec.insert(key, value);
        }
    }
    let mut init = vec![init_container(options), proxy_container(options)];
    if let Some(Value::Sequence(existing)) = spec.get_mut("initContainers") {
        init.append(existing);
    }
    spec.insert("initContainers".into(), Value::Sequence(init));
    match spec.get_mut("volumes") {
        Some(Value::Sequence(volumes)) => volumes.push(node_volume()),
        _ => {
            spec.insert("volumes".into(), Value::Sequence(vec![node_volume()]));
        }
    }
    let metadata = child_mapping(template, "metadata").map_err(|why| at(&why))?;
    let annotations =
        child_mapping(metadata, "annotations").map_err(|why| at(&format!("metadata.{why}")))?;
    annotations.insert(MODE_ANNOTATION.into(), "sidecar".into());
    annotations.insert(INJECTED_ANNOTATION.into(), VERSION.into());
    Ok(Outcome::Injected { mode_was })
}

/// The `name`s of the items of the list `spec.<field>` (containers, volumes); an absent
/// or null field has none. The error is the field and what is wrong with it.
fn names<'a>(spec: &'a Mapping, field: &str) -> Result<Vec<&'a str>, String> {
    let items = match spec.get(field) {
        None | Some(Value::Null) => return Ok(Vec::new()),
        Some(Value::Sequence(items)) => items,
        Some(other) => return Err(format!("{field} is {}, expected a list", kind_of(other))),
    };
    items
        .iter()
        .enumerate()
        .map(|(i, item)| match item.get("name") {
            Some(Value::String(name)) => Ok(name.as_str()),
            _ => Err(format!("{field}[{i}] has no name")),
        })
        .collect()
}

/// The mapping under `key` in `map`, made when absent or null. The error is the key and
/// what is wrong with it.
fn child_mapping<'a>(map: &'a mut Mapping, key: &str) -> Result<&'a mut Mapping, String> {
    let entry = map
        .entry(key.into())
        .or_insert_with(|| Value::Mapping(Mapping::new()));
    if entry.is_null() {
        *entry = Value::Mapping(Mapping::new());
    }
    match entry {
        Value::Mapping(child) => Ok(child),
        other => Err(format!("{key} is {}, expected a mapping", kind_of(other))),
    }
}

/// The init container that sets up the pod's iptables rules (and exits).
fn init_container(options: &Options) -> Value {
    let uid = PROXY_UID.to_string();
    let mut args = vec!["sidecar-init", "--proxy-uid", &uid];
    if options.keep_source_ip {
        args.push("--keep-source-ip");
    }
    mapping([
        ("name", INIT.into()),
        ("image", options.image.as_str().into()),
        ("args", strings(&args)),
        ("resources", resources("10m", "16Mi", "64Mi")),
        (
            "securityContext",
            mapping([
                ("runAsUser", 0.into()),
                ("runAsNonRoot", false.into()),
                ("allowPrivilegeEscalation", false.into()),
                ("readOnlyRootFilesystem", true.into()),
                (
                    "capabilities",
                    mapping([
                        ("drop", strings(&["ALL"])),
                        ("add", strings(&["NET_ADMIN", "NET_RAW"])),
                    ]),
                ),
            ]),
        ),
    ])
}

/// The proxy, as a native sidecar.
fn proxy_container(options: &Options) -> Value {
    let field_env = |name: &str, path: &str| {
        mapping([
            ("name", name.into()),
            (
                "valueFrom",
                mapping([("fieldRef", mapping([("fieldPath", path.into())]))]),
            ),
        ])
    };
    let probe = |extra: [(&str, Value); 2]| {
        let mut probe = mapping([(
            "httpGet",
            mapping([("path", READY_PATH.into()), ("port", METRICS_PORT.into())]),
        )]);
        if let Value::Mapping(map) = &mut probe {
            map.extend(extra.into_iter().map(|(k, v)| (Value::from(k), v)));
        }
        probe
    };
    let port = |name: &str, number: u32| {
        mapping([("name", name.into()), ("containerPort", number.into())])
    };
    mapping([
        ("name", PROXY.into()),
        ("image", options.image.as_str().into()),
        // An init container that keeps running: started before the app's containers
        // (once its startup probe passes), stopped after them.
        ("restartPolicy", "Always".into()),
        // Unprivileged, it marks nothing (its user tells its connections apart); keeping
        // the source IP, it marks them (the agent's mark) and its deliveries.
        (
            "args",
            if options.keep_source_ip {
                strings(&["sidecar", "--keep-source-ip"])
            } else {
                strings(&["sidecar", "--mark", "0"])
            },
        ),
        (
            "env",
            Value::Sequence(vec![
                field_env("POD_NAME", "metadata.name"),
                field_env("POD_NAMESPACE", "metadata.namespace"),
                field_env("NODE_NAME", "spec.nodeName"),
            ]),
        ),
        (
            "ports",
            Value::Sequence(vec![
                port("http-metrics", METRICS_PORT),
                port("tunnel", TUNNEL_PORT),
            ]),
        ),
        // Up to 10 minutes to start (the node agent may be starting too); the app's
        // containers wait for it.
        (
            "startupProbe",
            probe([
                ("periodSeconds", 1.into()),
                ("failureThreshold", 600.into()),
            ]),
        ),
        (
            "readinessProbe",
            probe([("periodSeconds", 5.into()), ("failureThreshold", 3.into())]),
        ),
        (
            "resources",
            resources(
                &options.proxy_cpu_request,
                &options.proxy_memory_request,
                &options.proxy_memory_limit,
            ),
        ),
        ("securityContext", proxy_security(options.keep_source_ip)),
        (
            "volumeMounts",
            Value::Sequence(vec![mapping([
                ("name", VOLUME.into()),
                ("mountPath", NODE_DIR.into()),
            ])]),
        ),
    ])
}

/// The proxy's security context: an unprivileged user with no capability; or, keeping
/// the source IP, root with NET_ADMIN alone (IP_TRANSPARENT and SO_MARK; Kubernetes gives
/// added capabilities to uid 0 only).
fn proxy_security(keep_source_ip: bool) -> Value {
    let (uid, caps) = if keep_source_ip {
        (
            0,
            mapping([
                ("drop", strings(&["ALL"])),
                ("add", strings(&["NET_ADMIN"])),
            ]),
        )
    } else {
        (PROXY_UID, mapping([("drop", strings(&["ALL"]))]))
    };
    mapping([
        ("runAsUser", uid.into()),
        ("runAsGroup", uid.into()),
        ("runAsNonRoot", (uid != 0).into()),
        ("allowPrivilegeEscalation", false.into()),
        ("readOnlyRootFilesystem", true.into()),
        ("capabilities", caps),
    ])
}

/// The node agent's directory, from the node.
fn node_volume() -> Value {
    mapping([
        ("name", VOLUME.into()),
        (
            "hostPath",
            mapping([("path", NODE_DIR.into()), ("type", "Directory".into())]),
        ),
    ])
}

fn resources(cpu_request: &str, memory_request: &str, memory_limit: &str) -> Value {
    mapping([
        (
            "requests",
            mapping([
                ("cpu", cpu_request.into()),
                ("memory", memory_request.into()),
            ]),
        ),
        ("limits", mapping([("memory", memory_limit.into())])),
    ])
}

/// A mapping with these entries, in this order.
fn mapping<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Mapping(
        entries
            .into_iter()
            .map(|(key, value)| (Value::from(key), value))
            .collect(),
    )
}

fn strings(items: &[&str]) -> Value {
    Value::Sequence(items.iter().map(|&item| Value::from(item)).collect())
}

/// `a mapping`, `a list`, `a string`… for messages.
fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

/// A boolean as Kubernetes reads it: YAML 1.1, where `yes`, `on`, `y` are true (and
/// serde_yaml_ng, reading YAML 1.2, gives strings); also a quoted `"false"`.
fn yaml11_bool(value: &Value) -> Option<bool> {
    match value {
        Value::Bool(b) => Some(*b),
        Value::String(text) => match text.as_str() {
            "y" | "Y" | "yes" | "Yes" | "YES" | "true" | "True" | "TRUE" | "on" | "On" | "ON" => {
                Some(true)
            }
            "n" | "N" | "no" | "No" | "NO" | "false" | "False" | "FALSE" | "off" | "Off"
            | "OFF" => Some(false),
            _ => None,
        },
        _ => None,
    }
}

/// Boolean fields of workloads and pod specs, which YAML 1.1 lets one write `yes`/`on`.
const BOOLEAN_FIELDS: &[&str] = &[
    "allowPrivilegeEscalation",
    "automountServiceAccountToken",
    "enableServiceLinks",
    "hostIPC",
    "hostNetwork",
    "hostPID",
    "hostUsers",
    "manualSelector",
    "optional",
    "paused",
    "privileged",
    "readOnly",
    "readOnlyRootFilesystem",
    "runAsNonRoot",
    "setHostnameAsFQDN",
    "shareProcessNamespace",
    "stdin",
    "stdinOnce",
    "suspend",
    "tty",
];

/// File-mode fields of volumes, which are written in octal (`0644`, YAML 1.1).
const MODE_FIELDS: &[&str] = &["defaultMode", "mode"];

/// Maps and label selectors: their keys are names, not fields.
const NOT_FIELDS: &[&str] = &[
    "metadata",
    "nodeSelector",
    "matchLabels",
    "matchExpressions",
];

/// Writes back, as Kubernetes' YAML 1.1 reader meant them, the values a YAML 1.2
/// reader took for strings: `yes`/`on`/`no`/`off` in boolean fields, octal `0644` (and
/// `1_000`) in file modes. A string in those fields is never valid, so this changes
/// nothing a Kubernetes reader would accept; without it, the quotes the writer must put
/// around such strings would turn `readOnly: yes` into the string "yes".
fn yaml11_fixups(value: &mut Value) {
    match value {
        Value::Mapping(map) => {
            for (key, value) in map.iter_mut() {
                let key = key.as_str().unwrap_or("");
                if NOT_FIELDS.contains(&key) {
                    continue;
                }
                if BOOLEAN_FIELDS.contains(&key)
                    && value.is_string()
                    && let Some(b) = yaml11_bool(value)
                {
                    *value = Value::Bool(b);
                } else if MODE_FIELDS.contains(&key)
                    && let Some(mode) = value.as_str().and_then(yaml11_int)
                {
                    *value = Value::Number(mode.into());
                } else {
                    yaml11_fixups(value);
                }
            }
        }
        Value::Sequence(items) => items.iter_mut().for_each(yaml11_fixups),
        Value::Tagged(tagged) => yaml11_fixups(&mut tagged.value),
        _ => {}
    }
}

/// An integer as YAML 1.1 reads it where YAML 1.2 reads a string: a leading zero is
/// octal, `_` separates digits.
fn yaml11_int(text: &str) -> Option<i64> {
    let digits: String = text.chars().filter(|&c| c != '_').collect();
    let (negative, digits) = match digits.strip_prefix('-') {
        Some(rest) => (true, rest.to_string()),
        None => (
            false,
            digits.strip_prefix('+').unwrap_or(&digits).to_string(),
        ),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let magnitude = match digits.strip_prefix('0') {
        Some(octal) if !octal.is_empty() => i64::from_str_radix(octal, 8).ok()?,
        _ => digits.parse::<i64>().ok()?,
    };
    Some(if negative { -magnitude } else { magnitude })
}

/// One `---`-separated document of the input.
#[derive(Debug)]
struct Chunk<'a> {
    /// Its `---` line (without the line break), when it has one.
    marker: Option<&'a str>,
    /// The text after the marker line (or from the start of the input, or after `...`).
    body: &'a str,
    /// The line (from 1) of the marker, or else of the body's first line.
    line: usize,
}

impl Chunk<'_> {
    /// The document's value; on an error its line and column in the whole input, and the
    /// reason.
    fn parse(&self) -> Result<Value, (usize, usize, String)> {
        // What follows `---` on its line is the document's (`--- # comment`, `--- |`).
        let text = match self.marker {
            Some(marker) => format!("{}\n{}", &marker[3..], self.body),
            None => self.body.to_string(),
        };
        serde_yaml_ng::from_str(&text).map_err(|err| {
            let (at, reason) = crate::yaml::location_and_reason(&err);
            let (line, column) = at.unwrap_or((1, 1));
            let column = if line == 1 && self.marker.is_some() {
                column + 3
            } else {
                column
            };
            (self.line + line - 1, column, reason)
        })
    }

    /// The document as it was written, after a `---` line.
    fn verbatim(&self) -> String {
        let mut text = format!("{}\n{}", self.marker.unwrap_or("---"), self.body);
        if !text.ends_with('\n') {
            text.push('\n');
        }
        text
    }
}

/// `text` cut at its document markers: `---` and `...` at the start of a line, followed
/// by a blank or the end of the line. YAML allows neither inside a document, not even
/// in a block or quoted string, so cutting at them is exact.
fn split_documents(text: &str) -> Vec<Chunk<'_>> {
    let is_marker = |line: &str, marker: &str| {
        line.strip_prefix(marker)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
    };
    let mut chunks = Vec::new();
    let mut marker = None;
    let mut start = 0;
    let mut first_line = 1;
    let mut offset = 0;
    for (index, line) in text.split_inclusive('\n').enumerate() {
        let bare = line.trim_end_matches(['\n', '\r']);
        let begins = is_marker(bare, "---");
        if begins || is_marker(bare, "...") {
            chunks.push(Chunk {
                marker,
                body: &text[start..offset],
                line: first_line,
            });
            // A `---` line belongs to the document it begins; after `...` the next one
            // begins on the next line.
            marker = begins.then_some(bare);
            first_line = if begins { index + 1 } else { index + 2 };
            start = offset + line.len();
        }
        offset += line.len();
    }
    chunks.push(Chunk {
        marker,
        body: &text[start..],
        line: first_line,
    });
    chunks
}

/// `--image`: a reference without blanks.
fn parse_image(text: &str) -> Result<String, String> {
    if text.is_empty() || text.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("expected an image reference, got {text:?}"));
    }
    Ok(text.to_string())
}

/// A Kubernetes resource quantity: a non-negative number (`100`, `0.5`, `1e3`) with an
/// optional suffix (`m`, `k`, `M`, `G`…, `Ki`, `Mi`, `Gi`…).
fn parse_quantity(text: &str) -> Result<String, String> {
    const SUFFIXES: &[&str] = &[
        "Ki", "Mi", "Gi", "Ti", "Pi", "Ei", "n", "u", "m", "k", "M", "G", "T", "P", "E", "",
    ];
    let bad = || format!("expected a Kubernetes quantity (e.g. 10m, 0.5, 64Mi, 1G), got {text:?}");
    let number_end = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(number_end);
    let digits = number.replace('.', "");
    if digits.is_empty() || number.matches('.').count() > 1 {
        return Err(bad());
    }
    let exponent = suffix
        .strip_prefix(['e', 'E'])
        .map(|e| e.strip_prefix(['+', '-']).unwrap_or(e));
    let valid_suffix = SUFFIXES.contains(&suffix)
        || exponent.is_some_and(|e| !e.is_empty() && e.bytes().all(|b| b.is_ascii_digit()));
    if !valid_suffix {
        return Err(bad());
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests;
