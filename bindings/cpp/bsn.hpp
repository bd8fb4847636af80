// bsn.hpp: a header-only C++17 wrapper over the C interface of bsn (include/bsn.h, libbsn).
//
// Build: c++ -std=c++17 -I include -I bindings/cpp app.cpp -L target/debug -lbsn
//
// What it gives over bsn.h:
//   - Ownership. Each bsn object is held by one move-only C++ object whose destructor frees it
//     with its documented *_free(&p):
//       bsn::Config    owns a bsn_config     (bsn_config_free)
//       bsn::Engine    owns a bsn_engine     (bsn_engine_free: stops it if it runs)
//                      and the event callback, if one is set
//       bsn::Event     owns a bsn_event      (bsn_event_free); from Engine::poll
//       bsn::PeerList  owns a bsn_peer_list  (bsn_peer_list_free); from Engine::peers
//     Copies are deleted. A moved-from object holds no handle: destroying it or assigning to it
//     is safe; any other call on it reaches bsn with NULL and throws bsn::Error with
//     BSN_ERR_NULL_ARGUMENT.
//   - Errors as exceptions. A call that does not return BSN_OK throws bsn::Error, which carries
//     the bsn_result code (code()) and the calling thread's bsn_last_error text (message()),
//     read right after the failing call on the thread that made it. The exceptions to this are
//     spelled out where they apply: Engine::poll turns BSN_ERR_TIMEOUT into std::nullopt, and
//     EventView::peer turns BSN_ERR_NOT_FOUND into std::nullopt.
//   - Buffers. Calls that fill caller buffers return std::string, std::vector<uint8_t> or
//     std::array; the wrapper calls once, and on BSN_ERR_BUFFER_TOO_SMALL resizes to the size
//     bsn reported and calls again.
//
// Threads (as include/bsn.h and bsn's sources say):
//   - bsn::version, bsn::result_text: any thread.
//   - bsn::Config: one thread at a time.
//   - bsn::Engine: every const member may be called from any thread, also concurrently with
//     each other. stop(), set_event_callback(), clear_event_callback(), the destructor and the
//     move operations must not run while another call on the same engine does: make them from
//     the thread that owns the engine. Never call them from the event callback.
//   - bsn::Event, bsn::PeerList: read from one thread at a time (they may be handed to another
//     thread; they do not depend on the engine and may outlive it).
//   - The event callback runs on a thread of the engine's, one event at a time, in order.
//   - bsn::Error reads the last error of the thread that made the failing call, so an error is
//     always described by its own call, whatever other threads do meanwhile.

#ifndef BSN_HPP
#define BSN_HPP

#include <bsn.h>

#include <array>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace bsn {

/// A 32-byte hash in wire order (the reverse of the usual hex; see bsn::hex).
using Hash = std::array<std::uint8_t, 32>;
/// An 80-byte block header as it goes on the wire.
using Header = std::array<std::uint8_t, 80>;
/// The kinds of event (bsn_event_type: BSN_EVENT_PEER_CONNECTED ...).
using EventKind = bsn_event_type;
/// Where the sync stands (bsn_sync_progress).
using SyncProgress = bsn_sync_progress;

/// bsn's version ("0.1.0"). Any thread.
inline std::string_view version() { return bsn_version(); }

/// The name and meaning of a result code ("BSN_ERR_TIMEOUT: no event came within the
/// timeout"). Any thread.
inline std::string_view result_text(bsn_result code) {
    return bsn_result_text(static_cast<std::uint32_t>(code));
}

/// A hash in the usual hex (byte order reversed from the wire order bsn uses).
inline std::string hex(const Hash& h) {
    static const char digits[] = "0123456789abcdef";
    std::string s;
    s.reserve(64);
    for (std::size_t i = h.size(); i-- > 0;) {
        s.push_back(digits[h[i] >> 4]);
        s.push_back(digits[h[i] & 15]);
    }
    return s;
}

