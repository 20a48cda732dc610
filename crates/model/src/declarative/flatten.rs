//! Step one of loading: the document's top level, and the flattening of
//! nested entities (a service's routes and plugins, a certificate's SNIs,
//! an upstream's targets) into one list per kind, each entity remembering
//! where it sat (for errors) and its parent (for references).

use serde_json::{Map, Value};

use crate::entities::*;
use crate::fields::{ENTITY, Fields};

use super::syntax::Ref;
use super::{EntityError, ErrorKind, FORMAT_VERSIONS, IGNORED_KEYS, META_KEYS, Options};

/// Where an entity is, for error messages.
#[derive(Debug, Clone)]
pub(crate) struct Origin {
    pub(crate) path: String,
    pub(crate) name: Option<String>,
}

/// The loader's state: the configuration as it grows, every error found,
/// where each entity came from, and the references waiting for every
/// entity to be known.
#[derive(Default)]
pub(crate) struct Builder {
    pub(crate) options: Options,
    /// Describing the entities' fields instead of loading (see
    /// [`super::entity_schema`]).
    pub(crate) describing: bool,
    /// What the entity parsers read, when describing.
    pub(crate) described: Vec<(String, Value)>,
    pub(crate) errors: Vec<EntityError>,
    pub(crate) warnings: Vec<String>,
    pub(crate) config: Config,
    pub(crate) service_origin: Vec<Origin>,
    pub(crate) route_origin: Vec<Origin>,
    pub(crate) cert_origin: Vec<Origin>,
    pub(crate) sni_origin: Vec<Origin>,
    pub(crate) ca_origin: Vec<Origin>,
    pub(crate) upstream_origin: Vec<Origin>,
    pub(crate) target_origin: Vec<Origin>,
    pub(crate) plugin_origin: Vec<Origin>,
    pub(crate) filter_chain_origin: Vec<Origin>,
    /// Each plugin's `protocols` as written (in order, unparsable ones as
    /// `None`), for errors that name `protocols[i]`.
    pub(crate) plugin_protocols: Vec<Vec<Option<Protocol>>>,
    /// Plugins naming a route or service that does not exist (already an error).
    pub(crate) plugin_broken: std::collections::HashSet<usize>,
    // References waiting for every entity to be known.
    pub(crate) route_service: Vec<(RouteIdx, Ref)>,
    pub(crate) service_cas: Vec<(ServiceIdx, Vec<Ref>)>,
    pub(crate) service_client_cert: Vec<(ServiceIdx, Ref)>,
    pub(crate) upstream_client_cert: Vec<(UpstreamIdx, Ref)>,
    pub(crate) sni_cert: Vec<(usize, Ref)>,
    pub(crate) target_upstream: Vec<(usize, Ref)>,
    pub(crate) plugin_refs: Vec<(usize, Option<Ref>, Option<Ref>)>,
    pub(crate) filter_chain_refs: Vec<(usize, Option<Ref>, Option<Ref>)>,
}

impl Builder {
    /// Reads one entity's fields (and describes them, when describing).
    pub(crate) fn fields<'v>(&self, obj: &'v Map<String, Value>) -> Fields<'v> {
        if self.describing { Fields::describing(obj) } else { Fields::new(obj) }
    }

    /// An entity read: its field errors are kept (schema violations), and
    /// what it read when describing.
    pub(crate) fn done(&mut self, mut f: Fields<'_>, entity: &'static str, origin: &Origin) {
        self.described.extend(f.take_described());
        for (field, message) in std::mem::take(&mut f.errors) {
            self.errors.push(EntityError {
                path: origin.path.clone(),
                entity,
                name: origin.name.clone(),
                field,
                message,
                kind: ErrorKind::Schema,
            });
        }
    }

    pub(crate) fn top_level(&mut self, top: &Map<String, Value>) {
        let root = Origin { path: "/".into(), name: None };
        let mut f = self.fields(top);
        let allowed: Vec<&str> =
            META_KEYS.iter().copied().chain(EntityKind::ALL.map(EntityKind::as_str)).chain(IGNORED_KEYS).collect();
        f.check_unknown(&allowed);
        match f.get("_format_version") {
            None => f.err("_format_version", "required field missing"),
            Some(Value::String(v)) if FORMAT_VERSIONS.contains(&v.as_str()) => {}
            Some(Value::String(v)) => f.err(
                "_format_version",
                format!("unsupported declarative configuration _format_version '{v}' (expected one of: 1.1, 2.1, 3.0)"),
            ),
            Some(_) => f.err("_format_version", "expected a string"),
        }
        f.bool("_transform");
        for key in IGNORED_KEYS {
            if f.has(key) {
                self.warnings.push(format!("'{key}' is ignored: Strait's stream proxy has no use for it"));
            }
        }
        let lists: Vec<(EntityKind, Option<&Vec<Value>>)> =
            EntityKind::ALL.iter().map(|k| (*k, f.nested(k.as_str()))).collect();
        self.done(f, "declarative configuration", &root);

        // Order matters for references into parents: certificates and CA
        // certificates before services, services before routes, routes before
        // plugins and filter chains.
        let get = |kind: EntityKind| lists.iter().find(|(k, _)| *k == kind).and_then(|(_, v)| *v);
        let at = |kind: EntityKind, i: usize| format!("{kind}[{}]", i + 1);
        use EntityKind as K;
        for (i, v) in get(K::CaCertificates).into_iter().flatten().enumerate() {
            self.ca_certificate(v, at(K::CaCertificates, i));
        }
        for (i, v) in get(K::Certificates).into_iter().flatten().enumerate() {
            self.certificate(v, at(K::Certificates, i));
        }
        for (i, v) in get(K::Snis).into_iter().flatten().enumerate() {
            self.sni(v, at(K::Snis, i), None);
        }
        for (i, v) in get(K::Upstreams).into_iter().flatten().enumerate() {
            self.upstream(v, at(K::Upstreams, i));
        }
        for (i, v) in get(K::Targets).into_iter().flatten().enumerate() {
            self.target(v, at(K::Targets, i), None);
        }
        for (i, v) in get(K::Services).into_iter().flatten().enumerate() {
            self.service(v, at(K::Services, i));
        }
        for (i, v) in get(K::Routes).into_iter().flatten().enumerate() {
            self.route(v, at(K::Routes, i), None);
        }
        for (i, v) in get(K::Plugins).into_iter().flatten().enumerate() {
            self.plugin(v, at(K::Plugins, i), None, None);
        }
        for (i, v) in get(K::FilterChains).into_iter().flatten().enumerate() {
            self.filter_chain(v, at(K::FilterChains, i), None, None);
        }
    }

    /// The object behind `v`, or an error on the entity's path.
    pub(crate) fn object<'v>(
        &mut self,
        v: &'v Value,
        entity: &'static str,
        path: &str,
    ) -> Option<&'v Map<String, Value>> {
        match v {
            Value::Object(o) => Some(o),
            _ => {
                self.errors.push(EntityError {
                    path: path.to_owned(),
                    entity,
                    name: None,
                    field: ENTITY.into(),
                    message: "expected a record".into(),
                    kind: ErrorKind::Schema,
                });
                None
            }
        }
    }
}
