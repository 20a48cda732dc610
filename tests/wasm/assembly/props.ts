// props: logs what the host tells of each connection (built with WASI: the
// SDK's log() writes to stdout), and counts into metrics: connections
// (counter), open connections (gauge), bytes per client chunk (histogram).
// Its configuration is a record {"tag": string} (see props.meta.json).
export * from "./lib/exports";
import {
  RootContext, Context, registerRootContext, FilterStatusValues, LogLevelValues, log, Counter,
} from "@gcoredev/proxy-wasm-sdk-as/assembly";
import * as imports from "@gcoredev/proxy-wasm-sdk-as/assembly/imports";
import { prop } from "./lib/util";

function defineMetric(kind: u32, name: string): u32 {
  const n = String.UTF8.encode(name);
  const id = new ArrayBuffer(4);
  imports.proxy_define_metric(kind, changetype<usize>(n), n.byteLength, changetype<usize>(id));
  return load<u32>(changetype<usize>(id));
}

class PropsRoot extends RootContext {
  tag: string = "";
  connections: Counter | null = null;
  open: u32 = 0;
  chunks: u32 = 0;

  onConfigure(size: u32): bool {
    super.onConfigure(size);
    // {"tag":"..."}: the schema guarantees the field.
    const cfg = this.getConfiguration();
    const at = cfg.indexOf("\"tag\"");
    if (at >= 0) {
      const start = cfg.indexOf("\"", cfg.indexOf(":", at) + 1) + 1;
      this.tag = cfg.substring(start, cfg.indexOf("\"", start));
    }
    if (this.connections == null) {
      this.connections = new Counter("connections_total");
      this.open = defineMetric(1, "open");
      this.chunks = defineMetric(2, "chunk_bytes");
    }
    return true;
  }

  createContext(context_id: u32): Context {
    return new Props(context_id, this);
  }
}

class Props extends Context {
  onNewConnection(): FilterStatusValues {
    const root = changetype<PropsRoot>(this.root_context);
    log(LogLevelValues.info, "props tag=" + root.tag +
      " source=" + prop("source.address") +
      " destination=" + prop("destination.address") +
      " sni=" + prop("connection.requested_server_name") +
      " tls=" + prop("connection.tls_version") +
      " route=" + prop("kong.route_name") +
      " service=" + prop("kong.service_name") +
      " protocol=" + prop("kong.client.protocol") +
      " plugin=" + prop("plugin_name"));
    const c = root.connections;
    if (c != null) c.increment(1);
    imports.proxy_increment_metric(root.open, 1);
    return FilterStatusValues.Continue;
  }

  onDownstreamData(size: usize, end_of_stream: bool): FilterStatusValues {
    if (size > 0) imports.proxy_record_metric(changetype<PropsRoot>(this.root_context).chunks, <u64>size);
    return FilterStatusValues.Continue;
  }

  onUpstreamData(size: usize, end_of_stream: bool): FilterStatusValues {
    if (size > 0) log(LogLevelValues.info, "props upstream=" + prop("upstream.address"));
    return FilterStatusValues.Continue;
  }

  onDownstreamConnectionClose(peer: i32): void {
    imports.proxy_increment_metric(changetype<PropsRoot>(this.root_context).open, -1);
    log(LogLevelValues.info, "props closed peer=" + peer.toString());
  }
}

registerRootContext((id: u32) => new PropsRoot(id), "props");
