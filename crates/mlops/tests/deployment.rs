//! The production artefacts, checked the way an operator would rely on them: the compose
//! stack points every service at the real peers (and every file it mounts exists), the
//! Helm chart renders (with `helm`, built from the Go module proxy by `tests/run.sh`) into
//! Deployments with probes, resources, pinned images and secrets kept out of ConfigMaps,
//! and the alert rules pass `promtool` (built the same way), unit tests included.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
};

use serde_yaml_ng::Value;

const SERVICES: [(&str, u16); 6] = [
    ("ingestion", 8080),
    ("registry", 8081),
    ("serving", 8082),
    ("feature", 8083),
    ("training", 8084),
    ("monitoring", 8085),
];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    let mut value: Value =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{path:?}: {e}"));
    value.apply_merge().expect("merge keys");
    value
}

/// A Go tool `tests/run.sh` built; the variable names it.
fn tool(variable: &str) -> PathBuf {
    std::env::var_os(variable)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            panic!("{variable} is not set: run the suite with tests/run.sh, which builds it")
        })
}

fn str_of<'a>(value: &'a Value, key: &str) -> &'a str {
    value[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} is not a string in {value:?}"))
}

/// `scheme://[user:pass@]host:port/rest` -> (host, port, rest).
fn host_port(url: &str) -> (String, Option<u16>, String) {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let (authority, path) = rest.split_once('/').unwrap_or((rest, ""));
    let (host, port) = match authority.split_once(':') {
        Some((h, p)) => (h, p.parse().ok()),
        None => (authority, None),
    };
    (host.to_owned(), port, path.to_owned())
}

#[test]
fn compose_points_every_service_at_the_production_peers() {
    let compose = yaml(&root().join("docker-compose.yml"));
    let services = &compose["services"];
    let image = |name: &str| str_of(&services[name], "image").to_owned();
    assert!(image("kafka").starts_with("apache/kafka:"));
    let kafka_env = &services["kafka"]["environment"];
    assert_eq!(
        str_of(kafka_env, "KAFKA_PROCESS_ROLES"),
        "broker,controller",
        "KRaft"
    );
    assert!(image("schema-registry").starts_with("confluentinc/cp-schema-registry:"));
    assert!(image("postgres").starts_with("postgres:"));
    assert!(image("minio").starts_with("minio/minio:"));
    assert!(image("jaeger").starts_with("jaegertracing/jaeger:"));
    assert!(image("prometheus").starts_with("prom/prometheus:"));
    assert!(image("grafana").starts_with("grafana/grafana:"));
    for (name, value) in services.as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        if let Some(image) = value["image"].as_str() {
            assert!(
                !image.ends_with(":latest") && image.contains(':'),
                "{name}: pin the image ({image})"
            );
        }
    }

    // Every file the stack mounts is in the repository.
    for (name, value) in services.as_mapping().unwrap() {
        let name = name.as_str().unwrap();
        for volume in value["volumes"].as_sequence().into_iter().flatten() {
            let source = volume.as_str().unwrap().split(':').next().unwrap();
            if source.starts_with("./") {
                assert!(
                    root().join(source).exists(),
                    "{name} mounts {source}, which does not exist"
                );
            }
        }
    }

    let databases = std::fs::read_to_string(root().join("infra/postgres/init.sql")).unwrap();
    let topics_script =
        std::fs::read_to_string(root().join("infra/kafka/create-topics.sh")).unwrap();
    let prometheus = yaml(&root().join("infra/prometheus/prometheus.yml"));
    let targets: Vec<&str> = prometheus["scrape_configs"][0]["static_configs"][0]["targets"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| t.as_str().unwrap())
        .collect();
    let bucket = services["minio-init"]["entrypoint"]
        .as_sequence()
        .and_then(|e| e.last())
        .and_then(Value::as_str)
        .and_then(|t| t.strip_prefix("store/"))
        .expect("minio-init makes a bucket")
        .to_owned();

    for (name, port) in SERVICES {
        let service = &services[name];
        let env = &service["environment"];
        let command: Vec<&str> = service["command"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        assert_eq!(command, ["service", name]);
        let (host, kafka_port, _) = host_port(str_of(env, "KAFKA_BOOTSTRAP_SERVERS"));
        assert_eq!((host.as_str(), kafka_port), ("kafka", Some(9092)), "{name}");
        let (host, _, _) = host_port(str_of(env, "SCHEMA_REGISTRY_URL"));
        assert_eq!(
            host, "schema-registry",
            "{name}: Confluent's, not the embedded one"
        );
        let (host, otlp, _) = host_port(str_of(env, "OTEL_EXPORTER_OTLP_ENDPOINT"));
        assert_eq!((host.as_str(), otlp), ("jaeger", Some(4318)), "{name}");
        assert_eq!(str_of(env, "OTEL_EXPORTER_OTLP_PROTOCOL"), "http/protobuf");
        let (host, _, _) = host_port(str_of(env, "AWS_ENDPOINT"));
        assert_eq!(host, "minio", "{name}");
        assert_eq!(
            str_of(env, &format!("MLOPS_{}_PORT", name.to_uppercase())),
            port.to_string()
        );
        assert!(
            targets.contains(&format!("{name}:{port}").as_str()),
            "Prometheus scrapes {name}:{port}: {targets:?}"
        );
        for (key, value) in env.as_mapping().unwrap() {
            let (key, value) = (key.as_str().unwrap(), value.as_str().unwrap_or_default());
            assert!(
                !value.contains("sqlite") && !value.starts_with("file:"),
                "{name}: {key}={value} is a local store"
            );
            if key.contains("PASSWORD") || key.contains("SECRET") {
                assert!(value.starts_with("${"), "{name}: {key} is a literal secret");
            }
        }
        let depends = &service["depends_on"];
        for job in ["kafka-init", "minio-init", "credentials"] {
            assert_eq!(
                depends[job]["condition"], "service_completed_successfully",
                "{name} waits for {job}"
            );
        }
        assert_eq!(
            str_of(env, "MLOPS_API_KEYS_FILE"),
            "/credentials/api-keys.json"
        );
        if let Some(url) = env["DATABASE_URL"].as_str() {
            let (host, _, database) = host_port(url);
            assert_eq!(host, "postgres", "{name}");
            assert!(
                databases.contains(&format!("CREATE DATABASE {database};")),
                "{name}'s database {database} is created by init.sql"
            );
        }
        for (key, value) in env.as_mapping().unwrap() {
            let key = key.as_str().unwrap();
            if key.ends_with("_URL") && key.starts_with("MLOPS__") {
                let value = value.as_str().unwrap();
                if let Some(s3) = value.strip_prefix("s3://") {
                    assert!(s3.starts_with(&format!("{bucket}/")), "{name}: {value}");
                } else {
                    let (host, port, _) = host_port(value);
                    let peer = SERVICES.iter().find(|(s, _)| *s == host);
                    assert_eq!(
                        peer.map(|(_, p)| Some(*p)),
                        Some(port),
                        "{name}: {key}={value} names a service and its port"
                    );
                }
            }
        }
    }
    for (name, _) in SERVICES {
        let needs_db = ["registry", "ingestion", "training"].contains(&name);
        assert_eq!(
            services[name]["environment"]["DATABASE_URL"].is_string(),
            needs_db,
            "{name}: PostgreSQL for the services that keep records"
        );
    }
    // The fixed topics exist before the services start; the audit trail is kept forever.
    for topic in [
        "labels",
        "training.requests",
        "training.runs",
        "models.lifecycle",
        "monitoring.drift",
        "monitoring.canary-decisions",
    ] {
        assert!(
            topics_script.contains(&format!("create {topic} ")),
            "{topic}"
        );
    }
    assert!(topics_script.contains("create audit.log 8 retention.ms=-1"));
    let grafana: Vec<&str> = services["grafana"]["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        grafana
            .iter()
            .any(|v| v.starts_with("./infra/grafana/provisioning:"))
    );
    assert!(
        grafana
            .iter()
            .any(|v| v.starts_with("./infra/grafana/dashboards:"))
    );
}

