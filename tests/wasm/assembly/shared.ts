// shared: numbers sessions through shared data (a compare-and-swap loop on
// the key its configuration names, "count" by default), so that sessions on
// any instance count in one sequence; the client's first bytes go upstream
// after "n=<number>\n" (prepended). Each number is also put on a shared
// queue, whose owner logs it.
export * from "./lib/exports";
import {
  RootContext, Context, registerRootContext, FilterStatusValues, BufferTypeValues, WasmResultValues,
  get_shared_data, set_shared_data, set_buffer_bytes,
  register_shared_queue, enqueue_shared_queue, dequeue_shared_queue,
} from "@gcoredev/proxy-wasm-sdk-as/assembly";
import { plog } from "./lib/util";

class SharedRoot extends RootContext {
  key: string = "count";
  queue: u32 = 0;

  onConfigure(size: u32): bool {
    super.onConfigure(size);
    const cfg = this.getConfiguration();
    if (cfg.length > 0) this.key = cfg;
    const q = register_shared_queue("sessions");
    if (q.result == WasmResultValues.Ok) this.queue = q.token;
    return true;
  }

  onQueueReady(token: u32): void {
    const d = dequeue_shared_queue(token);
    if (d.result == WasmResultValues.Ok) plog("shared: dequeued " + String.UTF8.decode(d.data!));
  }

  next(): u32 {
    for (let attempt = 0; attempt < 100; attempt++) {
      const g = get_shared_data(this.key);
      let n: u32 = 0;
      let cas: u32 = 0;
      if (g.result == WasmResultValues.Ok) {
        n = <u32>parseInt(String.UTF8.decode(g.value!));
        cas = g.cas;
      }
      if (set_shared_data(this.key, String.UTF8.encode((n + 1).toString()), cas) == WasmResultValues.Ok) {
        return n + 1;
      }
    }
    return 0;
  }

  createContext(context_id: u32): Context {
    return new Shared(context_id, this);
  }
}

class Shared extends Context {
  n: u32 = 0;
  told: bool = false;

  onNewConnection(): FilterStatusValues {
    const root = changetype<SharedRoot>(this.root_context);
    this.n = root.next();
    enqueue_shared_queue(root.queue, String.UTF8.encode("n=" + this.n.toString()));
    return FilterStatusValues.Continue;
  }

  onDownstreamData(size: usize, end_of_stream: bool): FilterStatusValues {
    if (!this.told && size > 0) {
      this.told = true;
      // (0, 0): prepend.
      set_buffer_bytes(BufferTypeValues.NetworkDownstreamData, 0, 0, String.UTF8.encode("n=" + this.n.toString() + "\n"));
    }
    return FilterStatusValues.Continue;
  }
}

registerRootContext((id: u32) => new SharedRoot(id), "shared");
