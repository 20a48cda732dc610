//! Compiled filters kept under `prefix`, so a restart does not compile
//! every module again (Cranelift takes milliseconds to seconds per module;
//! loading the native code takes microseconds).
//!
//! An entry is named by the module's SHA-256 and the engine's
//! compatibility hash (wasmtime's version, the target, the settings), and
//! holds the SHA-256 of the code it stores before the code itself. Any
//! mismatch, or any error, and the module is compiled again; the entry is
//! rewritten by a rename, never in place.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use wasmtime::{Engine, Module};

/// How a module was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Compiled,
    Cached,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The cache file for `wasm` with this engine.
fn entry(dir: &Path, engine: &Engine, wasm: &[u8]) -> PathBuf {
    let mut h = std::hash::DefaultHasher::new();
    engine.precompile_compatibility_hash().hash(&mut h);
    dir.join(format!("{}-{:016x}.cwasm", hex(&Sha256::digest(wasm)), h.finish()))
}

/// Whether the cache's files can only have been written by this process's
/// user: the directory and the file owned by it, neither writable by group
/// or others. Anything else is not trusted (it costs a compile).
fn trusted(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    // std has no safe `geteuid`: `/proc/self` is owned by the effective user.
    let mine = |m: &std::fs::Metadata| m.mode() & 0o022 == 0 && m.uid() == current_uid();
    let dir = path.parent().and_then(|d| std::fs::symlink_metadata(d).ok());
    let file = std::fs::symlink_metadata(path).ok();
    matches!((dir, file), (Some(d), Some(f)) if d.is_dir() && f.is_file() && mine(&d) && mine(&f))
}

/// This process's effective user, as `/proc/self` is owned by it.
fn current_uid() -> u32 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map_or(u32::MAX, |m| m.uid())
}

/// Loads a cached entry, if it is intact and only we could have written it.
#[allow(unsafe_code)]
fn load(engine: &Engine, path: &Path) -> Option<Module> {
    if !trusted(path) {
        return None;
    }
    let stored = std::fs::read(path).ok()?;
    let (digest, code) = stored.split_at_checked(32)?;
    if Sha256::digest(code).as_slice() != digest {
        return None;
    }
    // SAFETY: `deserialize` runs the native code it is given. These bytes are
    // exactly what `Module::serialize` wrote for this engine: the file's name
    // carries the engine's compatibility hash (wasmtime's full version and
    // settings), its SHA-256 check above proves it whole, and `trusted`
    // checked that it and its directory belong to this user and are
    // writable by no one else. wasmtime also checks the
    // engine's version and settings against the header and refuses a
    // mismatch with an error, not undefined behaviour. The bytes are copied
    // (`deserialize`, not `deserialize_file`), so a later change to the file
    // cannot reach the loaded code.
    unsafe { Module::deserialize(engine, code) }.ok()
}

fn store(path: &Path, module: &Module) -> std::io::Result<()> {
    let code = module.serialize().map_err(std::io::Error::other)?;
    let mut bytes = Sha256::digest(&code).to_vec();
    bytes.extend_from_slice(&code);
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, &bytes)?;
    std::fs::rename(&tmp, path)
}

/// The module of `wasm`: from the cache in `dir` when it holds it, else
/// compiled (and cached). Cache problems only cost a compile.
pub(crate) fn compile(engine: &Engine, wasm: &[u8], dir: Option<&Path>) -> Result<(Module, Origin), String> {
    let path = dir.map(|d| entry(d, engine, wasm));
    if let Some(m) = path.as_deref().and_then(|p| load(engine, p)) {
        return Ok((m, Origin::Cached));
    }
    let module = Module::from_binary(engine, wasm).map_err(|e| {
        let text = format!("{e:#}");
        format!("it does not compile: {}", text.lines().next().unwrap_or("invalid module"))
    })?;
    if let (Some(dir), Some(path)) = (dir, &path) {
        let made = std::fs::create_dir_all(dir).and_then(|()| {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        });
        if let Err(e) = made.and_then(|()| store(path, &module)) {
            tracing::warn!(path = %path.display(), error = %e, "could not cache a compiled Wasm filter");
        }
    }
    Ok((module, Origin::Compiled))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_module_is_used_only_when_intact() {
        let engine = crate::module::engine().expect("engine");
        let dir = std::env::temp_dir().join(format!("strait-wasm-cache-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let wasm = wat::parse_str("(module (func (export \"f\")))").expect("wat");
        let (_, first) = compile(&engine, &wasm, Some(&dir)).expect("compiles");
        assert_eq!(first, Origin::Compiled);
        let (m, second) = compile(&engine, &wasm, Some(&dir)).expect("loads");
        assert_eq!(second, Origin::Cached);
        assert!(m.exports().any(|e| e.name() == "f"));
        // A damaged entry is compiled again, not loaded.
        let path = entry(&dir, &engine, &wasm);
        let mut bytes = std::fs::read(&path).expect("entry");
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, &bytes).expect("write");
        let (_, third) = compile(&engine, &wasm, Some(&dir)).expect("recompiles");
        assert_eq!(third, Origin::Compiled);
        assert!(compile(&engine, b"not wasm", Some(&dir)).unwrap_err().starts_with("it does not compile"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
