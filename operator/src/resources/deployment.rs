//! The broker's Deployment: one `starling-broker` container in managed mode, with its
//! configuration, credential and certificate mounted read-only, probes on `/healthz` and
//! `/readyz`, and a locked-down security context.
//!
//! The pod template carries a checksum over the ConfigMap and the credential Secret, so a change
//! to either rolls the pods. The TLS Secret is left out on purpose: it is mounted as a directory
//! (no `subPath`), the kubelet updates the files in place and the broker reloads them without a
//! restart.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::{
        apps::v1::{Deployment, DeploymentSpec, DeploymentStrategy, RollingUpdateDeployment},
        core::v1::{
            Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort,
            EmptyDirVolumeSource, EnvVar, ExecAction, HTTPGetAction, Lifecycle, LifecycleHandler,
            PodSecurityContext, PodSpec, PodTemplateSpec, Probe, ResourceRequirements,
            SeccompProfile, Secret, SecretVolumeSource, SecurityContext, Volume, VolumeMount,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};

use super::{
    BROKER_SECRET_KEY, CONFIG_KEY, DATA_DIR, HTTP_CONTAINER_PORT, MQTTS_CONTAINER_PORT, Settings,
    WSS_CONTAINER_PORT, checksum, labels, names, owned_meta, selector_labels,
};
use crate::crd::{Broker, ResourceAmounts};

/// Pod-template annotation with the checksum of the ConfigMap and the credential Secret.
pub const CHECKSUM_ANNOTATION: &str = "starling.dev/config-checksum";

/// Where the pod sees its files.
pub(crate) const CONFIG_DIR: &str = "/etc/starling";
pub(crate) const TLS_DIR: &str = "/etc/starling/tls";
pub(crate) const CREDENTIALS_DIR: &str = "/etc/starling/credentials";

/// The user the broker runs as (the distroless `nonroot` user).
const RUN_AS_USER: i64 = 65532;

/// Hex SHA-256 over every entry of the ConfigMap and of the credential Secret (not the TLS Secret).
pub fn config_checksum(config: &ConfigMap, credentials: &Secret) -> String {
    let mut parts: Vec<(String, Vec<u8>)> = Vec::new();
    for (k, v) in config.data.iter().flatten() {
        parts.push((format!("configmap/{k}"), v.as_bytes().to_vec()));
    }
    for (k, v) in credentials.data.iter().flatten() {
        parts.push((format!("secret/{k}"), v.0.clone()));
    }
    checksum(parts.iter().map(|(k, v)| (k.as_str(), v.as_slice())))
}

/// The broker's command line.
pub fn broker_args(b: &Broker, settings: &Settings, broker_id: &str) -> Vec<String> {
    let mut args = vec!["--config".to_owned(), format!("{CONFIG_DIR}/{CONFIG_KEY}")];
    if b.spec.listeners.mqtts.enabled {
        args.extend([
            "--mqtts".to_owned(),
            format!("0.0.0.0:{MQTTS_CONTAINER_PORT}"),
        ]);
    }
    if b.spec.listeners.wss.enabled {
        args.extend(["--wss".to_owned(), format!("0.0.0.0:{WSS_CONTAINER_PORT}")]);
    }
    args.extend([
        "--tls-cert".to_owned(),
        format!("{TLS_DIR}/tls.crt"),
        "--tls-key".to_owned(),
        format!("{TLS_DIR}/tls.key"),
        "--http".to_owned(),
        format!("0.0.0.0:{HTTP_CONTAINER_PORT}"),
        "--auth".to_owned(),
        "token".to_owned(),
        "--control-plane".to_owned(),
        settings.control_plane_url.clone(),
        "--broker-id".to_owned(),
        broker_id.to_owned(),
        "--broker-secret-file".to_owned(),
        format!("{CREDENTIALS_DIR}/{BROKER_SECRET_KEY}"),
        "--data-dir".to_owned(),
        DATA_DIR.to_owned(),
    ]);
    for url in &settings.cluster_nats {
        args.extend(["--cluster-nats".to_owned(), url.clone()]);
    }
    args
}