namespace detail {

/// The calling thread's last error message (bsn_last_error), "" if it cannot be read.
inline std::string last_error() {
    std::string buf(256, '\0');
    for (int tries = 0; tries < 4; ++tries) {
        std::size_t need = 0;
        bsn_result r = bsn_last_error(buf.data(), buf.size(), &need);
        if (r == BSN_OK) {
            buf.resize(need);
            return buf;
        }
        if (r != BSN_ERR_BUFFER_TOO_SMALL) break;
        buf.assign(need + 1, '\0');
    }
    return {};
}

}  // namespace detail

/// A bsn call that did not return BSN_OK: code() is its bsn_result, message() the calling
/// thread's bsn_last_error text at the time, what() "CALL: MESSAGE (RESULT TEXT)".
class Error : public std::runtime_error {
public:
    /// Reads bsn_last_error now: construct it on the thread of the failing call, right after it.
    Error(bsn_result code, const char* call) : Error(code, call, detail::last_error()) {}

    Error(bsn_result code, const char* call, std::string message)
        : std::runtime_error(std::string(call) + ": " +
                             (message.empty() ? std::string("failed") : message) + " (" +
                             std::string(result_text(code)) + ")"),
          code_(code),
          message_(std::move(message)) {}

    /// The bsn_result the call returned (never BSN_OK).
    bsn_result code() const noexcept { return code_; }
    /// bsn_last_error's text for the call (may be empty).
    const std::string& message() const noexcept { return message_; }

private:
    bsn_result code_;
    std::string message_;
};

namespace detail {

/// Throws bsn::Error unless `r` is BSN_OK.
inline void check(bsn_result r, const char* call) {
    if (r != BSN_OK) throw Error(r, call);
}

/// A text from a call of the form f(buf, len, &out_len) (NUL-terminated, out_len without it).
template <class F>
std::string text(const char* call, F&& f) {
    std::string buf(128, '\0');
    // Twice is enough unless the text grows between the calls (the bans list may): retry a few.
    for (int tries = 0; tries < 8; ++tries) {
        std::size_t need = 0;
        bsn_result r = f(buf.data(), buf.size(), &need);
        if (r == BSN_OK) {
            buf.resize(need);
            return buf;
        }
        if (r != BSN_ERR_BUFFER_TOO_SMALL) throw Error(r, call);
        buf.assign(need + 1, '\0');
    }
    throw Error(BSN_ERR_BUFFER_TOO_SMALL, call, "the text kept growing");
}

/// Bytes from a call of the form f(buf, len, &out_len) (no NUL); `first` is the first try's
/// buffer size (0: the first call only asks the size).
template <class F>
std::vector<std::uint8_t> bytes(const char* call, std::size_t first, F&& f) {
    std::vector<std::uint8_t> buf(first);
    for (int tries = 0; tries < 8; ++tries) {
        std::size_t need = 0;
        bsn_result r = f(buf.empty() ? nullptr : buf.data(), buf.size(), &need);
        if (r == BSN_OK) {
            buf.resize(need);
            return buf;
        }
        if (r != BSN_ERR_BUFFER_TOO_SMALL) throw Error(r, call);
        buf.assign(need, 0);
    }
    throw Error(BSN_ERR_BUFFER_TOO_SMALL, call, "the data kept growing");
}

}  // namespace detail

// ------------------------------------------------------------------------------------------
// Config
// ------------------------------------------------------------------------------------------

