//! `file-log`: entries appended to a file by a writer thread, one write
//! per entry (so entries never interleave), reopened after an error or, with
//! `reopen`, for every entry (log rotation by renaming just works).

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use strait_plugin::{Conf, ConfigureCx, ConfigureError, Instance, Plugin};

use super::{QUEUE, Sink, Tx, common, instance};

#[derive(Debug)]
pub struct FileLog;

#[derive(Debug)]
pub struct FileConfig {
    path: PathBuf,
    reopen: bool,
    interval: Option<Duration>,
}

impl Plugin for FileLog {
    type Config = FileConfig;

    fn name(&self) -> &'static str {
        "file-log"
    }

    fn priority(&self) -> i32 {
        9
    }

    fn schema(&self, conf: &mut Conf<'_>) -> Option<FileConfig> {
        let path = conf.required_string("path");
        let reopen = conf.boolean("reopen", false);
        let interval = common(conf);
        // Kong's rule for the file name; a relative path is taken from the
        // working directory.
        if let Some(p) = &path {
            if p.contains(['*', '&', '%', '\\', '`', '\0']) {
                conf.error("path", "not a valid filename");
            }
        }
        let path = PathBuf::from(path?);
        conf.is_ok().then_some(FileConfig { path, reopen, interval })
    }

    fn configure(&self, c: FileConfig, cx: &ConfigureCx<'_>) -> Result<Arc<dyn Instance>, ConfigureError> {
        let key = format!("{}|{}", c.path.display(), c.reopen);
        Ok(instance(cx, key, c.interval, || {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(QUEUE);
            let (path, reopen) = (c.path.clone(), c.reopen);
            let spawned =
                std::thread::Builder::new().name("file-log".into()).spawn(move || write_file(&path, reopen, &rx));
            match spawned {
                Ok(_) => Sink { tx: Tx::Thread(tx), dropped: AtomicU64::new(0), name: "file-log" },
                Err(e) => {
                    tracing::error!(error = %e, "file-log: cannot start its writer thread");
                    Sink { tx: Tx::None, dropped: AtomicU64::new(0), name: "file-log" }
                }
            }
        }))
    }
}

/// Appends entries to `path`, opening it again after an error (or for every
/// entry with `reopen`, so that log rotation by renaming just works).
fn write_file(path: &std::path::Path, reopen: bool, rx: &std::sync::mpsc::Receiver<Vec<u8>>) {
    let open = || std::fs::OpenOptions::new().create(true).append(true).open(path);
    let mut file: Option<std::fs::File> = None;
    let mut failing = false;
    while let Ok(entry) = rx.recv() {
        if file.is_none() || reopen {
            file = match open() {
                Ok(f) => Some(f),
                Err(e) => {
                    if !failing {
                        tracing::warn!(path = %path.display(), error = %e, "file-log: cannot open the file");
                    }
                    failing = true;
                    continue;
                }
            };
        }
        // One write per entry: with O_APPEND, entries never interleave.
        if let Some(f) = file.as_mut() {
            if let Err(e) = f.write_all(&entry) {
                if !failing {
                    tracing::warn!(path = %path.display(), error = %e, "file-log: write failed");
                }
                failing = true;
                file = None;
            } else {
                failing = false;
            }
        }
    }
}
