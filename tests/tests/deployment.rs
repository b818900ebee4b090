//! The deployment files (docker-compose.yml, deploy/k8s/) checked against the services' real
//! configuration surface, so a renamed flag or environment variable, a moved port or a probe on
//! the wrong port fails here instead of in someone's cluster.
//!
//! The known settings come from the services' own clap definitions: every environment variable a
//! compose service or a ConfigMap sets must be one that service reads, and the whole set must
//! parse and validate as that service's configuration.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::CommandFactory as _;
use serde_norway::Value;

/// Variables read outside the clap configurations: the log filter (tracing's `EnvFilter`).
const LIBRARY_ENV: &[&str] = &["RUST_LOG"];

/// The three services and how each is configured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Service {
    Gateway,
    Matcher,
    Liveness,
}

impl Service {
    const ALL: [Self; 3] = [Self::Gateway, Self::Matcher, Self::Liveness];

    fn name(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Matcher => "matcher",
            Self::Liveness => "liveness",
        }
    }

    fn binary(self) -> String {
        format!("faceproof-{}", self.name())
    }

    fn from_binary(binary: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.binary() == binary)
    }

    fn command(self) -> clap::Command {
        match self {
            Self::Gateway => faceproof_gateway::GatewayCli::command(),
            Self::Matcher => faceproof_matcher::MatcherConfig::command(),
            Self::Liveness => faceproof_liveness::LivenessConfig::command(),
        }
    }

    /// Every environment variable the service reads.
    fn known_env(self) -> BTreeSet<String> {
        let command = self.command();
        command
            .get_arguments()
            .filter_map(|arg| arg.get_env())
            .map(|name| name.to_string_lossy().into_owned())
            .chain(LIBRARY_ENV.iter().map(|name| (*name).to_owned()))
            .collect()
    }

    /// The variable holding the gRPC listen address.
    fn grpc_listen_env(self) -> &'static str {
        match self {
            Self::Gateway => "FACEPROOF_GRPC_ADDR",
            Self::Matcher => "FACEPROOF_MATCHER_LISTEN",
            Self::Liveness => "FACEPROOF_LIVENESS_LISTEN",
        }
    }

    /// Turns environment settings into the equivalent flags and parses and validates them with
    /// the service's own configuration, so values are checked too (addresses, enums, ranges).
    fn parse_env(self, env: &BTreeMap<String, String>) -> Result<(), String> {
        let mut command = self.command();
        // Fills in what derive leaves implicit, such as how many values each flag takes.
        command.build();
        let mut argv = vec![self.binary()];
        for (name, value) in env {
            if LIBRARY_ENV.contains(&name.as_str()) {
                continue;
            }
            let arg = command
                .get_arguments()
                .find(|arg| arg.get_env().is_some_and(|env| env == name.as_str()))
                .ok_or_else(|| format!("{} reads no {name}", self.binary()))?;
            let long = arg
                .get_long()
                .ok_or_else(|| format!("{name} has no long flag"))?;
            if arg.get_num_args().is_some_and(|range| range.takes_values()) {
                argv.push(format!("--{long}={value}"));
            } else if value == "true" {
                argv.push(format!("--{long}"));
            } else if value != "false" {
                return Err(format!(
                    "{name}: a switch takes true or false, got {value:?}"
                ));
            }
        }
        match self {
            Self::Gateway => {
                let cli = <faceproof_gateway::GatewayCli as clap::Parser>::try_parse_from(&argv)
                    .map_err(|error| error.to_string())?;
                cli.config.validate().map_err(|error| error.to_string())
            }
            Self::Matcher => {
                let config =
                    <faceproof_matcher::MatcherConfig as clap::Parser>::try_parse_from(&argv)
                        .map_err(|error| error.to_string())?;
                config.validate().map_err(|error| error.to_string())
            }
            Self::Liveness => {
                let config =
                    <faceproof_liveness::LivenessConfig as clap::Parser>::try_parse_from(&argv)
                        .map_err(|error| error.to_string())?;
                config.validate().map_err(|error| error.to_string())
            }
        }
    }
}

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_path_buf()
}

