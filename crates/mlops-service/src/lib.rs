//! Start-up shared by every service: the config sections they all have, the readiness
//! probes of the platform's dependencies, and `main()` itself (config, telemetry, bind,
//! run until a signal, drain). A service provides only its [`ServiceConfig`] and its `run`.

mod api_error;
pub mod audit;
pub mod auth;
pub mod database;
mod duration;
pub mod jwt;
pub mod objects;
pub mod routes;
pub mod sealing;
pub mod starting;

pub use api_error::ApiError;
pub use duration::parse_duration;

use std::{future::Future, net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use mlops_kafka::KafkaConfig;
use mlops_runtime::{ReadinessCheck, Secret, load_config, tasks::TaskSet};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// The allocator of every process that links this crate (each service, `mlops`). Request
/// paths allocate many short-lived blocks on one thread and free them on another (hyper's
/// 8 KiB read buffers, request and answer bodies, librdkafka's per-message copies);
/// glibc's allocator spent about a fifth of a single ingested event's CPU on them
/// (`load-tests/README.md`), mimalloc's thread-local free lists far less.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Time given to in-flight work after SIGTERM before tasks are aborted.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Default ports of the platform, each overridable by `MLOPS_<SERVICE>_PORT`.
pub mod ports {
    pub const BROKER: u16 = 9092;
    pub const INGESTION: u16 = 8080;
    pub const REGISTRY: u16 = 8081;
    pub const SERVING: u16 = 8082;
    pub const FEATURE: u16 = 8083;
    pub const TRAINING: u16 = 8084;
    pub const MONITORING: u16 = 8085;
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpConfig {
    pub host: String,
    pub port: u16,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_owned(),
            port: 0,
        }
    }
}

