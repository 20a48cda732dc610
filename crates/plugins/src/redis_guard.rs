//! `redis-guard`, the data phase's worked example (see `docs/PLUGINS.md`):
//! reads the Redis protocol (RESP) a client sends, counts its commands, and
//! closes the session before a denied command (`FLUSHALL` and `FLUSHDB`
//! unless configured otherwise) reaches the server.
//!
//! A command may arrive split over several reads: the plugin pauses (the
//! bytes are held, and the next call sees them with what arrived since)
//! until the buffer ends on a whole command, so a denied command is never
//! half forwarded. What it has already checked of the held bytes it does
//! not check again. Bytes that are not RESP close the session too: a guard
//! fails closed.
//!
//! Compiled in but not bundled: it runs where the `plugins` setting names
//! it (`plugins = ["bundled", "redis-guard"]`).

use std::sync::Arc;

use serde_json::json;
use strait_model::Protocol;
use strait_plugin::{Conf, ConfigureCx, ConfigureError, Data, DataVerdict, Instance, Plugin, Session};

/// Commands denied when `deny` is not given.
const DEFAULT_DENY: [&str; 2] = ["FLUSHALL", "FLUSHDB"];

/// The longest header line (`*<count>`, `$<length>`, an inline command) a
/// client may send.
const MAX_LINE: usize = 64 * 1024;

#[derive(Debug)]
pub struct RedisGuard;

#[derive(Debug)]
pub struct RedisGuardConfig {
    /// Upper-case command names.
    deny: Vec<String>,
}

impl Plugin for RedisGuard {
    type Config = RedisGuardConfig;

    fn name(&self) -> &'static str {
        "redis-guard"
    }

    fn priority(&self) -> i32 {
        // After access control (ip-restriction 990, connection-limit 950),
        // before the log sinks.
        900
    }

    fn protocols(&self) -> &'static [Protocol] {
        // A byte stream: TCP, or TLS Strait terminates (passthrough is
        // encrypted, UDP has no stream).
        &[Protocol::Tcp, Protocol::Tls]
    }

    fn schema(&self, conf: &mut Conf<'_>) -> Option<RedisGuardConfig> {
        let given = conf.raw("deny").is_some();
        let mut deny: Vec<String> = conf.string_list("deny").iter().map(|c| c.to_ascii_uppercase()).collect();
        if !given {
            deny = DEFAULT_DENY.iter().map(|c| (*c).to_owned()).collect();
            conf.fill("deny", json!(deny));
        }
        for (i, c) in deny.iter().enumerate() {
            if c.is_empty() || !c.bytes().all(|b| b.is_ascii_graphic()) {
                conf.error(format!("deny[{}]", i + 1), "expected a command name");
            }
        }
        Some(RedisGuardConfig { deny })
    }

    fn configure(&self, config: RedisGuardConfig, _cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, ConfigureError> {
        Ok(Arc::new(Guard { config }))
    }
}

struct Guard {
    config: RedisGuardConfig,
}

/// Per session, in its context.
#[derive(Debug, Default)]
struct Seen {
    /// Bytes at the start of the held buffer already checked.
    checked: usize,
    commands: u64,
    denied: Option<String>,
    broken: Option<&'static str>,
}

/// The next command of a RESP stream.
#[derive(Debug, PartialEq, Eq)]
enum Next<'a> {
    /// A whole command of `len` bytes, named `name` (empty for `*0`).
    Command { len: usize, name: &'a [u8] },
    /// More bytes are needed.
    Partial,
    /// Not the Redis protocol.
    Invalid(&'static str),
}

/// The line at the start of `buf` (without its `\r\n`) and the length with it.
fn line(buf: &[u8]) -> Result<Option<(&[u8], usize)>, &'static str> {
    match buf.windows(2).position(|w| w == b"\r\n") {
        Some(end) if end > MAX_LINE => Err("a line longer than 64 KiB"),
        Some(end) => Ok(Some((&buf[..end], end + 2))),
        None if buf.len() > MAX_LINE => Err("a line longer than 64 KiB"),
        None => Ok(None),
    }
}

