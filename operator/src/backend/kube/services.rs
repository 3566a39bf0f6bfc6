//! The Services: a headless one that gives the pods stable names, and one in front of their
//! metrics port.

use k8s_openapi::{
    api::core::v1::{Service, ServicePort, ServiceSpec},
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};
use pipeline_crds::contract::ports;

use super::names::selector_labels;

fn metrics_port() -> ServicePort {
    ServicePort {
        name: Some(ports::RUNTIME_METRICS_NAME.into()),
        port: i32::from(ports::RUNTIME_METRICS),
        target_port: Some(IntOrString::String(ports::RUNTIME_METRICS_NAME.into())),
        ..ServicePort::default()
    }
}

/// The headless Service of pipeline `name`'s pods.
pub fn headless_service(name: &str, metadata: ObjectMeta) -> Service {
    Service {
        metadata,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(name)),
            ports: Some(vec![metrics_port()]),
            publish_not_ready_addresses: Some(true),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The Service in front of pipeline `name`'s metrics port.
pub fn metrics_service(name: &str, metadata: ObjectMeta) -> Service {
    Service {
        metadata,
        spec: Some(ServiceSpec {
            selector: Some(selector_labels(name)),
            ports: Some(vec![metrics_port()]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}
