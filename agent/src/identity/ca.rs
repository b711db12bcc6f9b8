//! The root CA on disk, in a directory shaped like a mounted Kubernetes Secret:
//! `outrider ca init` makes one ([`init`]); the agent reads and checks one ([`load`]).
use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, SerialNumber,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject};

use super::{error::IdentityError, x509};

/// File names `ca init` writes and the agent reads first.
pub(crate) const CERT_FILE: &str = "ca.crt";
pub(crate) const KEY_FILE: &str = "ca.key";
/// A `kubernetes.io/tls` Secret's names, accepted too.
pub(crate) const TLS_CERT_FILE: &str = "tls.crt";
pub(crate) const TLS_KEY_FILE: &str = "tls.key";

/// How far a new root is backdated, for nodes whose clocks lag.
const ROOT_BACKDATE: Duration = Duration::from_secs(3600);

/// A root CA, read and checked: its certificate, key and validity.
pub struct RootCa {
    pub cert: CertificateDer<'static>,
    pub key: KeyPair,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Where the certificate was read from (for messages); empty if made in memory.
    pub cert_path: PathBuf,
}

/// Settings of `outrider ca init`.
#[derive(Clone, Debug)]
pub struct InitOptions {
    pub common_name: String,
    pub validity: Duration,
    /// Replace existing files.
    pub force: bool,
}

impl Default for InitOptions {
    fn default() -> Self {
        Self {
            common_name: "Outrider Root CA".to_string(),
            validity: Duration::from_secs(10 * 365 * 24 * 3600),
            force: false,
        }
    }
}

/// Makes a self-signed ECDSA P-256 root: CA:true, keyCertSign + cRLSign, valid from
/// `not_before` to `not_after`. Returns it with its certificate in PEM.
pub fn generate(
    common_name: &str,
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<(RootCa, String), IdentityError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| {
        IdentityError::Generate {
            what: "the CA key",
            source,
        }
    })?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Outrider");
    // A random unit makes every root's name unique, so a peer from another mesh whose
    // CA has the same common name fails as "unknown issuer", not as a bad signature.
    let unit: [u8; 6] = rand::random();
    dn.push(
        DnType::OrganizationalUnitName,
        format!("ca-{}", x509::hex(&unit)),
    );
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    params.serial_number = Some(random_serial());
    let cert = params
        .self_signed(&key)
        .map_err(|source| IdentityError::Generate {
            what: "the CA certificate",
            source,
        })?;
    let root = RootCa {
        cert: cert.der().clone(),
        key,
        not_before,
        not_after,
        cert_path: PathBuf::new(),
    };
    Ok((root, cert.pem()))
}

/// A positive 128-bit serial (top bit clear, so the DER integer needs no padding).
pub(crate) fn random_serial() -> SerialNumber {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

/// What `init` wrote.
#[derive(Debug)]
pub struct Written {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub not_after: SystemTime,
}

/// `outrider ca init`: writes `ca.crt` (0644) and `ca.key` (0600) into `dir`, made if
/// missing (0700). Refuses to replace either file unless `force`.
pub fn init(dir: &Path, options: &InitOptions) -> Result<Written, IdentityError> {
    let cert_path = dir.join(CERT_FILE);
    let key_path = dir.join(KEY_FILE);
    if !options.force {
        for path in [&cert_path, &key_path] {
            if fs::symlink_metadata(path).is_ok() {
                return Err(IdentityError::CaExists { path: path.clone() });
            }
        }
    }
    let now = SystemTime::now();
    let (root, cert_pem) = generate(
        &options.common_name,
        now - ROOT_BACKDATE,
        now + options.validity,
    )?;
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| IdentityError::CaWrite {
            path: dir.to_path_buf(),
            source,
        })?;
    let key_pem = root.key.serialize_pem();
    // Write both to temporary names first, then rename: a crash leaves no half CA.
    let cert_tmp = write_new(dir, CERT_FILE, cert_pem.as_bytes(), 0o644)?;
    let key_tmp = match write_new(dir, KEY_FILE, key_pem.as_bytes(), 0o600) {
        Ok(tmp) => tmp,
        Err(err) => {
            let _ = fs::remove_file(&cert_tmp);
            return Err(err);
        }
    };
    for (tmp, path) in [(&key_tmp, &key_path), (&cert_tmp, &cert_path)] {
        fs::rename(tmp, path).map_err(|source| {
            let _ = fs::remove_file(tmp);
            IdentityError::CaWrite {
                path: path.clone(),
                source,
            }
        })?;
    }
    Ok(Written {
        cert_path,
        key_path,
        not_after: root.not_after,
    })
}