/// Every YAML document in a file (Kubernetes files may hold several).
fn read_yaml(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
    serde_norway::Deserializer::from_str(&text)
        .map(|document| {
            serde::Deserialize::deserialize(document)
                .unwrap_or_else(|error| panic!("{}: {error}", path.display()))
        })
        .filter(|value: &Value| !value.is_null())
        .collect()
}

fn get<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |value, key| value.get(key))
}

fn text<'a>(value: &'a Value, path: &str) -> &'a str {
    get(value, path)
        .and_then(Value::as_str)
        .unwrap_or_else(|| panic!("{path} missing or not a string in {value:?}"))
}

/// A scalar as the text a process would see in its environment.
fn scalar_text(value: &Value) -> String {
    match value {
        Value::String(text) => text.clone(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        other => panic!("not a scalar: {other:?}"),
    }
}

fn string_list(value: &Value) -> Vec<String> {
    value
        .as_sequence()
        .unwrap_or_else(|| panic!("not a list: {value:?}"))
        .iter()
        .map(scalar_text)
        .collect()
}

fn port_of(addr: &str) -> u16 {
    addr.parse::<SocketAddr>()
        .unwrap_or_else(|error| panic!("{addr:?}: {error}"))
        .port()
}

/// `http://host:port` split into host and port.
fn url_host_port(url: &str) -> (String, u16) {
    let uri: tonic::codegen::http::Uri = url
        .parse()
        .unwrap_or_else(|error| panic!("{url:?}: {error}"));
    (
        uri.host().expect("URL has a host").to_owned(),
        uri.port_u16().expect("URL has a port"),
    )
}

/// Compose's `${NAME:-default}` interpolation, resolved to the default (what a bare
/// `docker compose up` sees). An empty result means the variable is left unset by intent.
fn interpolate_default(value: &str) -> String {
    let mut out = String::new();
    let mut rest = value;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("closed ${...}") + start;
        let inner = &rest[start + 2..end];
        let default = inner.split_once(":-").map_or("", |(_, default)| default);
        out.push_str(default);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The `faceproof` CLI's subcommands, read from its source: the tests crate cannot link a binary
/// crate, and a healthcheck naming a removed subcommand must fail here.
fn cli_subcommands() -> BTreeSet<String> {
    let main = std::fs::read_to_string(repo_root().join("crates/cli/src/main.rs")).unwrap();
    let enum_body = main
        .split("enum Command {")
        .nth(1)
        .and_then(|rest| rest.split("\n}").next())
        .expect("main.rs declares enum Command");
    enum_body
        .lines()
        .map(str::trim)
        .filter(|line| !line.starts_with("//") && !line.starts_with('#'))
        .filter_map(|line| line.split(['(', ',']).next())
        .filter(|name| !name.is_empty() && name.chars().all(char::is_alphanumeric))
        .map(|name| name.to_ascii_lowercase())
        .collect()
}

// ---------------------------------------------------------------------------------------------
// docker-compose.yml

struct ComposeService<'a> {
    service: Service,
    spec: &'a Value,
    env: BTreeMap<String, String>,
}

fn compose_services(compose: &Value) -> Vec<ComposeService<'_>> {
    let services = get(compose, "services")
        .and_then(Value::as_mapping)
        .expect("compose file has services");
    let mut found = Vec::new();
    for (name, spec) in services {
        let Some(command) = spec.get("command") else {
            continue;
        };
        let command = string_list(command);
        if !command[0].starts_with("faceproof") {
            continue; // Not one of ours (the observability profile's collector).
        }
        let service = Service::from_binary(&command[0])
            .unwrap_or_else(|| panic!("{name:?} runs an unknown binary {:?}", command[0]));
        assert_eq!(
            name.as_str(),
            Some(service.name()),
            "compose service {name:?} runs {}",
            service.binary()
        );
        let mut env = BTreeMap::new();
        if let Some(environment) = spec.get("environment").and_then(Value::as_mapping) {
            for (key, value) in environment {
                let value = interpolate_default(&scalar_text(value));
                if !value.is_empty() {
                    env.insert(key.as_str().expect("string keys").to_owned(), value);
                }
            }
        }
        found.push(ComposeService { service, spec, env });
    }
    found.sort_by_key(|found| found.service);
    found
}

