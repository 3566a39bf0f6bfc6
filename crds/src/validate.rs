//! Semantic validation of a `PipelineDeploymentSpec`: everything the CRD schema and its CEL rules
//! cannot say. Pure; returns every problem at once, each with its field path. The operator and the
//! runtime both call it.

use std::{collections::BTreeSet, fmt};

use crate::{
    Duration, PipelineDeploymentSpec, aggregate::AggregateFunction, checkpoint::DeliveryGuarantee,
    contract::output, kafka::SecurityProtocol, quantity::parse_quantity, sink::OutputFormat,
    source::FormatKind, transform::TimestampSource, window::WindowKind,
};

/// One problem, at one field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// JSON path of the field, e.g. `spec.window.sliding.slide`.
    pub path: String,
    /// What is wrong and, where useful, what would be right.
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.message)
    }
}

/// Every problem found in a spec.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct ValidationErrors(pub Vec<FieldError>);

impl fmt::Display for ValidationErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid PipelineDeployment spec ({} problem",
            self.0.len()
        )?;
        if self.0.len() != 1 {
            f.write_str("s")?;
        }
        f.write_str("):")?;
        for error in &self.0 {
            write!(f, "\n  - {error}")?;
        }
        Ok(())
    }
}

impl ValidationErrors {
    /// Whether any error is at `path` (exactly).
    pub fn has_path(&self, path: &str) -> bool {
        self.0.iter().any(|e| e.path == path)
    }
}

/// Librdkafka properties the runtime sets itself; overriding them would break offsets,
/// transactions or credentials handling.
pub const RESERVED_KAFKA_PROPERTIES: &[&str] = &[
    "bootstrap.servers",
    "group.id",
    "group.instance.id",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.offset.reset",
    "partition.assignment.strategy",
    "isolation.level",
    "transactional.id",
    "enable.idempotence",
    "security.protocol",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.username",
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
];

/// Whether a librdkafka property carries credentials or key material, which belong in Secrets
/// (`spec.kafka.sasl.credentialsSecret`, `spec.kafka.tls`), never in the resource: every
/// `sasl.*` property, private keys, certificates, key stores and anything named like a password
/// or a secret.
pub fn carries_credentials(key: &str) -> bool {
    let key = key.to_ascii_lowercase().replace('_', ".");
    key.starts_with("sasl.")
        || key.starts_with("ssl.key")
        || key.starts_with("ssl.certificate")
        || key.starts_with("ssl.keystore")
        || key.starts_with("ssl.engine")
        || key.contains("password")
        || key.contains("secret")
}

/// Longest `metadata.name`: the StatefulSet's pods get a `controller-revision-hash` label of
/// the name plus 11 characters, which must fit in 63.
pub const MAX_NAME_LENGTH: usize = 52;

/// Problems with a PipelineDeployment's `metadata.name`: it names Services (a DNS-1035 label)
/// and labels, with suffixes.
pub fn name_problems(name: &str) -> Vec<FieldError> {
    let dns_1035 = name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && !name.ends_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    let mut problems = Vec::new();
    if !dns_1035 {
        problems.push(FieldError {
            path: "metadata.name".into(),
            message: format!(
                "{name:?} must be a DNS-1035 label (lower-case letters, digits and '-', starting with a letter): it names the pipeline's Services"
            ),
        });
    }
    if name.len() > MAX_NAME_LENGTH {
        problems.push(FieldError {
            path: "metadata.name".into(),
            message: format!(
                "is {} characters; at most {MAX_NAME_LENGTH} leave room for the suffixes of the pipeline's objects and labels",
                name.len()
            ),
        });
    }
    problems
}

/// Shortest checkpoint interval accepted.
pub const MIN_CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

struct Collector(Vec<FieldError>);

impl Collector {
    fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(FieldError {
            path: path.into(),
            message: message.into(),
        });
    }

    fn check(&mut self, ok: bool, path: &str, message: impl Into<String>) {
        if !ok {
            self.error(path, message);
        }
    }
}

/// Checks a spec. `Ok(())` when it can run; otherwise every problem, in field order.
pub fn validate(spec: &PipelineDeploymentSpec) -> Result<(), ValidationErrors> {
    let mut c = Collector(Vec::new());
    kafka(&mut c, spec);
    source(&mut c, spec);
    c.0.extend(crate::enrich::problems(spec));
    pod_template(&mut c, spec);
    transform(&mut c, spec);
    window(&mut c, spec);
    aggregates(&mut c, spec);
    sink(&mut c, spec);
    side_topics(&mut c, spec);
    delivery_and_checkpoint(&mut c, spec);
    sizing(&mut c, spec);
    autoscaler(&mut c, spec);
    if c.0.is_empty() {
        Ok(())
    } else {
        Err(ValidationErrors(c.0))
    }
}

/// The longest filter expression, in bytes (as the CRD schema's `maxLength`).
pub const MAX_FILTER_LENGTH: usize = 4096;
/// The deepest nesting of parentheses, brackets and braces in a filter.
pub const MAX_FILTER_NESTING: usize = 32;
/// The deepest nesting of list macros (`all`, `exists`, `exists_one`, `map`, `filter`): each level
/// multiplies the work per record by a list's length.
pub const MAX_FILTER_MACRO_NESTING: usize = 2;

/// Why a filter is beyond the bounds that keep its cost bounded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum FilterBoundsError {
    /// Longer than [`MAX_FILTER_LENGTH`].
    #[error("is {0} bytes long, at most {MAX_FILTER_LENGTH}")]
    TooLong(usize),
    /// List macros nested deeper than [`MAX_FILTER_MACRO_NESTING`].
    #[error(
        "nests list macros (all, exists, exists_one, map, filter) more than {MAX_FILTER_MACRO_NESTING} deep: its cost per record would grow as a list's length to that power"
    )]
    MacrosTooDeep,
    /// Brackets nested deeper than [`MAX_FILTER_NESTING`].
    #[error("nests parentheses, brackets or braces more than {MAX_FILTER_NESTING} deep")]
    BracketsTooDeep,
}

/// Why a filter does not compile.
#[derive(Debug, thiserror::Error)]
pub enum FilterCompileError {
    /// The CEL parser refused it.
    #[error("{0}")]
    Parse(#[source] cel::ParseErrors),
    /// No thread could be started to parse it on.
    #[error("cannot start a thread to parse it: {0}")]
    NoThread(#[source] std::io::Error),
    /// The parser panicked on it.
    #[error("the CEL parser failed on it")]
    ParserFailed,
}

/// Bounds on a CEL filter that keep its parsing and its cost per record bounded: length, nesting,
/// and nested list macros. Pure text scanning (string literals skipped), so it runs before the
/// parser, which recurses once per nesting level.
pub fn cel_bounds(expression: &str) -> Result<(), FilterBoundsError> {
    if expression.len() > MAX_FILTER_LENGTH {
        return Err(FilterBoundsError::TooLong(expression.len()));
    }
    const MACROS: [&str; 5] = ["all", "exists", "exists_one", "map", "filter"];
    let bytes = expression.as_bytes();
    // One frame per open bracket: whether it opened a macro's arguments.
    let mut frames: Vec<bool> = Vec::new();
    let mut macros = 0;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            quote @ (b'"' | b'\'') => {
                i += 1;
                while i < bytes.len() && bytes[i] != quote {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
            }
            open @ (b'(' | b'[' | b'{') => {
                let name_end = i;
                let mut name_start = i;
                while name_start > 0
                    && (bytes[name_start - 1].is_ascii_alphanumeric()
                        || bytes[name_start - 1] == b'_')
                {
                    name_start -= 1;
                }
                let is_macro = open == b'('
                    && name_start > 0
                    && bytes[name_start - 1] == b'.'
                    && MACROS.contains(&&expression[name_start..name_end]);
                frames.push(is_macro);
                if is_macro {
                    macros += 1;
                    if macros > MAX_FILTER_MACRO_NESTING {
                        return Err(FilterBoundsError::MacrosTooDeep);
                    }
                }
                if frames.len() > MAX_FILTER_NESTING {
                    return Err(FilterBoundsError::BracketsTooDeep);
                }
            }
            b')' | b']' | b'}' if frames.pop() == Some(true) => macros -= 1,
            _ => {}
        }
        i += 1;
    }
    Ok(())
}

/// The stack a CEL expression is parsed on. The parser recurses deeply for each nesting level
/// (a debug build overflowed a 2 MiB thread stack at 13 nested parentheses), so parsing never
/// runs on a caller's stack (a Tokio worker of the operator, a test thread): a thread with this
/// much (reserved, not committed) parses it. The runtime runs its slots on such stacks too.
pub const CEL_PARSER_STACK: usize = 64 << 20;

/// Whether `expression` compiles, parsed on a thread with [`CEL_PARSER_STACK`].
pub fn cel_compiles(expression: &str) -> Result<(), FilterCompileError> {
    let expression = expression.to_owned();
    std::thread::Builder::new()
        .name("cel-parse".into())
        .stack_size(CEL_PARSER_STACK)
        .spawn(move || {
            cel::Program::compile(&expression)
                .map(|_| ())
                .map_err(FilterCompileError::Parse)
        })
        .map_err(FilterCompileError::NoThread)?
        .join()
        .unwrap_or(Err(FilterCompileError::ParserFailed))
}

/// Kafka's legal topic names: 1 to 249 of `[A-Za-z0-9._-]`, not `.` or `..`.
pub fn is_valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
}

