//! Checking a filter's module before it may be configured: it compiles, it
//! declares a proxy-wasm ABI this host speaks (0.2.1 or 0.2.0), it exports
//! a 32-bit memory and an allocator, it imports nothing but host functions
//! Strait defines (with their types), and its memory starts within
//! `wasm_memory_limit`. Each refusal names the reason.

use wasmtime::{Engine, ExternType, Module};

use crate::abi::AbiVersion;
use crate::host::Imports;

/// What the checks found.
#[derive(Debug)]
pub(crate) struct Checked {
    pub(crate) abi: AbiVersion,
    pub(crate) memory_export: String,
}

/// The checks of a compiled module.
pub(crate) fn check(module: &Module, imports: &Imports, memory_limit: usize) -> Result<Checked, String> {
    // The first marker in export order wins, as in proxy-wasm-cpp-host.
    let mut abi = None;
    let mut memory_export = None;
    let mut allocator = false;
    for e in module.exports() {
        match (e.name(), e.ty()) {
            ("proxy_abi_version_0_2_1", ExternType::Func(_)) if abi.is_none() => abi = Some(Ok(AbiVersion::V0_2_1)),
            ("proxy_abi_version_0_2_0", ExternType::Func(_)) if abi.is_none() => abi = Some(Ok(AbiVersion::V0_2_0)),
            ("proxy_abi_version_0_1_0", ExternType::Func(_)) if abi.is_none() => abi = Some(Err("0.1.0")),
            (name, ExternType::Memory(m)) => {
                if m.is_64() {
                    return Err(format!("its memory '{name}' is 64-bit; proxy-wasm passes 32-bit pointers"));
                }
                if m.is_shared() {
                    return Err(format!("its memory '{name}' is shared; filters run single-threaded"));
                }
                let initial = m.minimum().saturating_mul(65_536);
                if initial > memory_limit as u64 {
                    return Err(format!(
                        "its memory starts at {initial} bytes, more than wasm_memory_limit ({memory_limit} bytes)"
                    ));
                }
                if name == "memory" || memory_export.is_none() {
                    memory_export = Some(name.to_owned());
                }
            }
            ("malloc" | "proxy_on_memory_allocate", ExternType::Func(f)) => {
                let i32_to_i32 = f.params().len() == 1
                    && f.results().len() == 1
                    && f.params().all(|p| p.is_i32())
                    && f.results().all(|r| r.is_i32());
                allocator |= i32_to_i32;
            }
            _ => {}
        }
    }
    let abi = match abi {
        None => {
            return Err(
                "it lacks the proxy-wasm ABI marker (an export named proxy_abi_version_0_2_1 or proxy_abi_version_0_2_0)"
                    .to_owned(),
            );
        }
        Some(Err(v)) => return Err(format!("it declares proxy-wasm ABI {v}; Strait runs 0.2.1 and 0.2.0")),
        Some(Ok(abi)) => abi,
    };
    let Some(memory_export) = memory_export else {
        return Err("it exports no memory".to_owned());
    };
    if !allocator {
        return Err("it exports no allocator (malloc or proxy_on_memory_allocate, taking and giving an i32)".to_owned());
    }
    for i in module.imports() {
        let what = format!("{}.{}", i.module(), i.name());
        match i.ty() {
            ExternType::Func(_) if imports.defines(i.module(), i.name()) => {}
            ExternType::Func(_) => return Err(format!("it imports an unknown host function: {what}")),
            _ => return Err(format!("it imports {what}, which is not a function (only host functions are provided)")),
        }
    }
    // The types: the linker resolves every import once.
    imports.linker.instantiate_pre(module).map_err(|e| {
        let text = e.to_string();
        format!("it imports a host function with the wrong type: {}", text.lines().next().unwrap_or(""))
    })?;
    Ok(Checked { abi, memory_export })
}

/// The engine filters compile for: epoch interruption for the deadline, no
/// 64-bit memories (the ABI passes 32-bit pointers), and no threads, GC or
/// component model (not compiled in).
pub(crate) fn engine() -> Result<Engine, String> {
    let mut cfg = wasmtime::Config::new();
    cfg.epoch_interruption(true);
    cfg.wasm_memory64(false);
    cfg.cranelift_opt_level(wasmtime::OptLevel::Speed);
    Engine::new(&cfg).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn checked(wat: &str) -> Result<Checked, String> {
        let engine = engine().expect("engine");
        let imports = Imports::new(&engine).expect("imports");
        let module = Module::new(&engine, wat).map_err(|e| e.to_string())?;
        check(&module, &imports, 1 << 20)
    }

    const GOOD: &str = r#"(module
        (import "env" "proxy_log" (func (param i32 i32 i32) (result i32)))
        (memory (export "memory") 1)
        (func (export "malloc") (param i32) (result i32) i32.const 1024)
        (func (export "proxy_abi_version_0_2_1")))"#;

    #[test]
    fn a_module_is_checked_before_it_runs() {
        let ok = checked(GOOD).expect("a good module");
        assert_eq!(ok.abi, AbiVersion::V0_2_1);
        assert_eq!(ok.memory_export, "memory");
        let no_marker = GOOD.replace("proxy_abi_version_0_2_1", "something_else");
        assert!(checked(&no_marker).unwrap_err().contains("ABI marker"));
        let old = GOOD.replace("proxy_abi_version_0_2_1", "proxy_abi_version_0_1_0");
        assert!(checked(&old).unwrap_err().contains("0.1.0"));
        let unknown = GOOD.replace("\"proxy_log\"", "\"proxy_launch_missiles\"");
        assert_eq!(checked(&unknown).unwrap_err(), "it imports an unknown host function: env.proxy_launch_missiles");
        let wrong = GOOD.replace("(param i32 i32 i32) (result i32)", "(param i64)");
        assert!(checked(&wrong).unwrap_err().contains("wrong type"), "{:?}", checked(&wrong));
        let no_alloc = GOOD.replace("\"malloc\"", "\"something\"");
        assert!(checked(&no_alloc).unwrap_err().contains("allocator"));
        let big = GOOD.replace("(memory (export \"memory\") 1)", "(memory (export \"memory\") 100)");
        assert!(checked(&big).unwrap_err().contains("wasm_memory_limit"));
        let no_memory = GOOD.replace("(memory (export \"memory\") 1)", "(memory 1)");
        assert!(checked(&no_memory).unwrap_err().contains("no memory"));
    }
}
