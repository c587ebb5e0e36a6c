//! What a client should connect to (`status.endpoints`, and the endpoints the api shows), from
//! what exposes the Broker's Service, not only from its spec:
//! - a `NodePort` Service: the node ports, and a note that clients use a node's address;
//! - a `LoadBalancer` Service: its assigned address once it has one (the spec's host name when
//!   the Broker names one, as its certificate does), a note while it has none;
//! - an Ingress whose rule sends a path to one of the Service's wss ports: `wss://` on its host
//!   (443) when its TLS covers that host, `ws://` (80) otherwise;
//! - a Gateway API `HTTPRoute` (wss) or `TLSRoute` (TLS passthrough: mqtts or wss) with the
//!   Service as a backend: the route's host name, else its Gateway listener's, on the
//!   listener's port.
//!
//! An Ingress or a route replaces what it carries (wss, or mqtts); the rest stays as the Service
//! gives it. Everything here is pure; the controller fetches what it reads ([`Seen`]).

use std::collections::BTreeSet;

use k8s_openapi::api::{core::v1::Service, networking::v1::Ingress};
use serde_json::Value;

use crate::crd::{Broker, Endpoints, ServiceType, WS_PATH};
use crate::resources::names;

/// The objects that may expose a Broker, as the controller found them in its namespace.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// The Broker's Service (with its status).
    pub service: Option<Service>,
    /// Ingresses of the namespace.
    pub ingresses: Vec<Ingress>,
    /// `HTTPRoute`s and `TLSRoute`s of the namespace (`kind` says which), as JSON.
    pub routes: Vec<Value>,
    /// The Gateways those routes name, as JSON.
    pub gateways: Vec<Value>,
}

/// What [`observe`] found: the endpoints, and whether an address is still to come (a
/// LoadBalancer without one), so the controller looks again soon.
#[derive(Clone, Debug, PartialEq)]
pub struct Observed {
    /// The endpoints for the status and the api.
    pub endpoints: Endpoints,
    /// A LoadBalancer Service has no address yet.
    pub pending: bool,
}

/// The endpoints of `b` given what exposes it.
pub fn observe(b: &Broker, seen: &Seen) -> Observed {
    let mut e = b.endpoints();
    let mut notes = Vec::new();
    let mut pending = false;
    let host = b.host();
    let l = &b.spec.listeners;
    match b.spec.service.type_ {
        ServiceType::ClusterIP => {}
        ServiceType::NodePort => {
            let node_port = |name: &str| node_port(seen.service.as_ref(), name);
            if l.mqtts.enabled {
                e.mqtts = node_port("mqtts").map(|p| format!("mqtts://{host}:{p}"));
            }
            if l.wss.enabled {
                e.wss = l
                    .wss
                    .ports
                    .iter()
                    .filter_map(|p| node_port(&format!("wss-{p}")))
                    .map(|p| format!("wss://{host}:{p}{WS_PATH}"))
                    .collect();
            }
            if e.mqtts.is_none() && e.wss.is_empty() {
                pending = true;
                notes.push("NodePort Service: its node ports are not assigned yet".to_owned());
            } else {
                notes.push(format!(
                    "NodePort Service: the ports are node ports; clients connect to a node's \
                     address ({host} must resolve to the nodes, and the certificate names {host})"
                ));
            }
        }
        ServiceType::LoadBalancer => match load_balancer_address(seen.service.as_ref()) {
            None => {
                pending = true;
                notes.push(
                    "LoadBalancer Service: waiting for the load balancer's address".to_owned(),
                );
            }
            Some(address) if b.spec.hostname.is_some() || b.spec.domain.is_some() => {
                notes.push(format!(
                    "LoadBalancer Service at {address}: {host} must resolve to it"
                ));
            }
            Some(address) => {
                e = with_host(b, &address);
                notes.push(format!(
                    "LoadBalancer Service at {address}; the certificate names {host}: set \
                     spec.hostname (or spec.domain) to a name that resolves to it for clients \
                     that verify it"
                ));
            }
        },
    }
    let service = names::workload(b);
    if l.wss.enabled {
        let through_ingress = ingress_endpoints(b, &service, &seen.ingresses);
        if !through_ingress.is_empty() {
            e.wss = through_ingress;
            notes.push("wss through an Ingress".to_owned());
        }
    }
    let (mqtts, wss) = route_endpoints(b, &service, &seen.routes, &seen.gateways);
    if l.mqtts.enabled && !mqtts.is_empty() {
        e.mqtts = mqtts.into_iter().next();
        notes.push("mqtts through a Gateway API route".to_owned());
    }
    if l.wss.enabled && !wss.is_empty() {
        e.wss = wss;
        notes.push("wss through a Gateway API route".to_owned());
    }
    e.note = (!notes.is_empty()).then(|| notes.join("; "));
    Observed {
        endpoints: e,
        pending,
    }
}