impl HttpConfig {
    pub fn addr(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SchemaRegistryConfig {
    /// Base URL of a Confluent-compatible Schema Registry (`SCHEMA_REGISTRY_URL`).
    pub url: String,
    /// Bound on each request to it.
    pub timeout_ms: u64,
    /// Tries of a request that failed transiently (unreachable, timeout, 5xx), in all.
    pub attempts: u32,
}

impl Default for SchemaRegistryConfig {
    fn default() -> Self {
        Self {
            url: format!("http://127.0.0.1:{}", ports::REGISTRY),
            timeout_ms: mlops_schema::DEFAULT_TIMEOUT.as_millis() as u64,
            attempts: mlops_schema::DEFAULT_ATTEMPTS,
        }
    }
}

/// The sections every service has. Services flatten it into their own config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
// No deny_unknown_fields: services flatten these sections into their own config,
// and the config loader already refuses settings that do not exist.
#[serde(default)]
pub struct CommonConfig {
    pub http: HttpConfig,
    pub kafka: KafkaConfig,
    pub schema_registry: SchemaRegistryConfig,
    /// Where the service keeps local state (`MLOPS_DATA_DIR`).
    pub data_dir: PathBuf,
    pub database: DatabaseConfig,
    pub auth: AuthConfig,
    pub tls: TlsConfig,
    pub encryption: EncryptionConfig,
    /// Residency region of this service (`MLOPS_REGION`): it refuses data of another.
    pub region: Option<String>,
}

/// Encryption at rest of what the service writes to its object store.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncryptionConfig {
    /// AES-256 keys by name and the current one's name, a JSON file (a mounted secret;
    /// `MLOPS_ENCRYPTION_KEYS_FILE`). Unset: objects are written in clear.
    pub keys_file: Option<PathBuf>,
}

/// HTTPS: what this service serves with, and what it trusts when it calls the others.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain and key: the API is served over TLS only (`MLOPS_TLS_CERT_FILE`,
    /// `MLOPS_TLS_KEY_FILE`); SIGHUP reads them again.
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// Clients must present a certificate signed by this CA (mutual TLS).
    pub client_ca_file: Option<PathBuf>,
    /// The CA that signed the other services' certificates (`MLOPS_TLS_CA_FILE`): this
    /// service's clients trust it.
    pub ca_file: Option<PathBuf>,
    /// The certificate and key this service presents when another asks for one.
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

/// Who may call this service, and how it proves itself to the others.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    /// `enabled` (the default) or `disabled` (`MLOPS_AUTH_MODE`): every endpoint but the
    /// probes then answers anyone, and the service says so loudly at start.
    pub mode: AuthMode,
    /// The API keys accepted, a JSON list of SHA-256 hashes and their principals
    /// (`MLOPS_API_KEYS_FILE`); `<data_dir>/api-keys.json` when unset.
    pub api_keys_file: Option<PathBuf>,
    /// The token this service presents to the platform's other services and its Schema
    /// Registry (`MLOPS_SERVICE_TOKEN`, or a file named by `MLOPS_SERVICE_TOKEN_FILE`).
    pub service_token: Option<Secret>,
    /// Whether `/metrics` asks for a reader's token too.
    pub protect_metrics: bool,
    /// JWTs of an OpenID Connect provider are accepted too, checked against its keys:
    /// a JWKS URL (`https://idp/.well-known/jwks.json`) or file (`MLOPS_JWKS`).
    pub jwks: Option<String>,
    /// The `iss` every accepted JWT must carry.
    pub jwt_issuer: Option<String>,
    /// The `aud` every accepted JWT must carry.
    pub jwt_audience: Option<String>,
    /// The claim listing a JWT's platform roles (a list, or names separated by spaces).
    pub jwt_roles_claim: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AuthMode {
    #[default]
    Enabled,
    Disabled,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            mode: AuthMode::Enabled,
            api_keys_file: None,
            service_token: None,
            protect_metrics: false,
            jwks: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwt_roles_claim: "roles".to_owned(),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseConfig {
    /// `sqlite://...` or `postgres://...` (`DATABASE_URL`); when unset, a SQLite file
    /// named after the service in the data directory.
    pub url: Option<String>,
}

impl CommonConfig {
    pub fn with_port(port: u16) -> Self {
        Self {
            http: HttpConfig {
                port,
                ..HttpConfig::default()
            },
            kafka: KafkaConfig::default(),
            schema_registry: SchemaRegistryConfig::default(),
            data_dir: PathBuf::from(".mlops"),
            database: DatabaseConfig::default(),
            auth: AuthConfig::default(),
            tls: TlsConfig::default(),
            encryption: EncryptionConfig::default(),
            region: None,
        }
    }

    /// The configured database URL, or `sqlite://<data_dir>/<service>.db`.
    pub fn database_url(&self, service: &str) -> String {
        self.database.url.clone().unwrap_or_else(|| {
            format!(
                "sqlite://{}",
                self.data_dir.join(format!("{service}.db")).display()
            )
        })
    }

    pub fn validate(&self) -> Vec<String> {
        let mut errors = self.kafka.validate();
        if !(self.schema_registry.url.starts_with("http://")
            || self.schema_registry.url.starts_with("https://"))
        {
            errors.push(format!(
                "schema_registry.url: {:?} is not an http(s) URL",
                self.schema_registry.url
            ));
        }
        if self.schema_registry.timeout_ms == 0 {
            errors.push("schema_registry.timeout_ms: must be positive".to_owned());
        }
        if self.schema_registry.attempts == 0 {
            errors.push("schema_registry.attempts: must be at least 1".to_owned());
        }
        let tls = &self.tls;
        for (a, b, what) in [
            (
                &tls.cert_file,
                &tls.key_file,
                "tls.cert_file and tls.key_file",
            ),
            (
                &tls.client_cert_file,
                &tls.client_key_file,
                "tls.client_cert_file and tls.client_key_file",
            ),
        ] {
            if a.is_some() != b.is_some() {
                errors.push(format!("{what}: set both or neither"));
            }
        }
        if tls.client_ca_file.is_some() && tls.cert_file.is_none() {
            errors.push(
                "tls.client_ca_file: mutual TLS needs tls.cert_file and tls.key_file".to_owned(),
            );
        }
        errors
    }

    /// Probes of the broker and the Schema Registry, for `/readyz`.
    pub fn readiness_checks(&self) -> Vec<ReadinessCheck> {
        vec![
            broker_check(&self.kafka),
            schema_registry_check(
                &self.schema_registry.url,
                self.http_client(Duration::from_secs(2)),
            ),
        ]
    }

    /// The one Schema Registry client of a service, shared by its codec and its API; it
    /// presents the service token.
    pub fn schema_registry_client(&self) -> mlops_schema::SchemaRegistry {
        let timeout = Duration::from_millis(self.schema_registry.timeout_ms);
        mlops_schema::SchemaRegistry::with_client(
            &self.schema_registry.url,
            self.http_client(timeout),
            self.schema_registry.attempts,
        )
    }

    /// An Avro codec on that client.
    pub fn codec(&self) -> mlops_schema::AvroCodec {
        mlops_schema::AvroCodec::with_registry(self.schema_registry_client())
    }

    /// The sealer of the objects this service stores, when encryption at rest is on.
    pub fn sealer(&self) -> anyhow::Result<Option<std::sync::Arc<sealing::Sealer>>> {
        match &self.encryption.keys_file {
            None => Ok(None),
            Some(path) => sealing::Sealer::from_file(path)
                .map(|s| Some(std::sync::Arc::new(s)))
                .map_err(|e| anyhow::anyhow!("encryption: {e}")),
        }
    }

    /// The file of accepted API keys.
    pub fn api_keys_file(&self) -> PathBuf {
        self.auth
            .api_keys_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("api-keys.json"))
    }

    /// `router` with `admin`'s probes, behind the service's one layer: request telemetry
    /// (`admin`'s counters and server spans) around the authorisation that reads the route
    /// `tables` and writes to `audit`. When auth is disabled, nobody is asked for
    /// credentials and the service says so in a warning no operator can miss.
    pub async fn protect(
        &self,
        service: &str,
        router: axum::Router,
        tables: &[&'static [routes::Route]],
        audit: Option<audit::Auditor>,
        admin: &mlops_runtime::admin::AdminState,
    ) -> anyhow::Result<axum::Router> {
        let auth = match self.auth.mode {
            AuthMode::Disabled => {
                tracing::warn!(
                    service,
                    "AUTHENTICATION IS DISABLED (auth.mode = \"disabled\"): every endpoint of \
                     this service answers anyone who can reach it"
                );
                None
            }
            AuthMode::Enabled => {
                let path = self.api_keys_file();
                let jwt = match &self.auth.jwks {
                    None => None,
                    Some(jwks) => Some(
                        jwt::JwtVerifier::load(
                            jwks,
                            self.auth.jwt_issuer.clone(),
                            self.auth.jwt_audience.clone(),
                            self.auth.jwt_roles_claim.clone(),
                            self.http_client(Duration::from_secs(10)),
                        )
                        .await
                        .map_err(|e| anyhow::anyhow!("auth.jwks: {e}"))?,
                    ),
                };
                // With an identity provider, API keys are optional.
                let text = if jwt.is_some() && !path.exists() {
                    Ok("[]".to_owned())
                } else {
                    std::fs::read_to_string(&path)
                };
                let text = text.map_err(|e| {
                    anyhow::anyhow!(
                        "auth is enabled but the API keys file {} cannot be read ({e}): \
                         `mlops up` writes one; set auth.api_keys_file (MLOPS_API_KEYS_FILE) \
                         to yours, or auth.mode = \"disabled\" to run without authentication",
                        path.display()
                    )
                })?;
                let keys = auth::ApiKeys::from_json(&text)
                    .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
                Some(auth::Authenticator::new(keys, jwt))
            }
        };
        Ok(auth::Gate::new(auth, tables)
            .protect_metrics(self.auth.protect_metrics)
            .audit(audit)
            .telemetry(admin.clone())
            .protect(router.merge(admin.router())))
    }

    /// Serves `router` on `listener` until `cancel` fires: over TLS when `tls.cert_file`
    /// is set, plain HTTP otherwise.
    pub async fn serve(
        &self,
        listener: TcpListener,
        router: axum::Router,
        cancel: CancellationToken,
    ) -> anyhow::Result<()> {
        self.serve_on_lanes(listener, router, cancel, 0).await
    }

    /// [`Self::serve`] on `lanes` threads of their own, plain HTTP or TLS
    /// (`mlops_runtime::lanes`; 0: the shared runtime). Only for an API whose handlers
    /// start no task that outlives a request and never block in place.
    pub async fn serve_on_lanes(
        &self,
        listener: TcpListener,
        router: axum::Router,
        cancel: CancellationToken,
        lanes: usize,
    ) -> anyhow::Result<()> {
        match (&self.tls.cert_file, &self.tls.key_file) {
            (Some(cert), Some(key)) => {
                let tls = mlops_runtime::tls::ServerTls::load(
                    cert,
                    key,
                    self.tls.client_ca_file.as_deref(),
                )
                .map_err(|e| anyhow::anyhow!("tls: {e}"))?;
                mlops_runtime::lanes::serve_tls_on_lanes(listener, tls, router, cancel, lanes)
                    .await?;
            }
            _ => {
                mlops_runtime::lanes::serve_on_lanes(listener, router, cancel, lanes).await?;
            }
        }
        Ok(())
    }

    /// An HTTP client for the platform's other services: it presents the service token.
    pub fn http_client(&self, timeout: Duration) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(token) = &self.auth.service_token
            && let Ok(mut value) =
                reqwest::header::HeaderValue::from_str(&format!("Bearer {}", token.expose()))
        {
            value.set_sensitive(true);
            headers.insert(reqwest::header::AUTHORIZATION, value);
        }
        let mut builder = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(timeout)
            .default_headers(headers);
        // Files were checked at start (`check_files`): a client is built whatever happens.
        if let Some(ca) = &self.tls.ca_file
            && let Ok(pem) = std::fs::read(ca)
        {
            for cert in reqwest::Certificate::from_pem_bundle(&pem).unwrap_or_default() {
                builder = builder.add_root_certificate(cert);
            }
        }
        if let (Some(cert), Some(key)) = (&self.tls.client_cert_file, &self.tls.client_key_file)
            && let (Ok(mut pem), Ok(key)) = (std::fs::read(cert), std::fs::read(key))
        {
            pem.extend_from_slice(&key);
            if let Ok(identity) = reqwest::Identity::from_pem(&pem) {
                builder = builder.identity(identity);
            }
        }
        builder
            .build()
            .expect("an HTTP client with a timeout and default headers")
    }
}

impl Default for CommonConfig {
    fn default() -> Self {
        Self::with_port(0)
    }
}

pub fn broker_check(kafka: &KafkaConfig) -> ReadinessCheck {
    let kafka = kafka.clone();
    ReadinessCheck::new("broker", move || {
        let kafka = kafka.clone();
        async move {
            mlops_kafka::check_broker(&kafka, Duration::from_secs(2))
                .await
                .map_err(|e| e.to_string())
        }
    })
}

pub fn schema_registry_check(url: &str, client: reqwest::Client) -> ReadinessCheck {
    let url = format!("{}/subjects", url.trim_end_matches('/'));
    ReadinessCheck::new("schema_registry", move || {
        let request = client.get(&url);
        async move {
            let response = request.send().await.map_err(|e| e.to_string())?;
            if response.status().is_success() {
                Ok(())
            } else {
                Err(format!("answered {}", response.status()))
            }
        }
    })
}

/// A service's configuration: its own sections plus the common ones.
pub trait ServiceConfig: Serialize + DeserializeOwned + Send + 'static {
    fn common(&self) -> &CommonConfig;

