//! WASI preview 1, as much as a filter needs and no more: stdout and stderr
//! go to Strait's log (info and error, with the filter's name), the clocks,
//! random bytes, empty arguments and environment, and no files. `proc_exit`
//! traps: a filter that exits cannot go on. Linked under both
//! `wasi_snapshot_preview1` and `wasi_unstable`.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::Caller;

use crate::abi::errno;
use crate::host::{Host, Imports, range, write};

type C<'a> = Caller<'a, Host>;

/// Most iovecs one write may pass, and the most bytes of it logged.
const MAX_IOVS: i32 = 1024;
const MAX_LOGGED: usize = 64 * 1024;

/// What a filter wrote to stdout or stderr: concatenated iovecs (at most
/// [`MAX_LOGGED`] bytes of them).
fn gather(c: &mut C<'_>, iovs: i32, n: i32) -> Option<Vec<u8>> {
    if n > MAX_IOVS {
        return None;
    }
    let memory = c.data().memory?;
    let mem = memory.data(&*c);
    let mut out = Vec::new();
    for i in 0..n.max(0) {
        let at = iovs.checked_add(i.checked_mul(8)?)?;
        let entry = &mem[range(mem, at, 8)?];
        let ptr = i32::from_le_bytes(entry[..4].try_into().ok()?);
        let len = i32::from_le_bytes(entry[4..].try_into().ok()?);
        let bytes = &mem[range(mem, ptr, len)?];
        out.extend_from_slice(&bytes[..bytes.len().min(MAX_LOGGED - out.len())]);
    }
    Some(out)
}

fn log_output(filter: &str, fd: i32, bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    let text = text.strip_suffix('\n').unwrap_or(&text);
    if fd == 1 {
        tracing::info!(filter, "{text}");
    } else {
        tracing::error!(filter, "{text}");
    }
}

/// One process-wide origin for the monotonic clock.
fn monotonic_ns() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

/// `fd_write` to stdout or stderr: into the log; the count written back.
fn write_out(c: &mut C<'_>, fd: i32, iovs: i32, n: i32, written: i32) -> i32 {
    if fd != 1 && fd != 2 {
        return errno::BADF;
    }
    let Some(bytes) = gather(c, iovs, n) else { return errno::FAULT };
    log_output(c.data().filter, fd, &bytes);
    if write(c, written, &(bytes.len() as u32).to_le_bytes()) { errno::SUCCESS } else { errno::FAULT }
}