/// What an engine starts with. Owns a bsn_config (freed by the destructor); Engine copies it at
/// start, so a Config may be changed or destroyed once its engines run. One thread at a time.
/// Setters return *this for chaining.
class Config {
public:
    /// A configuration for `network` ("mainnet", "testnet", "regtest" or "stn") with the SV
    /// node's defaults (listening on 127.0.0.1 at the network's port, everything in memory, a
    /// shard per core, threads pinned). Throws BSN_ERR_INVALID_ARGUMENT for another name.
    explicit Config(const std::string& network) {
        detail::check(bsn_config_new(network.c_str(), &p_), "bsn_config_new");
    }
    ~Config() {
        if (p_) bsn_config_free(&p_);
    }
    Config(const Config&) = delete;
    Config& operator=(const Config&) = delete;
    Config(Config&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
    Config& operator=(Config&& o) noexcept {
        if (this != &o) {
            if (p_) bsn_config_free(&p_);
            p_ = std::exchange(o.p_, nullptr);
        }
        return *this;
    }

    /// Listen on `addr` ("127.0.0.1:0": port 0 picks a free one); "" does not listen.
    Config& set_listen(const std::string& addr) {
        detail::check(bsn_config_set_listen(p_, addr.c_str()), "bsn_config_set_listen");
        return *this;
    }
    /// A peer dialled at start and kept connected.
    Config& add_connect(const std::string& addr) {
        detail::check(bsn_config_add_connect(p_, addr.c_str()), "bsn_config_add_connect");
        return *this;
    }
    /// Keep peers, bans, headers and blocks in LMDB in `path`; "" keeps everything in memory.
    Config& set_data_dir(const std::string& path) {
        detail::check(bsn_config_set_data_dir(p_, path.c_str()), "bsn_config_set_data_dir");
        return *this;
    }
    /// The number of event loops, at least 1.
    Config& set_shards(std::uint32_t shards) {
        detail::check(bsn_config_set_shards(p_, shards), "bsn_config_set_shards");
        return *this;
    }
    /// Pin each shard's thread to a core (the default) or not (shared machines, tests).
    Config& set_pin_threads(bool pin) {
        detail::check(bsn_config_set_pin_threads(p_, pin), "bsn_config_set_pin_threads");
        return *this;
    }
    /// The source address of outbound connections, an IP of this host with no port ("" leaves
    /// it to the system).
    Config& set_outbound_bind(const std::string& ip) {
        detail::check(bsn_config_set_outbound_bind(p_, ip.c_str()), "bsn_config_set_outbound_bind");
        return *this;
    }
    /// Another network magic, 8 hex digits in wire order.
    Config& set_magic(const std::string& hex) {
        detail::check(bsn_config_set_magic(p_, hex.c_str()), "bsn_config_set_magic");
        return *this;
    }
    /// Header client mode: sync and serve headers, store no blocks.
    Config& set_headers_only(bool on) {
        detail::check(bsn_config_set_headers_only(p_, on), "bsn_config_set_headers_only");
        return *this;
    }
    /// A DNS seed or an address to learn peers from.
    Config& add_seed(const std::string& seed) {
        detail::check(bsn_config_add_seed(p_, seed.c_str()), "bsn_config_add_seed");
        return *this;
    }
    Config& set_max_inbound(std::uint32_t n) {
        detail::check(bsn_config_set_max_inbound(p_, n), "bsn_config_set_max_inbound");
        return *this;
    }
    Config& set_max_outbound(std::uint32_t n) {
        detail::check(bsn_config_set_max_outbound(p_, n), "bsn_config_set_max_outbound");
        return *this;
    }
    /// Outbound connections kept by dialling learned addresses (0: only those asked for).
    Config& set_target_outbound(std::uint32_t n) {
        detail::check(bsn_config_set_target_outbound(p_, n), "bsn_config_set_target_outbound");
        return *this;
    }

    /// The handle (still owned by this object); NULL once moved from.
    const bsn_config* get() const noexcept { return p_; }
    bsn_config* get() noexcept { return p_; }

private:
    bsn_config* p_ = nullptr;
};

// ------------------------------------------------------------------------------------------
// Events
// ------------------------------------------------------------------------------------------

/// A look at an event owned elsewhere: by a bsn::Event, or lent by bsn to the event callback
/// for the length of the call. Owns nothing; it must not outlive what it looks at (do not keep
/// one past the callback's return: take what you need into your own values). Every accessor
/// throws bsn::Error with BSN_ERR_NOT_FOUND when the event's kind has no such field, except
/// peer(), which gives std::nullopt. One thread at a time.
class EventView {
public:
    explicit EventView(const bsn_event* e) noexcept : e_(e) {}