    /// Semantic checks beyond the common ones.
    fn validate(&self) -> Vec<String> {
        self.common().validate()
    }

    /// Extra environment aliases (`ENV_NAME`, `section.key`) of this service.
    fn aliases() -> Vec<(String, String)> {
        Vec::new()
    }
}

impl ServiceConfig for CommonConfig {
    fn common(&self) -> &CommonConfig {
        self
    }
}

/// Runs `consumer` beside the service's other `tasks` until they stop, restarted after
/// errors, its topic created with `partitions` if missing.
pub fn spawn_consumer<H: mlops_kafka::Handler + Clone>(
    tasks: &mut TaskSet,
    consumer: mlops_kafka::ConsumerLoop,
    partitions: i32,
    handler: H,
) {
    let token = tasks.token();
    let name = consumer.group().to_owned();
    tasks.spawn(name, async move {
        consumer
            .run_until_cancelled(partitions, handler, token)
            .await;
        Ok::<(), anyhow::Error>(())
    });
}

/// Serves `router` on `listener` beside a service's other `tasks` until `cancel` fires or
/// one of them fails; stopping leaves time for its consumers' bounded leave of their
/// groups (`mlops_kafka::CLOSE_TIMEOUT`).
pub async fn serve_with(
    common: &CommonConfig,
    mut tasks: TaskSet,
    listener: TcpListener,
    router: axum::Router,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let token = tasks.token();
    let common = common.clone();
    tasks.spawn("http", async move {
        common.serve(listener, router, token).await
    });
    tasks
        .run(
            cancel.cancelled(),
            mlops_kafka::CLOSE_TIMEOUT + Duration::from_secs(2),
        )
        .await?;
    Ok(())
}

