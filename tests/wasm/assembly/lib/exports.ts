// The SDK's exports, except proxy_on_done / proxy_on_log / proxy_on_delete,
// which in @gcoredev/proxy-wasm-sdk-as 1.2.3 trap when called for the root
// context (they look the id up among the connection contexts). A host calls
// them for the root when a configuration goes away.
export { malloc } from "@gcoredev/proxy-wasm-sdk-as/assembly/malloc";
export {
  proxy_abi_version_0_2_1, proxy_on_vm_start, proxy_validate_configuration,
  proxy_on_configure, proxy_on_tick, proxy_on_foreign_function, proxy_on_queue_ready,
  proxy_on_context_create,
  proxy_on_request_headers, proxy_on_request_body, proxy_on_request_trailers,
  proxy_on_request_metadata, proxy_on_response_headers, proxy_on_response_body,
  proxy_on_response_trailers, proxy_on_response_metadata,
  proxy_on_http_call_response, proxy_on_grpc_receive_initial_metadata,
  proxy_on_grpc_trailing_metadata, proxy_on_grpc_receive, proxy_on_grpc_close,
  proxy_on_downstream_data, proxy_on_upstream_data,
  proxy_on_upstream_connection_close, proxy_on_downstream_connection_close,
  proxy_on_new_connection,
} from "@gcoredev/proxy-wasm-sdk-as/assembly/exports";
import { getBaseContext, getContext, getRootContext, deleteContext } from "@gcoredev/proxy-wasm-sdk-as/assembly/runtime";

let rootId: u32 = 0;

function isRoot(id: u32): bool {
  if (rootId == 0) rootId = getRootContext(id).context_id;
  return id == rootId;
}

export function proxy_on_done(id: u32): u32 {
  if (isRoot(id)) return getRootContext(id).onDone() ? 1 : 0;
  return getBaseContext(id).onDone() ? 1 : 0;
}

export function proxy_on_log(id: u32): void {
  if (isRoot(id)) return;
  getContext(id).onLog();
}

export function proxy_on_delete(id: u32): void {
  if (isRoot(id)) return;
  getBaseContext(id).onDelete();
  deleteContext(id);
}