fn write_new(dir: &Path, name: &str, content: &[u8], mode: u32) -> Result<PathBuf, IdentityError> {
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let write = || -> io::Result<()> {
        let _ = fs::remove_file(&tmp);
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)?;
        file.write_all(content)?;
        file.sync_all()
    };
    write().map_err(|source| {
        let _ = fs::remove_file(&tmp);
        IdentityError::CaWrite {
            path: dir.join(name),
            source,
        }
    })?;
    Ok(tmp)
}

/// Reads the CA from `dir` (`ca.crt` + `ca.key`, else `tls.crt` + `tls.key`) and checks
/// it: a CA certificate, currently valid, with its own key.
pub fn load(dir: &Path) -> Result<RootCa, IdentityError> {
    let dir_err = |problem: String| IdentityError::CaDir {
        path: dir.to_path_buf(),
        problem,
    };
    let meta = fs::metadata(dir).map_err(|e| dir_err(format!("cannot read: {e}")))?;
    if !meta.is_dir() {
        return Err(dir_err("not a directory".to_string()));
    }
    fs::read_dir(dir).map_err(|e| dir_err(format!("cannot list: {e}")))?;
    let (cert_path, key_path) = pick_files(dir)?;

    let file_err = |path: &Path, problem: String| IdentityError::CaFile {
        path: path.to_path_buf(),
        problem,
    };
    let cert_bytes =
        fs::read(&cert_path).map_err(|e| file_err(&cert_path, format!("cannot read: {e}")))?;
    let cert = CertificateDer::pem_slice_iter(&cert_bytes)
        .next()
        .ok_or_else(|| file_err(&cert_path, "holds no PEM CERTIFICATE block".to_string()))?
        .map_err(|e| file_err(&cert_path, format!("bad PEM: {e}")))?;
    let facts = x509::facts(&cert).map_err(|e| file_err(&cert_path, e))?;
    if !facts.is_ca {
        return Err(file_err(
            &cert_path,
            "not a CA certificate (basicConstraints CA:true is missing)".to_string(),
        ));
    }
    if facts.key_cert_sign == Some(false) {
        return Err(file_err(
            &cert_path,
            "the CA certificate's keyUsage does not allow keyCertSign".to_string(),
        ));
    }
    let now = SystemTime::now();
    if facts.not_after <= now {
        return Err(file_err(
            &cert_path,
            format!(
                "the CA certificate expired at {}",
                x509::rfc3339(facts.not_after)
            ),
        ));
    }
    if facts.not_before > now {
        return Err(file_err(
            &cert_path,
            format!(
                "the CA certificate is not valid before {} (check the clock)",
                x509::rfc3339(facts.not_before)
            ),
        ));
    }

    let key_bytes =
        fs::read(&key_path).map_err(|e| file_err(&key_path, format!("cannot read: {e}")))?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|e| file_err(&key_path, format!("holds no PEM private key: {e}")))?;
    let pkcs8 = match &key_der {
        PrivateKeyDer::Pkcs8(k) => k.secret_pkcs8_der(),
        PrivateKeyDer::Sec1(_) | PrivateKeyDer::Pkcs1(_) => {
            return Err(file_err(
                &key_path,
                "the key is SEC1/PKCS#1 ('EC/RSA PRIVATE KEY'); only PKCS#8 ('PRIVATE KEY') \
                 is supported: convert it with `openssl pkcs8 -topk8 -nocrypt`"
                    .to_string(),
            ));
        }
        _ => return Err(file_err(&key_path, "unsupported key format".to_string())),
    };
    let key = KeyPair::try_from(pkcs8)
        .map_err(|e| file_err(&key_path, format!("unusable private key: {e}")))?;
    if key.public_key_raw() != facts.public_key.as_slice() {
        return Err(file_err(
            &key_path,
            format!(
                "the private key does not belong to the certificate in {}",
                cert_path.display()
            ),
        ));
    }
    Ok(RootCa {
        cert,
        key,
        not_before: facts.not_before,
        not_after: facts.not_after,
        cert_path,
    })
}

