//! The runtime's MSK IAM token against AWS's own signer, `aws-msk-iam-sasl-signer-python`
//! (installed by `scripts/test.sh`): the same fixed credentials, region and signing time (the
//! Python clock frozen at the `X-Amz-Date` of the runtime's token) must give the same signed
//! URL, signature included. Only `User-Agent`, which names each library, differs.

use std::{collections::BTreeMap, process::Command};

use aws_credential_types::{Credentials, provider::SharedCredentialsProvider};
use base64::Engine;
use pipeline_runtime::kafka_sign_in::KafkaSignIn;

const ACCESS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
const SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
/// Shaped like an STS session token: '/', '+' and '=' must survive both encoders.
const SESSION_TOKEN: &str = "IQoJb3JpZ2luX2VjEXAMPLE/token+with/slashes+and==";

/// Signs with the reference signer, its clock frozen at `amz_date` (`20261203T101500Z`).
const REFERENCE: &str = r#"
import datetime, os, sys
import botocore.auth
from botocore.credentials import CredentialProvider, Credentials
from aws_msk_iam_sasl_signer import MSKAuthTokenProvider

frozen = datetime.datetime.strptime(os.environ["AMZ_DATE"], "%Y%m%dT%H%M%SZ")
botocore.auth.get_current_datetime = lambda *args, **kwargs: frozen

class Fixed(CredentialProvider):
    METHOD = "fixed"
    def load(self):
        return Credentials(os.environ["KEY"], os.environ["SECRET"], os.environ["TOKEN"])

token, expiry_ms = MSKAuthTokenProvider.generate_auth_token_from_credentials_provider(
    os.environ["REGION"], Fixed())
print(token)
print(expiry_ms)
"#;

fn decode_token(token: &str) -> String {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim())
        .unwrap_or_else(|e| panic!("{token:?} is not base64url without padding: {e}"));
    String::from_utf8(bytes).unwrap()
}

/// (scheme, host and path; the query's decoded pairs without `User-Agent`).
fn parts(url: &str) -> (String, BTreeMap<String, String>) {
    let (base, query) = url.split_once('?').expect("a query");
    let pairs = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .filter(|(k, _)| k != "User-Agent")
        .collect();
    (base.trim_end_matches('/').to_owned(), pairs)
}

#[test]
fn the_msk_iam_token_matches_aws_reference_signer_for_the_same_credentials_and_time() {
    let region = "us-east-1";
    let credentials = SharedCredentialsProvider::new(Credentials::new(
        ACCESS_KEY,
        SECRET_KEY,
        Some(SESSION_TOKEN.into()),
        None,
        "fixed",
    ));
    let (token, expiry_ms) = KafkaSignIn::msk_iam_with(region, credentials)
        .sign()
        .expect("signed");
    let ours = decode_token(&token);
    let (our_base, our_query) = parts(&ours);
    let amz_date = our_query["X-Amz-Date"].clone();

    let reference = Command::new("python3")
        .args(["-c", REFERENCE])
        .env("AMZ_DATE", &amz_date)
        .env("REGION", region)
        .env("KEY", ACCESS_KEY)
        .env("SECRET", SECRET_KEY)
        .env("TOKEN", SESSION_TOKEN)
        .output()
        .expect("python3 runs");
    assert!(
        reference.status.success(),
        "the reference signer failed (scripts/test.sh installs it: python3 -m pip install 'aws-msk-iam-sasl-signer-python==1.0.2'): {}",
        String::from_utf8_lossy(&reference.stderr)
    );
    let stdout = String::from_utf8(reference.stdout).unwrap();
    let mut lines = stdout.lines();
    let theirs = decode_token(lines.next().expect("a token"));
    let their_expiry: i64 = lines.next().expect("an expiry").trim().parse().unwrap();
    let (their_base, their_query) = parts(&theirs);

    assert_eq!(our_base, their_base);
    assert_eq!(our_query, their_query, "\nours:   {ours}\ntheirs: {theirs}");
    assert!(our_query.contains_key("X-Amz-Signature"));
    assert_eq!(expiry_ms, their_expiry, "both expire 900 s after signing");
    assert!(ours.contains("User-Agent=") && theirs.contains("User-Agent="));
}
