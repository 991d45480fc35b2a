//! Test certificates (a CA and a server certificate it signed), made with `openssl`.

use super::HarnessError;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Test certificates made with `openssl`: a CA and a server certificate it signed for
/// `subject_alt_name` (e.g. `IP:127.0.0.1` or `DNS:db.internal`). Returns the paths of
/// (ca.crt, server.crt, server.key) inside `dir`.
pub fn make_test_certs(dir: &Path, subject_alt_name: &str) -> Result<(PathBuf, PathBuf, PathBuf), HarnessError> {
    let run = |args: &[&str]| -> Result<(), HarnessError> {
        let out = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .map_err(|e| HarnessError::Command {
                what: "openssl".into(),
                detail: format!("{e}; install openssl"),
            })?;
        if out.status.success() {
            Ok(())
        } else {
            Err(HarnessError::Command {
                what: format!("openssl {}", args.first().unwrap_or(&"")),
                detail: String::from_utf8_lossy(&out.stderr).into_owned(),
            })
        }
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec![
        "req",
        "-x509",
        "-days",
        "2",
        "-subj",
        "/CN=walbust test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
    ];
    ca.extend(ec);
    ca.extend([
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    run(&ca)?;
    let mut csr = vec![
        "req",
        "-subj",
        "/CN=walbust test server",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ];
    csr.extend(ec);
    run(&csr)?;
    std::fs::write(
        dir.join("server.ext"),
        format!("subjectAltName={subject_alt_name}\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n"),
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.crt",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-out",
        "server.crt",
        "-extfile",
        "server.ext",
    ])?;
    Ok((dir.join("ca.crt"), dir.join("server.crt"), dir.join("server.key")))
}