/// A dotted field path such as `user.id`: non-empty segments without spaces.
pub fn is_valid_field_path(path: &str) -> bool {
    !path.is_empty()
        && path
            .split('.')
            .all(|seg| !seg.is_empty() && !seg.chars().any(char::is_whitespace))
}

fn kafka(c: &mut Collector, spec: &PipelineDeploymentSpec) {
    let k = &spec.kafka;
    if let Some(create) = &k.create_topics {
        if let Some(p) = create.partitions {
            c.check(
                (1..=10_000).contains(&p),
                "spec.kafka.createTopics.partitions",
                "must be 1 to 10000",
            );
        }
        if let Some(r) = create.replication_factor {
            c.check(
                (1..=32).contains(&r),
                "spec.kafka.createTopics.replicationFactor",
                "must be 1 to 32",
            );
        }
    }
    let servers: Vec<&str> = k.bootstrap_servers.split(',').map(str::trim).collect();
    if k.bootstrap_servers.trim().is_empty() {
        c.error("spec.kafka.bootstrapServers", "must not be empty");
    } else {
        for server in servers {
            let valid = server
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                c.error(
                    "spec.kafka.bootstrapServers",
                    format!("{server:?} is not host:port"),
                );
            }
        }
    }
    let sasl_protocol = matches!(
        k.security_protocol,
        SecurityProtocol::SaslPlaintext | SecurityProtocol::SaslSsl
    );
    match (&k.sasl, sasl_protocol) {
        (Some(_), false) => c.error(
            "spec.kafka.sasl",
            "sasl requires securityProtocol SASL_PLAINTEXT or SASL_SSL",
        ),
        (None, true) => c.error(
            "spec.kafka.sasl",
            "securityProtocol SASL_* requires sasl (mechanism and credentialsSecret)",
        ),
        _ => {}
    }
    if let Some(sasl) = &k.sasl {
        msk_iam(c, k, sasl);
    }
    if let Some(rack) = &k.rack {
        c.check(
            !k.properties.contains_key("client.rack"),
            "spec.kafka.properties[client.rack]",
            "is set per pod by spec.kafka.rack: set one of them",
        );
        c.check(
            is_label_key(&rack.topology_key),
            "spec.kafka.rack.topologyKey",
            format!("{:?} is not a label key", rack.topology_key),
        );
    }
    if k.tls.is_some()
        && !matches!(
            k.security_protocol,
            SecurityProtocol::Ssl | SecurityProtocol::SaslSsl
        )
    {
        c.error(
            "spec.kafka.tls",
            "tls requires securityProtocol SSL or SASL_SSL",
        );
    }
    if let Some(url) = &k.schema_registry_url {
        c.check(
            is_http_url(url),
            "spec.kafka.schemaRegistryUrl",
            "must be an http:// or https:// URL",
        );
        c.check(
            !url_has_credentials(url),
            "spec.kafka.schemaRegistryUrl",
            "must not carry credentials (user:password@): the URL is stored in plain text; use spec.kafka.schemaRegistryCredentialsSecret",
        );
    }
    if k.schema_registry_credentials_secret.is_some() && k.schema_registry_url.is_none() {
        c.error(
            "spec.kafka.schemaRegistryCredentialsSecret",
            "needs spec.kafka.schemaRegistryUrl",
        );
    }
    for key in k.properties.keys() {
        if RESERVED_KAFKA_PROPERTIES.contains(&key.as_str()) {
            c.error(
                format!("spec.kafka.properties[{key}]"),
                "is set by the runtime and cannot be overridden (use the dedicated spec fields)",
            );
        } else if carries_credentials(key) {
            c.error(
                format!("spec.kafka.properties[{key}]"),
                "carries credentials or key material, which must not sit in the resource: use spec.kafka.sasl.credentialsSecret or spec.kafka.tls",
            );
        }
    }
    consumer_timeouts(c, k);
    if k.sasl
        .as_ref()
        .is_some_and(|s| s.mechanism == crate::kafka::SaslMechanism::Plain)
        && k.security_protocol == SecurityProtocol::SaslPlaintext
    {
        c.error(
            "spec.kafka.securityProtocol",
            "SASL PLAIN over SASL_PLAINTEXT sends the password unencrypted: use SASL_SSL (or a SCRAM mechanism)",
        );
    }
}

/// The consumers' timeouts, as librdkafka will get them: it refuses to create a consumer whose
/// poll interval is shorter than its session timeout, and a heartbeat must fit in the session
/// several times.
fn consumer_timeouts(c: &mut Collector, k: &crate::kafka::KafkaSpec) {
    let number = |key: &str, default: u64| match k.properties.get(key) {
        None => Some(default),
        Some(v) => v.trim().parse::<u64>().ok(),
    };
    let session = number(
        "session.timeout.ms",
        crate::kafka::DEFAULT_SESSION_TIMEOUT_MS,
    );
    let heartbeat = number(
        "heartbeat.interval.ms",
        crate::kafka::DEFAULT_HEARTBEAT_INTERVAL_MS,
    );
    let poll = number(
        "max.poll.interval.ms",
        crate::kafka::DEFAULT_MAX_POLL_INTERVAL_MS,
    );
    for (key, value) in [
        ("session.timeout.ms", session),
        ("heartbeat.interval.ms", heartbeat),
        ("max.poll.interval.ms", poll),
    ] {
        if value.is_none_or(|v| v == 0) {
            c.error(
                format!("spec.kafka.properties[{key}]"),
                "must be a positive whole number of milliseconds",
            );
        }
    }
    if let (Some(session), Some(heartbeat), Some(poll)) = (session, heartbeat, poll) {
        if poll < session {
            c.error(
                "spec.kafka.properties[max.poll.interval.ms]",
                format!("must be at least session.timeout.ms ({session} ms)"),
            );
        }
        if heartbeat >= session {
            c.error(
                "spec.kafka.properties[heartbeat.interval.ms]",
                format!("must be below session.timeout.ms ({session} ms)"),
            );
        }
    }
}