fn amounts(
    a: Option<&ResourceAmounts>,
    cpu: Option<&str>,
    memory: Option<&str>,
) -> Option<BTreeMap<String, Quantity>> {
    let cpu = a.and_then(|a| a.cpu.clone()).or(cpu.map(str::to_owned));
    let memory = a
        .and_then(|a| a.memory.clone())
        .or(memory.map(str::to_owned));
    let mut m = BTreeMap::new();
    if let Some(c) = cpu {
        m.insert("cpu".to_owned(), Quantity(c));
    }
    if let Some(mem) = memory {
        m.insert("memory".to_owned(), Quantity(mem));
    }
    (!m.is_empty()).then_some(m)
}

fn resources(b: &Broker) -> ResourceRequirements {
    let r = b.spec.resources.as_ref();
    ResourceRequirements {
        requests: amounts(
            r.and_then(|r| r.requests.as_ref()),
            Some("100m"),
            Some("64Mi"),
        ),
        limits: amounts(r.and_then(|r| r.limits.as_ref()), None, Some("512Mi")),
        ..ResourceRequirements::default()
    }
}

fn http_get(path: &str) -> HTTPGetAction {
    HTTPGetAction {
        path: Some(path.to_owned()),
        port: IntOrString::String("http".to_owned()),
        scheme: Some("HTTP".to_owned()),
        ..HTTPGetAction::default()
    }
}

/// The pod's grace period: the preStop drain (its deadline, the broker's answer slack of 5 s
/// and the store's last write) with room to spare; the SIGTERM after it finds nothing left.
pub(crate) const TERMINATION_GRACE_SECS: i64 = super::config::DRAIN_TIMEOUT_SECS as i64 + 15;

/// Where the broker's image keeps its binary.
pub(crate) const BROKER_BINARY: &str = "/usr/local/bin/starling-broker";

/// Before the kubelet's SIGTERM, `starling-broker drain` inside the container: `/drain` on the
/// internal HTTP port over loopback (the only peer it answers, so whoever scrapes `/metrics`
/// cannot stop the broker). The broker stops accepting, sends DISCONNECT 0x8B (with a Server
/// Reference when it has siblings), drains and writes its store, and the command exits when
/// done. An exec hook of the broker's own binary, as the distroless image has no shell.
fn drain_hook() -> Lifecycle {
    Lifecycle {
        pre_stop: Some(LifecycleHandler {
            exec: Some(ExecAction {
                command: Some(drain_command()),
            }),
            ..LifecycleHandler::default()
        }),
        ..Lifecycle::default()
    }
}

/// The preStop command.
pub(crate) fn drain_command() -> Vec<String> {
    vec![
        BROKER_BINARY.to_owned(),
        "drain".to_owned(),
        "--http".to_owned(),
        format!("127.0.0.1:{HTTP_CONTAINER_PORT}"),
        "--timeout-secs".to_owned(),
        TERMINATION_GRACE_SECS.to_string(),
    ]
}

fn http_probe(path: &str, period: i32, failure_threshold: i32) -> Probe {
    Probe {
        http_get: Some(http_get(path)),
        period_seconds: Some(period),
        timeout_seconds: Some(2),
        failure_threshold: Some(failure_threshold),
        ..Probe::default()
    }
}

fn port(name: &str, port: i32) -> ContainerPort {
    ContainerPort {
        name: Some(name.to_owned()),
        container_port: port,
        protocol: Some("TCP".to_owned()),
        ..ContainerPort::default()
    }
}

pub(super) fn mount(name: &str, path: &str) -> VolumeMount {
    VolumeMount {
        name: name.to_owned(),
        mount_path: path.to_owned(),
        read_only: Some(true),
        ..VolumeMount::default()
    }
}

pub(super) fn secret_volume(name: &str, secret: String) -> Volume {
    Volume {
        name: name.to_owned(),
        secret: Some(SecretVolumeSource {
            secret_name: Some(secret),
            default_mode: Some(0o440),
            ..SecretVolumeSource::default()
        }),
        ..Volume::default()
    }
}

