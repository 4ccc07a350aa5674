//! The Kubernetes example (`examples/kubernetes/`) holds together: every
//! manifest parses, the shoal.toml in its ConfigMap passes shoal's own
//! parser and validation once rendered as the container renders it, and the
//! probe, ports, DNS name and volumes agree with that config.
//!
//! No cluster is involved: this checks the files, not a deployment.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_norway::Value;
use shoal::Config;
use shoal::config::MembershipKind;

fn example_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/kubernetes")
}

/// Every document of every `.yaml` file, with its file name.
fn manifests() -> Vec<(String, Value)> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(example_dir())
        .expect("examples/kubernetes")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(!files.is_empty(), "no manifests in {:?}", example_dir());
    let mut docs = Vec::new();
    for f in files {
        let text = std::fs::read_to_string(&f).expect("read manifest");
        let name = f.file_name().expect("name").to_string_lossy().into_owned();
        for doc in serde_norway::Deserializer::from_str(&text) {
            let v = Value::deserialize(doc).unwrap_or_else(|e| panic!("{name}: {e}"));
            if v.is_null() {
                continue; // an empty document (a trailing `---`)
            }
            for key in ["apiVersion", "kind"] {
                assert!(v[key].is_string(), "{name}: a document without {key}");
            }
            assert!(
                v["metadata"]["name"].is_string(),
                "{name}: a document without metadata.name"
            );
            docs.push((name.clone(), v));
        }
    }
    docs
}

fn one<'a>(docs: &'a [(String, Value)], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs
        .iter()
        .filter(|(_, d)| d["kind"] == kind)
        .map(|(_, d)| d)
        .collect();
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found[0]
}

fn str_of<'a>(v: &'a Value, what: &str) -> &'a str {
    v.as_str()
        .unwrap_or_else(|| panic!("{what} is not a string: {v:?}"))
}

fn u64_of(v: &Value, what: &str) -> u64 {
    v.as_u64()
        .unwrap_or_else(|| panic!("{what} is not a number: {v:?}"))
}

/// Renders the ConfigMap's template as the container's command does.
fn render(template: &str) -> String {
    template
        .replace("@POD_NAME@", "shoal-0")
        .replace("@POD_IP@", "10.244.1.7")
}

/// The container port a probe names (by name or number).
fn probe_port(container: &Value, port: &Value) -> u64 {
    if let Some(n) = port.as_u64() {
        return n;
    }
    let name = str_of(port, "probe port");
    container["ports"]
        .as_sequence()
        .expect("container ports")
        .iter()
        .find(|p| p["name"] == name)
        .map(|p| u64_of(&p["containerPort"], "containerPort"))
        .unwrap_or_else(|| panic!("no container port named {name}"))
}

