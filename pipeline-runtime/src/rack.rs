//! The pod's rack (`spec.kafka.rack`): `pipeline-runtime rack`, run as the runtime pod's init
//! container, reads one label of the pod's node from the Kubernetes API and writes it to a file
//! in the pod's scratch volume; the runtime's Kafka clients then set `client.rack` from that file
//! and fetch from the replica in their own zone (KIP-392).
//!
//! The init container alone gets an API token (a projected, short-lived one), and the pods'
//! ServiceAccount needs `get` on nodes. A rack that cannot be read is not fatal: the init
//! container says why and exits 0, and the runtime runs without a rack (it fetches from the
//! leaders, as without `spec.kafka.rack`) and says so at start.

use std::{path::Path, sync::Arc, time::Duration};

/// How long the node lookup may take.
const TIMEOUT: Duration = Duration::from_secs(10);

/// Why the node's label could not be read.
#[derive(Debug, thiserror::Error)]
pub enum RackError {
    /// The pod does not know its node (`SLUICE_NODE_NAME` from the downward API).
    #[error("the node name is unknown (SLUICE_NODE_NAME unset)")]
    NoNode,
    /// Not in a pod with an API token, or the token cannot be read.
    #[error("no Kubernetes API access in this container ({0})")]
    NoApiAccess(String),
    /// The API server refused or failed the request.
    #[error(
        "reading node {node}: {reason} (the pods' ServiceAccount needs get on nodes: the chart's runtime.rack.enabled)"
    )]
    Request {
        /// The node.
        node: String,
        /// What failed.
        reason: String,
    },
    /// The node has no such label.
    #[error("node {node} has no label {key}")]
    NoLabel {
        /// The node.
        node: String,
        /// The label.
        key: String,
    },
}

/// Where and how to reach the API server.
pub struct ApiServer {
    /// `https://host:port`.
    pub url: String,
    /// The bearer token.
    pub token: String,
    /// The CA bundle (PEM) to verify the server with; `None` for plain HTTP (tests).
    pub ca_pem: Option<Vec<u8>>,
}

impl ApiServer {
    /// The in-cluster API server: `KUBERNETES_SERVICE_HOST`/`_PORT`, and the token and CA
    /// bundle mounted in `dir`.
    pub fn in_cluster(dir: &Path) -> Result<Self, RackError> {
        let host = std::env::var("KUBERNETES_SERVICE_HOST")
            .map_err(|_| RackError::NoApiAccess("KUBERNETES_SERVICE_HOST unset".into()))?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        let read = |file: &str| {
            std::fs::read(dir.join(file))
                .map_err(|e| RackError::NoApiAccess(format!("{}: {e}", dir.join(file).display())))
        };
        let token = String::from_utf8_lossy(&read("token")?).trim().to_owned();
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(Self {
            url: format!("https://{host}:{port}"),
            token,
            ca_pem: Some(read("ca.crt")?),
        })
    }

    fn agent(&self) -> Result<ureq::Agent, String> {
        let mut config = ureq::Agent::config_builder()
            .timeout_global(Some(TIMEOUT))
            .http_status_as_error(false);
        if let Some(pem) = &self.ca_pem {
            let certificates = rustls_pem_certificates(pem)?;
            config = config.tls_config(
                ureq::tls::TlsConfig::builder()
                    .root_certs(ureq::tls::RootCerts::Specific(Arc::new(certificates)))
                    .build(),
            );
        }
        Ok(config.build().new_agent())
    }
}

/// Every certificate of a PEM bundle.
fn rustls_pem_certificates(pem: &[u8]) -> Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let text = String::from_utf8_lossy(pem);
    let mut certificates = Vec::new();
    for block in text.split_inclusive("-----END CERTIFICATE-----") {
        if !block.contains("-----BEGIN CERTIFICATE-----") {
            continue;
        }
        let certificate = ureq::tls::Certificate::from_pem(block.trim().as_bytes())
            .map_err(|e| format!("the CA bundle: {e}"))?;
        certificates.push(certificate);
    }
    if certificates.is_empty() {
        return Err("the CA bundle holds no certificate".into());
    }
    Ok(certificates)
}

