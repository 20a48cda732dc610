//! The default certificate: served to TLS clients whose SNI matches no
//! certificate. Taken from `ssl_cert`/`ssl_cert_key`, or generated once under
//! `prefix/ssl/` (ECDSA P-256, for `localhost`) and reused on later starts.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result, anyhow};
use strait_model::{KeyPair, pem};

/// Loads `cert` and `key` and checks that they match.
pub fn load(cert: &Path, key: &Path) -> Result<KeyPair> {
    let cert_pem = fs::read_to_string(cert).with_context(|| format!("ssl_cert: cannot read {}", cert.display()))?;
    let key_pem = fs::read_to_string(key).with_context(|| format!("ssl_cert_key: cannot read {}", key.display()))?;
    pem::key_pair(&cert_pem, &key_pem, "certificate does not match key").map_err(|errs| {
        let msgs: Vec<String> = errs.into_iter().map(|(field, msg)| format!("{field}: {msg}")).collect();
        anyhow!("ssl_cert/ssl_cert_key: {}", msgs.join("; "))
    })
}

/// The default pair under `prefix`, generated if absent.
pub fn load_or_generate(prefix: &Path) -> Result<KeyPair> {
    let dir = prefix.join("ssl");
    let cert = dir.join("strait-default.crt");
    let key = dir.join("strait-default.key");
    if cert.exists() && key.exists() {
        return load(&cert, &key);
    }
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let generated = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()])
        .context("cannot generate the default certificate")?;
    fs::write(&cert, generated.cert.pem()).with_context(|| format!("cannot write {}", cert.display()))?;
    fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&key)
        .and_then(|mut f| f.write_all(generated.signing_key.serialize_pem().as_bytes()))
        .with_context(|| format!("cannot write {}", key.display()))?;
    tracing::info!(cert = %cert.display(), "generated a self-signed default certificate");
    load(&cert, &key)
}
