//! The `strait` command: parse the command line and hand over to the library.

/// mimalloc rather than the system allocator: its size classes fit the
/// 128-byte-aligned blocks tokio allocates for every session (its task and
/// socket registrations) exactly, where glibc pads each aligned block; see
/// `bench/README.md`, idle memory.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    strait::cli::main()
}
