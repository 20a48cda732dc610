//! The last step of loading: references resolved by id or name, uniqueness
//! checked (ids, names, targets within an upstream, one plugin per scope),
//! and combinations Kong accepts but that cannot work, warned about.

use std::collections::HashMap;

use uuid::Uuid;

use crate::entities::*;

use super::flatten::{Builder, Origin};
use super::syntax::Ref;
use super::{EntityError, ErrorKind, LoadError, Loaded};

impl Builder {
    /// Resolves references, checks uniqueness, and returns the result.
    pub(crate) fn finish(mut self) -> Result<Loaded, LoadError> {
        let services = index(
            "service",
            &self.config.services,
            &self.service_origin,
            |s| s.name.clone(),
            |s| &s.meta,
            &mut self.errors,
        );
        let routes =
            index("route", &self.config.routes, &self.route_origin, |r| r.name.clone(), |r| &r.meta, &mut self.errors);
        let certs =
            index("certificate", &self.config.certificates, &self.cert_origin, |_| None, |c| &c.meta, &mut self.errors);
        let cas = index(
            "ca_certificate",
            &self.config.ca_certificates,
            &self.ca_origin,
            |_| None,
            |c| &c.meta,
            &mut self.errors,
        );
        let upstreams = index(
            "upstream",
            &self.config.upstreams,
            &self.upstream_origin,
            |u| Some(u.name.clone()),
            |u| &u.meta,
            &mut self.errors,
        );
        index("sni", &self.config.snis, &self.sni_origin, |s| Some(s.name.to_string()), |s| &s.meta, &mut self.errors);
        index("target", &self.config.targets, &self.target_origin, |_| None, |t| &t.meta, &mut self.errors);
        index(
            "plugin",
            &self.config.plugins,
            &self.plugin_origin,
            |p| p.instance_name.clone(),
            |p| &p.meta,
            &mut self.errors,
        );

        index(
            "filter_chain",
            &self.config.filter_chains,
            &self.filter_chain_origin,
            |c| c.name.clone(),
            |c| &c.meta,
            &mut self.errors,
        );

        let mut errors = std::mem::take(&mut self.errors);
        let mut missing = |entity: &'static str, origin: &Origin, field: &str, to: EntityKind, r: &Ref| {
            let what = if to == EntityKind::CaCertificates { "CA certificate" } else { to.singular() };
            errors.push(EntityError {
                path: origin.path.clone(),
                entity,
                name: origin.name.clone(),
                field: field.to_owned(),
                message: format!("could not find {what} '{r}'"),
                kind: ErrorKind::ForeignKey { entity: to, reference: r.to_string() },
            });
        };

        for (idx, r) in std::mem::take(&mut self.route_service) {
            match services.find(&r) {
                Some(s) => self.config.routes[idx.0].service = Some(ServiceIdx(s)),
                None => missing("route", &self.route_origin[idx.0], "service", EntityKind::Services, &r),
            }
        }
        for (idx, refs) in std::mem::take(&mut self.service_cas) {
            for (i, r) in refs.iter().enumerate() {
                match cas.find(r) {
                    Some(c) => self.config.services[idx.0].ca_certificates.push(CaCertificateIdx(c)),
                    None => missing(
                        "service",
                        &self.service_origin[idx.0],
                        &format!("ca_certificates[{}]", i + 1),
                        EntityKind::CaCertificates,
                        r,
                    ),
                }
            }
        }
        for (idx, r) in std::mem::take(&mut self.service_client_cert) {
            match certs.find(&r) {
                Some(c) => self.config.services[idx.0].client_certificate = Some(CertificateIdx(c)),
                None => {
                    missing("service", &self.service_origin[idx.0], "client_certificate", EntityKind::Certificates, &r)
                }
            }
        }
        for (idx, r) in std::mem::take(&mut self.upstream_client_cert) {
            match certs.find(&r) {
                Some(c) => self.config.upstreams[idx.0].client_certificate = Some(CertificateIdx(c)),
                None => missing(
                    "upstream",
                    &self.upstream_origin[idx.0],
                    "client_certificate",
                    EntityKind::Certificates,
                    &r,
                ),
            }
        }
        for (i, r) in std::mem::take(&mut self.sni_cert) {
            match certs.find(&r) {
                Some(c) => self.config.snis[i].certificate = CertificateIdx(c),
                None => missing("sni", &self.sni_origin[i], "certificate", EntityKind::Certificates, &r),
            }
        }
        for (i, r) in std::mem::take(&mut self.target_upstream) {
            match upstreams.find(&r) {
                Some(u) => self.config.targets[i].upstream = UpstreamIdx(u),
                None => missing("target", &self.target_origin[i], "upstream", EntityKind::Upstreams, &r),
            }
        }
        for (i, s, r) in std::mem::take(&mut self.plugin_refs) {
            if let Some(s) = s {
                match services.find(&s) {
                    Some(x) => self.config.plugins[i].service = Some(ServiceIdx(x)),
                    None => {
                        missing("plugin", &self.plugin_origin[i], "service", EntityKind::Services, &s);
                        self.plugin_broken.insert(i);
                    }
                }
            }
            if let Some(r) = r {
                match routes.find(&r) {
                    Some(x) => self.config.plugins[i].route = Some(RouteIdx(x)),
                    None => {
                        missing("plugin", &self.plugin_origin[i], "route", EntityKind::Routes, &r);
                        self.plugin_broken.insert(i);
                    }
                }
            }
        }

