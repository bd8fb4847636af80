/*
 * bsn.h: the C interface of bsn, the Bitcoin Server Network engine (libbsn.so / libbsn.a).
 *
 * Objects, each opaque, made and freed only by bsn:
 *   bsn_config     what an engine starts with     bsn_config_new ... bsn_config_free
 *   bsn_engine     a running engine               bsn_engine_start ... bsn_engine_free
 *   bsn_event      one thing the engine tells     bsn_engine_poll_event ... bsn_event_free
 *   bsn_peer_list  the connections at a moment    bsn_engine_peers ... bsn_peer_list_free
 *
 * Conventions (the same for every function):
 *   - Every function returns a bsn_result: BSN_OK (0) or an error (7001 and up).
 *     bsn_result_text(r) names it; bsn_last_error() gives the calling thread's last error
 *     message in full.
 *   - Every pointer argument is checked for NULL (BSN_ERR_NULL_ARGUMENT).
 *   - Strings passed in are NUL-terminated UTF-8 and stay the caller's; bsn copies what it keeps.
 *   - Outputs go to caller buffers (buf, len, &out_len): out_len always gets the size needed;
 *     a buffer too small gets BSN_ERR_BUFFER_TOO_SMALL and nothing copied. Texts get a NUL
 *     (the buffer needs out_len + 1 bytes); byte data does not.
 *   - Objects handed out are the caller's and freed by their own *_free, which takes the
 *     address of the caller's pointer and sets it to NULL: a second free, or a free of NULL,
 *     does nothing (BSN_ERR_NULL_ARGUMENT).
 *   - Hashes are 32 bytes in wire order (the reverse of the usual hex); headers are 80 bytes.
 *   - Threads: see each object. A panic inside bsn never unwinds into C (BSN_ERR_PANIC).
 */

#ifndef BSN_H
#define BSN_H

/* Generated from src/ffi by cbindgen; do not edit (BSN_BLESS=1 cargo test --test ffi_header). */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/**
 * The kinds of event (`bsn_event_kind`).
 */
typedef enum {
  /**
   * A peer finished its handshake. peer; address: its address; data: its user agent.
   */
  BSN_EVENT_PEER_CONNECTED = 1,
  /**
   * A connection ended. peer; address; data: why.
   */
  BSN_EVENT_PEER_DISCONNECTED = 2,
  /**
   * An outbound connection could not be made. address: where; data: why.
   */
  BSN_EVENT_CONNECT_FAILED = 3,
  /**
   * A message the engine does not consume itself. peer; command; data: its payload.
   */
  BSN_EVENT_MESSAGE = 4,
  /**
   * An address or subnet was banned. address: the subnet; data: why.
   */
  BSN_EVENT_BANNED = 5,
  /**
   * A ban ended. address: the subnet.
   */
  BSN_EVENT_UNBANNED = 6,
  /**
   * The header chain caught up with a peer that was ahead of it (its last answer had no more
   * headers). height. Not raised when no peer claims more than we have: compare
   * `bsn_engine_sync_progress` then.
   */
  BSN_EVENT_HEADERS_SYNCED = 7,
  /**
   * A block of the best chain is stored. height; hash; data: its 80-byte header.
   */
  BSN_EVENT_BLOCK_CONNECTED = 8,
  /**
   * The best chain switched branches. height: the fork point's; data: a description.
   */
  BSN_EVENT_REORG = 9,
  /**
   * A transaction from a peer, waiting for `bsn_engine_accept_tx` or `bsn_engine_reject_tx`.
   * peer; hash: its id; data: the transaction.
   */
  BSN_EVENT_TX_RECEIVED = 10,
  /**
   * A peer's ban score went up. peer (if a connection earned it); address: its IP; data: why.
   */
  BSN_EVENT_BAN_SCORE = 11,
  /**
   * The engine cannot go on and is stopping. data: why.
   */
  BSN_EVENT_FATAL = 12,
  /**
   * A block bigger than the file threshold that the embedder asked for with its own
   * `getdata`. peer; hash; data: the path of a file that is the embedder's to read and remove.
   */
  BSN_EVENT_BLOCK_FILE = 13,
  /**
   * An event of a kind this header does not know (a newer bsn). data: a description.
   */
  BSN_EVENT_OTHER = 99,
} bsn_event_type;

