// gate: holds every new connection before its upstream is connected
// (pausing proxy_on_new_connection) until the root's next tick, which
// continues them all (proxy_set_effective_context, then
// proxy_continue_stream). The tick period in milliseconds is the
// configuration (200 by default). A client that sends "HOLD" is held again
// until the next tick.
export * from "./lib/exports";
import {
  RootContext, Context, registerRootContext, FilterStatusValues, BufferTypeValues,
  get_buffer_bytes, set_tick_period_milliseconds,
} from "@gcoredev/proxy-wasm-sdk-as/assembly";
import { StreamTypeValues } from "@gcoredev/proxy-wasm-sdk-as/assembly/runtime";
import * as imports from "@gcoredev/proxy-wasm-sdk-as/assembly/imports";
import { plog, find } from "./lib/util";

class GateRoot extends RootContext {
  held: u32[] = [];

  onConfigure(size: u32): bool {
    super.onConfigure(size);
    const cfg = this.getConfiguration();
    set_tick_period_milliseconds(cfg.length > 0 ? <u32>parseInt(cfg) : 200);
    return true;
  }

  onTick(): void {
    for (let i = 0; i < this.held.length; i++) {
      imports.proxy_set_effective_context(this.held[i]);
      imports.proxy_continue_stream(StreamTypeValues.Downstream);
      plog("gate: released " + this.held[i].toString());
    }
    this.held = [];
  }

  createContext(context_id: u32): Context {
    return new Gate(context_id, this);
  }
}

class Gate extends Context {
  onNewConnection(): FilterStatusValues {
    changetype<GateRoot>(this.root_context).held.push(this.context_id);
    plog("gate: holding " + this.context_id.toString());
    return FilterStatusValues.StopIteration;
  }

  onDownstreamData(size: usize, end_of_stream: bool): FilterStatusValues {
    const data = get_buffer_bytes(BufferTypeValues.NetworkDownstreamData, 0, <u32>size);
    if (find(data, String.UTF8.encode("HOLD")) >= 0) {
      changetype<GateRoot>(this.root_context).held.push(this.context_id);
      return FilterStatusValues.StopIteration;
    }
    return FilterStatusValues.Continue;
  }
}

registerRootContext((id: u32) => new GateRoot(id), "gate");