/// `AWS_MSK_IAM`: TLS, no credentials Secret, a region shaped like one, and topics created
/// beforehand (the runtime creates topics through Kafka's admin client, which cannot sign in with
/// an IAM token yet).
fn msk_iam(c: &mut Collector, k: &crate::kafka::KafkaSpec, sasl: &crate::kafka::SaslSpec) {
    if !sasl.is_msk_iam() {
        c.check(
            sasl.credentials_secret.is_some(),
            "spec.kafka.sasl.credentialsSecret",
            format!(
                "is required for {} (it holds the username and password)",
                sasl.mechanism.as_kafka_str()
            ),
        );
        c.check(
            sasl.region.is_none(),
            "spec.kafka.sasl.region",
            "applies to AWS_MSK_IAM only",
        );
        return;
    }
    c.check(
        sasl.credentials_secret.is_none(),
        "spec.kafka.sasl.credentialsSecret",
        "is not used with AWS_MSK_IAM: the runtime pods sign in with their own AWS identity (IRSA or EKS Pod Identity on the pipeline's ServiceAccount)",
    );
    c.check(
        k.security_protocol == SecurityProtocol::SaslSsl,
        "spec.kafka.securityProtocol",
        "AWS_MSK_IAM needs SASL_SSL (the MSK IAM listener, port 9098, is TLS)",
    );
    if let Some(region) = &sasl.region {
        c.check(
            is_aws_region(region),
            "spec.kafka.sasl.region",
            format!("{region:?} is not an AWS region such as eu-west-1"),
        );
    }
    c.check(
        k.create_topics.is_none(),
        "spec.kafka.createTopics",
        "is not supported with AWS_MSK_IAM: create the output topics (and, for a re-keyed pipeline, the repartition topic the runtime names in its report) beforehand",
    );
}

/// A Kubernetes label key: an optional DNS-subdomain prefix and `/`, then a name of at most 63
/// alphanumerics, `-`, `_` and `.`, starting and ending alphanumeric.
fn is_label_key(key: &str) -> bool {
    let (prefix, name) = key.rsplit_once('/').unwrap_or(("", key));
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    let prefix_ok = prefix.len() <= 253
        && prefix.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
        || prefix.is_empty() && !key.contains('/');
    name_ok && prefix_ok
}

/// `eu-west-1`, `us-gov-west-1`, `ap-southeast-4`: lowercase words and a number, by dashes.
fn is_aws_region(region: &str) -> bool {
    let parts: Vec<&str> = region.split('-').collect();
    parts.len() >= 3
        && parts[..parts.len() - 1]
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_lowercase()))
        && parts[parts.len() - 1].parse::<u8>().is_ok()
}

/// The directories the operator mounts into the runtime container.
const OPERATOR_DIRS: &[&str] = &[
    crate::contract::paths::CONFIG_DIR,
    crate::contract::paths::SCRATCH_DIR,
    "/var/lib/sluice",
];

/// Extra volumes: names and mount paths of their own, clear of the operator's.
fn extra_volumes(c: &mut Collector, volumes: &[crate::pod_template::ExtraVolume]) {
    let mut names = std::collections::BTreeSet::new();
    let mut paths = std::collections::BTreeSet::new();
    for (i, volume) in volumes.iter().enumerate() {
        let at = format!("spec.podTemplate.volumes[{i}]");
        if crate::pod_template::OPERATOR_VOLUMES.contains(&volume.name.as_str()) {
            c.error(
                format!("{at}.name"),
                format!("{} is the operator's own volume", volume.name),
            );
        } else if !names.insert(volume.name.as_str()) {
            c.error(
                format!("{at}.name"),
                format!("{} is used twice", volume.name),
            );
        }
        let path = volume.mount_path.trim_end_matches('/');
        let clashes = |dir: &str| {
            path == dir
                || path.starts_with(&format!("{dir}/"))
                || dir.starts_with(&format!("{path}/"))
        };
        if !path.starts_with('/') || path.split('/').any(|part| part == ".." || part == ".") {
            c.error(
                format!("{at}.mountPath"),
                "must be an absolute path without . or ..",
            );
        } else if path.is_empty() || OPERATOR_DIRS.iter().any(|dir| clashes(dir)) {
            c.error(
                format!("{at}.mountPath"),
                format!(
                    "{} overlaps the operator's mounts ({})",
                    volume.mount_path,
                    OPERATOR_DIRS.join(", ")
                ),
            );
        } else if !paths.insert(path) {
            c.error(
                format!("{at}.mountPath"),
                format!("{path} is mounted twice"),
            );
        }
        c.check(
            volume.config_map.is_some() != volume.empty_dir.is_some(),
            &at,
            "a volume has exactly one of configMap and emptyDir",
        );
        for (j, item) in volume.config_map.iter().flat_map(|c| &c.items).enumerate() {
            c.check(
                !item.path.starts_with('/') && !item.path.split('/').any(|part| part == ".."),
                &format!("{at}.configMap.items[{j}].path"),
                "must be relative, without ..",
            );
        }
    }
}

fn pod_template(c: &mut Collector, spec: &PipelineDeploymentSpec) {
    let Some(template) = &spec.pod_template else {
        return;
    };
    extra_volumes(c, &template.volumes);
    if let Some(profile) = template
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_localhost_profile.as_ref())
    {
        c.check(
            !profile.starts_with('/') && !profile.split('/').any(|part| part == ".."),
            "spec.podTemplate.securityContext.seccompLocalhostProfile",
            "must be a path relative to the kubelet's seccomp directory, without ..",
        );
    }
    if let Some(groups) = template
        .security_context
        .as_ref()
        .map(|s| &s.supplemental_groups)
    {
        c.check(
            groups.iter().all(|g| *g >= 1),
            "spec.podTemplate.securityContext.supplementalGroups",
            "groups are at least 1 (never root's)",
        );
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, e) in template.env.iter().enumerate() {
        if !crate::pod_template::user_may_set_env(&e.name) {
            c.error(
                format!("spec.podTemplate.env[{i}].name"),
                format!("{} is set by the operator", e.name),
            );
        }
        if !seen.insert(e.name.as_str()) {
            c.error(
                format!("spec.podTemplate.env[{i}].name"),
                format!("{} is set twice", e.name),
            );
        }
    }
}

fn source(c: &mut Collector, spec: &PipelineDeploymentSpec) {
    let s = &spec.source;
    match (&s.topic, &s.topics) {
        (Some(_), Some(_)) | (None, None) => {
            c.error("spec.source", "set exactly one of topic or topics");
        }
        (Some(topic), None) => {
            c.check(
                is_valid_topic_name(topic),
                "spec.source.topic",
                "is not a valid Kafka topic name ([A-Za-z0-9._-], 1 to 249 characters)",
            );
        }
        (None, Some(topics)) => {
            if topics.is_empty() {
                c.error("spec.source.topics", "must list at least one topic");
            }
            let mut seen = BTreeSet::new();
            for (i, topic) in topics.iter().enumerate() {
                if !is_valid_topic_name(topic) {
                    c.error(
                        format!("spec.source.topics[{i}]"),
                        "is not a valid Kafka topic name ([A-Za-z0-9._-], 1 to 249 characters)",
                    );
                }
                if !seen.insert(topic) {
                    c.error(format!("spec.source.topics[{i}]"), "is listed twice");
                }
            }
        }
    }
    if let Some(group) = &s.consumer_group {
        // The group names the checkpoint directory too, so it keeps to the characters of topic
        // names, which every object store and file system takes as they are.
        use crate::source::{MAX_CONSUMER_GROUP_LENGTH, REPARTITION_TOPIC_SUFFIX};
        if !is_valid_topic_name(group) || group.len() > MAX_CONSUMER_GROUP_LENGTH {
            c.error(
                "spec.source.consumerGroup",
                format!(
                    "must be 1 to {MAX_CONSUMER_GROUP_LENGTH} letters, digits, '.', '_' or '-' (with {REPARTITION_TOPIC_SUFFIX:?} it names the repartition topic, at most 249)"
                ),
            );
        }
    }
    match (s.format.kind, &s.format.schema) {
        (FormatKind::Avro, Some(schema)) => {
            if serde_json::from_str::<serde_json::Value>(schema).is_err() {
                c.error(
                    "spec.source.format.schema",
                    "is not valid JSON (an Avro schema is a JSON document)",
                );
            }
        }
        (FormatKind::Avro, None) => {
            if spec.kafka.schema_registry_url.is_none() {
                c.error(
                    "spec.source.format",
                    "avro without an inline schema needs spec.kafka.schemaRegistryUrl",
                );
            }
        }
        (_, Some(_)) => c.error("spec.source.format.schema", "is only used with type avro"),
        (_, None) => {}
    }
}