/**
 * What a call came to: `BSN_OK` (0), or an error (7001 and up; `bsn_result_text` names it,
 * `bsn_last_error` says more).
 */
typedef enum {
  /**
   * Done.
   */
  BSN_OK = 0,
  /**
   * A pointer argument was NULL (also: freeing what was freed already).
   */
  BSN_ERR_NULL_ARGUMENT = 7001,
  /**
   * An argument is not valid (text that is not UTF-8, an index out of range, zero shards...).
   */
  BSN_ERR_INVALID_ARGUMENT = 7002,
  /**
   * An address, IP or subnet does not parse.
   */
  BSN_ERR_INVALID_ADDRESS = 7003,
  /**
   * The output buffer is too small: `*out_len` says how big it must be.
   */
  BSN_ERR_BUFFER_TOO_SMALL = 7004,
  /**
   * No connection has this peer id (any more).
   */
  BSN_ERR_UNKNOWN_PEER = 7005,
  /**
   * The engine is stopped.
   */
  BSN_ERR_STOPPED = 7006,
  /**
   * No event came within the timeout.
   */
  BSN_ERR_TIMEOUT = 7007,
  /**
   * Nothing found: no such header, block, ban or transaction; or the event has no such field.
   */
  BSN_ERR_NOT_FOUND = 7008,
  /**
   * The configuration is refused at start (see `bsn_last_error`).
   */
  BSN_ERR_CONFIG = 7009,
  /**
   * An operating system error (a port in use, a data dir that cannot be written...).
   */
  BSN_ERR_IO = 7010,
  /**
   * The store failed.
   */
  BSN_ERR_STORE = 7011,
  /**
   * A message could not be sent (the peer's queue is full, it is not ready...).
   */
  BSN_ERR_SEND = 7012,
  /**
   * Bytes that do not decode as what they should be (a transaction, a block, a payload).
   */
  BSN_ERR_INVALID_DATA = 7013,
  /**
   * The call is not allowed now (polling while a callback takes the events).
   */
  BSN_ERR_WRONG_STATE = 7014,
  /**
   * bsn panicked inside the call (a bug; the engine may be unusable).
   */
  BSN_ERR_PANIC = 7099,
} bsn_result;

/**
 * An engine's configuration (opaque): made by `bsn_config_new`, changed by the setters, read
 * (not taken) by `bsn_engine_start`, freed by `bsn_config_free`. Used by one thread at a time.
 */
typedef struct bsn_config bsn_config;

/**
 * A running engine (opaque): `bsn_engine_start` ... `bsn_engine_free`. Its calls may be made
 * from any thread, concurrently, except `bsn_engine_stop`, `bsn_engine_free` and
 * `bsn_engine_set_event_callback`, which must not run while another call on the same engine
 * does. After `bsn_engine_stop` calls return `BSN_ERR_STOPPED`.
 */
typedef struct bsn_engine bsn_engine;

/**
 * An event (opaque): the caller's from `bsn_engine_poll_event` until `bsn_event_free`, or lent
 * to the callback for the length of the call. Read by one thread at a time.
 */
typedef struct bsn_event bsn_event;

/**
 * A list of connections (opaque), the caller's from `bsn_engine_peers` until
 * `bsn_peer_list_free`, read by one thread at a time; those still in their handshake included (`bsn_peer_list_ready`
 * false; a BSV peer's second stream is listed so until it joins its first connection).
 */
typedef struct bsn_peer_list bsn_peer_list;

/**
 * Called with each event on an engine thread when set with `bsn_engine_set_event_callback`.
 * The event is lent for the call: read it, do not free it, do not keep the pointer.
 */
typedef void (*bsn_event_callback)(void *userdata, const bsn_event *event);

/**
 * Where the sync stands (`bsn_engine_sync_progress`).
 */
typedef struct {
  /**
   * Our best header's height.
   */
  uint32_t header_height;
  /**
   * The highest height any peer claimed or implied (at least ours).
   */
  uint32_t best_known_height;
  /**
   * The height up to which blocks are stored without a gap (0 for a header client).
   */
  uint32_t block_height;
  /**
   * A header request is in flight.
   */
  bool syncing;
  /**
   * The peer the sync asks (0: none).
   */
  uint64_t sync_peer;
} bsn_sync_progress;

