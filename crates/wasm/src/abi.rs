//! The proxy-wasm ABI's numbers (0.2.1, and 0.2.0 which lacks only
//! `proxy_get_log_level`): statuses, buffer and stream types, peers,
//! metric types, and the WASI errnos the stubs answer with.

/// `proxy_status_t`.
pub(crate) mod status {
    pub(crate) const OK: i32 = 0;
    pub(crate) const NOT_FOUND: i32 = 1;
    pub(crate) const BAD_ARGUMENT: i32 = 2;
    pub(crate) const INVALID_MEMORY_ACCESS: i32 = 6;
    pub(crate) const EMPTY: i32 = 7;
    pub(crate) const CAS_MISMATCH: i32 = 8;
    pub(crate) const INTERNAL_FAILURE: i32 = 10;
    pub(crate) const UNIMPLEMENTED: i32 = 12;
}

/// `proxy_buffer_type_t`.
pub(crate) mod buffer {
    pub(crate) const DOWNSTREAM_DATA: i32 = 2;
    pub(crate) const UPSTREAM_DATA: i32 = 3;
    pub(crate) const VM_CONFIGURATION: i32 = 6;
    pub(crate) const PLUGIN_CONFIGURATION: i32 = 7;
    pub(crate) const MAX: i32 = 8;
}

/// `proxy_stream_type_t`.
pub(crate) mod stream {
    pub(crate) const DOWNSTREAM: i32 = 2;
    pub(crate) const UPSTREAM: i32 = 3;
    pub(crate) const MAX: i32 = 3;
}

/// `proxy_peer_type_t`: who closed a connection.
pub(crate) mod peer {
    pub(crate) const UNKNOWN: i32 = 0;
    pub(crate) const LOCAL: i32 = 1;
    pub(crate) const REMOTE: i32 = 2;
}

/// `proxy_metric_type_t`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

impl MetricType {
    pub(crate) fn from_abi(v: i32) -> Option<MetricType> {
        match v {
            0 => Some(MetricType::Counter),
            1 => Some(MetricType::Gauge),
            2 => Some(MetricType::Histogram),
            _ => None,
        }
    }
}

/// The ABI versions a module may declare with its marker export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AbiVersion {
    V0_2_0,
    V0_2_1,
}

impl AbiVersion {
    pub fn as_str(self) -> &'static str {
        match self {
            AbiVersion::V0_2_0 => "0.2.0",
            AbiVersion::V0_2_1 => "0.2.1",
        }
    }
}

/// WASI preview 1 errnos.
pub(crate) mod errno {
    pub(crate) const SUCCESS: i32 = 0;
    pub(crate) const BADF: i32 = 8;
    pub(crate) const NOTDIR: i32 = 20;
    pub(crate) const FAULT: i32 = 21;
    pub(crate) const INVAL: i32 = 28;
    pub(crate) const NOENT: i32 = 44;
    pub(crate) const NOSYS: i32 = 52;
    pub(crate) const NOTSUP: i32 = 58;
}