fn compose_file() -> Value {
    let mut documents = read_yaml(&repo_root().join("docker-compose.yml"));
    assert_eq!(documents.len(), 1);
    let mut compose = documents.remove(0);
    // Resolve `<<: *anchor` merge keys as compose does.
    compose.apply_merge().expect("valid merge keys");
    compose
}

#[test]
fn compose_runs_each_service_with_settings_it_reads() {
    let compose = compose_file();
    let services = compose_services(&compose);
    assert_eq!(
        services.iter().map(|s| s.service).collect::<Vec<_>>(),
        Service::ALL,
        "compose runs the gateway, the matcher and the liveness service"
    );
    for found in &services {
        let raw_env = found
            .spec
            .get("environment")
            .and_then(Value::as_mapping)
            .expect("configured by environment");
        let known = found.service.known_env();
        for key in raw_env.keys() {
            let key = key.as_str().unwrap();
            assert!(
                known.contains(key),
                "compose sets {key} on {}, which reads no such variable; it reads {known:?}",
                found.service.binary()
            );
        }
        found
            .service
            .parse_env(&found.env)
            .unwrap_or_else(|error| panic!("compose {}: {error}", found.service.name()));
    }
}

#[test]
fn compose_ports_healthchecks_and_start_order_line_up() {
    let compose = compose_file();
    let services = compose_services(&compose);
    let subcommands = cli_subcommands();
    assert!(subcommands.contains("health"), "{subcommands:?}");
    let mut grpc_port_of = BTreeMap::new();
    for found in &services {
        let name = found.service.name();
        let listen = found
            .env
            .get(found.service.grpc_listen_env())
            .unwrap_or_else(|| panic!("{name} sets {}", found.service.grpc_listen_env()));
        let grpc_port = port_of(listen);
        grpc_port_of.insert(name, grpc_port);

        // The container ports it exposes or publishes, and publishing only on loopback.
        let mut container_ports = BTreeSet::new();
        if let Some(expose) = found.spec.get("expose") {
            for port in string_list(expose) {
                container_ports.insert(port.parse::<u16>().unwrap());
            }
        }
        if let Some(ports) = found.spec.get("ports") {
            for mapping in string_list(ports) {
                let parts: Vec<&str> = mapping.split(':').collect();
                assert_eq!(
                    parts.len(),
                    3,
                    "{name}: publish as 127.0.0.1:HOST:CONTAINER, got {mapping}"
                );
                assert_eq!(
                    parts[0], "127.0.0.1",
                    "{name}: {mapping} is not loopback-only"
                );
                container_ports.insert(parts[2].parse::<u16>().unwrap());
            }
        }
        assert!(
            container_ports.contains(&grpc_port),
            "{name} listens on {grpc_port} but exposes {container_ports:?}"
        );
        if found.service == Service::Gateway {
            let http_port = port_of(&found.env["FACEPROOF_HTTP_ADDR"]);
            assert!(container_ports.contains(&http_port), "gateway REST port");
        }
        if let Some(metrics) = found.env.get("FACEPROOF_METRICS_ADDR") {
            assert!(
                container_ports.contains(&port_of(metrics)),
                "{name}: metrics port {metrics} not exposed"
            );
        }

        // `faceproof health --addr http://127.0.0.1:<grpc port>`.
        let test = string_list(
            found
                .spec
                .get("healthcheck")
                .and_then(|check| check.get("test"))
                .unwrap_or_else(|| panic!("{name} has a healthcheck")),
        );
        assert_eq!(
            test[0], "CMD",
            "{name}: exec form, no shell in the image needed"
        );
        assert_eq!(test[1], "faceproof", "{name}: {test:?}");
        assert!(
            subcommands.contains(&test[2]),
            "{name}: no subcommand {}",
            test[2]
        );
        assert_eq!(test[2], "health");
        let addr_at = test.iter().position(|arg| arg == "--addr").expect("--addr");
        let (host, port) = url_host_port(&test[addr_at + 1]);
        assert_eq!(host, "127.0.0.1");
        assert_eq!(port, grpc_port, "{name}: healthcheck probes another port");
    }

    // The gateway waits for healthy model services and reaches them by service name and port.
    let gateway = services
        .iter()
        .find(|found| found.service == Service::Gateway)
        .unwrap();
    for (backend, env) in [
        ("matcher", "FACEPROOF_MATCHER_URLS"),
        ("liveness", "FACEPROOF_LIVENESS_URLS"),
    ] {
        let condition = get(gateway.spec, &format!("depends_on.{backend}.condition"));
        assert_eq!(
            condition.and_then(Value::as_str),
            Some("service_healthy"),
            "gateway depends_on {backend}"
        );
        for url in gateway.env[env].split(',') {
            let (host, port) = url_host_port(url);
            assert_eq!(host, backend);
            assert_eq!(port, grpc_port_of[backend], "{env} port");
        }
    }
}