/// How the pods are replaced. A claim (`spec.storage`) is ReadWriteOnce: the old pod goes before
/// the new one starts (`Recreate`), so the volume is never wanted on two nodes at once. Without
/// one, the new pod starts and becomes ready before the old one stops.
fn strategy(b: &Broker) -> DeploymentStrategy {
    if b.spec.storage.is_some() {
        DeploymentStrategy {
            type_: Some("Recreate".to_owned()),
            rolling_update: None,
        }
    } else {
        DeploymentStrategy {
            type_: Some("RollingUpdate".to_owned()),
            rolling_update: Some(RollingUpdateDeployment {
                max_surge: Some(IntOrString::Int(1)),
                max_unavailable: Some(IntOrString::Int(0)),
            }),
        }
    }
}

/// The broker's Deployment. `broker_id` is the api's id; `checksum` comes from
/// [`config_checksum`].
pub fn desired_deployment(
    b: &Broker,
    settings: &Settings,
    broker_id: &str,
    checksum: &str,
) -> Deployment {
    let mut ports = Vec::new();
    if b.spec.listeners.mqtts.enabled {
        ports.push(port("mqtts", MQTTS_CONTAINER_PORT));
    }
    if b.spec.listeners.wss.enabled {
        ports.push(port("wss", WSS_CONTAINER_PORT));
    }
    ports.push(port("http", HTTP_CONTAINER_PORT));

    let container = Container {
        name: "broker".to_owned(),
        image: Some(
            b.spec
                .image
                .clone()
                .unwrap_or_else(|| settings.default_image.clone()),
        ),
        image_pull_policy: b.spec.image_pull_policy.map(|p| p.as_str().to_owned()),
        args: Some(broker_args(b, settings, broker_id)),
        env: Some(vec![EnvVar {
            name: "RUST_LOG".to_owned(),
            value: Some("info".to_owned()),
            ..EnvVar::default()
        }]),
        ports: Some(ports),
        readiness_probe: Some(http_probe("/readyz", 5, 3)),
        liveness_probe: Some(http_probe("/healthz", 10, 6)),
        lifecycle: Some(drain_hook()),
        resources: Some(resources(b)),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            run_as_non_root: Some(true),
            run_as_user: Some(RUN_AS_USER),
            run_as_group: Some(RUN_AS_USER),
            capabilities: Some(Capabilities {
                drop: Some(vec!["ALL".to_owned()]),
                ..Capabilities::default()
            }),
            ..SecurityContext::default()
        }),
        volume_mounts: Some(vec![
            mount("config", CONFIG_DIR),
            mount("tls", TLS_DIR),
            mount("credentials", CREDENTIALS_DIR),
            VolumeMount {
                name: super::data_volume_name(b).to_owned(),
                mount_path: DATA_DIR.to_owned(),
                ..VolumeMount::default()
            },
            VolumeMount {
                name: "tmp".to_owned(),
                mount_path: "/tmp".to_owned(),
                ..VolumeMount::default()
            },
        ]),
        ..Container::default()
    };

    let volumes = vec![
        Volume {
            name: "config".to_owned(),
            config_map: Some(ConfigMapVolumeSource {
                name: names::config(b),
                ..ConfigMapVolumeSource::default()
            }),
            ..Volume::default()
        },
        secret_volume("tls", names::tls(b)),
        secret_volume("credentials", names::credentials(b)),
        super::data_volume(b),
        Volume {
            name: "tmp".to_owned(),
            empty_dir: Some(EmptyDirVolumeSource {
                size_limit: Some(Quantity("16Mi".to_owned())),
                ..EmptyDirVolumeSource::default()
            }),
            ..Volume::default()
        },
    ];

    Deployment {
        metadata: owned_meta(b, names::workload(b)),
        spec: Some(DeploymentSpec {
            replicas: Some(b.spec.replicas),
            selector: LabelSelector {
                match_labels: Some(selector_labels(b)),
                ..LabelSelector::default()
            },
            strategy: Some(strategy(b)),
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta {
                    labels: Some(labels(b)),
                    annotations: Some(BTreeMap::from([(
                        CHECKSUM_ANNOTATION.to_owned(),
                        checksum.to_owned(),
                    )])),
                    ..ObjectMeta::default()
                }),
                spec: Some(PodSpec {
                    containers: vec![container],
                    volumes: Some(volumes),
                    automount_service_account_token: Some(false),
                    enable_service_links: Some(false),
                    termination_grace_period_seconds: Some(TERMINATION_GRACE_SECS),
                    topology_spread_constraints: super::spread(b).0,
                    affinity: super::spread(b).1,
                    security_context: Some(PodSecurityContext {
                        run_as_non_root: Some(true),
                        run_as_user: Some(RUN_AS_USER),
                        run_as_group: Some(RUN_AS_USER),
                        fs_group: Some(RUN_AS_USER),
                        seccomp_profile: Some(SeccompProfile {
                            type_: "RuntimeDefault".to_owned(),
                            ..SeccompProfile::default()
                        }),
                        ..PodSecurityContext::default()
                    }),
                    ..PodSpec::default()
                }),
            },
            ..DeploymentSpec::default()
        }),
        ..Deployment::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        crd::Broker,
        resources::{
            Credentials, desired_config_map, desired_credentials_secret,
            fixtures::{broker, settings},
        },
    };

    fn pod(d: &Deployment) -> PodSpec {
        d.spec
            .as_ref()
            .and_then(|s| s.template.spec.clone())
            .expect("pod spec")
    }

    fn container(d: &Deployment) -> Container {
        pod(d).containers[0].clone()
    }

    fn sum(b: &Broker, secret: &str) -> String {
        let creds = Credentials {
            broker_id: "brk_1".to_owned(),
            secret: secret.to_owned().into(),
        };
        config_checksum(
            &desired_config_map(b, &settings().broker_hook, None).expect("renders"),
            &desired_credentials_secret(b, &creds),
        )
    }

    #[test]
    fn the_container_runs_the_broker_in_managed_mode_with_every_listener() {
        let b = broker(serde_json::json!({}));
        let d = desired_deployment(&b, &settings(), "brk_1", "abc");
        let c = container(&d);
        assert_eq!(
            c.image.as_deref(),
            Some("ghcr.io/starling-mqtt/starling-broker:0.1.0")
        );
        let args = c.args.expect("args").join(" ");
        assert_eq!(
            args,
            "--config /etc/starling/broker.toml --mqtts 0.0.0.0:8883 --wss 0.0.0.0:8443 \
             --tls-cert /etc/starling/tls/tls.crt --tls-key /etc/starling/tls/tls.key --http 0.0.0.0:9090 \
             --auth token --control-plane http://starling-api-internal.starling-system.svc:8081 \
             --broker-id brk_1 --broker-secret-file /etc/starling/credentials/broker-secret \
             --data-dir /var/lib/starling"
        );
        let ports: Vec<(String, i32)> = c
            .ports
            .expect("ports")
            .into_iter()
            .map(|p| (p.name.unwrap_or_default(), p.container_port))
            .collect();
        assert_eq!(
            ports,
            [
                ("mqtts".to_owned(), 8883),
                ("wss".to_owned(), 8443),
                ("http".to_owned(), 9090)
            ]
        );
    }

    #[test]
    fn probes_hit_healthz_and_readyz_on_the_http_port() {
        let c = container(&desired_deployment(
            &broker(serde_json::json!({})),
            &settings(),
            "brk_1",
            "abc",
        ));
        let path = |p: Option<Probe>| {
            p.and_then(|p| p.http_get)
                .map(|h| (h.path.unwrap_or_default(), h.port))
        };
        assert_eq!(
            path(c.liveness_probe),
            Some((
                "/healthz".to_owned(),
                IntOrString::String("http".to_owned())
            ))
        );
        assert_eq!(
            path(c.readiness_probe),
            Some(("/readyz".to_owned(), IntOrString::String("http".to_owned())))
        );
    }

    #[test]
    fn a_prestop_hook_drains_the_broker_within_the_grace_period() {
        let d = desired_deployment(&broker(serde_json::json!({})), &settings(), "brk_1", "abc");
        let pod = pod(&d);
        let hook = pod.containers[0]
            .lifecycle
            .clone()
            .and_then(|l| l.pre_stop)
            .and_then(|h| h.exec)
            .and_then(|e| e.command)
            .expect("a preStop exec");
        assert_eq!(
            hook,
            [
                "/usr/local/bin/starling-broker",
                "drain",
                "--http",
                "127.0.0.1:9090",
                "--timeout-secs",
                &TERMINATION_GRACE_SECS.to_string()
            ]
        );
        let grace = pod.termination_grace_period_seconds.expect("grace period");
        // The drain deadline, the broker's 5 s answer slack, and room for the store's last write.
        assert!(
            grace >= super::super::config::DRAIN_TIMEOUT_SECS as i64 + 10,
            "grace {grace}"
        );
    }

    #[test]
    fn the_pod_is_non_root_read_only_and_cannot_escalate() {
        let d = desired_deployment(&broker(serde_json::json!({})), &settings(), "brk_1", "abc");
        let pod = pod(&d);
        let sc = pod.containers[0]
            .security_context
            .clone()
            .expect("security context");
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(sc.read_only_root_filesystem, Some(true));
        assert_eq!(sc.run_as_non_root, Some(true));
        assert_eq!(
            sc.capabilities.and_then(|c| c.drop),
            Some(vec!["ALL".to_owned()])
        );
        assert_eq!(
            pod.security_context.and_then(|s| s.run_as_non_root),
            Some(true)
        );
        assert_eq!(pod.automount_service_account_token, Some(false));
        let mounts = pod.containers[0].volume_mounts.clone().expect("mounts");
        assert!(
            mounts
                .iter()
                .filter(|m| m.name != "tmp" && m.mount_path != DATA_DIR)
                .all(|m| m.read_only == Some(true))
        );
        assert!(
            mounts.iter().all(|m| m.sub_path.is_none()),
            "subPath mounts would never see renewed certificates"
        );
    }

    #[test]
    fn resource_requests_have_defaults_and_the_spec_overrides_them() {
        let c = container(&desired_deployment(
            &broker(serde_json::json!({})),
            &settings(),
            "b",
            "x",
        ));
        let r = c.resources.expect("resources");
        assert_eq!(
            r.requests.expect("requests")["cpu"],
            Quantity("100m".to_owned())
        );
        let b = broker(
            serde_json::json!({"resources": {"requests": {"cpu": "250m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}}}),
        );
        let r = container(&desired_deployment(&b, &settings(), "b", "x"))
            .resources
            .expect("resources");
        let req = r.requests.expect("requests");
        assert_eq!(req["cpu"], Quantity("250m".to_owned()));
        assert_eq!(req["memory"], Quantity("128Mi".to_owned()));
        assert_eq!(
            r.limits.expect("limits")["memory"],
            Quantity("1Gi".to_owned())
        );
    }

    #[test]
    fn the_pods_mount_the_external_tls_secret_when_one_is_named() {
        let b = broker(serde_json::json!({"tls": {"secretName": "mqtt-example-com"}}));
        let d = desired_deployment(&b, &settings(), "b", "x");
        let vols = d
            .spec
            .and_then(|s| s.template.spec)
            .and_then(|p| p.volumes)
            .expect("volumes");
        let tls = vols
            .iter()
            .find(|v| v.name == "tls")
            .and_then(|v| v.secret.clone())
            .expect("tls volume");
        assert_eq!(tls.secret_name.as_deref(), Some("mqtt-example-com"));
    }

    #[test]
    fn the_checksum_follows_config_and_credentials_and_lands_on_the_pod_template() {
        let b = broker(serde_json::json!({}));
        let base = sum(&b, "one");
        assert_eq!(base, sum(&b, "one"));
        assert_ne!(base, sum(&b, "two"), "a new credential rolls the pods");
        let limited = broker(serde_json::json!({"limits": {"maxConnections": 10}}));
        assert_ne!(base, sum(&limited, "one"), "a config change rolls the pods");
        let d = desired_deployment(&b, &settings(), "brk_1", &base);
        let ann = d
            .spec
            .and_then(|s| s.template.metadata)
            .and_then(|m| m.annotations)
            .expect("annotations");
        assert_eq!(ann[CHECKSUM_ANNOTATION], base);
    }

    #[test]
    fn replicas_and_disabled_listeners_follow_the_spec() {
        let b =
            broker(serde_json::json!({"replicas": 0, "listeners": {"wss": {"enabled": false}}}));
        let d = desired_deployment(&b, &settings(), "b", "x");
        assert_eq!(d.spec.as_ref().and_then(|s| s.replicas), Some(0));
        let args = container(&d).args.expect("args");
        assert!(!args.contains(&"--wss".to_owned()));
        assert!(args.contains(&"--mqtts".to_owned()));
    }

    fn data_mount(d: &Deployment) -> (String, Volume) {
        let pod = pod(d);
        let m = pod.containers[0]
            .volume_mounts
            .clone()
            .expect("mounts")
            .into_iter()
            .find(|m| m.mount_path == DATA_DIR)
            .expect("a data mount");
        assert_ne!(m.read_only, Some(true));
        let v = pod
            .volumes
            .expect("volumes")
            .into_iter()
            .find(|v| v.name == m.name)
            .expect("a data volume");
        (m.mount_path, v)
    }

    #[test]
    fn the_brokers_join_the_operators_nats_cluster_when_it_has_one() {
        let mut s = settings();
        s.cluster_nats = vec![
            "nats://nats-0.nats:4222".to_owned(),
            "nats://nats-1.nats:4222".to_owned(),
        ];
        let b = broker(serde_json::json!({"replicas": 3}));
        let args = container(&desired_deployment(&b, &s, "b", "x"))
            .args
            .expect("args")
            .join(" ");
        assert!(
            args.ends_with(
                "--cluster-nats nats://nats-0.nats:4222 --cluster-nats nats://nats-1.nats:4222"
            ),
            "{args}"
        );
        let plain = container(&desired_deployment(&b, &settings(), "b", "x"))
            .args
            .expect("args");
        assert!(!plain.contains(&"--cluster-nats".to_owned()));
    }

    #[test]
    fn storage_mounts_the_claim_at_the_data_dir_and_replaces_pods_with_recreate() {
        let b = broker(serde_json::json!({"storage": {"size": "1Gi"}}));
        let d = desired_deployment(&b, &settings(), "b", "x");
        let (path, v) = data_mount(&d);
        assert_eq!(path, DATA_DIR);
        assert_eq!(
            v.persistent_volume_claim.map(|c| c.claim_name).as_deref(),
            Some("sensors-data")
        );
        let strategy = d
            .spec
            .as_ref()
            .and_then(|s| s.strategy.clone())
            .expect("strategy");
        assert_eq!(strategy.type_.as_deref(), Some("Recreate"));
        assert!(strategy.rolling_update.is_none());
        let args = container(&d).args.expect("args").join(" ");
        assert!(args.ends_with("--data-dir /var/lib/starling"), "{args}");
    }

    #[test]
    fn without_storage_the_data_dir_is_an_empty_dir_and_pods_roll_with_a_surge() {
        let b = broker(serde_json::json!({}));
        let d = desired_deployment(&b, &settings(), "b", "x");
        let (path, v) = data_mount(&d);
        assert_eq!(path, DATA_DIR);
        assert!(v.empty_dir.is_some());
        let strategy = d
            .spec
            .as_ref()
            .and_then(|s| s.strategy.clone())
            .expect("strategy");
        assert_eq!(strategy.type_.as_deref(), Some("RollingUpdate"));
        let ru = strategy.rolling_update.expect("rolling update");
        assert_eq!(ru.max_surge, Some(IntOrString::Int(1)));
        assert_eq!(ru.max_unavailable, Some(IntOrString::Int(0)));
    }
}