fn transform(c: &mut Collector, spec: &PipelineDeploymentSpec) {
    let t = &spec.transform;
    let raw = spec.source.format.kind == FormatKind::Raw;
    if let Some(filter) = &t.filter {
        if filter.trim().is_empty() {
            c.error("spec.transform.filter", "must not be empty");
        } else if let Err(problem) = cel_bounds(filter) {
            // Checked before parsing: the parser recurses once per nesting level.
            c.error("spec.transform.filter", problem.to_string());
        } else if let Err(e) = cel_compiles(filter) {
            c.error(
                "spec.transform.filter",
                format!("is not a valid CEL expression: {e}"),
            );
        }
    }
    if let Some(select) = &t.select {
        if spec.window.is_some() {
            c.error(
                "spec.transform.select",
                "is for stateless pipelines; windowed outputs are the key and the aggregates",
            );
        }
        if raw {
            c.error(
                "spec.transform.select",
                "raw records have no fields to select",
            );
        }
        for (i, path) in select.iter().enumerate() {
            c.check(
                is_valid_field_path(path),
                &format!("spec.transform.select[{i}]"),
                "is not a dotted field path",
            );
        }
    }
    if let Some(key) = &t.key_by {
        c.check(
            is_valid_field_path(key),
            "spec.transform.keyBy",
            "is not a dotted field path",
        );
        c.check(
            !raw,
            "spec.transform.keyBy",
            "raw records have no fields to key by",
        );
    }
    if let Some(ts) = &t.timestamp {
        match (ts.source, &ts.field) {
            (TimestampSource::Field, None) => {
                c.error(
                    "spec.transform.timestamp.field",
                    "is required for source field",
                );
            }
            (TimestampSource::Field, Some(field)) => {
                c.check(
                    is_valid_field_path(field),
                    "spec.transform.timestamp.field",
                    "is not a dotted field path",
                );
                c.check(
                    !raw,
                    "spec.transform.timestamp.field",
                    "raw records have no fields; use source kafka",
                );
            }
            (_, Some(_)) => c.error(
                "spec.transform.timestamp.field",
                "is only used with source field",
            ),
            (_, None) => {}
        }
        for (name, bound) in [
            ("maxAheadOfWallClock", ts.max_ahead_of_wall_clock),
            ("maxAheadOfWatermark", ts.max_ahead_of_watermark),
        ] {
            if let Some(bound) = bound {
                c.check(
                    !bound.is_zero() && bound <= MAX_EVENT_TIME_SPAN,
                    &format!("spec.transform.timestamp.{name}"),
                    format!("must be greater than 0s and at most {MAX_EVENT_TIME_SPAN}"),
                );
            }
        }
    }
    c.check(
        t.watermark.max_out_of_orderness <= MAX_EVENT_TIME_SPAN,
        "spec.transform.watermark.maxOutOfOrderness",
        format!("must be at most {MAX_EVENT_TIME_SPAN}"),
    );
    if let Some(idle) = t.watermark.idle_timeout {
        c.check(
            !idle.is_zero(),
            "spec.transform.watermark.idleTimeout",
            "must be greater than 0s (omit it to disable idleness)",
        );
    }
}

/// The longest checkpoint interval with exactly-once delivery: three intervals (the transaction
/// timeout the runtime asks for) fit in the brokers' default `transaction.max.timeout.ms`.
pub const MAX_EXACTLY_ONCE_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(300);

/// The most sliding windows one record belongs to (`size / slide`): every record updates the
/// aggregates of each, and each key keeps state for each, so the bound caps one record's work
/// (about 1,000 aggregate updates) and a key's windows. 24h/1m (1,440) is refused; 24h/2m is
/// not.
pub const MAX_WINDOWS_PER_RECORD: u64 = 1_000;

/// The longest window size, slide, gap, lateness or event-time bound: a year and a day. Event times
/// are years 1 to 9999 in milliseconds, so window arithmetic stays far inside `i64`.
pub const MAX_EVENT_TIME_SPAN: Duration = Duration::from_secs(366 * 24 * 3600);

fn window(c: &mut Collector, spec: &PipelineDeploymentSpec) {
    let Some(w) = &spec.window else { return };
    let spans = [
        (
            "spec.window.tumbling.size",
            w.tumbling.as_ref().map(|t| t.size),
        ),
        (
            "spec.window.sliding.size",
            w.sliding.as_ref().map(|s| s.size),
        ),
        (
            "spec.window.sliding.slide",
            w.sliding.as_ref().map(|s| s.slide),
        ),
        ("spec.window.session.gap", w.session.as_ref().map(|s| s.gap)),
        ("spec.window.allowedLateness", Some(w.allowed_lateness)),
    ];
    for (path, span) in spans {
        if let Some(span) = span {
            c.check(
                span <= MAX_EVENT_TIME_SPAN,
                path,
                format!("must be at most {MAX_EVENT_TIME_SPAN}"),
            );
        }
    }
    match w.kind() {
        None => c.error(
            "spec.window",
            "set exactly one of tumbling, sliding or session",
        ),
        Some(WindowKind::Tumbling { size }) => {
            c.check(
                !size.is_zero(),
                "spec.window.tumbling.size",
                "must be greater than 0s",
            );
        }
        Some(WindowKind::Sliding { size, slide }) => {
            if slide.is_zero() {
                c.error("spec.window.sliding.slide", "must be greater than 0s");
            } else if slide > size {
                c.error("spec.window.sliding.slide", "must be at most size");
            } else if !size.as_millis().is_multiple_of(slide.as_millis()) {
                c.error(
                    "spec.window.sliding.size",
                    format!("must be a whole multiple of slide ({slide})"),
                );
            } else if size.as_millis() / slide.as_millis() > MAX_WINDOWS_PER_RECORD {
                c.error(
                    "spec.window.sliding.slide",
                    format!(
                        "puts each record into {} windows (size / slide); at most {MAX_WINDOWS_PER_RECORD} keep one record's work and each key's state bounded: use a longer slide",
                        size.as_millis() / slide.as_millis()
                    ),
                );
            }
        }
        Some(WindowKind::Session { gap }) => {
            c.check(
                !gap.is_zero(),
                "spec.window.session.gap",
                "must be greater than 0s",
            );
        }
    }
    if spec.transform.key_by.is_none() {
        c.error(
            "spec.transform.keyBy",
            "windows are computed per key: set keyBy",
        );
    }
}

