'use strict';
// Node.js client for the omnirelay gRPC API (package omnirelay.v1).
// The .proto contracts are loaded at run time from the repository's protos/ directory.
// int64 fields are decoded as decimal strings (longs: String) so that no value loses
// precision; use Number(x) for token counts. Enums are their names ("ROLE_USER").

const path = require('node:path');
const grpc = require('@grpc/grpc-js');
const protoLoader = require('@grpc/proto-loader');

/** Directory holding omnirelay/v1/*.proto. */
const PROTO_ROOT = path.join(__dirname, '..', '..', '..', 'protos');
const PROTO_FILES = ['completion', 'stream', 'benchmark', 'usage'].map((f) => `omnirelay/v1/${f}.proto`);

// google/protobuf/{duration,struct,timestamp}.proto are built into protobufjs
// (a dependency of @grpc/proto-loader), so only PROTO_ROOT is needed here.
const packageDefinition = protoLoader.loadSync(PROTO_FILES, {
  includeDirs: [PROTO_ROOT],
  keepCase: true,
  longs: String,
  enums: String,
  defaults: true,
  oneofs: true,
});
const v1 = /** @type {any} */ (grpc.loadPackageDefinition(packageDefinition)).omnirelay.v1;

/** gRPC status number -> name, e.g. 5 -> "NOT_FOUND". */
const STATUS_NAMES = Object.fromEntries(
  Object.entries(grpc.status).filter(([, v]) => typeof v === 'number').map(([k, v]) => [v, k]),
);

/** A failed omnirelay call. */
class OmniRelayError extends Error {
  /** @param {{code?: number, details?: string, message?: string, metadata?: grpc.Metadata}} err */
  constructor(err) {
    const code = typeof err.code === 'number' ? err.code : grpc.status.UNKNOWN;
    const codeName = STATUS_NAMES[code] || 'UNKNOWN';
    const details = err.details || err.message || '';
    super(`${codeName}: ${details}`, { cause: err });
    this.name = 'OmniRelayError';
    /** @type {number} gRPC status code. */
    this.code = code;
    /** @type {string} Status name, e.g. "INVALID_ARGUMENT". */
    this.codeName = codeName;
    /** @type {string} The server's status message. */
    this.details = details;
    /** @type {grpc.Metadata | undefined} Trailing metadata, when there was any. */
    this.metadata = err.metadata;
  }
}

/**
 * @typedef {Object} ClientOptions
 * @property {string} [apiKey] Sent as `authorization: Bearer <apiKey>`.
 * @property {string} [requestId] Sent as `x-request-id` on every call.
 * @property {grpc.ChannelCredentials} [credentials] Defaults to insecure (plaintext).
 * @typedef {{deadlineMs?: number}} CallOptions Per-call options; deadlineMs is relative to now.
 * @typedef {Object<string, any>} CompleteRequest omnirelay.v1.CompleteRequest (snake_case fields).
 * @typedef {Object<string, any>} CompleteResponse omnirelay.v1.CompleteResponse.
 * @typedef {{type: 'route_started'|'text_delta'|'tool_call_delta'|'usage'|'finish'|'route_changed'|'done'} & Object<string, any>} StreamEvent
 *   One stream event: `type` names the oneof member, the member's fields are spread beside it.
 */

class OmniRelayClient {
  /**
   * @param {string} target Address, e.g. "127.0.0.1:50051".
   * @param {ClientOptions} [options]
   */
  constructor(target, { apiKey, requestId, credentials } = {}) {
    const creds = credentials || grpc.credentials.createInsecure();
    this._completion = new v1.CompletionService(target, creds);
    this._stream = new v1.StreamCompletionService(target, creds, {
      channelOverride: this._completion.getChannel(),
    });
    this._apiKey = apiKey;
    this._requestId = requestId;
  }

  /** @returns {grpc.Metadata} */
  _metadata() {
    const md = new grpc.Metadata();
    if (this._apiKey) md.set('authorization', `Bearer ${this._apiKey}`);
    if (this._requestId) md.set('x-request-id', this._requestId);
    return md;
  }

  /** @param {CallOptions} [opts] @returns {grpc.CallOptions} */
  static _callOptions({ deadlineMs } = {}) {
    return deadlineMs ? { deadline: Date.now() + deadlineMs } : {};
  }

  /** Runs a unary method, turning failures into OmniRelayError. */
  _unary(method, request, opts) {
    return new Promise((resolve, reject) => {
      try {
        this._completion[method](request, this._metadata(), OmniRelayClient._callOptions(opts),
          (err, res) => (err ? reject(new OmniRelayError(err)) : resolve(res)));
      } catch (err) {
        reject(new OmniRelayError(err)); // thrown locally (e.g. closed channel): code UNKNOWN
      }
    });
  }

  /** @param {CompleteRequest} request @param {CallOptions} [opts] @returns {Promise<CompleteResponse>} */
  complete(request, opts) {
    return this._unary('Complete', request, opts);
  }

  /**
   * Streams a completion. Breaking out of the loop cancels the call.
   * @param {CompleteRequest} request @param {CallOptions} [opts]
   * @returns {AsyncGenerator<StreamEvent, void, undefined>}
   */
  async *stream(request, opts) {
    let call;
    try {
      call = this._stream.StreamComplete({ request }, this._metadata(), OmniRelayClient._callOptions(opts));
      for await (const msg of call) {
        if (msg.event) yield { type: msg.event, ...msg[msg.event] };
      }
    } catch (err) {
      throw err instanceof OmniRelayError ? err : new OmniRelayError(err);
    } finally {
      if (call) call.cancel(); // no-op once the call has ended
    }
  }

  /**
   * Lists the models the gateway serves.
   * @param {{capabilities?: string[], provider?: string}} [filter]
   * @param {CallOptions} [opts]
   * @returns {Promise<Object<string, any>[]>} omnirelay.v1.ModelInfo list, sorted by name.
   */
  async listModels(filter = {}, opts) {
    return (await this._unary('ListModels', filter, opts)).models;
  }

  /**
   * @param {{model?: string, messages: Object[], tools?: Object[]}} request
   * @param {CallOptions} [opts]
   * @returns {Promise<{input_tokens: string, resolved_model: string, estimated: boolean}>}
   */
  countTokens(request, opts) {
    return this._unary('CountTokens', request, opts);
  }

  /** Closes the channel; later calls fail. */
  close() {
    this._stream.close();
    this._completion.close();
  }
}

module.exports = { OmniRelayClient, OmniRelayError, PROTO_ROOT, packageDefinition };