#[test]
fn compose_observability_profile_is_pinned_and_wired() {
    let compose = compose_file();
    let services = get(&compose, "services")
        .and_then(Value::as_mapping)
        .unwrap();
    let mut profiled = Vec::new();
    for (name, spec) in services {
        let name = name.as_str().unwrap();
        let Some(profiles) = spec.get("profiles") else {
            continue;
        };
        assert!(string_list(profiles).contains(&"observability".to_owned()));
        let image = text(spec, "image");
        let tag = image.rsplit_once(':').map(|(_, tag)| tag).unwrap_or("");
        assert!(
            !tag.is_empty() && tag != "latest" && !tag.contains('/'),
            "{name}: pin the image tag, got {image}"
        );
        profiled.push(name.to_owned());
    }
    assert!(
        profiled.contains(&"otel-collector".to_owned()),
        "{profiled:?}"
    );
    assert!(profiled.contains(&"jaeger".to_owned()), "{profiled:?}");
    // Each service passes the collector endpoint through; the collector receives OTLP/gRPC.
    for found in compose_services(&compose) {
        let environment = found.spec.get("environment").unwrap();
        assert!(
            environment.get("OTEL_EXPORTER_OTLP_ENDPOINT").is_some(),
            "{} passes OTEL_EXPORTER_OTLP_ENDPOINT",
            found.service.name()
        );
    }
    let collector_config = text(&compose, "configs.otel-collector-config.content");
    assert!(collector_config.contains("4317"), "{collector_config}");
}

// ---------------------------------------------------------------------------------------------
// deploy/k8s

fn k8s_dir() -> PathBuf {
    repo_root().join("deploy/k8s")
}

/// Every resource kustomize applies, with the file it came from.
fn k8s_resources() -> Vec<(String, Value)> {
    let kustomization = read_yaml(&k8s_dir().join("kustomization.yaml"));
    let files = string_list(get(&kustomization[0], "resources").expect("resources"));
    let mut resources = Vec::new();
    for file in files {
        let path = k8s_dir().join(&file);
        assert!(
            path.is_file(),
            "kustomization.yaml lists {file}, which does not exist"
        );
        for document in read_yaml(&path) {
            resources.push((file.clone(), document));
        }
    }
    resources
}

fn find<'a>(resources: &'a [(String, Value)], kind: &str, name: &str) -> Option<&'a Value> {
    resources
        .iter()
        .map(|(_, resource)| resource)
        .find(|resource| text(resource, "kind") == kind && text(resource, "metadata.name") == name)
}

#[test]
fn k8s_manifests_are_well_formed_and_all_listed() {
    let resources = k8s_resources();
    let listed: BTreeSet<String> = resources.iter().map(|(file, _)| file.clone()).collect();
    for (file, resource) in &resources {
        for field in ["apiVersion", "kind", "metadata.name"] {
            assert!(
                get(resource, field)
                    .and_then(Value::as_str)
                    .is_some_and(|v| !v.is_empty()),
                "{file}: no {field}"
            );
        }
    }
    // A manifest left out of kustomization.yaml is never applied: only examples may be.
    for entry in std::fs::read_dir(k8s_dir()).unwrap() {
        let name = entry.unwrap().file_name().to_string_lossy().into_owned();
        if name.ends_with(".yaml") && name != "kustomization.yaml" {
            assert!(
                listed.contains(&name) || name.ends_with(".example.yaml"),
                "{name} is not listed in kustomization.yaml"
            );
        }
        if name.ends_with(".example.yaml") {
            for example in read_yaml(&k8s_dir().join(&name)) {
                assert!(get(&example, "metadata.name").is_some(), "{name}");
            }
        }
    }
}

