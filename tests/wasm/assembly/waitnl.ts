// waitnl: holds what the client sends until a whole line ("\n") has
// arrived, then lets it all through at once; after that, bytes flow.
export * from "./lib/exports";
import {
  RootContext, Context, registerRootContext, FilterStatusValues, BufferTypeValues, get_buffer_bytes,
} from "@gcoredev/proxy-wasm-sdk-as/assembly";
import { plog } from "./lib/util";

class WaitLine extends Context {
  seen: bool = false;

  onDownstreamData(size: usize, end_of_stream: bool): FilterStatusValues {
    if (this.seen) return FilterStatusValues.Continue;
    // Paused before: `size` counts everything held, which is seen again.
    const data = get_buffer_bytes(BufferTypeValues.NetworkDownstreamData, 0, <u32>size);
    const p = changetype<usize>(data);
    for (let i = 0; i < data.byteLength; i++) {
      if (load<u8>(p + i) == 0x0a) { this.seen = true; break; }
    }
    if (this.seen || end_of_stream) {
      plog("waitnl: a line of " + size.toString() + " bytes");
      return FilterStatusValues.Continue;
    }
    plog("waitnl: holding " + size.toString() + " bytes");
    return FilterStatusValues.StopIteration;
  }
}

class WaitLineRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new WaitLine(context_id, this);
  }
}

registerRootContext((id: u32) => new WaitLineRoot(id), "waitnl");