pub(crate) fn link(i: &mut Imports, m: &'static str) -> wasmtime::Result<()> {
    i.wrap(m, "fd_write", |mut c: C<'_>, fd: i32, iovs: i32, n: i32, written: i32| -> i32 {
        write_out(&mut c, fd, iovs, n, written)
    })?;
    // At an offset: stdout and stderr have none, so as `fd_write`.
    i.wrap(m, "fd_pwrite", |mut c: C<'_>, fd: i32, iovs: i32, n: i32, _off: i64, written: i32| -> i32 {
        write_out(&mut c, fd, iovs, n, written)
    })?;
    i.wrap(m, "fd_read", |_: C<'_>, _: i32, _: i32, _: i32, _: i32| errno::NOSYS)?;
    i.wrap(m, "fd_pread", |_: C<'_>, _: i32, _: i32, _: i32, _: i64, _: i32| errno::NOSYS)?;
    i.wrap(m, "fd_close", |_: C<'_>, _: i32| errno::SUCCESS)?;
    i.wrap(m, "fd_seek", |_: C<'_>, _: i32, _: i64, _: i32, _: i32| errno::SUCCESS)?;
    i.wrap(m, "fd_tell", |mut c: C<'_>, fd: i32, out: i32| -> i32 {
        if fd != 1 && fd != 2 {
            return errno::BADF;
        }
        if write(&mut c, out, &0u64.to_le_bytes()) { errno::SUCCESS } else { errno::FAULT }
    })?;
    i.wrap(m, "fd_fdstat_get", |mut c: C<'_>, fd: i32, out: i32| -> i32 {
        if fd != 1 && fd != 2 {
            return errno::BADF;
        }
        // filetype 0, flags 0, rights: FD_WRITE only.
        let mut stat = [0u8; 24];
        stat[8..16].copy_from_slice(&64u64.to_le_bytes());
        if write(&mut c, out, &stat) { errno::SUCCESS } else { errno::FAULT }
    })?;
    i.wrap(m, "fd_fdstat_set_flags", |_: C<'_>, _: i32, _: i32| errno::NOSYS)?;
    i.wrap(m, "fd_fdstat_set_rights", |_: C<'_>, fd: i32, _: i64, _: i64| std_fd(fd))?;
    // No preopens: this answer ends libc's scan for them.
    i.wrap(m, "fd_prestat_get", |_: C<'_>, _: i32, _: i32| errno::BADF)?;
    i.wrap(m, "fd_prestat_dir_name", |_: C<'_>, _: i32, _: i32, _: i32| errno::NOSYS)?;
    i.wrap(m, "fd_filestat_get", |_: C<'_>, _: i32, _: i32| errno::BADF)?;
    i.wrap(m, "fd_filestat_set_size", |_: C<'_>, fd: i32, _: i64| std_fd(fd))?;
    i.wrap(m, "fd_filestat_set_times", |_: C<'_>, fd: i32, _: i64, _: i64, _: i32| std_fd(fd))?;
    i.wrap(m, "fd_advise", |_: C<'_>, _: i32, _: i64, _: i64, _: i32| errno::SUCCESS)?;
    i.wrap(m, "fd_allocate", |_: C<'_>, fd: i32, _: i64, _: i64| std_fd(fd))?;
    i.wrap(m, "fd_datasync", |_: C<'_>, fd: i32| std_fd(fd))?;
    i.wrap(m, "fd_sync", |_: C<'_>, fd: i32| std_fd(fd))?;
    i.wrap(m, "fd_readdir", |mut c: C<'_>, _: i32, _: i32, _: i32, _: i64, used: i32| -> i32 {
        write(&mut c, used, &0u32.to_le_bytes());
        errno::NOTDIR
    })?;
    i.wrap(m, "fd_renumber", |_: C<'_>, _: i32, _: i32| errno::NOTSUP)?;
    i.wrap(m, "path_open", |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i64, _: i64, _: i32, _: i32| {
        errno::NOENT
    })?;
    i.wrap(m, "path_filestat_get", |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32| errno::NOTSUP)?;
    i.wrap(m, "path_filestat_set_times", |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i64, _: i64, _: i32| {
        errno::NOTSUP
    })?;
    i.wrap(m, "path_create_directory", |_: C<'_>, _: i32, _: i32, _: i32| errno::NOTSUP)?;
    i.wrap(m, "path_remove_directory", |_: C<'_>, _: i32, _: i32, _: i32| errno::NOTSUP)?;
    i.wrap(m, "path_unlink_file", |_: C<'_>, _: i32, _: i32, _: i32| errno::NOTSUP)?;
    i.wrap(m, "path_link", |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| errno::NOTSUP)?;
    i.wrap(m, "path_readlink", |mut c: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, used: i32| -> i32 {
        write(&mut c, used, &0u32.to_le_bytes());
        errno::NOTSUP
    })?;
    i.wrap(m, "path_rename", |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| errno::NOTSUP)?;
    i.wrap(m, "path_symlink", |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32| errno::NOTSUP)?;
    i.wrap(m, "environ_sizes_get", |mut c: C<'_>, count: i32, size: i32| -> i32 {
        let ok = write(&mut c, count, &0u32.to_le_bytes()) && write(&mut c, size, &0u32.to_le_bytes());
        if ok { errno::SUCCESS } else { errno::FAULT }
    })?;
    i.wrap(m, "environ_get", |_: C<'_>, _: i32, _: i32| errno::SUCCESS)?;
    i.wrap(m, "args_sizes_get", |mut c: C<'_>, count: i32, size: i32| -> i32 {
        let ok = write(&mut c, count, &0u32.to_le_bytes()) && write(&mut c, size, &0u32.to_le_bytes());
        if ok { errno::SUCCESS } else { errno::FAULT }
    })?;
    i.wrap(m, "args_get", |_: C<'_>, _: i32, _: i32| errno::SUCCESS)?;
    i.wrap(m, "clock_time_get", |mut c: C<'_>, id: i32, _precision: i64, out: i32| -> i32 {
        let ns = match id {
            0 => SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64),
            1 => monotonic_ns(),
            _ => return errno::NOTSUP,
        };
        if write(&mut c, out, &ns.to_le_bytes()) { errno::SUCCESS } else { errno::FAULT }
    })?;
    i.wrap(m, "clock_res_get", |mut c: C<'_>, id: i32, out: i32| -> i32 {
        if id != 0 && id != 1 {
            return errno::NOTSUP;
        }
        if write(&mut c, out, &1u64.to_le_bytes()) { errno::SUCCESS } else { errno::FAULT }
    })?;
    i.wrap(m, "random_get", |mut c: C<'_>, ptr: i32, len: i32| -> i32 {
        if !(0..=65536).contains(&len) {
            return errno::INVAL;
        }
        let mut bytes = vec![0u8; len as usize];
        if getrandom::fill(&mut bytes).is_err() {
            return errno::NOSYS;
        }
        if write(&mut c, ptr, &bytes) { errno::SUCCESS } else { errno::FAULT }
    })?;
    i.wrap(m, "sched_yield", |_: C<'_>| errno::SUCCESS)?;
    i.wrap(m, "poll_oneoff", |mut c: C<'_>, _: i32, _: i32, _: i32, events: i32| -> i32 {
        write(&mut c, events, &0u32.to_le_bytes());
        errno::SUCCESS
    })?;
    i.wrap(m, "proc_exit", |c: C<'_>, code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::Error::msg(format!("the filter '{}' exited (proc_exit({code}))", c.data().filter)))
    })?;
    i.wrap(m, "proc_raise", |_: C<'_>, _: i32| errno::NOSYS)?;
    i.wrap(m, "sock_accept", |_: C<'_>, _: i32, _: i32, _: i32| errno::NOTSUP)?;
    i.wrap(m, "sock_recv", |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32, _: i32| errno::NOTSUP)?;
    i.wrap(m, "sock_send", |_: C<'_>, _: i32, _: i32, _: i32, _: i32, _: i32| errno::NOTSUP)?;
    i.wrap(m, "sock_shutdown", |_: C<'_>, _: i32, _: i32| errno::NOTSUP)?;
    Ok(())
}

/// Operations that make sense on stdout and stderr only.
fn std_fd(fd: i32) -> i32 {
    if fd == 1 || fd == 2 { errno::SUCCESS } else { errno::BADF }
}