    /// The event's kind (BSN_EVENT_OTHER for a kind this header does not know).
    EventKind kind() const {
        EventKind k{};
        detail::check(bsn_event_kind(e_, &k), "bsn_event_kind");
        return k;
    }
    /// The peer the event is about; std::nullopt for events about no peer.
    std::optional<std::uint64_t> peer() const {
        std::uint64_t id = 0;
        bsn_result r = bsn_event_peer(e_, &id);
        if (r == BSN_ERR_NOT_FOUND) return std::nullopt;
        detail::check(r, "bsn_event_peer");
        return id;
    }
    /// The event's data (see each kind in bsn.h: a payload, a header, a user agent, a reason).
    std::vector<std::uint8_t> data() const {
        return detail::bytes("bsn_event_data", 256, [&](std::uint8_t* b, std::size_t n,
                                                         std::size_t* out) {
            return bsn_event_data(e_, b, n, out);
        });
    }
    /// data() as text (for the kinds whose data is text: reasons, user agents, paths).
    std::string text() const {
        std::vector<std::uint8_t> d = data();
        return std::string(d.begin(), d.end());
    }
    /// A BSN_EVENT_MESSAGE's command ("pong", "notfound"...).
    std::string command() const {
        return detail::text("bsn_event_command", [&](char* b, std::size_t n, std::size_t* out) {
            return bsn_event_command(e_, b, n, out);
        });
    }
    /// The height of a HEADERS_SYNCED or BLOCK_CONNECTED, a REORG's fork point.
    std::uint32_t height() const {
        std::uint32_t h = 0;
        detail::check(bsn_event_height(e_, &h), "bsn_event_height");
        return h;
    }
    /// The block hash of a BLOCK_CONNECTED or BLOCK_FILE, the txid of a TX_RECEIVED (wire order).
    Hash hash() const {
        Hash h{};
        detail::check(bsn_event_hash(e_, h.data()), "bsn_event_hash");
        return h;
    }
    /// The address of a PEER_CONNECTED, PEER_DISCONNECTED or CONNECT_FAILED, the subnet of a
    /// BANNED or UNBANNED, the IP of a BAN_SCORE.
    std::string address() const {
        return detail::text("bsn_event_address", [&](char* b, std::size_t n, std::size_t* out) {
            return bsn_event_address(e_, b, n, out);
        });
    }