#[test]
fn k8s_deployments_match_the_service_configs_and_probe_the_grpc_port() {
    let resources = k8s_resources();
    let mut seen = BTreeSet::new();
    for (file, deployment) in &resources {
        if text(deployment, "kind") != "Deployment" {
            continue;
        }
        let containers = get(deployment, "spec.template.spec.containers")
            .and_then(Value::as_sequence)
            .expect("containers");
        assert_eq!(containers.len(), 1, "{file}: one container per pod");
        let container = &containers[0];
        let command = string_list(container.get("command").expect("command"));
        let service = Service::from_binary(&command[0])
            .unwrap_or_else(|| panic!("{file}: unknown binary {}", command[0]));
        seen.insert(service);

        // Settings: from ConfigMaps (envFrom) and plain env entries, all read by the service.
        let mut env = BTreeMap::new();
        for source in container
            .get("envFrom")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            let name = text(source, "configMapRef.name");
            let config_map = find(&resources, "ConfigMap", name)
                .unwrap_or_else(|| panic!("{file}: ConfigMap {name} is not in the kustomization"));
            for (key, value) in get(config_map, "data").and_then(Value::as_mapping).unwrap() {
                env.insert(key.as_str().unwrap().to_owned(), scalar_text(value));
            }
        }
        for entry in container
            .get("env")
            .and_then(Value::as_sequence)
            .into_iter()
            .flatten()
        {
            if let Some(value) = entry.get("value") {
                env.insert(text(entry, "name").to_owned(), scalar_text(value));
            }
        }
        let known = service.known_env();
        for key in env.keys() {
            assert!(
                known.contains(key),
                "{file}: {key} is not read by {}; it reads {known:?}",
                service.binary()
            );
        }
        service
            .parse_env(&env)
            .unwrap_or_else(|error| panic!("{file}: {error}"));

        // Ports and probes.
        let ports = container
            .get("ports")
            .and_then(Value::as_sequence)
            .expect("ports");
        let port_named = |name: &str| {
            ports
                .iter()
                .find(|port| port.get("name").and_then(Value::as_str) == Some(name))
                .and_then(|port| port.get("containerPort"))
                .and_then(Value::as_u64)
        };
        let grpc_port = u64::from(port_of(&env[service.grpc_listen_env()]));
        assert_eq!(
            port_named("grpc"),
            Some(grpc_port),
            "{file}: grpc containerPort"
        );
        if let Some(metrics) = env.get("FACEPROOF_METRICS_ADDR") {
            assert_eq!(
                port_named("metrics"),
                Some(u64::from(port_of(metrics))),
                "{file}: metrics containerPort"
            );
        }
        if service == Service::Gateway {
            // Readiness follows the model services (/readyz); liveness only the process
            // (/healthz): a grpc.health liveness probe would restart every gateway whenever
            // the matcher is down.
            let http_port = u64::from(port_of(&env["FACEPROOF_HTTP_ADDR"]));
            assert_eq!(port_named("http"), Some(http_port), "{file}: http port");
            for (probe, path) in [("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")] {
                assert_eq!(
                    get(container, &format!("{probe}.httpGet.path")).and_then(Value::as_str),
                    Some(path),
                    "{file}: {probe} must GET {path}"
                );
                let port = get(container, &format!("{probe}.httpGet.port")).unwrap();
                assert!(
                    port.as_str() == Some("http") || port.as_u64() == Some(http_port),
                    "{file}: {probe} probes another port"
                );
            }
        } else {
            for probe in ["readinessProbe", "livenessProbe"] {
                let port = get(container, &format!("{probe}.grpc.port"))
                    .and_then(Value::as_u64)
                    .unwrap_or_else(|| panic!("{file}: {probe} must be a grpc probe"));
                assert_eq!(port, grpc_port, "{file}: {probe} probes another port");
            }
        }
        if let Some(startup) = container.get("startupProbe") {
            assert_eq!(
                get(startup, "grpc.port").and_then(Value::as_u64),
                Some(grpc_port),
                "{file}: startupProbe"
            );
        }
        for resource in ["cpu", "memory"] {
            assert!(
                get(container, &format!("resources.requests.{resource}")).is_some(),
                "{file}: no {resource} request"
            );
        }

        // Its Service, autoscaler and disruption budget.
        let name = text(deployment, "metadata.name");
        let labels = get(deployment, "spec.selector.matchLabels").expect("selector");
        assert_eq!(
            get(deployment, "spec.template.metadata.labels")
                .and_then(Value::as_mapping)
                .map(|template| labels
                    .as_mapping()
                    .unwrap()
                    .iter()
                    .all(|(key, value)| template.get(key) == Some(value))),
            Some(true),
            "{file}: the pod template carries the selector's labels"
        );
        let k8s_service =
            find(&resources, "Service", name).unwrap_or_else(|| panic!("no Service {name}"));
        assert_eq!(
            get(k8s_service, "spec.selector"),
            Some(labels),
            "Service {name} selector"
        );
        let service_ports = get(k8s_service, "spec.ports")
            .and_then(Value::as_sequence)
            .unwrap();
        let grpc = service_ports
            .iter()
            .find(|port| port.get("name").and_then(Value::as_str) == Some("grpc"))
            .unwrap_or_else(|| panic!("Service {name} has a grpc port"));
        assert_eq!(get(grpc, "port").and_then(Value::as_u64), Some(grpc_port));
        let target = get(grpc, "targetPort").unwrap();
        assert!(
            target.as_str() == Some("grpc") || target.as_u64() == Some(grpc_port),
            "Service {name} targets the grpc port"
        );
        let headless = get(k8s_service, "spec.clusterIP").and_then(Value::as_str) == Some("None");
        assert_eq!(
            headless,
            service != Service::Gateway,
            "Service {name}: model services are headless so the gateway sees every replica"
        );
        let hpa = find(&resources, "HorizontalPodAutoscaler", name)
            .unwrap_or_else(|| panic!("no HorizontalPodAutoscaler {name}"));
        assert_eq!(text(hpa, "spec.scaleTargetRef.kind"), "Deployment");
        assert_eq!(text(hpa, "spec.scaleTargetRef.name"), name);
        let pdb = find(&resources, "PodDisruptionBudget", name)
            .unwrap_or_else(|| panic!("no PodDisruptionBudget {name}"));
        assert_eq!(get(pdb, "spec.selector.matchLabels"), Some(labels));

        // The gateway reaches the model services by their Service names and gRPC ports.
        if service == Service::Gateway {
            for env_name in ["FACEPROOF_MATCHER_URLS", "FACEPROOF_LIVENESS_URLS"] {
                for url in env[env_name].split(',') {
                    let (host, port) = url_host_port(url);
                    let target = find(&resources, "Service", &host)
                        .unwrap_or_else(|| panic!("{env_name}: no Service {host}"));
                    let ports = get(target, "spec.ports")
                        .and_then(Value::as_sequence)
                        .unwrap();
                    assert!(
                        ports
                            .iter()
                            .any(|p| get(p, "port").and_then(Value::as_u64) == Some(port.into())),
                        "{env_name}: Service {host} has no port {port}"
                    );
                }
            }
        }
    }
    assert_eq!(
        seen,
        Service::ALL.into_iter().collect(),
        "one Deployment per service"
    );
}

#[test]
fn the_env_checks_themselves_reject_unknown_and_invalid_settings() {
    // Guards the guard: the checks above would pass vacuously if these did not fail.
    let unknown = BTreeMap::from([("FACEPROOF_NO_SUCH_SETTING".to_owned(), "1".to_owned())]);
    assert!(Service::Matcher.parse_env(&unknown).is_err());
    let invalid = BTreeMap::from([(
        "FACEPROOF_MATCHER_LISTEN".to_owned(),
        "not-an-address".to_owned(),
    )]);
    assert!(Service::Matcher.parse_env(&invalid).is_err());
    // The gateway refuses to start without credentials unless in development mode.
    assert!(Service::Gateway.parse_env(&BTreeMap::new()).is_err());
    assert!(Service::Matcher.known_env().contains("FACEPROOF_MODEL_DIR"));
    assert!(!Service::Gateway.known_env().contains("FACEPROOF_MODEL_DIR"));
    assert_eq!(interpolate_default("${A:-x}/${B:-}y"), "x/y");
}