/// The value of label `key` on node `node`.
pub fn node_label(api: &ApiServer, node: &str, key: &str) -> Result<String, RackError> {
    let request = |reason: String| RackError::Request {
        node: node.to_owned(),
        reason,
    };
    let agent = api.agent().map_err(RackError::NoApiAccess)?;
    let mut response = agent
        .get(format!("{}/api/v1/nodes/{node}", api.url))
        .header("Authorization", format!("Bearer {}", api.token))
        .header("Accept", "application/json")
        .call()
        .map_err(|e| request(e.to_string()))?;
    let status = response.status();
    let body = response
        .body_mut()
        .read_to_string()
        .map_err(|e| request(e.to_string()))?;
    if !status.is_success() {
        let message = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_owned))
            .unwrap_or_else(|| body.chars().take(200).collect());
        return Err(request(format!("HTTP {status}: {message}")));
    }
    let node_object: serde_json::Value =
        serde_json::from_str(&body).map_err(|e| request(format!("not a Node: {e}")))?;
    node_object["metadata"]["labels"][key]
        .as_str()
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| RackError::NoLabel {
            node: node.to_owned(),
            key: key.to_owned(),
        })
}

/// The rack the init container wrote, if any (the runtime's `client.rack`).
pub fn written_rack(file: &Path) -> Option<String> {
    std::fs::read_to_string(file)
        .ok()
        .map(|text| text.trim().to_owned())
        .filter(|rack| !rack.is_empty())
}

#[cfg(test)]
mod tests {
    use std::{
        io::{BufRead, BufReader, Write},
        net::TcpListener,
    };

    use super::*;

    /// An API server on loopback that answers one request with `status` and `body`, and returns
    /// the request line and the Authorization header it got.
    fn one_answer(status: u16, body: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut seen = String::new();
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                if line.starts_with("GET") || line.to_lowercase().starts_with("authorization") {
                    seen.push_str(line.trim());
                    seen.push('\n');
                }
            }
            write!(
                stream,
                "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
            .unwrap();
            seen
        });
        (url, handle)
    }

    fn api(url: String) -> ApiServer {
        ApiServer {
            url,
            token: "t0ken".into(),
            ca_pem: None,
        }
    }

    #[test]
    fn the_rack_is_the_nodes_label_read_with_the_pods_token() {
        let (url, seen) = one_answer(
            200,
            r#"{"kind":"Node","metadata":{"name":"ip-10-0-1-5","labels":{"topology.k8s.aws/zone-id":"euw1-az2","topology.kubernetes.io/zone":"eu-west-1b"}}}"#,
        );
        let rack = node_label(&api(url), "ip-10-0-1-5", "topology.k8s.aws/zone-id").unwrap();
        assert_eq!(rack, "euw1-az2");
        let seen = seen.join().unwrap();
        assert!(seen.contains("GET /api/v1/nodes/ip-10-0-1-5 "), "{seen}");
        assert!(seen.contains("Bearer t0ken"), "{seen}");
    }

    #[test]
    fn a_refused_lookup_or_a_missing_label_says_what_to_grant_or_which_label() {
        let (url, _) = one_answer(
            403,
            r#"{"kind":"Status","message":"nodes \"n\" is forbidden: User \"system:serviceaccount:ns:sluice-runtime\" cannot get resource \"nodes\""}"#,
        );
        let error = node_label(&api(url), "n", "topology.kubernetes.io/zone")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("HTTP 403")
                && error.contains("cannot get resource")
                && error.contains("runtime.rack.enabled"),
            "{error}"
        );
        let (url, _) = one_answer(200, r#"{"metadata":{"labels":{}}}"#);
        let error = node_label(&api(url), "n", "topology.kubernetes.io/zone").unwrap_err();
        assert!(matches!(error, RackError::NoLabel { .. }), "{error}");
    }

    #[test]
    fn outside_a_pod_there_is_no_api_access_and_no_written_rack() {
        let dir = std::env::temp_dir().join(format!("sluice-rack-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // No token in this directory: whatever the environment says, there is no access.
        let error = ApiServer::in_cluster(&dir).err().expect("no access");
        assert!(matches!(error, RackError::NoApiAccess(_)), "{error}");
        let file = dir.join("rack");
        assert_eq!(written_rack(&file), None);
        std::fs::write(&file, "euw1-az1\n").unwrap();
        assert_eq!(written_rack(&file).as_deref(), Some("euw1-az1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