    /// The handle looked at (not owned).
    const bsn_event* get() const noexcept { return e_; }

protected:
    const bsn_event* e_;
};

/// An event taken with Engine::poll. Owns its bsn_event (freed by the destructor); independent
/// of the engine, it may outlive it. The accessors are EventView's. Move-only; a moved-from
/// Event holds nothing (its accessors throw BSN_ERR_NULL_ARGUMENT). Do not keep an EventView
/// of it (or a copy of its EventView base) past its destruction.
class Event : public EventView {
public:
    /// Takes ownership of `e` (from bsn_engine_poll_event).
    explicit Event(bsn_event* e) noexcept : EventView(e), owned_(e) {}
    ~Event() {
        if (owned_) bsn_event_free(&owned_);
    }
    Event(const Event&) = delete;
    Event& operator=(const Event&) = delete;
    Event(Event&& o) noexcept : EventView(o.owned_), owned_(std::exchange(o.owned_, nullptr)) {
        o.e_ = nullptr;
    }
    Event& operator=(Event&& o) noexcept {
        if (this != &o) {
            if (owned_) bsn_event_free(&owned_);
            owned_ = std::exchange(o.owned_, nullptr);
            e_ = owned_;
            o.e_ = nullptr;
        }
        return *this;
    }

private:
    bsn_event* owned_;
};

// ------------------------------------------------------------------------------------------
// Peers
// ------------------------------------------------------------------------------------------

/// One connection, as plain values.
struct PeerInfo {
    std::uint64_t id = 0;        ///< as events and Engine::send name it
    std::string address;         ///< "1.2.3.4:8333"
    std::string user_agent;      ///< empty before its handshake
    bool ready = false;          ///< finished its handshake
    bool inbound = false;        ///< it dialled us
    std::int32_t version = 0;    ///< protocol version from its `version` (0 before)
    std::int32_t start_height = 0;  ///< start height from its `version` (0 before)
};

/// The engine's connections at one moment, from Engine::peers. Owns its bsn_peer_list (freed by
/// the destructor); independent of the engine. Entries are numbered 0 to size() - 1; another
/// index throws BSN_ERR_INVALID_ARGUMENT. One thread at a time. Move-only.
class PeerList {
public:
    /// Takes ownership of `l` (from bsn_engine_peers).
    explicit PeerList(bsn_peer_list* l) noexcept : p_(l) {}
    ~PeerList() {
        if (p_) bsn_peer_list_free(&p_);
    }
    PeerList(const PeerList&) = delete;
    PeerList& operator=(const PeerList&) = delete;
    PeerList(PeerList&& o) noexcept : p_(std::exchange(o.p_, nullptr)) {}
    PeerList& operator=(PeerList&& o) noexcept {
        if (this != &o) {
            if (p_) bsn_peer_list_free(&p_);
            p_ = std::exchange(o.p_, nullptr);
        }
        return *this;
    }

    std::size_t size() const {
        std::size_t n = 0;
        detail::check(bsn_peer_list_len(p_, &n), "bsn_peer_list_len");
        return n;
    }
    bool empty() const { return size() == 0; }

    std::uint64_t id(std::size_t i) const {
        std::uint64_t v = 0;
        detail::check(bsn_peer_list_id(p_, i, &v), "bsn_peer_list_id");
        return v;
    }
    std::string address(std::size_t i) const {
        return detail::text("bsn_peer_list_address", [&](char* b, std::size_t n,
                                                         std::size_t* out) {
            return bsn_peer_list_address(p_, i, b, n, out);
        });
    }
    std::string user_agent(std::size_t i) const {
        return detail::text("bsn_peer_list_user_agent", [&](char* b, std::size_t n,
                                                            std::size_t* out) {
            return bsn_peer_list_user_agent(p_, i, b, n, out);
        });
    }
    bool ready(std::size_t i) const {
        bool v = false;
        detail::check(bsn_peer_list_ready(p_, i, &v), "bsn_peer_list_ready");
        return v;
    }
    bool inbound(std::size_t i) const {
        bool v = false;
        detail::check(bsn_peer_list_inbound(p_, i, &v), "bsn_peer_list_inbound");
        return v;
    }
    /// Entry i's protocol version and start height.
    std::pair<std::int32_t, std::int32_t> version(std::size_t i) const {
        std::int32_t v = 0, h = 0;
        detail::check(bsn_peer_list_version(p_, i, &v, &h), "bsn_peer_list_version");
        return {v, h};
    }

    /// Entry i as plain values.
    PeerInfo at(std::size_t i) const {
        PeerInfo p;
        p.id = id(i);
        p.address = address(i);
        p.user_agent = user_agent(i);
        p.ready = ready(i);
        p.inbound = inbound(i);
        std::tie(p.version, p.start_height) = version(i);
        return p;
    }
    /// Every entry as plain values.
    std::vector<PeerInfo> all() const {
        std::vector<PeerInfo> v;
        std::size_t n = size();
        v.reserve(n);
        for (std::size_t i = 0; i < n; ++i) v.push_back(at(i));
        return v;
    }

