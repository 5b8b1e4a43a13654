//! The credentials every test's services accept: one API key file per test process, a
//! token per platform role (and a producer limited to the dataset `payments`), and
//! clients that present the admin token, as a user of a secured platform would.

use std::{collections::BTreeSet, path::PathBuf, sync::OnceLock};

use mlops_service::{
    CommonConfig,
    auth::{ApiKeys, PlatformRole, Principal},
};

pub struct TestTokens {
    pub keys_file: PathBuf,
    pub admin: String,
    pub producer: String,
    /// A producer that may publish to the dataset `payments` only.
    pub payments_producer: String,
    pub data_scientist: String,
    pub approver: String,
    pub sre: String,
    /// What the services present to each other.
    pub service: String,
}

/// This process's tokens, created on first use.
pub fn tokens() -> &'static TestTokens {
    static TOKENS: OnceLock<TestTokens> = OnceLock::new();
    TOKENS.get_or_init(|| {
        let dir = mlops_testkit::temp_dir().keep();
        let mut stored = Vec::new();
        let mut issue = |subject: &str, role: PlatformRole, datasets: Option<&[&str]>| {
            let (token, key) = ApiKeys::issue(Principal {
                subject: subject.to_owned(),
                roles: BTreeSet::from([role]),
                datasets: datasets.map(|d| d.iter().map(|s| (*s).to_owned()).collect()),
            });
            stored.push(key);
            token
        };
        let tokens = TestTokens {
            admin: issue("test-admin", PlatformRole::Admin, None),
            producer: issue("test-producer", PlatformRole::Producer, None),
            payments_producer: issue(
                "payments-gateway",
                PlatformRole::Producer,
                Some(&["payments"]),
            ),
            data_scientist: issue("test-data-scientist", PlatformRole::DataScientist, None),
            approver: issue("test-approver", PlatformRole::Approver, None),
            sre: issue("test-sre", PlatformRole::Sre, None),
            service: issue("test-services", PlatformRole::DataScientist, None),
            keys_file: dir.join("api-keys.json"),
        };
        std::fs::write(&tokens.keys_file, serde_json::to_vec(&stored).unwrap())
            .expect("write the test API keys");
        tokens
    })
}

/// Puts a service behind the test keys, presenting the service token to the others.
pub fn secure(common: &mut CommonConfig) {
    let tokens = tokens();
    common.auth.api_keys_file = Some(tokens.keys_file.clone());
    common.auth.service_token = Some(mlops_runtime::Secret::new(tokens.service.clone()));
}

/// `Authorization: Bearer <token>` as default headers.
pub fn bearer(token: &str) -> reqwest::header::HeaderMap {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {token}").parse().expect("a header value"),
    );
    headers
}

/// A client presenting the admin token.
pub fn client() -> reqwest::Client {
    client_builder().build().expect("http client")
}

/// The builder of [`client`], for tests that bound their requests.
pub fn client_builder() -> reqwest::ClientBuilder {
    reqwest::Client::builder().default_headers(bearer(&tokens().admin))
}

/// An Avro codec on the Schema Registry at `url`, presenting the admin token.
pub fn codec(url: &str) -> mlops_schema::AvroCodec {
    mlops_schema::AvroCodec::with_registry(registry_client(
        url,
        std::time::Duration::from_secs(10),
        3,
    ))
}

/// A Schema Registry client presenting the admin token.
pub fn registry_client(
    url: &str,
    timeout: std::time::Duration,
    attempts: u32,
) -> mlops_schema::SchemaRegistry {
    let http = client_builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .build()
        .expect("http client");
    mlops_schema::SchemaRegistry::with_client(url, http, attempts)
}
