// A global `process` for filters built without WASI: the SDK's log()
// writes to process.stdout, which this sends to the host's proxy_log (the
// level read from the SDK's "[LEVEL]" prefix).
// @ts-ignore: decorator
@external("env", "proxy_log")
declare function proxy_log(level: u32, ptr: usize, len: usize): u32;

function levelOf(s: string): u32 {
  if (s.startsWith("[TRACE]")) return 0;
  if (s.startsWith("[DEBUG]")) return 1;
  if (s.startsWith("[WARN]")) return 3;
  if (s.startsWith("[ERROR]")) return 4;
  if (s.startsWith("[CRITICAL]")) return 5;
  return 2;
}

@unmanaged
class LogStream {
  write<T>(data: T): void {
    if (isString<T>()) {
      let s = changetype<string>(data);
      if (s.endsWith("\n")) s = s.substring(0, s.length - 1);
      const buf = String.UTF8.encode(s);
      proxy_log(levelOf(s), changetype<usize>(buf), buf.byteLength);
    } else if (data instanceof ArrayBuffer) {
      proxy_log(2, changetype<usize>(data), data.byteLength);
    }
  }
  close(): void {}
}

export namespace proxy_process {
  // @ts-ignore: decorator
  @lazy export const arch = "wasm32";
  // @ts-ignore: decorator
  @lazy export const platform = "wasm";
  // @ts-ignore: decorator
  @lazy export const env = new Map<string, string>();
  // @ts-ignore: decorator
  @lazy export var exitCode = 0;
  // @ts-ignore: decorator
  @lazy export const stdout = changetype<LogStream>(1);
  // @ts-ignore: decorator
  @lazy export const stderr = changetype<LogStream>(2);
  export function exit(code: i32 = exitCode): void { unreachable(); }
}