    /// The handle (still owned by this object); NULL once moved from.
    const bsn_peer_list* get() const noexcept { return p_; }

private:
    bsn_peer_list* p_;
};

// ------------------------------------------------------------------------------------------
// Engine
// ------------------------------------------------------------------------------------------

/// The best header: its hash (wire order) and height.
struct BestHeader {
    Hash hash{};
    std::uint32_t height = 0;
};

/// A running engine. Owns its bsn_engine (the destructor clears the event callback, then frees
/// it with bsn_engine_free, which stops it if it still runs: connections closed, threads
/// joined, the store flushed) and the event callback, if one is set.
///
/// Threads: every const member may be called from any thread, concurrently. stop(),
/// set_event_callback(), clear_event_callback(), the destructor and the moves must not run
/// while another call on the same engine does, and never from the callback.
///
/// After stop(), every call throws bsn::Error with BSN_ERR_STOPPED (a second stop() too).
/// Move-only; a moved-from Engine holds nothing (its calls throw BSN_ERR_NULL_ARGUMENT).
class Engine {
public:
    /// The event callback: called on a thread of the engine's with each event, in order. The
    /// event is lent for the call (see EventView). An exception it throws cannot cross into
    /// bsn: it is caught and dropped.
    using Callback = std::function<void(const EventView&)>;

    /// Starts an engine with a copy of `config`. Throws BSN_ERR_CONFIG for a configuration
    /// refused, BSN_ERR_IO for a port in use or a data dir that cannot be used.
    explicit Engine(const Config& config) {
        detail::check(bsn_engine_start(config.get(), &p_), "bsn_engine_start");
    }
    ~Engine() { release(); }
    Engine(const Engine&) = delete;
    Engine& operator=(const Engine&) = delete;
    // The callback lives on the heap: bsn holds its address, which a move does not change.
    Engine(Engine&& o) noexcept
        : p_(std::exchange(o.p_, nullptr)), callback_(std::move(o.callback_)) {}
    Engine& operator=(Engine&& o) noexcept {
        if (this != &o) {
            release();
            p_ = std::exchange(o.p_, nullptr);
            callback_ = std::move(o.callback_);
        }
        return *this;
    }

    /// Stops the engine (connections closed, threads joined, the store flushed); the callback
    /// gets no more events. The handle stays until destruction. Not concurrently with other
    /// calls on the engine.
    void stop() { detail::check(bsn_engine_stop(p_), "bsn_engine_stop"); }

    /// The address the engine listens on ("127.0.0.1:39211"); BSN_ERR_NOT_FOUND if it does
    /// not listen.
    std::string local_addr() const {
        return detail::text("bsn_engine_local_addr", [&](char* b, std::size_t n,
                                                         std::size_t* out) {
            return bsn_engine_local_addr(p_, b, n, out);
        });
    }

    /// Waits up to `timeout` (0: does not wait; clamped to 2^32 - 1 ms) for the next event:
    /// std::nullopt if none came. BSN_ERR_WRONG_STATE while a callback takes the events.
    std::optional<Event> poll(std::chrono::milliseconds timeout) const {
        auto ms = timeout.count();
        std::uint32_t t = ms <= 0 ? 0u
                          : static_cast<unsigned long long>(ms) > 0xffffffffull
                              ? 0xffffffffu
                              : static_cast<std::uint32_t>(ms);
        bsn_event* e = nullptr;
        bsn_result r = bsn_engine_poll_event(p_, t, &e);
        if (r == BSN_ERR_TIMEOUT) return std::nullopt;
        detail::check(r, "bsn_engine_poll_event");
        return Event(e);
    }