/// `b`'s spec endpoints with `address` as the host.
fn with_host(b: &Broker, address: &str) -> Endpoints {
    if address.contains(':') {
        b.endpoints_at(&format!("[{address}]"))
    } else {
        b.endpoints_at(address)
    }
}

fn node_port(service: Option<&Service>, name: &str) -> Option<i32> {
    service?
        .spec
        .as_ref()?
        .ports
        .as_ref()?
        .iter()
        .find(|p| p.name.as_deref() == Some(name))?
        .node_port
}

fn load_balancer_address(service: Option<&Service>) -> Option<String> {
    let ingress = service?
        .status
        .as_ref()?
        .load_balancer
        .as_ref()?
        .ingress
        .as_ref()?;
    ingress
        .iter()
        .find_map(|i| i.hostname.clone().or_else(|| i.ip.clone()))
        .filter(|a| !a.is_empty())
}

/// The path clients use for a rule's path: the broker's own path where the rule sends
/// everything (`/`, or none).
fn client_path(path: Option<&str>) -> String {
    match path {
        None | Some("") | Some("/") => WS_PATH.to_owned(),
        Some(p) => p.trim_end_matches('*').to_owned(),
    }
}

/// `wss://` (or `ws://`) URLs of the Ingress rules that send a path to one of `service`'s wss
/// ports.
fn ingress_endpoints(b: &Broker, service: &str, ingresses: &[Ingress]) -> Vec<String> {
    let ports = &b.spec.listeners.wss.ports;
    let mut out = BTreeSet::new();
    for ing in ingresses {
        let Some(spec) = &ing.spec else { continue };
        let lb_address = ing
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|l| l.ingress.as_ref())
            .and_then(|i| {
                i.iter()
                    .find_map(|i| i.hostname.clone().or_else(|| i.ip.clone()))
            });
        for rule in spec.rules.iter().flatten() {
            let Some(http) = &rule.http else { continue };
            for path in &http.paths {
                let Some(backend) = path.backend.service.as_ref() else {
                    continue;
                };
                let to_wss = backend.name == service
                    && backend.port.as_ref().is_some_and(|p| {
                        p.name.as_deref().is_some_and(|n| {
                            n.strip_prefix("wss-")
                                .and_then(|n| n.parse::<i32>().ok())
                                .is_some_and(|n| ports.contains(&n))
                        }) || p.number.is_some_and(|n| ports.contains(&n))
                    });
                if !to_wss {
                    continue;
                }
                let Some(host) = rule.host.clone().or_else(|| lb_address.clone()) else {
                    continue;
                };
                let tls = spec.tls.iter().flatten().any(|t| {
                    t.hosts
                        .as_ref()
                        .is_none_or(|hosts| hosts.is_empty() || hosts.contains(&host))
                });
                let path = client_path(path.path.as_deref());
                out.insert(if tls {
                    format!("wss://{host}:443{path}")
                } else {
                    format!("ws://{host}:80{path}")
                });
            }
        }
    }
    out.into_iter().collect()
}

fn str_of<'a>(v: &'a Value, pointer: &str) -> Option<&'a str> {
    v.pointer(pointer).and_then(Value::as_str)
}

fn array<'a>(v: &'a Value, pointer: &str) -> &'a [Value] {
    v.pointer(pointer)
        .and_then(Value::as_array)
        .map_or(&[], Vec::as_slice)
}

/// A host name a client can use: not a wildcard.
fn concrete(host: Option<&str>) -> Option<String> {
    host.filter(|h| !h.is_empty() && !h.contains('*'))
        .map(str::to_owned)
}

/// The Gateways a route names, as `(namespace, name, sectionName, port)`.
pub fn parent_refs(route: &Value) -> Vec<(String, String, Option<String>, Option<i64>)> {
    let own_ns = str_of(route, "/metadata/namespace").unwrap_or_default();
    array(route, "/spec/parentRefs")
        .iter()
        .filter(|p| {
            str_of(p, "/kind").is_none_or(|k| k == "Gateway")
                && str_of(p, "/group").is_none_or(|g| g == "gateway.networking.k8s.io")
        })
        .filter_map(|p| {
            Some((
                str_of(p, "/namespace").unwrap_or(own_ns).to_owned(),
                str_of(p, "/name")?.to_owned(),
                str_of(p, "/sectionName").map(str::to_owned),
                p.pointer("/port").and_then(Value::as_i64),
            ))
        })
        .collect()
}

