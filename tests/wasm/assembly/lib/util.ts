// Helpers the test filters share.
import * as imports from "@gcoredev/proxy-wasm-sdk-as/assembly/imports";
import { LogLevelValues, globalArrayBufferReference } from "@gcoredev/proxy-wasm-sdk-as/assembly/runtime";

// To the host's log (the SDK's log() goes to process.stdout).
export function plog(msg: string): void {
  const buf = String.UTF8.encode(msg);
  imports.proxy_log(LogLevelValues.info as usize, changetype<usize>(buf), buf.byteLength);
}

// A property as text; "-" when the host has none (never traps, unlike the
// SDK's get_property on an unexpected status).
export function prop(path: string): string {
  const p = String.UTF8.encode(path);
  const status = imports.proxy_get_property(
    changetype<usize>(p), p.byteLength,
    globalArrayBufferReference.bufferPtr(), globalArrayBufferReference.sizePtr());
  if (status != 0) return "-";
  const v = globalArrayBufferReference.toArrayBuffer();
  return v.byteLength == 0 ? "-" : String.UTF8.decode(v);
}

// The index of `needle` in `hay`, or -1.
export function find(hay: ArrayBuffer, needle: ArrayBuffer): i32 {
  const h = changetype<usize>(hay);
  const n = changetype<usize>(needle);
  for (let i = 0; i + needle.byteLength <= hay.byteLength; i++) {
    let ok = true;
    for (let j = 0; j < needle.byteLength; j++) {
      if (load<u8>(h + i + j) != load<u8>(n + j)) { ok = false; break; }
    }
    if (ok) return i;
  }
  return -1;
}

export function concat(a: ArrayBuffer, b: ArrayBuffer): ArrayBuffer {
  const out = new ArrayBuffer(a.byteLength + b.byteLength);
  memory.copy(changetype<usize>(out), changetype<usize>(a), a.byteLength);
  memory.copy(changetype<usize>(out) + a.byteLength, changetype<usize>(b), b.byteLength);
  return out;
}