    /// Delivers every event to `f` on a thread of the engine's instead of poll() (an empty `f`
    /// goes back to polling). The Engine keeps `f` alive until it is replaced, cleared or the
    /// engine destroyed. Not concurrently with other calls on the engine; not from a callback.
    void set_event_callback(Callback f) {
        if (!f) {
            clear_event_callback();
            return;
        }
        auto next = std::make_unique<Callback>(std::move(f));
        // bsn stops (joins) the delivery of the old callback before it starts the new one, and
        // does not start it when the call fails: after the call the old one is unused.
        bsn_result r = bsn_engine_set_event_callback(p_, &Engine::trampoline, next.get());
        if (r != BSN_OK) {
            Error e(r, "bsn_engine_set_event_callback");
            callback_.reset();
            throw e;
        }
        callback_ = std::move(next);
    }

    /// Goes back to polling (the callback's thread joined, then the callback destroyed). On a
    /// stopped engine (whose delivery is over) it only destroys the callback. Not concurrently
    /// with other calls on the engine; not from a callback.
    void clear_event_callback() {
        if (p_) {
            bsn_result r = bsn_engine_set_event_callback(p_, nullptr, nullptr);
            if (r != BSN_OK && r != BSN_ERR_STOPPED) {
                Error e(r, "bsn_engine_set_event_callback");
                throw e;
            }
        }
        callback_.reset();
    }

    /// Dials `addr` ("1.2.3.4:8333"): the outcome comes as PEER_CONNECTED or CONNECT_FAILED.
    /// BSN_ERR_INVALID_ADDRESS if it does not parse.
    void connect(const std::string& addr) const {
        detail::check(bsn_engine_connect(p_, addr.c_str()), "bsn_engine_connect");
    }
    /// Closes the connection to `peer` (BSN_ERR_UNKNOWN_PEER if there is none).
    void disconnect(std::uint64_t peer) const {
        detail::check(bsn_engine_disconnect(p_, peer), "bsn_engine_disconnect");
    }

    /// Sends `peer` the message `command` with `payload` (as on the wire, without its header);
    /// returns once queued. BSN_ERR_UNKNOWN_PEER, BSN_ERR_SEND, BSN_ERR_INVALID_DATA for a
    /// payload that does not decode as `command`. An answer comes as a BSN_EVENT_MESSAGE.
    void send(std::uint64_t peer, const std::string& command, const std::uint8_t* payload,
              std::size_t len) const {
        detail::check(bsn_engine_send(p_, peer, command.c_str(), len ? payload : nullptr, len),
                      "bsn_engine_send");
    }
    void send(std::uint64_t peer, const std::string& command,
              const std::vector<std::uint8_t>& payload = {}) const {
        send(peer, command, payload.data(), payload.size());
    }
    /// Sends the message to every connected peer.
    void broadcast(const std::string& command,
                   const std::vector<std::uint8_t>& payload = {}) const {
        detail::check(bsn_engine_broadcast(p_, command.c_str(),
                                           payload.empty() ? nullptr : payload.data(),
                                           payload.size()),
                      "bsn_engine_broadcast");
    }

    /// The connections now.
    PeerList peers() const {
        bsn_peer_list* l = nullptr;
        detail::check(bsn_engine_peers(p_, &l), "bsn_engine_peers");
        return PeerList(l);
    }

    /// Bans an IP ("1.2.3.4") or subnet ("1.2.3.0/24") for `duration`; its connections drop.
    /// BSN_ERR_INVALID_ADDRESS if it does not parse.
    void ban(const std::string& subnet, std::chrono::seconds duration,
             const std::string& reason = "") const {
        auto s = duration.count() < 0 ? 0 : static_cast<std::uint64_t>(duration.count());
        detail::check(bsn_engine_ban(p_, subnet.c_str(), s, reason.c_str()), "bsn_engine_ban");
    }
    /// Lifts a ban (as given to ban()); BSN_ERR_NOT_FOUND if it was not banned.
    void unban(const std::string& subnet) const {
        detail::check(bsn_engine_unban(p_, subnet.c_str()), "bsn_engine_unban");
    }
    /// Whether `ip` ("1.2.3.4") is inside a ban.
    bool is_banned(const std::string& ip) const {
        bool b = false;
        detail::check(bsn_engine_is_banned(p_, ip.c_str(), &b), "bsn_engine_is_banned");
        return b;
    }
    /// The bans, one line each: "SUBNET UNTIL REASON\n" (UNTIL in Unix seconds).
    std::string bans() const {
        return detail::text("bsn_engine_bans", [&](char* b, std::size_t n, std::size_t* out) {
            return bsn_engine_bans(p_, b, n, out);
        });
    }