#ifdef __cplusplus
extern "C" {
#endif // __cplusplus

/**
 * bsn's version, a static NUL-terminated string ("0.1.0"); never freed.
 *
 * Any thread.
 */
const char *bsn_version(void);

/**
 * The name of a result code, a static NUL-terminated string (e.g. "BSN_ERR_TIMEOUT: no event
 * came within the timeout"); never freed. Unknown codes give "unknown result".
 *
 * Any thread.
 */
const char *bsn_result_text(uint32_t result);

/**
 * Copies the calling thread's last error message (set by the last call that failed on this
 * thread; empty if none) into `buf` with a terminating NUL; `*out_len` gets its length without
 * the NUL, also when `buf` is too small (`BSN_ERR_BUFFER_TOO_SMALL`).
 *
 * Any thread (each has its own last error). `buf` is the caller's.
 */
bsn_result bsn_last_error(char *buf, size_t len, size_t *out_len);

/**
 * A new configuration for `network` ("mainnet", "testnet", "regtest" or "stn"), with the SV
 * node's defaults: listening on 127.0.0.1 at the network's port, no data dir (everything in
 * memory), a shard per core, threads pinned. `*out` gets it; the caller owns it and frees it
 * with `bsn_config_free`.
 */
bsn_result bsn_config_new(const char *network, bsn_config **out);

/**
 * Frees a configuration and sets `*config` to NULL. `config` NULL or `*config` NULL (freed
 * already): nothing is done (`BSN_ERR_NULL_ARGUMENT`).
 */
bsn_result bsn_config_free(bsn_config **config);

/**
 * Listen on `addr` ("127.0.0.1:8333", "[::1]:0"; port 0 picks a free one; a "host:port" is
 * looked up now); "" does not listen.
 * `addr` is the caller's.
 */
bsn_result bsn_config_set_listen(bsn_config *config, const char *addr);

/**
 * The source address of outbound connections: an IP of this host ("127.0.0.2", "::1"), no
 * port; "" leaves it to the system (the default). Engines sharing a host on addresses of their
 * own set it so that their peers see, score and ban each by its own address.
 * `ip` is the caller's.
 */
bsn_result bsn_config_set_outbound_bind(bsn_config *config, const char *ip);

/**
 * Adds a peer the engine dials at start and keeps connected (re-dialled with backoff).
 */
bsn_result bsn_config_add_connect(bsn_config *config, const char *addr);

/**
 * Keeps peers, bans, headers and blocks in LMDB in directory `path` (created if missing);
 * "" keeps everything in memory.
 */
bsn_result bsn_config_set_data_dir(bsn_config *config, const char *path);

/**
 * The number of event loops (shards), at least 1.
 */
bsn_result bsn_config_set_shards(bsn_config *config, uint32_t shards);

/**
 * Pins each shard's thread to a core (the default) or not (for shared machines and tests).
 */
bsn_result bsn_config_set_pin_threads(bsn_config *config, bool pin);

/**
 * Another network magic, 8 hex digits in wire order ("fabfb5da" talks to Bitcoin Core's and
 * bcoin's regtest).
 */
bsn_result bsn_config_set_magic(bsn_config *config, const char *hex);

/**
 * Header client mode: sync and serve headers, store no blocks.
 */
bsn_result bsn_config_set_headers_only(bsn_config *config, bool on);

/**
 * Adds a DNS seed ("seed.example.org") or an address to learn peers from.
 */
bsn_result bsn_config_add_seed(bsn_config *config, const char *seed);

/**
 * The most inbound connections accepted.
 */
bsn_result bsn_config_set_max_inbound(bsn_config *config, uint32_t n);

/**
 * The most outbound connections.
 */
bsn_result bsn_config_set_max_outbound(bsn_config *config, uint32_t n);

/**
 * How many outbound connections the engine keeps by dialling addresses it learned (0: only
 * those added with `bsn_config_add_connect` or `bsn_engine_connect`).
 */
bsn_result bsn_config_set_target_outbound(bsn_config *config, uint32_t n);

/**
 * Starts an engine with a copy of `config` (which stays the caller's). `*out` gets the engine,
 * which the caller frees with `bsn_engine_free`. Every configuration problem is reported here
 * (`BSN_ERR_CONFIG`, `BSN_ERR_IO` for a port in use or a data dir that cannot be used).
 */
bsn_result bsn_engine_start(const bsn_config *config, bsn_engine **out);

/**
 * Stops the engine: every connection closed, every thread joined, the store flushed. Calls
 * on it then return `BSN_ERR_STOPPED` (also a second stop). Not concurrently with other calls
 * on the same engine.
 */
bsn_result bsn_engine_stop(bsn_engine *engine);

/**
 * Stops the engine if it runs, frees it and sets `*engine` to NULL (a second free through the
 * same variable does nothing: `BSN_ERR_NULL_ARGUMENT`). Not concurrently with other calls on
 * the same engine.
 */
bsn_result bsn_engine_free(bsn_engine **engine);

/**
 * The address the engine listens on ("127.0.0.1:39211") with a NUL, into `buf`; `*out_len`
 * gets its length without the NUL. `BSN_ERR_NOT_FOUND` when it does not listen.
 */
bsn_result bsn_engine_local_addr(const bsn_engine *engine, char *buf, size_t len, size_t *out_len);

/**
 * Waits up to `timeout_ms` (0: does not wait) for the next event; `*out` gets it and the
 * caller frees it with `bsn_event_free`. `BSN_ERR_TIMEOUT` when none came;
 * `BSN_ERR_WRONG_STATE` while a callback takes the events. Events queue up (bounded) until
 * taken: an embedder that stops taking them slows the engine down, nothing is dropped.
 */
bsn_result bsn_engine_poll_event(const bsn_engine *engine, uint32_t timeout_ms, bsn_event **out);

/**
 * Delivers every event to `callback(userdata, event)` on a thread of the engine's, in order,
 * instead of `bsn_engine_poll_event`; NULL `callback` goes back to polling. `userdata` is the
 * caller's, passed as it is (it must be usable from that thread). The callback must not call
 * `bsn_engine_stop`, `bsn_engine_free` or `bsn_engine_set_event_callback`. Not concurrently
 * with other calls on the same engine.
 */
bsn_result bsn_engine_set_event_callback(bsn_engine *engine,
                                         bsn_event_callback callback,
                                         void *userdata);

/**
 * Dials `addr` ("1.2.3.4:8333", or "host:port", looked up now). The outcome comes as
 * `BSN_EVENT_PEER_CONNECTED`; as `BSN_EVENT_CONNECT_FAILED` when the dial is not even started
 * (a banned address, the outbound limit reached); or as `BSN_EVENT_PEER_DISCONNECTED`, for a
 * peer id no `BSN_EVENT_PEER_CONNECTED` named, when the connection fails before its handshake
 * (refused, timed out).
 */
bsn_result bsn_engine_connect(const bsn_engine *engine, const char *addr);

/**
 * Closes the connection to `peer` (`BSN_ERR_UNKNOWN_PEER` if there is none).
 */
bsn_result bsn_engine_disconnect(const bsn_engine *engine, uint64_t peer);

/**
 * Sends `peer` the message `command` ("ping", "getaddr"...) with `payload` (`len` bytes, the
 * caller's; NULL when `len` is 0), as it would go on the wire without its header. Returns once
 * the message is queued for the peer (`BSN_ERR_UNKNOWN_PEER`, `BSN_ERR_SEND` otherwise). An
 * answer comes as a `BSN_EVENT_MESSAGE`.
 */
bsn_result bsn_engine_send(const bsn_engine *engine,
                           uint64_t peer,
                           const char *command,
                           const uint8_t *payload,
                           size_t len);

/**
 * Sends the message to every connected peer (as `bsn_engine_send`).
 */
bsn_result bsn_engine_broadcast(const bsn_engine *engine,
                                const char *command,
                                const uint8_t *payload,
                                size_t len);

/**
 * The connections now: `*out` gets a list the caller frees with `bsn_peer_list_free`.
 */
bsn_result bsn_engine_peers(const bsn_engine *engine, bsn_peer_list **out);

/**
 * Bans an IP ("1.2.3.4") or subnet ("1.2.3.0/24", "fd00::/64") for `seconds`, with `reason`
 * (may be ""); its connections are dropped.
 */
bsn_result bsn_engine_ban(const bsn_engine *engine,
                          const char *subnet,
                          uint64_t seconds,
                          const char *reason);

/**
 * Lifts the ban of an IP or subnet (as given to `bsn_engine_ban`); `BSN_ERR_NOT_FOUND` if it
 * was not banned.
 */
bsn_result bsn_engine_unban(const bsn_engine *engine, const char *subnet);

/**
 * Whether `ip` ("1.2.3.4") is inside a ban (`*out`).
 */
bsn_result bsn_engine_is_banned(const bsn_engine *engine, const char *ip, bool *out);

/**
 * The bans as text with a NUL, into `buf`: one line per ban, "SUBNET UNTIL REASON\n", UNTIL
 * in Unix seconds; `*out_len` gets its length without the NUL.
 */
bsn_result bsn_engine_bans(const bsn_engine *engine, char *buf, size_t len, size_t *out_len);

/**
 * The best header's hash (32 bytes in wire order, into `hash`, the caller's) and height.
 */
bsn_result bsn_engine_best_header(const bsn_engine *engine, uint8_t *hash, uint32_t *height);

/**
 * The 80-byte header at `height` of the best chain, into `header` (80 bytes, the caller's);
 * `BSN_ERR_NOT_FOUND` above the tip.
 */
bsn_result bsn_engine_header_by_height(const bsn_engine *engine, uint32_t height, uint8_t *header);

/**
 * The stored block with `hash` (32 bytes, wire order) copied into `buf`; `*out_len` gets its
 * size, also when `buf` is too small (`BSN_ERR_BUFFER_TOO_SMALL`). `BSN_ERR_NOT_FOUND` when it
 * is not stored.
 */
bsn_result bsn_engine_block_by_hash(const bsn_engine *engine,
                                    const uint8_t *hash,
                                    uint8_t *buf,
                                    size_t len,
                                    size_t *out_len);

/**
 * Fills `*out` with where the sync stands.
 */
bsn_result bsn_engine_sync_progress(const bsn_engine *engine, bsn_sync_progress *out);

/**
 * Relays a serialized transaction (`len` bytes, the caller's) to every peer.
 */
bsn_result bsn_engine_submit_tx(const bsn_engine *engine, const uint8_t *tx, size_t len);

/**
 * Hands in a serialized block (`len` bytes, the caller's; mined or received elsewhere): its
 * header joins the chain before this returns (`*height` gets its height); the block is then
 * written, and announced once committed, which `BSN_EVENT_BLOCK_CONNECTED` tells (until then
 * `bsn_engine_block_by_hash` may not find it).
 */
bsn_result bsn_engine_submit_block(const bsn_engine *engine,
                                   const uint8_t *block,
                                   size_t len,
                                   uint32_t *height);

/**
 * Accepts a transaction handed over with `BSN_EVENT_TX_RECEIVED` (its 32-byte id in wire
 * order): it is relayed on. `BSN_ERR_NOT_FOUND` when no such transaction waits.
 */
bsn_result bsn_engine_accept_tx(const bsn_engine *engine, const uint8_t *txid);

/**
 * Refuses a transaction handed over with `BSN_EVENT_TX_RECEIVED`: it is not relayed, and its
 * sender's ban score goes up by `score` (0 for policy, as the SV node: 10 or 100 for
 * consensus), with `reason`. `BSN_ERR_NOT_FOUND` when no such transaction waits.
 */
bsn_result bsn_engine_reject_tx(const bsn_engine *engine,
                                const uint8_t *txid,
                                const char *reason,
                                uint32_t score);

/**
 * The event's kind (`*out`).
 */
bsn_result bsn_event_kind(const bsn_event *event, bsn_event_type *out);

/**
 * The peer the event is about (`*out`); `BSN_ERR_NOT_FOUND` for events about no peer.
 */
bsn_result bsn_event_peer(const bsn_event *event, uint64_t *out);

/**
 * The event's data (see each kind) copied into `buf` (`len` bytes); `*out_len` gets its
 * length, also when `buf` is too small (`BSN_ERR_BUFFER_TOO_SMALL`: call again with room for
 * `*out_len` bytes). Texts come without a NUL. `buf` is the caller's.
 */
bsn_result bsn_event_data(const bsn_event *event, uint8_t *buf, size_t len, size_t *out_len);

/**
 * A `BSN_EVENT_MESSAGE`'s command ("pong", "addr"...) with a NUL, into `buf`; `*out_len` gets
 * its length without the NUL. `BSN_ERR_NOT_FOUND` for other kinds.
 */
bsn_result bsn_event_command(const bsn_event *event, char *buf, size_t len, size_t *out_len);

/**
 * The height of a `BSN_EVENT_HEADERS_SYNCED`, `BSN_EVENT_BLOCK_CONNECTED` or `BSN_EVENT_REORG`
 * (its fork point); `BSN_ERR_NOT_FOUND` for other kinds.
 */
bsn_result bsn_event_height(const bsn_event *event, uint32_t *out);

/**
 * The 32-byte hash of a `BSN_EVENT_BLOCK_CONNECTED` or `BSN_EVENT_BLOCK_FILE` (the block's),
 * or `BSN_EVENT_TX_RECEIVED` (the transaction id), in wire byte order (reversed from the usual
 * hex), into `out` (32 bytes, the caller's). `BSN_ERR_NOT_FOUND` for other kinds.
 */
bsn_result bsn_event_hash(const bsn_event *event, uint8_t *out);

/**
 * The address of a `BSN_EVENT_PEER_CONNECTED`, `BSN_EVENT_PEER_DISCONNECTED` or
 * `BSN_EVENT_CONNECT_FAILED` ("1.2.3.4:8333"),
 * the subnet of a `BSN_EVENT_BANNED` or `BSN_EVENT_UNBANNED`, the IP of a `BSN_EVENT_BAN_SCORE`,
 * with a NUL, into `buf`; `*out_len` gets its length without the NUL. `BSN_ERR_NOT_FOUND` for
 * other kinds.
 */
bsn_result bsn_event_address(const bsn_event *event, char *buf, size_t len, size_t *out_len);

/**
 * Frees an event from `bsn_engine_poll_event` and sets `*event` to NULL: freeing it twice
 * through the same variable does nothing (`BSN_ERR_NULL_ARGUMENT`). Never free an event lent
 * to the callback.
 */
bsn_result bsn_event_free(bsn_event **event);

/**
 * How many connections the list holds (`*out`).
 */
bsn_result bsn_peer_list_len(const bsn_peer_list *list, size_t *out);

/**
 * Entry `index`'s peer id (`*out`), as events and `bsn_engine_send` name it.
 */
bsn_result bsn_peer_list_id(const bsn_peer_list *list, size_t index, uint64_t *out);

/**
 * Entry `index`'s address ("1.2.3.4:8333") with a NUL, into `buf`; `*out_len` gets its length
 * without the NUL.
 */
bsn_result bsn_peer_list_address(const bsn_peer_list *list,
                                 size_t index,
                                 char *buf,
                                 size_t len,
                                 size_t *out_len);

/**
 * Entry `index`'s user agent with a NUL, into `buf` (empty before its handshake); `*out_len`
 * gets its length without the NUL.
 */
bsn_result bsn_peer_list_user_agent(const bsn_peer_list *list,
                                    size_t index,
                                    char *buf,
                                    size_t len,
                                    size_t *out_len);

/**
 * Whether entry `index` finished its handshake (`*out`).
 */
bsn_result bsn_peer_list_ready(const bsn_peer_list *list, size_t index, bool *out);

/**
 * Whether entry `index` dialled us (`*out` true) or we dialled it.
 */
bsn_result bsn_peer_list_inbound(const bsn_peer_list *list, size_t index, bool *out);

/**
 * Entry `index`'s protocol version and start height from its `version` (`*version`,
 * `*start_height`; 0 before its handshake).
 */
bsn_result bsn_peer_list_version(const bsn_peer_list *list,
                                 size_t index,
                                 int32_t *version,
                                 int32_t *start_height);

/**
 * Frees a list and sets `*list` to NULL (a second free does nothing: `BSN_ERR_NULL_ARGUMENT`).
 */
bsn_result bsn_peer_list_free(bsn_peer_list **list);

#ifdef __cplusplus
}  // extern "C"
#endif  // __cplusplus

#endif  /* BSN_H */