/// `ca.crt` + `ca.key` if either exists (then both must), else `tls.crt` + `tls.key`.
fn pick_files(dir: &Path) -> Result<(PathBuf, PathBuf), IdentityError> {
    let exists = |name: &str| -> Result<bool, IdentityError> {
        let path = dir.join(name);
        path.try_exists().map_err(|e| IdentityError::CaFile {
            path,
            problem: format!("cannot read: {e}"),
        })
    };
    let half = |has: &str, lacks: &str| IdentityError::CaDir {
        path: dir.to_path_buf(),
        problem: format!("has {has} but no {lacks}"),
    };
    for (cert, key) in [(CERT_FILE, KEY_FILE), (TLS_CERT_FILE, TLS_KEY_FILE)] {
        match (exists(cert)?, exists(key)?) {
            (true, true) => return Ok((dir.join(cert), dir.join(key))),
            (true, false) => return Err(half(cert, key)),
            (false, true) => return Err(half(key, cert)),
            (false, false) => {}
        }
    }
    Err(IdentityError::CaDir {
        path: dir.to_path_buf(),
        problem: format!(
            "holds neither {CERT_FILE} + {KEY_FILE} nor {TLS_CERT_FILE} + {TLS_KEY_FILE} \
             (create one with `outrider ca init --out DIR`)"
        ),
    })
}

/// The Kubernetes Secret the DaemonSet mounts as `identity.caDir` (see deploy/).
pub(crate) const K8S_SECRET_NAME: &str = "outrider-ca";
pub(crate) const K8S_SECRET_NAMESPACE: &str = "outrider-system";

/// A Secret manifest `outrider-ca` in `outrider-system` (type Opaque) holding the CA
/// as `ca.crt` and `ca.key`, base64 as Secrets' `data` requires: for `kubectl apply -f`.
pub(crate) fn k8s_secret_manifest(cert_pem: &[u8], key_pem: &[u8]) -> String {
    format!(
        "# The mesh's root CA, made by `outrider ca init`. It holds the CA's PRIVATE KEY:\n\
         # `kubectl apply -f` it, then delete this file; never commit it.\n\
         apiVersion: v1\n\
         kind: Secret\n\
         metadata:\n  \
           name: {K8S_SECRET_NAME}\n  \
           namespace: {K8S_SECRET_NAMESPACE}\n  \
           labels:\n    \
             app.kubernetes.io/name: outrider\n    \
             app.kubernetes.io/part-of: outrider\n\
         type: Opaque\n\
         data:\n  \
           {CERT_FILE}: {}\n  \
           {KEY_FILE}: {}\n",
        base64(cert_pem),
        base64(key_pem)
    )
}

/// Writes [`k8s_secret_manifest`] of the CA in `ca_dir` to `path` with mode 0600
/// (through a temporary file, then a rename). Refuses to replace `path` unless `force`.
pub(crate) fn write_k8s_secret(
    ca_dir: &Path,
    path: &Path,
    force: bool,
) -> Result<(), IdentityError> {
    if !force && fs::symlink_metadata(path).is_ok() {
        return Err(IdentityError::CaExists {
            path: path.to_path_buf(),
        });
    }
    let read = |name: &str| {
        let file = ca_dir.join(name);
        fs::read(&file).map_err(|e| IdentityError::CaFile {
            path: file,
            problem: format!("cannot read: {e}"),
        })
    };
    let manifest = k8s_secret_manifest(&read(CERT_FILE)?, &read(KEY_FILE)?);
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "secret.yaml".to_string());
    let tmp = write_new(parent, &name, manifest.as_bytes(), 0o600)?;
    fs::rename(&tmp, path).map_err(|source| {
        let _ = fs::remove_file(&tmp);
        IdentityError::CaWrite {
            path: path.to_path_buf(),
            source,
        }
    })
}