fn aggregates(c: &mut Collector, spec: &PipelineDeploymentSpec) {
    if spec.window.is_some() && spec.aggregates.is_empty() {
        c.error("spec.aggregates", "a window needs at least one aggregate");
    }
    if spec.window.is_none() && !spec.aggregates.is_empty() {
        c.error("spec.aggregates", "aggregates need a window");
    }
    // The key's output field is the last segment of its path; in Avro output every field name is
    // sanitised, so two names that sanitise alike would collide in the derived schema.
    let key_name = spec
        .transform
        .key_by
        .as_deref()
        .map_or("key", |k| k.rsplit('.').next().unwrap_or(k));
    let key_avro = output::avro_field_name(key_name);
    if spec.window.is_some()
        && [output::WINDOW_START, output::WINDOW_END]
            .iter()
            .any(|w| *w == key_name || *w == key_avro)
    {
        c.error(
            "spec.transform.keyBy",
            format!("the key's output field {key_name:?} collides with the window bounds (window_start, window_end); key by a field with another name"),
        );
    }
    let mut names = BTreeSet::new();
    for (i, agg) in spec.aggregates.iter().enumerate() {
        let path = format!("spec.aggregates[{i}]");
        if !names.insert(agg.name.as_str()) {
            c.error(
                format!("{path}.name"),
                format!("{:?} is used twice", agg.name),
            );
        }
        c.check(
            agg.name.len() <= 128 && !agg.name.is_empty() && output::is_avro_field_name(&agg.name),
            &format!("{path}.name"),
            "must be 1 to 128 letters, digits or _, not starting with a digit",
        );
        if agg.name == output::WINDOW_START
            || agg.name == output::WINDOW_END
            || agg.name == key_name
            || agg.name == key_avro
        {
            c.error(
                format!("{path}.name"),
                format!("{:?} collides with a key or window field", agg.name),
            );
        }
        match (&agg.field, agg.function.needs_field()) {
            (None, true) => c.error(format!("{path}.field"), "is required for this function"),
            (Some(field), _) => c.check(
                is_valid_field_path(field),
                &format!("{path}.field"),
                "is not a dotted field path",
            ),
            (None, false) => {}
        }
        match (agg.quantile, agg.function) {
            (Some(q), AggregateFunction::Percentile) => c.check(
                q > 0.0 && q < 1.0,
                &format!("{path}.quantile"),
                "must be strictly between 0 and 1",
            ),
            (None, AggregateFunction::Percentile) => {
                c.error(format!("{path}.quantile"), "is required for percentile");
            }
            (Some(_), _) => c.error(format!("{path}.quantile"), "is only used by percentile"),
            (None, _) => {}
        }
    }
}

fn sink(c: &mut Collector, spec: &PipelineDeploymentSpec) {
    let source_topics = spec.source.topic_names();
    match (&spec.sink.kafka, &spec.sink.clickhouse) {
        (Some(kafka), None) => {
            c.check(
                is_valid_topic_name(&kafka.topic),
                "spec.sink.kafka.topic",
                "is not a valid Kafka topic name",
            );
            c.check(
                !source_topics.contains(&kafka.topic.as_str()),
                "spec.sink.kafka.topic",
                "must differ from the source topic (the pipeline would read its own output)",
            );
            if kafka.format == OutputFormat::Avro && spec.kafka.schema_registry_url.is_none() {
                c.error(
                    "spec.sink.kafka.format",
                    "avro output needs spec.kafka.schemaRegistryUrl",
                );
            }
        }
        (None, Some(ch)) => {
            c.check(
                is_http_url(&ch.url),
                "spec.sink.clickhouse.url",
                "must be an http:// or https:// URL",
            );
            c.check(
                !url_has_credentials(&ch.url),
                "spec.sink.clickhouse.url",
                "must not carry credentials (user:password@): use spec.sink.clickhouse.credentialsSecret",
            );
            for (path, name) in [
                ("spec.sink.clickhouse.database", &ch.database),
                ("spec.sink.clickhouse.table", &ch.table),
            ] {
                c.check(
                    is_clickhouse_identifier(name),
                    path,
                    "must be a ClickHouse identifier: a letter or _, then letters, digits or _",
                );
            }
            c.check(
                spec.delivery != crate::checkpoint::DeliveryGuarantee::ExactlyOnce,
                "spec.delivery",
                "exactly-once needs a Kafka sink (its transaction); a ClickHouse sink is \
                 effectively-once with at-least-once delivery (versioned rows in a \
                 ReplacingMergeTree, read with FINAL)",
            );
            c.check(
                !ch.create_table || spec.window.is_some(),
                "spec.sink.clickhouse.createTable",
                "needs a window: a stateless pipeline writes into a table you create, whose columns are your records' fields",
            );
            let clashes = spec
                .aggregates
                .iter()
                .map(|a| a.name.as_str())
                .chain(spec.transform.key_by.as_deref())
                .any(|n| n == crate::contract::output::VERSION_COLUMN);
            c.check(
                !clashes,
                "spec.aggregates",
                "`_version` is the ClickHouse sink's version column: name the key and aggregates otherwise",
            );
        }
        _ => c.error("spec.sink", "set exactly one of kafka or clickhouse"),
    }
}

fn side_topics(c: &mut Collector, spec: &PipelineDeploymentSpec) {
    let source_topics = spec.source.topic_names();
    let sides = [
        ("spec.lateData.topic", spec.late_data.as_ref()),
        ("spec.deadLetter.topic", spec.dead_letter.as_ref()),
    ];
    for (path, topic) in sides {
        let Some(topic) = topic else { continue };
        c.check(
            is_valid_topic_name(&topic.topic),
            path,
            "is not a valid Kafka topic name",
        );
        c.check(
            !source_topics.contains(&topic.topic.as_str()),
            path,
            "must differ from the source topic",
        );
    }
    if spec.late_data.is_some() && spec.window.is_none() {
        c.error("spec.lateData", "only applies to windowed pipelines");
    }
}

fn delivery_and_checkpoint(c: &mut Collector, spec: &PipelineDeploymentSpec) {
    if spec.delivery == DeliveryGuarantee::ExactlyOnce && spec.checkpoint.is_none() {
        c.error(
            "spec.checkpoint",
            "exactly-once delivery requires checkpoint",
        );
    }
    let Some(cp) = &spec.checkpoint else { return };
    c.check(
        cp.interval >= MIN_CHECKPOINT_INTERVAL,
        "spec.checkpoint.interval",
        "must be at least 100ms",
    );
    c.check(
        (0..=1000).contains(&cp.tolerable_failures),
        "spec.checkpoint.tolerableFailures",
        "must be 0 to 1000",
    );
    if spec.delivery == DeliveryGuarantee::ExactlyOnce {
        c.check(
            cp.interval <= MAX_EXACTLY_ONCE_CHECKPOINT_INTERVAL,
            "spec.checkpoint.interval",
            "must be at most 5m with exactly-once delivery: a transaction stays open for up to three intervals, and Kafka brokers refuse transactions longer than their transaction.max.timeout.ms (15 minutes by default)",
        );
    }
    let st = &cp.storage;
    let set = [st.s3.is_some(), st.volume.is_some(), st.local.is_some()];
    if set.iter().filter(|x| **x).count() != 1 {
        c.error(
            "spec.checkpoint.storage",
            "set exactly one of s3, volume or local",
        );
    }
    if let Some(s3) = &st.s3 {
        let valid_bucket = (3..=63).contains(&s3.bucket.len())
            && s3
                .bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        c.check(
            valid_bucket,
            "spec.checkpoint.storage.s3.bucket",
            "is not a valid S3 bucket name (3 to 63 of a-z, 0-9, '.', '-')",
        );
        if let Some(endpoint) = &s3.endpoint {
            c.check(
                is_http_url(endpoint),
                "spec.checkpoint.storage.s3.endpoint",
                "must be an http:// or https:// URL",
            );
        }
    }
    if let Some(local) = &st.local {
        c.check(
            !local.path.trim().is_empty(),
            "spec.checkpoint.storage.local.path",
            "must not be empty",
        );
    }
}

fn sizing(c: &mut Collector, spec: &PipelineDeploymentSpec) {
    if let Some(p) = spec.parallelism {
        c.check(p >= 1, "spec.parallelism", "must be at least 1");
    }
    let r = &spec.resources;
    c.check(
        r.slots_per_pod >= 1,
        "spec.resources.slotsPerPod",
        "must be at least 1",
    );
    let positive = [
        ("spec.resources.cpuPerSlot", &r.cpu_per_slot),
        ("spec.resources.memoryPerSlot", &r.memory_per_slot),
    ];
    for (path, quantity) in positive {
        match parse_quantity(quantity) {
            Ok(v) if v > 0.0 => {}
            Ok(_) => c.error(path, "must be greater than 0"),
            Err(e) => c.error(path, e.to_string()),
        }
    }
    match parse_quantity(&r.memory_overhead) {
        Ok(v) if v >= 0.0 => {}
        Ok(_) => c.error("spec.resources.memoryOverhead", "must not be negative"),
        Err(e) => c.error("spec.resources.memoryOverhead", e.to_string()),
    }
    if let Some(ratio) = r.cpu_limit_ratio {
        c.check(
            ratio >= 1.0 && ratio.is_finite(),
            "spec.resources.cpuLimitRatio",
            "must be at least 1 (a limit below the request is not allowed)",
        );
    }
}