fn number(digits: &[u8]) -> Option<i64> {
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// Parses one command: `*<n>\r\n` then `n` bulk strings `$<len>\r\n<bytes>\r\n`,
/// or an inline command (a line of words).
fn next_command(buf: &[u8]) -> Next<'_> {
    let Some(&first) = buf.first() else { return Next::Partial };
    if first != b'*' {
        // Inline, read as Redis reads it: the line ends at `\n`, words are
        // split on any white space, and quotes around the first are dropped.
        let Some(end) = buf.iter().position(|b| *b == b'\n') else {
            return if buf.len() > MAX_LINE { Next::Invalid("a line longer than 64 KiB") } else { Next::Partial };
        };
        if end > MAX_LINE {
            return Next::Invalid("a line longer than 64 KiB");
        }
        let word = buf[..end].split(|b| b.is_ascii_whitespace()).find(|w| !w.is_empty()).unwrap_or(b"");
        let name = word.strip_prefix(b"\"").and_then(|w| w.strip_suffix(b"\"")).unwrap_or(word);
        let name = name.strip_prefix(b"'").and_then(|w| w.strip_suffix(b"'")).unwrap_or(name);
        return Next::Command { len: end + 1, name };
    }
    let (text, mut at) = match line(buf) {
        Err(why) => return Next::Invalid(why),
        Ok(None) => return Next::Partial,
        Ok(Some(h)) => h,
    };
    let Some(count) = number(&text[1..]).filter(|n| (-1..=1_048_576).contains(n)) else {
        return Next::Invalid("a bad array length");
    };
    let mut name: &[u8] = b"";
    for i in 0..count.max(0) {
        let (text, n) = match line(&buf[at..]) {
            Err(why) => return Next::Invalid(why),
            Ok(None) => return Next::Partial,
            Ok(Some(h)) => h,
        };
        if text.first() != Some(&b'$') {
            return Next::Invalid("a command's arguments must be bulk strings");
        }
        let Some(size) = number(&text[1..]).filter(|n| (0..=512 * 1024 * 1024).contains(n)) else {
            return Next::Invalid("a bad bulk string length");
        };
        let start = at + n;
        let end = start + size as usize;
        if buf.len() < end + 2 {
            return Next::Partial;
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Next::Invalid("a bulk string without its \\r\\n");
        }
        if i == 0 {
            name = &buf[start..end];
        }
        at = end + 2;
    }
    Next::Command { len: at, name }
}

impl Instance for Guard {
    fn data_phase(&self) -> bool {
        true
    }

    fn on_downstream_data(&self, s: &mut Session, data: &mut Data<'_>) -> DataVerdict {
        let seen = s.ctx().get_or_default::<Seen>();
        let bytes = data.bytes();
        let mut at = seen.checked.min(bytes.len());
        loop {
            match next_command(&bytes[at..]) {
                Next::Command { len, name } => {
                    at += len;
                    if name.is_empty() {
                        continue;
                    }
                    seen.commands += 1;
                    let upper = name.to_ascii_uppercase();
                    if self.config.deny.iter().any(|d| d.as_bytes() == upper.as_slice()) {
                        seen.denied = Some(String::from_utf8_lossy(&upper).into_owned());
                        return DataVerdict::Close;
                    }
                }
                Next::Partial if at == bytes.len() => {
                    // Every byte is a whole command: on they go.
                    seen.checked = 0;
                    return DataVerdict::Continue;
                }
                Next::Partial if data.end_of_stream() => {
                    // The client ended mid-command: nothing more will come.
                    seen.checked = 0;
                    return DataVerdict::Continue;
                }
                Next::Partial => {
                    // Held until the command is whole; what is checked stays so.
                    seen.checked = at;
                    return DataVerdict::Pause;
                }
                Next::Invalid(why) => {
                    seen.broken = Some(why);
                    return DataVerdict::Close;
                }
            }
        }
    }

    fn log(&self, s: &mut Session) {
        let Some(seen) = s.ctx().get::<Seen>() else { return };
        let entry = json!({ "commands": seen.commands, "denied": seen.denied, "not_resp": seen.broken });
        s.add_log_field("redis_guard", entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resp_commands_are_read_whole_or_not_at_all() {
        let cmd = b"*2\r\n$3\r\nGET\r\n$1\r\na\r\n";
        assert_eq!(next_command(cmd), Next::Command { len: cmd.len(), name: b"GET" });
        for cut in 0..cmd.len() {
            assert_eq!(next_command(&cmd[..cut]), Next::Partial, "cut at {cut}");
        }
        assert_eq!(next_command(b"FLUSHALL\r\n"), Next::Command { len: 10, name: b"FLUSHALL" });
        // Inline commands end at \n and split on any white space, quotes dropped.
        assert_eq!(next_command(b"\tFLUSHALL\r\n"), Next::Command { len: 11, name: b"FLUSHALL" });
        assert_eq!(next_command(b"\"flushall\"\r\n"), Next::Command { len: 12, name: b"flushall" });
        assert_eq!(next_command(b"FLUSHALL\nPING\r\n"), Next::Command { len: 9, name: b"FLUSHALL" });
        assert_eq!(next_command(b"FLUSH"), Next::Partial);
        assert_eq!(next_command(b"*0\r\n"), Next::Command { len: 4, name: b"" });
        assert!(matches!(next_command(b"*2\r\n:1\r\n"), Next::Invalid(_)));
        assert!(matches!(next_command(b"*x\r\n"), Next::Invalid(_)));
        assert!(matches!(next_command(b"*1\r\n$1\r\nab\r\n"), Next::Invalid(_)));
        assert!(matches!(next_command(&vec![b'a'; MAX_LINE + 1]), Next::Invalid(_)));
    }
}