    /// The best header's hash and height.
    BestHeader best_header() const {
        BestHeader b;
        detail::check(bsn_engine_best_header(p_, b.hash.data(), &b.height),
                      "bsn_engine_best_header");
        return b;
    }
    /// The header at `height` of the best chain; BSN_ERR_NOT_FOUND above the tip.
    Header header_by_height(std::uint32_t height) const {
        Header h{};
        detail::check(bsn_engine_header_by_height(p_, height, h.data()),
                      "bsn_engine_header_by_height");
        return h;
    }
    /// The stored block with `hash`; BSN_ERR_NOT_FOUND when it is not stored.
    std::vector<std::uint8_t> block_by_hash(const Hash& hash) const {
        return detail::bytes("bsn_engine_block_by_hash", 0, [&](std::uint8_t* b, std::size_t n,
                                                                 std::size_t* out) {
            return bsn_engine_block_by_hash(p_, hash.data(), b, n, out);
        });
    }
    /// Where the sync stands.
    SyncProgress sync_progress() const {
        SyncProgress s{};
        detail::check(bsn_engine_sync_progress(p_, &s), "bsn_engine_sync_progress");
        return s;
    }

    /// Relays a serialized transaction to every peer (BSN_ERR_INVALID_DATA if it does not
    /// decode).
    void submit_tx(const std::vector<std::uint8_t>& tx) const {
        detail::check(bsn_engine_submit_tx(p_, tx.empty() ? nullptr : tx.data(), tx.size()),
                      "bsn_engine_submit_tx");
    }
    /// Hands in a serialized block (stored and announced); its height.
    std::uint32_t submit_block(const std::uint8_t* block, std::size_t len) const {
        std::uint32_t h = 0;
        detail::check(bsn_engine_submit_block(p_, len ? block : nullptr, len, &h),
                      "bsn_engine_submit_block");
        return h;
    }
    std::uint32_t submit_block(const std::vector<std::uint8_t>& block) const {
        return submit_block(block.data(), block.size());
    }
    /// Accepts a transaction handed over with TX_RECEIVED; BSN_ERR_NOT_FOUND if none waits.
    void accept_tx(const Hash& txid) const {
        detail::check(bsn_engine_accept_tx(p_, txid.data()), "bsn_engine_accept_tx");
    }
    /// Refuses it, scoring its sender `score` points; BSN_ERR_NOT_FOUND if none waits.
    void reject_tx(const Hash& txid, const std::string& reason, std::uint32_t score) const {
        detail::check(bsn_engine_reject_tx(p_, txid.data(), reason.c_str(), score),
                      "bsn_engine_reject_tx");
    }

    /// The handle (still owned by this object); NULL once moved from.
    const bsn_engine* get() const noexcept { return p_; }

private:
    static void trampoline(void* userdata, const bsn_event* event) noexcept {
        try {
            (*static_cast<Callback*>(userdata))(EventView(event));
        } catch (...) {
            // nothing may unwind into bsn's thread
        }
    }

    void release() noexcept {
        if (!p_) {
            callback_.reset();
            return;
        }
        // The delivery thread joined before the callback goes (a stopped engine has none).
        if (callback_) bsn_engine_set_event_callback(p_, nullptr, nullptr);
        bsn_engine_free(&p_);
        callback_.reset();
    }

    bsn_engine* p_ = nullptr;
    std::unique_ptr<Callback> callback_;
};

}  // namespace bsn

#endif  // BSN_HPP