/// Environment names operators already know, mapped to config paths. Each may instead be
/// given as `<NAME>_FILE`, the path of a file holding the value (secrets).
pub fn standard_aliases(service: &str) -> Vec<(String, String)> {
    let alias = |env: String, path: &str| (env, path.to_owned());
    vec![
        alias("KAFKA_BOOTSTRAP_SERVERS".into(), "kafka.bootstrap_servers"),
        alias("SCHEMA_REGISTRY_URL".into(), "schema_registry.url"),
        alias("MLOPS_DATA_DIR".into(), "data_dir"),
        alias("DATABASE_URL".into(), "database.url"),
        alias("MLOPS_HTTP_HOST".into(), "http.host"),
        alias("KAFKA_SECURITY_PROTOCOL".into(), "kafka.security_protocol"),
        alias("KAFKA_SASL_MECHANISM".into(), "kafka.sasl_mechanism"),
        alias("KAFKA_SASL_USERNAME".into(), "kafka.sasl_username"),
        alias("KAFKA_SASL_PASSWORD".into(), "kafka.sasl_password"),
        alias("KAFKA_SSL_KEY_PASSWORD".into(), "kafka.ssl_key_password"),
        alias(
            "KAFKA_OAUTHBEARER_CLIENT_SECRET".into(),
            "kafka.oauthbearer_client_secret",
        ),
        alias("MLOPS_TLS_CERT_FILE".into(), "tls.cert_file"),
        alias("MLOPS_TLS_KEY_FILE".into(), "tls.key_file"),
        alias("MLOPS_TLS_CLIENT_CA_FILE".into(), "tls.client_ca_file"),
        alias("MLOPS_TLS_CA_FILE".into(), "tls.ca_file"),
        alias("MLOPS_ENCRYPTION_KEYS_FILE".into(), "encryption.keys_file"),
        alias("MLOPS_REGION".into(), "region"),
        alias("MLOPS_AUTH_MODE".into(), "auth.mode"),
        alias("MLOPS_JWKS".into(), "auth.jwks"),
        alias("MLOPS_API_KEYS_FILE".into(), "auth.api_keys_file"),
        alias("MLOPS_SERVICE_TOKEN".into(), "auth.service_token"),
        alias(
            format!("MLOPS_{}_PORT", service.to_ascii_uppercase()),
            "http.port",
        ),
    ]
}