#[test]
fn kubernetes_example_is_consistent_with_shoals_config() {
    let docs = manifests();
    let service = one(&docs, "Service");
    let config_map = one(&docs, "ConfigMap");
    let set = one(&docs, "StatefulSet");

    // The config, rendered, passes shoal's parser and validation (unknown
    // keys and bad values are refused there); unrendered it is refused.
    let template = str_of(&config_map["data"]["shoal.toml"], "data.\"shoal.toml\"");
    let file = Path::new("examples/kubernetes/configmap.yaml#shoal.toml");
    let cfg = Config::parse(&render(template), file).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        Config::parse(template, file).is_err(),
        "an unrendered template must not start a node"
    );

    // DNS discovery through the headless Service, which publishes pods
    // before they are ready.
    assert_eq!(cfg.membership.kind, MembershipKind::Dns);
    let svc_name = str_of(&service["metadata"]["name"], "Service name");
    assert!(
        cfg.membership.dns_name.starts_with(&format!("{svc_name}.")),
        "dns_name {:?} is not the headless Service {svc_name}",
        cfg.membership.dns_name
    );
    assert_eq!(service["spec"]["clusterIP"], "None", "a headless Service");
    assert_eq!(
        service["spec"]["publishNotReadyAddresses"], true,
        "peers must find pods that are not ready yet"
    );
    assert_eq!(
        set["spec"]["serviceName"], svc_name,
        "the StatefulSet is governed by the headless Service"
    );
    let labels = &set["spec"]["template"]["metadata"]["labels"];
    for (k, v) in service["spec"]["selector"]
        .as_mapping()
        .expect("Service selector")
    {
        assert_eq!(&labels[k], v, "the Service selects the StatefulSet's pods");
    }

    let pod = &set["spec"]["template"]["spec"];
    let containers = pod["containers"].as_sequence().expect("containers");
    assert_eq!(containers.len(), 1);
    let c = &containers[0];

    // Receiver: TCP for messages, UDP for heartbeats, both on the port the
    // config listens on (and the one DNS peers are sent heartbeats to).
    let receiver_port = u64::from(cfg.receiver.port);
    assert_eq!(cfg.receiver.auto_bind, 1, "every pod on the same port");
    assert!(
        cfg.membership
            .dns_port
            .is_none_or(|p| u64::from(p) == receiver_port)
    );
    for proto in ["TCP", "UDP"] {
        assert!(
            c["ports"]
                .as_sequence()
                .expect("ports")
                .iter()
                .any(|p| p["containerPort"] == receiver_port && p["protocol"] == proto),
            "container port {receiver_port}/{proto} for the receiver"
        );
    }

    // Readiness: /api/ready on the API's port, without a token.
    let api = cfg.api.listen_addr().expect("the API is on");
    assert!(api.ip().is_unspecified(), "the kubelet probes the pod IP");
    let probe = &c["readinessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/api/ready", "readiness probe path");
    assert_eq!(
        probe_port(c, &probe["port"]),
        u64::from(api.port()),
        "the readiness probe asks the API's port"
    );
    assert!(
        cfg.api.open_health,
        "the probe carries no token: open_health must be on"
    );

    // The container renders the template into the emptyDir and execs shoal
    // on it, with the pod's name and IP from the downward API.
    let script = c["args"]
        .as_sequence()
        .expect("args")
        .iter()
        .map(|a| str_of(a, "arg"))
        .collect::<Vec<_>>()
        .join(" ");
    for (placeholder, var, field) in [
        ("@POD_NAME@", "POD_NAME", "metadata.name"),
        ("@POD_IP@", "POD_IP", "status.podIP"),
    ] {
        assert!(template.contains(placeholder) && script.contains(placeholder));
        assert!(
            c["env"]
                .as_sequence()
                .expect("env")
                .iter()
                .any(|e| e["name"] == var && e["valueFrom"]["fieldRef"]["fieldPath"] == field),
            "env {var} from {field}"
        );
    }
    assert!(script.contains("exec shoal run --config"), "{script}");

    // Volumes: the ConfigMap and the token's Secret are mounted where the
    // config and the script look; writable paths are on the emptyDir.
    let mount_of = |volume: &str| -> String {
        let m = c["volumeMounts"]
            .as_sequence()
            .expect("volumeMounts")
            .iter()
            .find(|m| m["name"] == volume)
            .unwrap_or_else(|| panic!("no mount of volume {volume}"));
        str_of(&m["mountPath"], "mountPath").to_owned()
    };
    let volume = |name: &str| -> &Value {
        pod["volumes"]
            .as_sequence()
            .expect("volumes")
            .iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("no volume {name}"))
    };
    let cm_name = str_of(&config_map["metadata"]["name"], "ConfigMap name");
    let config_volume = pod["volumes"]
        .as_sequence()
        .expect("volumes")
        .iter()
        .find(|v| v["configMap"]["name"] == cm_name)
        .expect("the ConfigMap is mounted");
    let config_dir = mount_of(str_of(&config_volume["name"], "volume name"));
    assert!(
        script.contains(&format!("{config_dir}/shoal.toml")),
        "{script}"
    );
    let token_dir = mount_of("token");
    assert!(volume("token")["secret"]["secretName"].is_string());
    assert!(
        cfg.api.token_file.starts_with(&format!("{token_dir}/")),
        "token_file {} is not in the Secret's mount {token_dir}",
        cfg.api.token_file
    );
    let run_dir = mount_of("run");
    assert!(volume("run")["emptyDir"].is_mapping());
    assert!(
        script.contains(&format!("> {run_dir}/shoal.toml")),
        "{script}"
    );
    if let shoal::config::CacheDir::Dir(d) = &cfg.plugins.cache_dir {
        assert!(
            d.starts_with(&run_dir),
            "cache_dir on the writable emptyDir"
        );
    }
    assert_eq!(volume("plugins")["configMap"]["optional"], true);

    // Graceful stop: the grace period covers the preStop pause and the
    // drain (sender.timeout_ms), with room to spare.
    let grace = u64_of(
        &pod["terminationGracePeriodSeconds"],
        "terminationGracePeriodSeconds",
    );
    let pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
        .as_sequence()
        .and_then(|cmd| cmd.get(1))
        .and_then(|s| s.as_str())
        .and_then(|s| s.parse::<u64>().ok())
        .expect("preStop: sleep N");
    assert!(
        grace >= pre_stop + cfg.sender.timeout_ms.div_ceil(1000) + 5,
        "terminationGracePeriodSeconds {grace} leaves no time to leave gracefully"
    );
}
