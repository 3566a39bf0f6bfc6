//! How the runtime's Kafka clients sign in where librdkafka cannot do it alone: Amazon MSK IAM
//! (`spec.kafka.sasl.mechanism: AWS_MSK_IAM`), SASL `OAUTHBEARER` with a token that the
//! `aws-msk-iam-sasl-signer` crate signs (SigV4, action `kafka-cluster:Connect`) from the pod's
//! own AWS credentials: the default credential chain, so IRSA's web identity token, EKS Pod
//! Identity, or the node's instance profile. librdkafka asks for a new token at 80% of the
//! previous one's 15-minute lifetime, so a token is always replaced before it expires.
//!
//! Every client context of the runtime holds a [`KafkaSignIn`] and answers librdkafka's token
//! refresh with it ([`KafkaSignIn::oauth_token`]). For other mechanisms it is empty and never
//! asked: librdkafka only asks under `OAUTHBEARER`.

use std::{
    sync::{Arc, OnceLock},
    time::Duration,
};

use aws_credential_types::provider::SharedCredentialsProvider;
use aws_types::region::Region;
use pipeline_crds::kafka::KafkaSpec;
use rdkafka::client::OAuthToken;
use tokio::sync::OnceCell;

/// How long signing a token may take (fetching credentials included) before the refresh fails
/// and librdkafka asks again.
const SIGNING_TIMEOUT: Duration = Duration::from_secs(30);

/// The principal name handed to librdkafka with each token; MSK identifies the caller by the
/// token's signature, not by this name.
const PRINCIPAL: &str = "sluice-runtime";

/// Why no token could be made.
#[derive(Debug, thiserror::Error)]
pub enum SignInError {
    /// Neither the spec nor the environment names the region.
    #[error(
        "AWS_MSK_IAM: no AWS region: set spec.kafka.sasl.region, or AWS_REGION in the pod (IRSA and EKS Pod Identity set it)"
    )]
    NoRegion,
    /// The signer's own runtime could not start.
    #[error("AWS_MSK_IAM: cannot start the token signer: {0}")]
    Runtime(#[source] std::io::Error),
    /// The default credential chain found no credentials (why, from the chain).
    #[error(
        "AWS_MSK_IAM: no AWS credentials in the pod ({0}): give the pipeline's ServiceAccount an IAM role (IRSA's eks.amazonaws.com/role-arn annotation, or an EKS Pod Identity association)"
    )]
    NoCredentials(String),
    /// Signing failed (the credential provider's error, e.g. an STS call refused).
    #[error("AWS_MSK_IAM: signing the token failed: {0}")]
    Signing(String),
    /// Signing did not finish in time.
    #[error("AWS_MSK_IAM: signing the token took over {} s", SIGNING_TIMEOUT.as_secs())]
    Timeout,
}

/// The sign-in of a pipeline's Kafka clients: nothing to do, or an MSK IAM token signer. Cheap
/// to clone (every client of the process shares one signer).
#[derive(Clone, Default)]
pub struct KafkaSignIn(Option<Arc<MskIamSigner>>);

impl std::fmt::Debug for KafkaSignIn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            None => f.write_str("KafkaSignIn(librdkafka)"),
            Some(signer) => write!(f, "KafkaSignIn(AWS_MSK_IAM, region {:?})", signer.region),
        }
    }
}

impl KafkaSignIn {
    /// The sign-in `kafka` asks for: an MSK IAM signer for the region of the spec, else of the
    /// environment (`AWS_REGION`, then `AWS_DEFAULT_REGION`).
    pub fn of(kafka: &KafkaSpec) -> Self {
        match &kafka.sasl {
            Some(sasl) if sasl.is_msk_iam() => {
                let region = sasl.region.clone().or_else(|| {
                    ["AWS_REGION", "AWS_DEFAULT_REGION"]
                        .into_iter()
                        .find_map(|name| std::env::var(name).ok().filter(|r| !r.is_empty()))
                });
                Self(Some(Arc::new(MskIamSigner::new(region, None))))
            }
            _ => Self(None),
        }
    }

    /// An MSK IAM signer for `region` with fixed credentials (tests, and tools that bring their
    /// own).
    pub fn msk_iam_with(region: &str, credentials: SharedCredentialsProvider) -> Self {
        Self(Some(Arc::new(MskIamSigner::new(
            Some(region.to_owned()),
            Some(credentials),
        ))))
    }

    /// Whether the clients sign in with MSK IAM.
    pub fn is_msk_iam(&self) -> bool {
        self.0.is_some()
    }

