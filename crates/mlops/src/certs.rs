//! `mlops certs`: a local certificate authority and a certificate per service (for
//! `localhost` and `127.0.0.1`, usable as server and as client certificate), for running
//! the platform over TLS on one machine. Production brings its own PKI; the services only
//! need the files.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};

use crate::{
    credentials::write_file,
    platform::{Layout, SERVICES},
};

/// The files of one service: certificate and key.
pub(crate) struct ServiceCert {
    pub(crate) cert: PathBuf,
    pub(crate) key: PathBuf,
}

/// A directory of development certificates.
pub(crate) struct Certs {
    dir: PathBuf,
}

impl Certs {
    pub(crate) fn of(data_dir: &Path) -> Self {
        Self {
            dir: data_dir.join("tls"),
        }
    }

    pub(crate) fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    pub(crate) fn service(&self, name: &str) -> ServiceCert {
        ServiceCert {
            cert: self.dir.join(format!("{name}.pem")),
            key: self.dir.join(format!("{name}.key")),
        }
    }

    /// Creates the CA and every service's certificate unless they exist. Returns whether
    /// it created them.
    pub(crate) fn ensure(&self) -> Result<bool, String> {
        let mut names: Vec<&str> = SERVICES.to_vec();
        names.push("client");
        let complete = self.ca().exists()
            && names.iter().all(|n| {
                let s = self.service(n);
                s.cert.exists() && s.key.exists()
            });
        if complete {
            return Ok(false);
        }
        std::fs::create_dir_all(&self.dir).map_err(|e| format!("{}: {e}", self.dir.display()))?;
        let fail = |e: rcgen::Error| e.to_string();
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(fail)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "mlops development CA");
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca = CertifiedIssuer::self_signed(params, KeyPair::generate().map_err(fail)?)
            .map_err(fail)?;
        for name in names {
            let mut params = CertificateParams::new(vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                name.to_owned(),
            ])
            .map_err(fail)?;
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ];
            let key = KeyPair::generate().map_err(fail)?;
            let cert = params.signed_by(&key, &ca).map_err(fail)?;
            let files = self.service(name);
            write_file(&files.cert, cert.pem().as_bytes(), 0o644)?;
            write_file(&files.key, key.serialize_pem().as_bytes(), 0o600)?;
        }
        // The CA's key is not kept: nothing more is signed with it.
        write_file(&self.ca(), ca.as_ref().pem().as_bytes(), 0o644)?;
        Ok(true)
    }
}

/// `mlops certs`: creates `<data dir>/tls` unless it exists, and says where.
pub(crate) fn main() -> ExitCode {
    let layout = match Layout::from_env() {
        Ok(layout) => layout,
        Err(errors) => {
            eprintln!("mlops certs: {}", errors.join("; "));
            return ExitCode::from(2);
        }
    };
    let certs = Certs::of(&layout.data_dir);
    match certs.ensure() {
        Ok(created) => {
            let word = if created { "created" } else { "already there" };
            println!(
                "mlops certs: CA {} and a certificate per service in {} ({word})",
                certs.ca().display(),
                certs.dir.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("mlops certs: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_service_gets_a_certificate_its_peers_verify() {
        use rustls::client::danger::ServerCertVerifier;
        let dir = tempfile::tempdir().unwrap();
        let certs = Certs::of(dir.path());
        assert!(certs.ensure().unwrap());
        assert!(!certs.ensure().unwrap(), "a second call keeps them");
        let ca = mlops_runtime::tls::read_certificates(&certs.ca()).unwrap();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca[0].clone()).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
            std::sync::Arc::new(roots),
            mlops_runtime::tls::provider(),
        )
        .build()
        .unwrap();
        for service in SERVICES {
            let files = certs.service(service);
            let chain = mlops_runtime::tls::read_certificates(&files.cert).unwrap();
            let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
            verifier
                .verify_server_cert(
                    &chain[0],
                    &[],
                    &name,
                    &[],
                    rustls::pki_types::UnixTime::now(),
                )
                .unwrap_or_else(|e| panic!("{service}: {e}"));
            // Its key pairs with it.
            mlops_runtime::tls::ServerTls::load(&files.cert, &files.key, None).unwrap();
            let mode = std::os::unix::fs::PermissionsExt::mode(
                &std::fs::metadata(&files.key).unwrap().permissions(),
            );
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