/// `helm template` of the chart with test values, as documents.
fn render(extra: &[&str]) -> Result<Vec<Value>, String> {
    let chart = root().join("infra/helm/mlops");
    let mut command = Command::new(tool("MLOPS_TEST_HELM"));
    command
        .args(["template", "prod"])
        .arg(&chart)
        .args(extra)
        .env(
            "HELM_CACHE_HOME",
            std::env::temp_dir().join("mlops-helm-cache"),
        )
        .env(
            "HELM_CONFIG_HOME",
            std::env::temp_dir().join("mlops-helm-config"),
        )
        .env(
            "HELM_DATA_HOME",
            std::env::temp_dir().join("mlops-helm-data"),
        );
    let output = command.output().expect("helm");
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    let text = String::from_utf8(output.stdout).unwrap();
    text.split("\n---")
        .map(|document| serde_yaml_ng::from_str::<Value>(document).map_err(|e| e.to_string()))
        .filter(|d| !matches!(d, Ok(Value::Null)))
        .collect()
}

const SECRET_VALUES: [&str; 7] = [
    "--set",
    "secrets.apiKeysJson=[]",
    "--set",
    "secrets.serviceToken=service-token-value",
    "--set",
    "secrets.signingKey=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    "--set",
];

fn full_values() -> Vec<&'static str> {
    let mut values = SECRET_VALUES.to_vec();
    values.extend([
        "secrets.kafkaSaslPassword=kafka-password-value",
        "--set",
        "secrets.databaseUrls.registry=postgres://u:db-password-value@pg/registry",
        "--set",
        "secrets.databaseUrls.ingestion=postgres://u:db-password-value@pg/ingestion",
        "--set",
        "secrets.databaseUrls.training=postgres://u:db-password-value@pg/training",
    ]);
    values
}

