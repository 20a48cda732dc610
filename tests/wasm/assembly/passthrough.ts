// passthrough: sees every chunk and lets it through unchanged (the
// benchmark's Wasm filter: what running a filter costs by itself).
export * from "./lib/exports";
import { RootContext, Context, registerRootContext, FilterStatusValues } from "@gcoredev/proxy-wasm-sdk-as/assembly";

class Pass extends Context {
  onDownstreamData(size: usize, end_of_stream: bool): FilterStatusValues {
    return FilterStatusValues.Continue;
  }

  onUpstreamData(size: usize, end_of_stream: bool): FilterStatusValues {
    return FilterStatusValues.Continue;
  }
}

class PassRoot extends RootContext {
  createContext(context_id: u32): Context {
    return new Pass(context_id, this);
  }
}

registerRootContext((id: u32) => new PassRoot(id), "passthrough");
