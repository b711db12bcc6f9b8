//! `outriderctl certs`: the workload certificates the agent holds, its trust domain and
//! its trust roots (ListCertificates). Never private keys: the API has none to give.
use anyhow::Result;
use outrider_proto::admin::v1::{
    Certificate, ListCertificatesRequest, ListCertificatesResponse, TrustRoot,
};
use serde::Serialize;
use time::OffsetDateTime;

use super::output::Table;
use super::workloads::non_empty;
use super::{Ctx, human};

/// `-o json|yaml` of `certs`.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificatesView {
    pub trust_domain: String,
    pub certificates: Vec<CertificateView>,
    pub roots: Vec<TrustRootView>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertificateView {
    /// The SPIFFE ID.
    pub identity: String,
    /// Enrolled pods using it.
    pub pods: u32,
    /// Null (as the times and fingerprint) until the first certificate is issued.
    pub serial: Option<String>,
    pub not_before: Option<String>,
    pub not_after: Option<String>,
    /// When the agent renews it (half life).
    pub renew_at: Option<String>,
    /// SHA-256 of the leaf (DER), hex.
    pub fingerprint_sha256: Option<String>,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TrustRootView {
    pub subject: String,
    pub not_after: String,
    pub fingerprint_sha256: String,
}

impl From<Certificate> for CertificateView {
    fn from(c: Certificate) -> Self {
        CertificateView {
            identity: c.identity,
            pods: c.pods,
            serial: non_empty(c.serial),
            not_before: non_empty(c.not_before),
            not_after: non_empty(c.not_after),
            renew_at: non_empty(c.renew_at),
            fingerprint_sha256: non_empty(c.fingerprint_sha256),
        }
    }
}

impl From<TrustRoot> for TrustRootView {
    fn from(r: TrustRoot) -> Self {
        TrustRootView {
            subject: r.subject,
            not_after: r.not_after,
            fingerprint_sha256: r.fingerprint_sha256,
        }
    }
}

impl From<ListCertificatesResponse> for CertificatesView {
    fn from(r: ListCertificatesResponse) -> Self {
        let mut certificates: Vec<CertificateView> =
            r.certificates.into_iter().map(Into::into).collect();
        certificates.sort_by(|a, b| a.identity.cmp(&b.identity));
        CertificatesView {
            trust_domain: r.trust_domain,
            certificates,
            roots: r.roots.into_iter().map(Into::into).collect(),
        }
    }
}

pub async fn run(ctx: &mut Ctx) -> Result<()> {
    let mut client = ctx.client().await?;
    let response = ctx
        .call(
            "ListCertificates",
            client.list_certificates(ListCertificatesRequest {}),
        )
        .await?;
    let view = CertificatesView::from(response);
    ctx.emit(&view, |v| table(v, OffsetDateTime::now_utc()))
}

/// The first 16 hex digits of a fingerprint, for tables.
fn short_fingerprint(fingerprint: &str) -> String {
    fingerprint
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(16)
        .collect()
}

fn table(view: &CertificatesView, now: OffsetDateTime) -> String {
    let opt = |text: &Option<String>| text.clone().unwrap_or_default();
    let mut certificates = Table::new([
        "IDENTITY",
        "PODS",
        "SERIAL",
        "NOT-AFTER",
        "RENEW-AT",
        "FINGERPRINT",
    ]);
    for c in &view.certificates {
        certificates.row([
            c.identity.clone(),
            c.pods.to_string(),
            opt(&c.serial),
            human::time_left(&opt(&c.not_after), now, "expired"),
            human::time_left(&opt(&c.renew_at), now, "due"),
            short_fingerprint(&opt(&c.fingerprint_sha256)),
        ]);
    }
    let mut domain = Table::key_values();
    domain.pair("Trust domain", &view.trust_domain);
    let mut roots = Table::new(["SUBJECT", "NOT-AFTER", "FINGERPRINT"]);
    for r in &view.roots {
        roots.row([
            r.subject.clone(),
            human::time_left(&r.not_after, now, "expired"),
            short_fingerprint(&r.fingerprint_sha256),
        ]);
    }
    format!(
        "{}\n{}\n{}",
        certificates.render(),
        domain.render(),
        roots.render()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const FINGERPRINT: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn response() -> ListCertificatesResponse {
        ListCertificatesResponse {
            certificates: vec![
                Certificate {
                    identity: "spiffe://cluster.local/ns/default/sa/web".into(),
                    pods: 2,
                    serial: "1f2e".into(),
                    not_before: "2025-03-04T04:00:00Z".into(),
                    not_after: "2025-03-05T04:00:00Z".into(),
                    renew_at: "2025-03-04T16:00:00Z".into(),
                    fingerprint_sha256: FINGERPRINT.into(),
                },
                Certificate {
                    identity: "spiffe://cluster.local/ns/apps/sa/db".into(),
                    pods: 1,
                    ..Default::default()
                },
            ],
            roots: vec![TrustRoot {
                subject: "CN=Outrider root".into(),
                not_after: "2035-03-04T04:00:00Z".into(),
                fingerprint_sha256: FINGERPRINT.to_uppercase(),
            }],
            trust_domain: "cluster.local".into(),
        }
    }

    #[test]
    fn table_shortens_fingerprints_and_lists_roots() {
        let now = human::parse_rfc3339("2025-03-04T05:00:00Z").unwrap();
        assert_eq!(
            table(&response().into(), now),
            "IDENTITY                                  PODS  SERIAL  NOT-AFTER  RENEW-AT  FINGERPRINT\n\
             spiffe://cluster.local/ns/apps/sa/db      1     -       -          -         -\n\
             spiffe://cluster.local/ns/default/sa/web  2     1f2e    23h        11h       0123456789abcdef\n\
             \n\
             Trust domain:  cluster.local\n\
             \n\
             SUBJECT           NOT-AFTER  FINGERPRINT\n\
             CN=Outrider root  3651d23h   0123456789ABCDEF\n"
        );
    }

    #[test]
    fn json_keeps_full_fingerprints() {
        let json = serde_json::to_value(CertificatesView::from(response())).unwrap();
        assert_eq!(json["trustDomain"], "cluster.local");
        let web = &json["certificates"][1];
        assert_eq!(web["fingerprintSha256"], FINGERPRINT);
        assert_eq!(web["renewAt"], "2025-03-04T16:00:00Z");
        assert_eq!(web["notBefore"], "2025-03-04T04:00:00Z");
        assert_eq!(json["certificates"][0]["serial"], serde_json::Value::Null);
        assert_eq!(
            json["roots"][0],
            serde_json::json!({
                "subject": "CN=Outrider root",
                "notAfter": "2035-03-04T04:00:00Z",
                "fingerprintSha256": FINGERPRINT.to_uppercase()
            })
        );
    }
}