#[test]
fn the_helm_chart_renders_probed_bounded_scalable_deployments_with_secrets_apart() {
    let lint = Command::new(tool("MLOPS_TEST_HELM"))
        .arg("lint")
        .arg(root().join("infra/helm/mlops"))
        .args(full_values())
        .output()
        .expect("helm lint");
    assert!(
        lint.status.success(),
        "helm lint: {}",
        String::from_utf8_lossy(&lint.stdout)
    );
    let documents = render(&full_values()).expect("helm template");
    let of_kind =
        |kind: &str| -> Vec<&Value> { documents.iter().filter(|d| d["kind"] == kind).collect() };
    let chart = yaml(&root().join("infra/helm/mlops/Chart.yaml"));
    let app_version = str_of(&chart, "appVersion");

    let deployments = of_kind("Deployment");
    assert_eq!(deployments.len(), 6);
    for (name, port) in SERVICES {
        let deployment = deployments
            .iter()
            .find(|d| d["metadata"]["name"] == format!("prod-mlops-{name}"))
            .unwrap_or_else(|| panic!("no Deployment of {name}"));
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        let image = str_of(container, "image");
        assert!(
            image.ends_with(&format!(":{app_version}")),
            "{name}: image pinned to the chart's appVersion: {image}"
        );
        assert_eq!(container["args"][1], name);
        assert_eq!(
            container["ports"][0]["containerPort"].as_u64(),
            Some(port.into())
        );
        assert_eq!(
            container["livenessProbe"]["httpGet"]["path"], "/healthz",
            "{name}"
        );
        assert_eq!(
            container["readinessProbe"]["httpGet"]["path"], "/readyz",
            "{name}"
        );
        for bound in ["requests", "limits"] {
            for resource in ["cpu", "memory"] {
                assert!(
                    !container["resources"][bound][resource].is_null(),
                    "{name}: resources.{bound}.{resource}"
                );
            }
        }
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true, "{name}");
        let env: BTreeMap<&str, &Value> = container["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|e| (str_of(e, "name"), e))
            .collect();
        if ["registry", "ingestion", "training"].contains(&name) {
            assert_eq!(
                env["DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"],
                format!("database-url-{name}"),
                "{name}: its database URL (with its password) from the Secret"
            );
        }
        if ["training", "serving", "monitoring"].contains(&name) {
            let registry = env[format!("MLOPS__{}__REGISTRY_URL", name.to_uppercase()).as_str()];
            assert_eq!(registry["value"], "http://prod-mlops-registry:8081");
        }
    }
    let autoscaled: Vec<&str> = of_kind("HorizontalPodAutoscaler")
        .iter()
        .map(|h| h["spec"]["scaleTargetRef"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(autoscaled, ["prod-mlops-ingestion", "prod-mlops-serving"]);
    assert_eq!(of_kind("PodDisruptionBudget").len(), 6);
    assert_eq!(of_kind("Service").len(), 6);
    let job = of_kind("Job");
    let script = job[0]["spec"]["template"]["spec"]["containers"][0]["command"][2]
        .as_str()
        .unwrap();
    assert!(
        script.contains("create audit.log 8 --config retention.ms=-1"),
        "{script}"
    );
    assert!(script.contains("create models.lifecycle 3"), "{script}");

    // Secrets only in the Secret.
    let config = serde_yaml_ng::to_string(&of_kind("ConfigMap")).unwrap();
    for secret in [
        "service-token-value",
        "kafka-password-value",
        "db-password-value",
        "0123456789abcdef",
    ] {
        assert!(
            !config.contains(secret),
            "{secret} in a ConfigMap: {config}"
        );
        let in_secret = serde_yaml_ng::to_string(&of_kind("Secret")).unwrap();
        assert!(in_secret.contains(secret), "{secret} not in the Secret");
    }

    // A missing secret is named; an existing Secret replaces the generated one.
    let refused = render(&[]).expect_err("renders without secrets");
    assert!(refused.contains("secrets.apiKeysJson"), "{refused}");
    let with_own = render(&["--set", "existingSecret=platform-secrets"]).expect("existingSecret");
    assert!(with_own.iter().all(|d| d["kind"] != "Secret"));
    let registry = with_own
        .iter()
        .find(|d| d["kind"] == "Deployment" && d["metadata"]["name"] == "prod-mlops-registry")
        .unwrap();
    assert_eq!(
        registry["spec"]["template"]["spec"]["volumes"][0]["secret"]["secretName"],
        "platform-secrets"
    );
}

#[test]
fn the_alert_rules_and_prometheus_config_pass_promtool() {
    let promtool = tool("MLOPS_TEST_PROMTOOL");
    let dir = root().join("infra/prometheus");
    for args in [
        vec!["check", "rules", "alerts.yml"],
        vec!["test", "rules", "alerts.test.yml"],
        vec!["check", "config", "prometheus.yml"],
    ] {
        let output = Command::new(&promtool)
            .args(&args)
            .current_dir(&dir)
            .output()
            .expect("promtool");
        assert!(
            output.status.success(),
            "promtool {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}