/// Standard base64 (RFC 4648, with padding).
pub fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[((n >> (18 - 6 * i)) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    fn mode(path: &Path) -> u32 {
        fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn base64_matches_rfc4648_vectors() {
        for (input, expected) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(input.as_bytes()), expected, "{input:?}");
        }
        assert_eq!(base64(&[0xfb, 0xff, 0xbf]), "+/+/");
    }

    #[test]
    fn k8s_secret_holds_the_ca_with_mode_0600_and_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        init(&dir, &InitOptions::default()).unwrap();
        let secret = tmp.path().join("ca-secret.yaml");
        write_k8s_secret(&dir, &secret, false).unwrap();
        assert_eq!(mode(&secret), 0o600);
        let text = fs::read_to_string(&secret).unwrap();
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(doc["apiVersion"].as_str(), Some("v1"));
        assert_eq!(doc["kind"].as_str(), Some("Secret"));
        assert_eq!(doc["type"].as_str(), Some("Opaque"));
        assert_eq!(doc["metadata"]["name"].as_str(), Some("outrider-ca"));
        assert_eq!(
            doc["metadata"]["namespace"].as_str(),
            Some("outrider-system")
        );
        for name in [CERT_FILE, KEY_FILE] {
            let expected = base64(&fs::read(dir.join(name)).unwrap());
            assert_eq!(
                doc["data"][name].as_str(),
                Some(expected.as_str()),
                "{name}"
            );
        }
        assert_eq!(doc["data"].as_mapping().unwrap().len(), 2);

        let err = write_k8s_secret(&dir, &secret, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("already exists"), "{err}");
        assert_eq!(fs::read_to_string(&secret).unwrap(), text, "left untouched");
        fs::set_permissions(&secret, fs::Permissions::from_mode(0o644)).unwrap();
        write_k8s_secret(&dir, &secret, true).unwrap();
        assert_eq!(mode(&secret), 0o600, "a replaced file is 0600 too");
        let leftovers = fs::read_dir(tmp.path()).unwrap().count();
        assert_eq!(
            leftovers, 2,
            "the CA directory and the Secret, no temporary file"
        );
    }

    #[test]
    fn init_writes_a_root_with_private_key_mode_and_refuses_to_overwrite() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("ca");
        let written = init(&dir, &InitOptions::default()).unwrap();
        assert_eq!(written.cert_path, dir.join("ca.crt"));
        assert_eq!(mode(&written.key_path), 0o600);
        assert_eq!(mode(&written.cert_path), 0o644);
        assert_eq!(mode(&dir), 0o700);
        let root = load(&dir).unwrap();
        let facts = x509::facts(&root.cert).unwrap();
        assert!(facts.is_ca);
        assert_eq!(facts.key_cert_sign, Some(true));
        let years = facts
            .not_after
            .duration_since(SystemTime::now())
            .unwrap()
            .as_secs()
            / (365 * 24 * 3600);
        assert_eq!(years, 9, "about ten years");
        // The PEM is standard: the pki-types parser reads back the same DER.
        let pem = fs::read(&written.cert_path).unwrap();
        assert!(pem.starts_with(b"-----BEGIN CERTIFICATE-----\n"));

        let err = init(&dir, &InitOptions::default()).unwrap_err().to_string();
        assert!(err.contains("ca.crt already exists"), "{err}");
        assert!(err.contains("--force"), "{err}");
        assert_eq!(fs::read(&written.cert_path).unwrap(), pem, "left untouched");

        let forced = InitOptions {
            force: true,
            ..InitOptions::default()
        };
        init(&dir, &forced).unwrap();
        assert_ne!(fs::read(&written.cert_path).unwrap(), pem, "replaced");
        assert_eq!(mode(&written.key_path), 0o600);
        load(&dir).unwrap();
        let leftovers: Vec<_> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(leftovers.len(), 2, "{leftovers:?}");
    }

    #[test]
    fn init_refuses_when_only_the_key_exists() {
        let tmp = tempfile::tempdir().unwrap();
        fs::write(tmp.path().join("ca.key"), "x").unwrap();
        let err = init(tmp.path(), &InitOptions::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("ca.key already exists"), "{err}");
    }

    #[test]
    fn accepts_a_kubernetes_tls_secret_layout() {
        let tmp = tempfile::tempdir().unwrap();
        let made = tempfile::tempdir().unwrap();
        let written = init(made.path(), &InitOptions::default()).unwrap();
        fs::copy(&written.cert_path, tmp.path().join("tls.crt")).unwrap();
        fs::copy(&written.key_path, tmp.path().join("tls.key")).unwrap();
        let root = load(tmp.path()).unwrap();
        assert_eq!(root.cert_path, tmp.path().join("tls.crt"));
    }

    fn load_err(dir: &Path) -> String {
        match load(dir) {
            Ok(_) => panic!("{} loaded", dir.display()),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn missing_unreadable_or_garbage_ca_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let missing = tmp.path().join("nope");
        let err = load_err(&missing);
        assert!(err.contains(&missing.display().to_string()), "{err}");
        assert!(err.contains("No such file"), "{err}");

        let empty = tmp.path().join("empty");
        fs::create_dir(&empty).unwrap();
        let err = load_err(&empty);
        assert!(err.contains("holds neither ca.crt + ca.key"), "{err}");

        let half = tmp.path().join("half");
        fs::create_dir(&half).unwrap();
        fs::write(half.join("ca.crt"), "x").unwrap();
        let err = load_err(&half);
        assert!(err.contains("has ca.crt but no ca.key"), "{err}");

        let garbage = tmp.path().join("garbage");
        fs::create_dir(&garbage).unwrap();
        fs::write(garbage.join("ca.crt"), "hello").unwrap();
        fs::write(garbage.join("ca.key"), "world").unwrap();
        let err = load_err(&garbage);
        assert!(
            err.contains(&garbage.join("ca.crt").display().to_string()),
            "{err}"
        );
        assert!(err.contains("no PEM CERTIFICATE"), "{err}");

        let not_pem_der = tmp.path().join("bad-der");
        fs::create_dir(&not_pem_der).unwrap();
        // "junk", base64.
        let junk = "-----BEGIN CERTIFICATE-----\nanVuaw==\n-----END CERTIFICATE-----\n";
        fs::write(not_pem_der.join("ca.crt"), junk).unwrap();
        fs::write(not_pem_der.join("ca.key"), "world").unwrap();
        let err = load_err(&not_pem_der);
        assert!(err.contains("not an X.509 certificate"), "{err}");

        let file = tmp.path().join("file");
        fs::write(&file, "").unwrap();
        assert!(load_err(&file).contains("not a directory"));
    }

    #[test]
    fn unreadable_ca_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        init(tmp.path(), &InitOptions::default()).unwrap();
        let key = tmp.path().join("ca.key");
        // A key that is a directory cannot be read, even by root.
        fs::remove_file(&key).unwrap();
        fs::create_dir(&key).unwrap();
        let err = load_err(tmp.path());
        assert!(err.contains(&key.display().to_string()), "{err}");
        assert!(err.contains("cannot read"), "{err}");
        fs::remove_dir(&key).unwrap();
        init(
            tmp.path(),
            &InitOptions {
                force: true,
                ..InitOptions::default()
            },
        )
        .unwrap();
        fs::set_permissions(&key, fs::Permissions::from_mode(0o000)).unwrap();
        // root reads anything; only check what a non-root agent would see.
        if fs::read(&key).is_err() {
            let err = load_err(tmp.path());
            assert!(err.contains(&key.display().to_string()), "{err}");
            assert!(err.contains("cannot read"), "{err}");
        }
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o000)).unwrap();
        if fs::read_dir(tmp.path()).is_err() {
            let err = load_err(tmp.path());
            assert!(err.contains("cannot list"), "{err}");
        }
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(0o700)).unwrap();
    }

    #[test]
    fn a_leaf_certificate_or_a_foreign_key_is_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        // A non-CA certificate with its own key.
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let leaf = CertificateParams::new(vec!["x.example".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        fs::write(dir.join("ca.crt"), leaf.pem()).unwrap();
        fs::write(dir.join("ca.key"), key.serialize_pem()).unwrap();
        let err = load_err(dir);
        assert!(err.contains("not a CA certificate"), "{err}");

        // A CA certificate with somebody else's key.
        let now = SystemTime::now();
        let (_, root_pem) = generate("test", now, now + Duration::from_secs(3600)).unwrap();
        fs::write(dir.join("ca.crt"), &root_pem).unwrap();
        let err = load_err(dir);
        assert!(err.contains("does not belong to the certificate"), "{err}");
        assert!(
            err.contains(&dir.join("ca.key").display().to_string()),
            "{err}"
        );

        // An expired CA.
        let (old, old_pem) = generate(
            "old",
            now - Duration::from_secs(7200),
            now - Duration::from_secs(3600),
        )
        .unwrap();
        fs::write(dir.join("ca.crt"), old_pem).unwrap();
        fs::write(dir.join("ca.key"), old.key.serialize_pem()).unwrap();
        let err = load_err(dir);
        assert!(err.contains("expired at"), "{err}");

        // A SEC1 key gets a hint.
        fs::write(dir.join("ca.crt"), &root_pem).unwrap();
        let sec1 = "-----BEGIN EC PRIVATE KEY-----\nMAMCAQE=\n-----END EC PRIVATE KEY-----\n";
        fs::write(dir.join("ca.key"), sec1).unwrap();
        let err = load_err(dir);
        assert!(err.contains("openssl pkcs8"), "{err}");
    }
}