    /// A fresh token for librdkafka's refresh (the answer of every context's
    /// `generate_oauth_token`).
    pub fn oauth_token(&self) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        let Some(signer) = &self.0 else {
            return Err(
                "sasl.mechanism OAUTHBEARER is set by the runtime only for AWS_MSK_IAM".into(),
            );
        };
        let (token, lifetime_ms) = signer.sign().map_err(|e| {
            tracing::warn!(error = %e, "no MSK IAM token");
            e
        })?;
        Ok(OAuthToken {
            token,
            principal_name: PRINCIPAL.to_owned(),
            lifetime_ms,
        })
    }

    /// A signed token and when it expires (milliseconds since the Unix epoch).
    pub fn sign(&self) -> Result<(String, i64), SignInError> {
        match &self.0 {
            Some(signer) => signer.sign(),
            None => Err(SignInError::Signing("not an AWS_MSK_IAM connection".into())),
        }
    }
}

/// The context of the runtime's short-lived clients (the topic check's metadata consumer): it
/// only signs in.
pub struct SignInContext(pub KafkaSignIn);

impl rdkafka::ClientContext for SignInContext {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

    fn generate_oauth_token(
        &self,
        _: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
        self.0.oauth_token()
    }
}

impl rdkafka::consumer::ConsumerContext for SignInContext {}

/// Signs MSK IAM tokens on a runtime of its own (one thread, started at the first token), so a
/// refresh asked from any thread, async or not, never nests runtimes.
struct MskIamSigner {
    region: Option<String>,
    /// Given (tests), else the default chain, loaded once and cached (it caches credentials and
    /// refreshes them before they expire).
    credentials: Arc<OnceCell<Option<SharedCredentialsProvider>>>,
    runtime: OnceLock<Result<tokio::runtime::Runtime, String>>,
}

impl MskIamSigner {
    fn new(region: Option<String>, credentials: Option<SharedCredentialsProvider>) -> Self {
        let cell = match credentials {
            Some(given) => OnceCell::new_with(Some(Some(given))),
            None => OnceCell::new(),
        };
        Self {
            region,
            credentials: Arc::new(cell),
            runtime: OnceLock::new(),
        }
    }

    fn sign(&self) -> Result<(String, i64), SignInError> {
        let region = Region::new(self.region.clone().ok_or(SignInError::NoRegion)?);
        let runtime = self
            .runtime
            .get_or_init(|| {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(1)
                    .thread_name("msk-iam-signer")
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())
            })
            .as_ref()
            .map_err(|e| SignInError::Runtime(std::io::Error::other(e.clone())))?;
        let credentials = self.credentials.clone();
        let (answer, answered) = std::sync::mpsc::channel();
        runtime.spawn(async move {
            let provider = credentials
                .get_or_init(|| async {
                    aws_config::defaults(aws_config::BehaviorVersion::latest())
                        .region(region.clone())
                        .load()
                        .await
                        .credentials_provider()
                })
                .await
                .clone();
            let signed = match provider {
                None => Err(SignInError::NoCredentials("no credential provider".into())),
                Some(provider) => sign_with(region, provider).await,
            };
            // The caller may have given up (timeout): nobody to tell then.
            let _ = answer.send(signed);
        });
        answered
            .recv_timeout(SIGNING_TIMEOUT)
            .map_err(|_| SignInError::Timeout)?
    }
}

/// Credentials first (so their absence is said as such), then the token.
async fn sign_with(
    region: Region,
    provider: SharedCredentialsProvider,
) -> Result<(String, i64), SignInError> {
    use aws_credential_types::provider::ProvideCredentials;
    let credentials = provider
        .provide_credentials()
        .await
        .map_err(|e| SignInError::NoCredentials(causes(&e)))?;
    aws_msk_iam_sasl_signer::generate_auth_token_from_credentials_provider(
        region,
        SharedCredentialsProvider::new(credentials),
    )
    .await
    .map_err(|e| SignInError::Signing(causes(&e)))
}

/// An error and its sources, `: `-separated, at most 500 characters.
fn causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if text.len() > 500 {
        let cut = (0..=500)
            .rev()
            .find(|i| text.is_char_boundary(*i))
            .unwrap_or(0);
        text.truncate(cut);
        text.push('…');
    }
    text
}