fn autoscaler(c: &mut Collector, spec: &PipelineDeploymentSpec) {
    let Some(a) = &spec.autoscaler else { return };
    let p = "spec.autoscaler";
    if let Some(min) = a.min_parallelism {
        c.check(
            min >= 1,
            &format!("{p}.minParallelism"),
            "must be at least 1",
        );
    }
    if let Some(max) = a.max_parallelism {
        c.check(
            max >= 1,
            &format!("{p}.maxParallelism"),
            "must be at least 1",
        );
    }
    if let (Some(min), Some(max)) = (a.min_parallelism, a.max_parallelism) {
        c.check(
            min <= max,
            &format!("{p}.minParallelism"),
            "must be at most maxParallelism",
        );
    }
    c.check(
        !a.interval.is_zero(),
        &format!("{p}.interval"),
        "must be greater than 0s",
    );
    c.check(
        a.metrics_window >= a.interval,
        &format!("{p}.metricsWindow"),
        "must be at least interval",
    );
    c.check(
        a.target_utilization > 0.0 && a.target_utilization <= 1.0,
        &format!("{p}.targetUtilization"),
        "must be in (0, 1]",
    );
    c.check(
        !a.catch_up_duration.is_zero(),
        &format!("{p}.catchUpDuration"),
        "must be greater than 0s",
    );
    c.check(
        a.max_scale_up_factor >= 1.0,
        &format!("{p}.maxScaleUpFactor"),
        "must be at least 1",
    );
    c.check(
        a.max_scale_down_factor > 0.0 && a.max_scale_down_factor < 1.0,
        &format!("{p}.maxScaleDownFactor"),
        "must be in (0, 1)",
    );
    match (&a.metrics.prometheus, &a.metrics.direct) {
        (Some(_), Some(_)) => c.error(
            format!("{p}.metrics"),
            "set at most one of prometheus or direct",
        ),
        (Some(prom), None) => c.check(
            is_http_url(&prom.url),
            &format!("{p}.metrics.prometheus.url"),
            "must be an http:// or https:// URL",
        ),
        _ => {}
    }
}