/// Loads `C` from `defaults`, the file named by `MLOPS_CONFIG`, and the environment.
pub fn config_from_env<C: ServiceConfig>(
    service: &str,
    defaults: C,
) -> Result<C, mlops_runtime::ConfigError> {
    let file = std::env::var_os("MLOPS_CONFIG").map(PathBuf::from);
    let mut aliases = standard_aliases(service);
    aliases.extend(C::aliases());
    load_config(
        defaults,
        file.as_deref(),
        std::env::vars(),
        &aliases,
        C::validate,
    )
}

/// The whole life of a service process; what each `main.rs` and `mlops service` call.
pub fn main<C, F, Fut>(service: &'static str, defaults: C, run: F) -> ExitCode
where
    C: ServiceConfig,
    F: FnOnce(C, TcpListener, CancellationToken) -> Fut + Send + 'static,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let config: C = match config_from_env(service, defaults) {
        Ok(config) => config,
        Err(e) => {
            eprintln!("{service}: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("{service}: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(async move {
        let telemetry = match mlops_telemetry::init(service) {
            Ok(guard) => guard,
            Err(e) => {
                eprintln!("{service}: telemetry: {e}");
                return ExitCode::FAILURE;
            }
        };
        let result = serve(service, config, run).await;
        telemetry.shutdown();
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = format!("{e:#}"), "{service} stopped with an error");
                ExitCode::FAILURE
            }
        }
    });
    // The parent watch may still be blocked reading stdin on a worker thread; waiting for
    // it would hang the exit, and there is nothing left to drain.
    runtime.shutdown_background();
    code
}

async fn serve<C, F, Fut>(service: &'static str, config: C, run: F) -> anyhow::Result<()>
where
    C: ServiceConfig,
    F: FnOnce(C, TcpListener, CancellationToken) -> Fut,
    Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
{
    let addr = config.common().http.addr();
    let listener = TcpListener::bind(&addr)
        .await
        .map_err(|e| anyhow::anyhow!("bind {addr}: {e}"))?;
    let local: SocketAddr = listener.local_addr()?;
    tracing::info!(service, %local, "listening");

    let mut tasks = TaskSet::default();
    let token = tasks.token();
    tasks.spawn(service, run(config, listener, token.clone()));
    if std::env::var_os("MLOPS_EXIT_WITH_PARENT").is_some() {
        // Launched by `mlops up`: stdin is a pipe from the launcher, closed when it dies,
        // so no service outlives its supervisor even after a SIGKILL.
        tasks.spawn("parent-watch", watch_parent(token));
    }
    tasks
        .run(mlops_runtime::shutdown_signal(), SHUTDOWN_GRACE)
        .await
        .map_err(anyhow::Error::from)
}

async fn watch_parent(cancel: CancellationToken) -> anyhow::Result<()> {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 64];
    tokio::select! {
        () = cancel.cancelled() => {}
        _ = async { while matches!(stdin.read(&mut buf).await, Ok(n) if n > 0) {} } => {
            tracing::warn!("launcher went away, shutting down");
        }
    }
    Ok(())
}
