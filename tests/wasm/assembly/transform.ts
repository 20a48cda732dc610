// transform: bytes from the client go upstream in upper case, bytes from
// the upstream reach the client in lower case (ASCII letters only).
export * from "./lib/exports";
import {
  RootContext, Context, registerRootContext, FilterStatusValues, BufferTypeValues,
  get_buffer_bytes, set_buffer_bytes,
} from "@gcoredev/proxy-wasm-sdk-as/assembly";

function recase(kind: BufferTypeValues, size: usize, upper: bool): void {
  if (size == 0) return;
  const data = get_buffer_bytes(kind, 0, <u32>size);
  const p = changetype<usize>(data);
  for (let i = 0; i < data.byteLength; i++) {
    const c = load<u8>(p + i);
    if (upper && c >= 0x61 && c <= 0x7a) store<u8>(p + i, c - 0x20);
    if (!upper && c >= 0x41 && c <= 0x5a) store<u8>(p + i, c + 0x20);
  }
  // (0, size): replace the whole buffer.
  set_buffer_bytes(kind, 0, <u32>size, data);
}

class Transform extends Context {
  onDownstreamData(size: usize, end_of_stream: bool): FilterStatusValues {
    recase(BufferTypeValues.NetworkDownstreamData, size, true);
    return FilterStatusValues.Continue;
  }

  onUpstreamData(size: usize, end_of_stream: bool): FilterStatusValues {
    recase(BufferTypeValues.NetworkUpstreamData, size, false);
    return FilterStatusValues.Continue;
  }
}

class TransformRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new Transform(context_id, this);
  }
}

registerRootContext((id: u32) => new TransformRoot(id), "transform");