fn is_clickhouse_identifier(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_http_url(url: &str) -> bool {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    rest.is_some_and(|r| !r.is_empty() && !r.starts_with('/'))
}

/// Whether an http(s) URL names a user (and maybe a password) before its host.
fn url_has_credentials(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    authority.contains('@')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::from_yaml;

    fn spec(extra: &str) -> PipelineDeploymentSpec {
        let text = format!(
            "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: t}}\nspec:\n  kafka: {{bootstrapServers: 'a:9092,b:9092'}}\n  source: {{topic: in}}\n  sink: {{kafka: {{topic: out}}}}\n{extra}"
        );
        from_yaml(&text, "test").unwrap().spec
    }

    #[test]
    fn credentials_in_the_registry_or_clickhouse_url_are_refused_for_a_secret() {
        let mut s = spec("");
        s.kafka.schema_registry_url = Some("https://key:secret@registry:8081/".into());
        let errors = validate(&s).unwrap_err();
        assert!(errors.has_path("spec.kafka.schemaRegistryUrl"), "{errors}");
        assert!(
            errors
                .to_string()
                .contains("schemaRegistryCredentialsSecret")
        );
        s.kafka.schema_registry_url = Some("https://registry:8081/a@b".into());
        assert_eq!(validate(&s), Ok(()), "an @ in the path is no user");
        s.kafka.schema_registry_url = None;
        s.kafka.schema_registry_credentials_secret =
            Some(serde_norway::from_str("{name: registry}").unwrap());
        let errors = validate(&s).unwrap_err();
        assert!(
            errors.has_path("spec.kafka.schemaRegistryCredentialsSecret"),
            "{errors}"
        );

        let mut s = spec("");
        s.sink =
            serde_norway::from_str("{clickhouse: {url: 'http://default:pw@ch:8123', table: t}}")
                .unwrap();
        let errors = validate(&s).unwrap_err();
        assert!(errors.has_path("spec.sink.clickhouse.url"), "{errors}");
    }

    #[test]
    fn credentials_in_kafka_properties_and_plain_passwords_in_clear_are_refused() {
        let kafka = |yaml: &str| {
            let mut s = spec("");
            s.kafka = serde_norway::from_str(yaml).unwrap();
            s
        };
        let s = kafka(
            "{bootstrapServers: 'a:9092', securityProtocol: SASL_PLAINTEXT, sasl: {mechanism: PLAIN, credentialsSecret: {name: kafka}}, properties: {ssl.key.pem: x, sasl.oauthbearer.client.secret: y, ssl_keystore_location: z, fetch.max.bytes: '1048576', client.rack: use1-az1}}",
        );
        let errors = validate(&s).unwrap_err();
        for path in [
            "spec.kafka.properties[ssl.key.pem]",
            "spec.kafka.properties[sasl.oauthbearer.client.secret]",
            "spec.kafka.properties[ssl_keystore_location]",
            "spec.kafka.securityProtocol",
        ] {
            assert!(errors.has_path(path), "missing {path} in {errors}");
        }
        assert_eq!(errors.0.len(), 4, "{errors}");
        let scram = kafka(
            "{bootstrapServers: 'a:9092', securityProtocol: SASL_PLAINTEXT, sasl: {mechanism: SCRAM-SHA-512, credentialsSecret: {name: kafka}}}",
        );
        assert_eq!(validate(&scram), Ok(()));
    }

    #[test]
    fn extra_volumes_stay_clear_of_the_operators_mounts_and_the_pod_never_runs_as_root() {
        let template = |yaml: &str| {
            let mut s = spec("");
            s.pod_template = Some(serde_norway::from_str(yaml).unwrap());
            s
        };
        assert_eq!(
            validate(&template(
                "{volumes: [{name: ref, mountPath: /srv/ref, configMap: {name: c}}], securityContext: {runAsUser: 1000, supplementalGroups: [5]}}"
            )),
            Ok(())
        );
        let errors = validate(&template(
            "{volumes: [{name: config, mountPath: /etc/sluice/x, configMap: {name: c}}, {name: a, mountPath: /etc, emptyDir: {}}, {name: a, mountPath: relative, emptyDir: {}}, {name: b, mountPath: /srv/x}, {name: c, mountPath: /srv/x/, emptyDir: {}}, {name: d, mountPath: '/srv/../tmp', emptyDir: {}}], securityContext: {seccompLocalhostProfile: ../escape.json, supplementalGroups: [0]}}",
        ))
        .unwrap_err();
        for path in [
            "spec.podTemplate.volumes[0].name",
            "spec.podTemplate.volumes[0].mountPath",
            "spec.podTemplate.volumes[1].mountPath",
            "spec.podTemplate.volumes[2].name",
            "spec.podTemplate.volumes[2].mountPath",
            "spec.podTemplate.volumes[3]",
            "spec.podTemplate.volumes[4].mountPath",
            "spec.podTemplate.volumes[5].mountPath",
            "spec.podTemplate.securityContext.seccompLocalhostProfile",
            "spec.podTemplate.securityContext.supplementalGroups",
        ] {
            assert!(errors.has_path(path), "missing {path} in {errors}");
        }
    }

    #[test]
    fn msk_iam_needs_tls_a_region_shape_no_credentials_secret_and_topics_made_beforehand() {
        let kafka = |yaml: &str| {
            let mut s = spec("");
            s.kafka = serde_norway::from_str(yaml).unwrap();
            s
        };
        let iam = kafka(
            "{bootstrapServers: 'b-1.msk:9098', securityProtocol: SASL_SSL, sasl: {mechanism: AWS_MSK_IAM}}",
        );
        assert_eq!(validate(&iam), Ok(()));
        assert_eq!(
            iam.kafka.client_properties()["sasl.mechanism"],
            "OAUTHBEARER"
        );
        let errors = validate(&kafka(
            "{bootstrapServers: 'b-1.msk:9098', securityProtocol: SASL_PLAINTEXT, sasl: {mechanism: AWS_MSK_IAM, region: Ireland, credentialsSecret: {name: s}}, createTopics: {}}",
        ))
        .unwrap_err();
        for path in [
            "spec.kafka.sasl.credentialsSecret",
            "spec.kafka.securityProtocol",
            "spec.kafka.sasl.region",
            "spec.kafka.createTopics",
        ] {
            assert!(errors.has_path(path), "missing {path} in {errors}");
        }
        assert_eq!(errors.0.len(), 4, "{errors}");
        let errors = validate(&kafka(
            "{bootstrapServers: 'a:9092', securityProtocol: SASL_SSL, sasl: {mechanism: SCRAM-SHA-512, region: eu-west-1}}",
        ))
        .unwrap_err();
        assert!(
            errors.has_path("spec.kafka.sasl.credentialsSecret"),
            "{errors}"
        );
        assert!(errors.has_path("spec.kafka.sasl.region"), "{errors}");
        for region in ["eu-west-1", "us-gov-west-1", "ap-southeast-4"] {
            assert!(is_aws_region(region), "{region}");
        }
        for not_region in ["eu-west", "EU-WEST-1", "eu--1", "1-2-3"] {
            assert!(!is_aws_region(not_region), "{not_region}");
        }
    }

    #[test]
    fn a_rack_from_the_node_label_replaces_a_fixed_client_rack_and_names_a_label_key() {
        let kafka = |yaml: &str| {
            let mut s = spec("");
            s.kafka = serde_norway::from_str(yaml).unwrap();
            s
        };
        let zone = kafka("{bootstrapServers: 'a:9092', rack: {}}");
        assert_eq!(validate(&zone), Ok(()));
        assert_eq!(
            zone.kafka.rack.unwrap().topology_key,
            "topology.kubernetes.io/zone"
        );
        let errors = validate(&kafka(
            "{bootstrapServers: 'a:9092', rack: {topologyKey: 'not a key'}, properties: {client.rack: euw1-az1}}",
        ))
        .unwrap_err();
        assert!(
            errors.has_path("spec.kafka.properties[client.rack]"),
            "{errors}"
        );
        assert!(errors.has_path("spec.kafka.rack.topologyKey"), "{errors}");
        for key in ["topology.k8s.aws/zone-id", "zone", "example.com/rack_1"] {
            assert!(is_label_key(key), "{key}");
        }
        for key in ["/zone", "Example.com/x", "a/b/c", "-x", ""] {
            assert!(!is_label_key(key), "{key}");
        }
    }

    #[test]
    fn a_clickhouse_sink_needs_identifiers_at_least_once_a_window_to_create_and_no_version_clash() {
        let ch = |sink: &str, extra: &str| {
            let text = format!(
                "apiVersion: sluice.dev/v1alpha1\nkind: PipelineDeployment\nmetadata: {{name: t}}\nspec:\n  kafka: {{bootstrapServers: 'a:9092'}}\n  source: {{topic: in}}\n  sink: {{clickhouse: {sink}}}\n{extra}"
            );
            from_yaml(&text, "test").unwrap().spec
        };
        let windowed = "  transform: {keyBy: page, timestamp: {field: ts}}\n  window: {tumbling: {size: 1m}}\n  aggregates: [{name: views, function: count}]\n";
        assert_eq!(
            validate(&ch(
                "{url: 'http://ch:8123', table: views_1m, createTable: true}",
                windowed
            )),
            Ok(())
        );
        let errors = validate(&ch(
            "{url: 'http://ch:8123', database: 'a-b', table: 'x;drop', createTable: true}",
            "  delivery: exactly-once\n  checkpoint: {storage: {local: {path: /tmp/c}}}\n",
        ))
        .unwrap_err();
        for path in [
            "spec.sink.clickhouse.database",
            "spec.sink.clickhouse.table",
            "spec.delivery",
            "spec.sink.clickhouse.createTable",
        ] {
            assert!(errors.has_path(path), "missing {path} in {errors}");
        }
        let clash = windowed.replace("name: views", "name: _version");
        let errors = validate(&ch("{url: 'http://ch:8123', table: t}", &clash)).unwrap_err();
        assert!(errors.has_path("spec.aggregates"), "{errors}");
    }

    #[test]
    fn pod_env_may_not_set_what_the_operator_sets() {
        let s = spec(
            "  podTemplate:\n    env: [{name: RUST_BACKTRACE, value: '1'}, {name: SLUICE_LOG, value: debug}, {name: SLUICE_CONFIG, value: /x}, {name: AWS_SECRET_ACCESS_KEY, value: k}, {name: RUST_BACKTRACE, value: '0'}]\n",
        );
        let errors = validate(&s).unwrap_err();
        for path in [
            "spec.podTemplate.env[2].name",
            "spec.podTemplate.env[3].name",
            "spec.podTemplate.env[4].name",
        ] {
            assert!(errors.has_path(path), "missing {path} in {errors}");
        }
        assert_eq!(errors.0.len(), 3, "{errors}");
    }

    #[test]
    fn names_must_be_dns_labels_short_enough_for_every_child() {
        assert!(name_problems("iot-sensors").is_empty());
        assert!(name_problems(&"a".repeat(MAX_NAME_LENGTH)).is_empty());
        assert_eq!(name_problems(&"a".repeat(MAX_NAME_LENGTH + 1)).len(), 1);
        for bad in ["Iot", "1iot", "iot_sensors", "iot.sensors", "iot-"] {
            assert_eq!(name_problems(bad).len(), 1, "{bad}");
        }
    }

    #[test]
    fn output_field_names_that_collide_once_sanitised_for_avro_are_refused() {
        let windowed = |key: &str, aggs: &str| {
            spec(&format!(
                "  transform: {{keyBy: {key}, timestamp: {{field: ts}}}}\n  window: {{tumbling: {{size: 1m}}}}\n  aggregates: {aggs}\n"
            ))
        };
        // A key whose Avro name is an aggregate's name.
        let errors = validate(&windowed(
            "device-id",
            "[{name: device_id, function: count}]",
        ))
        .unwrap_err();
        assert!(errors.has_path("spec.aggregates[0].name"), "{errors}");
        // A key named like a window bound, raw or once sanitised.
        for key in ["window_start", "meta.window-end"] {
            let errors = validate(&windowed(key, "[{name: n, function: count}]")).unwrap_err();
            assert!(errors.has_path("spec.transform.keyBy"), "{key}: {errors}");
        }
        // An aggregate name that is not a field name (the CRD schema's pattern, also off-cluster).
        let errors =
            validate(&windowed("d", "[{name: avg-t, function: avg, field: t}]")).unwrap_err();
        assert!(errors.has_path("spec.aggregates[0].name"), "{errors}");
        assert_eq!(
            validate(&windowed("device-id", "[{name: n, function: count}]")),
            Ok(())
        );
    }

    #[test]
    fn consumer_groups_keep_to_the_characters_a_checkpoint_path_takes_as_is() {
        for bad in ["g%1", "a/b", "x y", "", "q?"] {
            let mut s = spec("");
            s.source.consumer_group = Some(bad.to_owned());
            let errors = validate(&s).unwrap_err();
            assert!(
                errors.has_path("spec.source.consumerGroup"),
                "{bad}: {errors}"
            );
        }
        let mut s = spec("");
        s.source.consumer_group = Some("sluice.prod.iot_v2-a".to_owned());
        assert_eq!(validate(&s), Ok(()));
    }

    #[test]
    fn a_consumer_group_leaves_room_for_the_repartition_topic_name() {
        use crate::source::{MAX_CONSUMER_GROUP_LENGTH, REPARTITION_TOPIC_SUFFIX};
        let mut s = spec("");
        s.source.consumer_group = Some("g".repeat(MAX_CONSUMER_GROUP_LENGTH));
        assert_eq!(validate(&s), Ok(()));
        let topic = format!(
            "{}{REPARTITION_TOPIC_SUFFIX}",
            "g".repeat(MAX_CONSUMER_GROUP_LENGTH)
        );
        assert!(is_valid_topic_name(&topic));
        s.source.consumer_group = Some("g".repeat(MAX_CONSUMER_GROUP_LENGTH + 1));
        let errors = validate(&s).unwrap_err();
        assert!(errors.has_path("spec.source.consumerGroup"), "{errors}");
        let crd = serde_json::to_value(crate::crd()).unwrap();
        let group = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
            ["properties"]["source"]["properties"]["consumerGroup"];
        assert_eq!(
            group["maxLength"], MAX_CONSUMER_GROUP_LENGTH,
            "the schema says the same"
        );
    }

    #[test]
    fn consumer_timeouts_librdkafka_would_refuse_and_long_exactly_once_intervals_are_refused() {
        let with = |props: &str| {
            let mut s = spec("");
            s.kafka.properties = serde_json::from_str(props).unwrap();
            validate(&s)
        };
        assert_eq!(
            with(
                r#"{"session.timeout.ms": "3000", "heartbeat.interval.ms": "500", "max.poll.interval.ms": "3000"}"#
            ),
            Ok(())
        );
        // The runtime's 10 s session with a shorter poll interval: librdkafka refuses it.
        let errors = with(r#"{"max.poll.interval.ms": "3000"}"#).unwrap_err();
        assert!(
            errors.has_path("spec.kafka.properties[max.poll.interval.ms]"),
            "{errors}"
        );
        let errors = with(r#"{"session.timeout.ms": "500"}"#).unwrap_err();
        assert!(
            errors.has_path("spec.kafka.properties[heartbeat.interval.ms]"),
            "{errors}"
        );
        assert!(with(r#"{"session.timeout.ms": "soon"}"#).is_err());
        let eos = |interval: &str| {
            spec(&format!(
                "  delivery: exactly-once\n  checkpoint: {{interval: {interval}, storage: {{local: {{path: /tmp/x}}}}}}\n"
            ))
        };
        assert_eq!(validate(&eos("5m")), Ok(()));
        let errors = validate(&eos("6m")).unwrap_err();
        assert!(errors.has_path("spec.checkpoint.interval"), "{errors}");
    }

    #[test]
    fn filters_too_long_too_deep_or_with_nested_list_macros_are_refused_before_parsing() {
        let filter = |f: &str| {
            let mut s = spec("");
            s.transform.filter = Some(f.to_owned());
            validate(&s)
        };
        assert_eq!(
            filter("record.a > 1 && record.tags.exists(t, t == 'x')"),
            Ok(())
        );
        assert_eq!(
            filter("record.a.all(x, record.b.exists(y, y == x))"),
            Ok(()),
            "two levels"
        );
        // Deep enough to overflow a recursive parser's stack: refused by the scan first.
        let deep = format!("{}true{}", "(".repeat(100_000), ")".repeat(100_000));
        let errors = filter(&deep).unwrap_err();
        assert!(errors.has_path("spec.transform.filter"), "{errors}");
        let nested = format!("{}true{}", "(".repeat(33), ")".repeat(33));
        assert!(filter(&nested).unwrap_err().to_string().contains("32 deep"));
        assert_eq!(
            filter(&format!("{}true{}", "(".repeat(32), ")".repeat(32))),
            Ok(())
        );
        let cubic = "record.a.all(x, record.a.all(y, record.a.exists(z, x + y == z)))";
        assert!(
            filter(cubic)
                .unwrap_err()
                .to_string()
                .contains("list macros")
        );
        // Inside string literals nothing counts.
        assert_eq!(filter(r#"record.s == "((((.all(.map(.filter(""#), Ok(()));
        let long = format!("record.s == '{}'", "x".repeat(MAX_FILTER_LENGTH));
        assert!(
            filter(&long)
                .unwrap_err()
                .to_string()
                .contains("at most 4096")
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(128))]
        /// Any filter text, key, names and durations: validation answers, never panics (the CEL
        /// parser included).
        #[test]
        fn validation_of_any_filter_key_names_and_windows_never_panics(
            filter in "[a-z.()\\[\\]{}'\" &|!=<>+*0-9,_-]{0,80}",
            key in "[a-zA-Z0-9._%-]{0,20}",
            name in "[a-zA-Z0-9_ -]{0,12}",
            size in 0u64..10_000_000_000_000,
            group in "[ -~]{0,20}",
        ) {
            let mut s = spec(
                "  window: {tumbling: {size: 1m}}\n  aggregates: [{name: n, function: count}]\n",
            );
            s.transform.filter = Some(filter);
            s.transform.key_by = Some(key);
            s.aggregates[0].name = name;
            s.window.as_mut().unwrap().tumbling.as_mut().unwrap().size =
                crate::Duration::from_millis(size);
            s.source.consumer_group = Some(group);
            let _ = validate(&s);
        }
    }

    #[test]
    fn a_slide_that_puts_a_record_in_over_a_thousand_windows_is_refused() {
        let sliding = |size: &str, slide: &str| {
            spec(&format!(
                "  transform: {{keyBy: k}}\n  window: {{sliding: {{size: {size}, slide: {slide}}}}}\n  aggregates: [{{name: n, function: count}}]\n"
            ))
        };
        let errors = validate(&sliding("8784h", "1ms")).unwrap_err();
        assert!(errors.has_path("spec.window.sliding.slide"), "{errors}");
        assert!(
            errors.to_string().contains("31622400000 windows"),
            "{errors}"
        );
        assert!(validate(&sliding("24h", "1m")).is_err());
        assert_eq!(validate(&sliding("24h", "2m")), Ok(()));
        assert_eq!(validate(&sliding("10m", "1m")), Ok(()));
    }

    #[test]
    fn a_minimal_stateless_spec_is_valid() {
        assert_eq!(validate(&spec("")), Ok(()));
    }

    #[test]
    fn a_windowed_spec_with_key_and_aggregates_is_valid() {
        let s = spec(
            "  transform: {keyBy: device.id, timestamp: {field: ts}}\n  window: {sliding: {size: 10m, slide: 1m}}\n  aggregates: [{name: n, function: count}, {name: p, function: percentile, field: v, quantile: 0.5}]\n",
        );
        assert_eq!(validate(&s), Ok(()));
    }

    #[test]
    fn reports_every_problem_at_once_with_its_path() {
        let s = spec(
            "  transform: {filter: 'record.x >'}\n  window: {tumbling: {size: 0s}}\n  aggregates: [{name: window_start, function: sum}]\n  delivery: exactly-once\n",
        );
        let errors = validate(&s).unwrap_err();
        for path in [
            "spec.transform.filter",
            "spec.window.tumbling.size",
            "spec.transform.keyBy",
            "spec.aggregates[0].name",
            "spec.aggregates[0].field",
            "spec.checkpoint",
        ] {
            assert!(errors.has_path(path), "missing {path} in {errors}");
        }
        assert_eq!(errors.0.len(), 6, "{errors}");
        assert!(
            errors
                .to_string()
                .starts_with("invalid PipelineDeployment spec (6 problems):")
        );
    }

    #[test]
    fn bootstrap_servers_must_be_host_port() {
        let mut s = spec("");
        s.kafka.bootstrap_servers = "kafka,b:9092".into();
        assert!(
            validate(&s)
                .unwrap_err()
                .has_path("spec.kafka.bootstrapServers")
        );
    }

    #[test]
    fn topic_names_follow_kafka_rules() {
        assert!(is_valid_topic_name("iot-sensor_data.v1"));
        for bad in ["", ".", "..", "a b", "ümlaut", &"x".repeat(250)] {
            assert!(!is_valid_topic_name(bad), "{bad:?}");
        }
    }
}