/// The Services of the route's own namespace that a Gateway API route sends to, each once.
pub fn route_services(route: &Value) -> Vec<String> {
    let own_ns = str_of(route, "/metadata/namespace").unwrap_or_default();
    let mut out: Vec<String> = array(route, "/spec/rules")
        .iter()
        .flat_map(|r| array(r, "/backendRefs"))
        .filter(|r| {
            str_of(r, "/kind").is_none_or(|k| k == "Service")
                && str_of(r, "/namespace").is_none_or(|n| n == own_ns)
        })
        .filter_map(|r| str_of(r, "/name").map(str::to_owned))
        .collect();
    out.sort();
    out.dedup();
    out
}

/// `(mqtts, wss)` URLs of the routes with `service` as a backend, through their Gateways'
/// listeners.
fn route_endpoints(
    b: &Broker,
    service: &str,
    routes: &[Value],
    gateways: &[Value],
) -> (Vec<String>, Vec<String>) {
    let l = &b.spec.listeners;
    let mut mqtts = BTreeSet::new();
    let mut wss = BTreeSet::new();
    for route in routes {
        let kind = str_of(route, "/kind").unwrap_or_default();
        let own_ns = str_of(route, "/metadata/namespace").unwrap_or_default();
        // Which of the Service's ports the route sends to, and the paths it matches.
        let mut to_mqtts = false;
        let mut to_wss = false;
        let mut paths = BTreeSet::new();
        for rule in array(route, "/spec/rules") {
            let ours = array(rule, "/backendRefs").iter().filter(|r| {
                str_of(r, "/name") == Some(service)
                    && str_of(r, "/kind").is_none_or(|k| k == "Service")
                    && str_of(r, "/namespace").is_none_or(|n| n == own_ns)
            });
            let mut hit = false;
            for r in ours {
                let port = r
                    .pointer("/port")
                    .and_then(Value::as_i64)
                    .and_then(|p| i32::try_from(p).ok());
                match port {
                    Some(p) if l.mqtts.enabled && p == l.mqtts.port && kind == "TLSRoute" => {
                        to_mqtts = true;
                    }
                    Some(p) if l.wss.enabled && l.wss.ports.contains(&p) => {
                        to_wss = true;
                        hit = true;
                    }
                    _ => {}
                }
            }
            if hit && kind == "HTTPRoute" {
                let matches = array(rule, "/matches");
                if matches.is_empty() {
                    paths.insert(client_path(None));
                }
                for m in matches {
                    paths.insert(client_path(str_of(m, "/path/value")));
                }
            }
        }
        if !to_mqtts && !to_wss {
            continue;
        }
        if paths.is_empty() {
            paths.insert(WS_PATH.to_owned());
        }
        let route_host = array(route, "/spec/hostnames")
            .iter()
            .find_map(|h| concrete(h.as_str()));
        for (ns, name, section, port) in parent_refs(route) {
            let Some(gateway) = gateways.iter().find(|g| {
                str_of(g, "/metadata/name") == Some(name.as_str())
                    && str_of(g, "/metadata/namespace") == Some(ns.as_str())
            }) else {
                continue;
            };
            let gateway_address = array(gateway, "/status/addresses")
                .iter()
                .find_map(|a| concrete(str_of(a, "/value")));
            for listener in array(gateway, "/spec/listeners") {
                if section
                    .as_deref()
                    .is_some_and(|s| str_of(listener, "/name") != Some(s))
                {
                    continue;
                }
                let Some(lport) = listener.pointer("/port").and_then(Value::as_i64) else {
                    continue;
                };
                if port.is_some_and(|p| p != lport) {
                    continue;
                }
                let Some(host) = route_host
                    .clone()
                    .or_else(|| concrete(str_of(listener, "/hostname")))
                    .or_else(|| gateway_address.clone())
                else {
                    continue;
                };
                match (kind, str_of(listener, "/protocol").unwrap_or_default()) {
                    ("HTTPRoute", "HTTPS") if to_wss => {
                        wss.extend(paths.iter().map(|p| format!("wss://{host}:{lport}{p}")));
                    }
                    ("HTTPRoute", "HTTP") if to_wss => {
                        wss.extend(paths.iter().map(|p| format!("ws://{host}:{lport}{p}")));
                    }
                    ("TLSRoute", "TLS") => {
                        if to_mqtts {
                            mqtts.insert(format!("mqtts://{host}:{lport}"));
                        }
                        if to_wss {
                            wss.insert(format!("wss://{host}:{lport}{WS_PATH}"));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
    (mqtts.into_iter().collect(), wss.into_iter().collect())
}

#[cfg(test)]
mod tests;
