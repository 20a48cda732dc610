// closeon: closes the session when the client sends the pattern given as
// the filter's configuration (a string), even split across reads: the tail
// of each chunk is kept to be searched with the next.
export * from "./lib/exports";
import {
  RootContext, Context, registerRootContext, FilterStatusValues, BufferTypeValues, get_buffer_bytes,
} from "@gcoredev/proxy-wasm-sdk-as/assembly";
import { StreamTypeValues } from "@gcoredev/proxy-wasm-sdk-as/assembly/runtime";
import * as imports from "@gcoredev/proxy-wasm-sdk-as/assembly/imports";
import { plog, find, concat } from "./lib/util";

class CloseOnRoot extends RootContext {
  pattern: ArrayBuffer = new ArrayBuffer(0);

  onConfigure(size: u32): bool {
    super.onConfigure(size);
    this.pattern = String.UTF8.encode(this.getConfiguration());
    if (this.pattern.byteLength == 0) {
      plog("closeon: the configuration must be the pattern to close on");
      return false;
    }
    return true;
  }

  createContext(context_id: u32): Context {
    return new CloseOn(context_id, this);
  }
}

class CloseOn extends Context {
  tail: ArrayBuffer = new ArrayBuffer(0);

  onDownstreamData(size: usize, end_of_stream: bool): FilterStatusValues {
    const pattern = changetype<CloseOnRoot>(this.root_context).pattern;
    const data = get_buffer_bytes(BufferTypeValues.NetworkDownstreamData, 0, <u32>size);
    const seen = concat(this.tail, data);
    if (find(seen, pattern) >= 0) {
      plog("closeon: pattern seen, closing");
      imports.proxy_close_stream(StreamTypeValues.Downstream);
      return FilterStatusValues.StopIteration;
    }
    const keep = min(seen.byteLength, pattern.byteLength - 1);
    this.tail = seen.slice(seen.byteLength - keep);
    return FilterStatusValues.Continue;
  }
}

registerRootContext((id: u32) => new CloseOnRoot(id), "closeon");