impl Drop for MskIamSigner {
    fn drop(&mut self) {
        // A runtime dropped inside another one's async context panics; this never blocks.
        if let Some(Ok(runtime)) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

#[cfg(test)]
mod tests {
    use aws_credential_types::Credentials;
    use base64::Engine;

    use super::*;

    fn fixed() -> SharedCredentialsProvider {
        SharedCredentialsProvider::new(Credentials::new(
            "AKIDEXAMPLE",
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            Some("session-token".into()),
            None,
            "test",
        ))
    }

    fn decoded(token: &str) -> String {
        String::from_utf8(
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(token)
                .expect("base64url without padding"),
        )
        .unwrap()
    }

    #[test]
    fn an_msk_iam_token_is_a_presigned_connect_url_for_the_region_valid_for_15_minutes() {
        let sign_in = KafkaSignIn::msk_iam_with("eu-west-1", fixed());
        let before = chrono::Utc::now().timestamp_millis();
        let (token, expires_ms) = sign_in.sign().unwrap();
        let url = decoded(&token);
        assert!(
            url.starts_with(
                "https://kafka.eu-west-1.amazonaws.com/?Action=kafka-cluster%3AConnect"
            ),
            "{url}"
        );
        for part in [
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Credential=AKIDEXAMPLE%2F",
            "%2Feu-west-1%2Fkafka-cluster%2Faws4_request",
            "X-Amz-Expires=900",
            "X-Amz-Security-Token=session-token",
            "X-Amz-SignedHeaders=host",
            "X-Amz-Signature=",
        ] {
            assert!(url.contains(part), "{part} missing from {url}");
        }
        let lifetime = expires_ms - before;
        assert!(
            (898_000..=901_000).contains(&lifetime),
            "expires {lifetime} ms after signing"
        );
        let token = sign_in.oauth_token().unwrap();
        assert_eq!(token.lifetime_ms, expires_ms);
        assert!(!token.principal_name.is_empty());
    }

    #[test]
    fn a_token_is_signed_from_inside_an_async_runtime_without_nesting_runtimes() {
        let sign_in = KafkaSignIn::msk_iam_with("us-east-1", fixed());
        let outer = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let signed = outer.block_on(async { sign_in.sign() });
        assert!(signed.is_ok(), "{signed:?}");
        // Dropped inside the other runtime's context: must not panic.
        outer.block_on(async move { drop(sign_in) });
    }

    /// The runtime's sign-in context, counting librdkafka's token refreshes.
    struct Counting(SignInContext, std::sync::atomic::AtomicUsize);

    impl rdkafka::ClientContext for Counting {
        const ENABLE_REFRESH_OAUTH_TOKEN: bool = true;

        fn generate_oauth_token(
            &self,
            config: Option<&str>,
        ) -> Result<OAuthToken, Box<dyn std::error::Error>> {
            self.1.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            rdkafka::ClientContext::generate_oauth_token(&self.0, config)
        }
    }

    impl rdkafka::consumer::ConsumerContext for Counting {}

    #[test]
    fn librdkafka_asks_the_context_for_a_token_when_the_client_starts_under_oauthbearer() {
        use rdkafka::consumer::{BaseConsumer, Consumer};
        let context = Counting(
            SignInContext(KafkaSignIn::msk_iam_with("eu-west-1", fixed())),
            std::sync::atomic::AtomicUsize::new(0),
        );
        let consumer: BaseConsumer<Counting> = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", "127.0.0.1:1")
            .set("security.protocol", "sasl_plaintext")
            .set("sasl.mechanism", "OAUTHBEARER")
            .create_with_context(context)
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        let asked = || {
            consumer
                .context()
                .1
                .load(std::sync::atomic::Ordering::Relaxed)
        };
        while asked() == 0 && std::time::Instant::now() < deadline {
            let _ = consumer.poll(Duration::from_millis(50));
        }
        assert_eq!(
            asked(),
            1,
            "one token at start, the next at 80% of its lifetime"
        );
    }

    #[test]
    fn without_a_region_the_refresh_fails_with_the_fields_to_set() {
        let sign_in = KafkaSignIn(Some(Arc::new(MskIamSigner::new(None, Some(fixed())))));
        let error = sign_in.sign().unwrap_err().to_string();
        assert!(error.contains("spec.kafka.sasl.region"), "{error}");
        assert!(sign_in.oauth_token().is_err());
    }

    #[test]
    fn other_mechanisms_have_no_signer_and_the_region_comes_from_the_spec_first() {
        let kafka = |sasl: &str| -> KafkaSpec {
            serde_norway::from_str(&format!(
                "{{bootstrapServers: 'b:9098', securityProtocol: SASL_SSL, sasl: {sasl}}}"
            ))
            .unwrap()
        };
        let scram = KafkaSignIn::of(&kafka(
            "{mechanism: SCRAM-SHA-512, credentialsSecret: {name: s}}",
        ));
        assert!(!scram.is_msk_iam());
        let iam = KafkaSignIn::of(&kafka("{mechanism: AWS_MSK_IAM, region: ap-southeast-2}"));
        assert!(iam.is_msk_iam());
        assert_eq!(
            format!("{iam:?}"),
            "KafkaSignIn(AWS_MSK_IAM, region Some(\"ap-southeast-2\"))"
        );
    }
}