        for (i, s, r) in std::mem::take(&mut self.filter_chain_refs) {
            let origin = &self.filter_chain_origin[i];
            if let Some(s) = s {
                match services.find(&s) {
                    Some(x) => self.config.filter_chains[i].service = Some(ServiceIdx(x)),
                    None => missing("filter_chain", origin, "service", EntityKind::Services, &s),
                }
            }
            if let Some(r) = r {
                match routes.find(&r) {
                    Some(x) => self.config.filter_chains[i].route = Some(RouteIdx(x)),
                    None => missing("filter_chain", origin, "route", EntityKind::Routes, &r),
                }
            }
        }

        // One target per address within an upstream, as Kong's unique key.
        let mut seen = HashMap::new();
        for (i, t) in self.config.targets.iter().enumerate() {
            let Some(up) = self.config.upstreams.get(t.upstream.0) else {
                continue;
            };
            let key = (t.upstream.0, t.host.to_ascii_lowercase(), t.port);
            if seen.insert(key, i).is_some() {
                let origin = &self.target_origin[i];
                errors.push(EntityError {
                    path: origin.path.clone(),
                    entity: "target",
                    name: origin.name.clone(),
                    field: "target".into(),
                    message: format!(
                        "UNIQUE violation detected on '{{target=\"{}\",upstream={{id=\"{}\"}}}}'",
                        t.authority(),
                        up.meta.id
                    ),
                    kind: ErrorKind::Unique { value: origin.name.clone().unwrap_or_default() },
                });
            }
        }
        self.check_plugins(&mut errors);
        self.check_filter_chains(&mut errors);
        // Combinations Kong accepts but that cannot do what they say.
        for route in &self.config.routes {
            let Some(svc) = route.service.map(|s| &self.config.services[s.0]) else {
                continue;
            };
            if route.protocols.is_stream() && !svc.protocol.is_stream() {
                self.warnings.push(format!(
                    "route '{}' is a stream route but its service '{}' uses protocol '{}': its sessions will be closed with status 503",
                    route.label(),
                    svc.label(),
                    svc.protocol
                ));
            }
            if route.protocols.contains(Protocol::TlsPassthrough) && svc.protocol == Protocol::Tls {
                self.warnings.push(format!(
                    "route '{}' passes TLS through untouched; the 'tls' protocol of service '{}' is not applied to it",
                    route.label(),
                    svc.label()
                ));
            }
        }

        if errors.is_empty() {
            Ok(Loaded { config: self.config, warnings: self.warnings })
        } else {
            Err(LoadError::Invalid(errors))
        }
    }
}

/// Lookup tables by id and by name for one entity type.
pub(crate) struct Index {
    pub(crate) by_id: HashMap<Uuid, usize>,
    pub(crate) by_name: HashMap<String, usize>,
}

impl Index {
    pub(crate) fn find(&self, r: &Ref) -> Option<usize> {
        match r {
            Ref::Id(id) => self.by_id.get(id).copied(),
            // A name that happens to be a UUID string was parsed as an id.
            Ref::Name(n) => self.by_name.get(n).copied(),
        }
    }
}

pub(crate) fn index<T>(
    entity: &'static str,
    items: &[T],
    origins: &[Origin],
    name: impl Fn(&T) -> Option<String>,
    meta: impl Fn(&T) -> &Meta,
    errors: &mut Vec<EntityError>,
) -> Index {
    let mut ix = Index { by_id: HashMap::new(), by_name: HashMap::new() };
    for (i, item) in items.iter().enumerate() {
        let origin = &origins[i];
        let id = meta(item).id;
        if ix.by_id.insert(id, i).is_some() {
            errors.push(EntityError {
                path: origin.path.clone(),
                entity,
                name: origin.name.clone(),
                field: "id".into(),
                message: format!("uniqueness violation: 'id' {id} is used by another {entity}"),
                kind: ErrorKind::PrimaryKey { id },
            });
        }
        if let Some(n) = name(item) {
            if ix.by_name.insert(n.clone(), i).is_some() {
                errors.push(EntityError {
                    path: origin.path.clone(),
                    entity,
                    name: origin.name.clone(),
                    field: "name".into(),
                    message: format!("UNIQUE violation detected on '{{name=\"{n}\"}}'"),
                    kind: ErrorKind::Unique { value: origin.name.clone().unwrap_or_default() },
                });
            }
        }
    }
    ix
}
