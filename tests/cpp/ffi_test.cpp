// The C++ test of bsn's C ABI through bindings/cpp/bsn.hpp (run by tests/ffi_cpp.rs).
//
//   c++ -std=c++17 -Wall -Wextra -Werror -I include -I bindings/cpp tests/cpp/ffi_test.cpp
//       -L target/debug -lbsn -Wl,-rpath,target/debug -o ffi_test
//   ./ffi_test CHAIN_FILE BLOCK_COUNT
//
// CHAIN_FILE holds BLOCK_COUNT regtest blocks on genesis as records of a 4-byte little-endian
// length and the block. Two engines on 127.0.0.1 (ports picked by the system): A takes the
// blocks, B dials A, they exchange a message and its answer, B syncs A's chain; then peers,
// bans, the event callback, errors as exceptions, moves and stops. Every wait is a loop on
// poll with a deadline. Exit 0 only if every check passed; each failure is printed with its
// line.

#include <bsn.hpp>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iterator>
#include <map>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

using namespace std::chrono_literals;
using Bytes = std::vector<std::uint8_t>;

namespace {

const auto kDeadline = 60s;

int g_checks = 0;
int g_failures = 0;

void check_at(int line, bool ok, const char* expr, const std::string& msg) {
    ++g_checks;
    if (!ok) {
        ++g_failures;
        std::fprintf(stderr, "FAIL line %d: %s: %s\n", line, expr, msg.c_str());
    }
}

#define CHECK(cond, msg) check_at(__LINE__, static_cast<bool>(cond), #cond, (msg))

/// Runs `f`, which must throw bsn::Error with `code` (and a message).
template <class F>
void expect_error_at(int line, const char* what, bsn_result code, F&& f) {
    ++g_checks;
    try {
        f();
        ++g_failures;
        std::fprintf(stderr, "FAIL line %d: %s: no error, expected %s\n", line, what,
                     std::string(bsn::result_text(code)).c_str());
    } catch (const bsn::Error& e) {
        if (e.code() != code || e.message().empty()) {
            ++g_failures;
            std::fprintf(stderr, "FAIL line %d: %s: got %s (code %u), expected %s\n", line, what,
                         e.what(), static_cast<unsigned>(e.code()),
                         std::string(bsn::result_text(code)).c_str());
        }
    } catch (const std::exception& e) {
        ++g_failures;
        std::fprintf(stderr, "FAIL line %d: %s: not a bsn::Error: %s\n", line, what, e.what());
    }
}

#define EXPECT_ERROR(code, stmt) expect_error_at(__LINE__, #stmt, (code), [&]() { stmt; })

std::string hex_bytes(const Bytes& b, std::size_t max = 48) {
    static const char d[] = "0123456789abcdef";
    std::string s;
    for (std::size_t i = 0; i < b.size() && i < max; ++i) {
        s.push_back(d[b[i] >> 4]);
        s.push_back(d[b[i] & 15]);
    }
    if (b.size() > max) s += "...";
    return s;
}

bool contains(const std::string& s, const std::string& part) {
    return s.find(part) != std::string::npos;
}

std::vector<Bytes> read_chain(const char* path) {
    std::ifstream f(path, std::ios::binary);
    Bytes all((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    std::vector<Bytes> blocks;
    std::size_t at = 0;
    while (at + 4 <= all.size()) {
        std::size_t len = static_cast<std::size_t>(all[at]) |
                          static_cast<std::size_t>(all[at + 1]) << 8 |
                          static_cast<std::size_t>(all[at + 2]) << 16 |
                          static_cast<std::size_t>(all[at + 3]) << 24;
        at += 4;
        if (at + len > all.size()) break;
        blocks.emplace_back(all.begin() + static_cast<std::ptrdiff_t>(at),
                            all.begin() + static_cast<std::ptrdiff_t>(at + len));
        at += len;
    }
    return blocks;
}

Bytes header_of(const Bytes& block) {
    auto end = static_cast<std::ptrdiff_t>(std::min<std::size_t>(80, block.size()));
    return Bytes(block.begin(), block.begin() + end);
}

struct Message {
    std::uint64_t peer;
    std::string command;
    Bytes data;
};

/// What an engine told, gathered from its events as they are polled.
struct Seen {
    std::string name;
    std::map<std::uint64_t, std::string> connected;    // peer -> address
    std::map<std::uint64_t, std::string> agents;       // peer -> user agent
    std::map<std::uint64_t, std::string> disconnected; // peer -> address
    std::map<std::string, std::string> dial_outcomes;  // address -> the event's data
    std::vector<Message> messages;
    std::map<std::uint32_t, bsn::Hash> blocks;   // height -> hash
    std::map<std::uint32_t, Bytes> headers;      // height -> header (event data)
    std::vector<std::pair<std::string, std::string>> banned;  // subnet, reason
    std::vector<std::string> unbanned;
    std::vector<std::string> recent;             // the last events, for failure reports
    int events = 0;
    bool checked_connected = false;
    bool checked_block = false;
};

void describe(Seen& s, const std::string& what) {
    s.recent.push_back(what);
    if (s.recent.size() > 12) s.recent.erase(s.recent.begin());
}

/// Takes one event into `s`, checking the accessors of each kind on its first sight.
void take(Seen& s, const bsn::EventView& e) {
    ++s.events;
    switch (e.kind()) {
        case BSN_EVENT_PEER_CONNECTED: {
            auto peer = e.peer();
            CHECK(peer.has_value(), s.name + ": a connection event names its peer");
            std::string addr = e.address();
            s.connected[peer.value_or(0)] = addr;
            s.agents[peer.value_or(0)] = e.text();
            describe(s, "connected " + std::to_string(peer.value_or(0)) + " " + addr);
            if (!s.checked_connected) {
                s.checked_connected = true;
                CHECK(!e.text().empty(), s.name + ": the user agent is the connection's data");
                EXPECT_ERROR(BSN_ERR_NOT_FOUND, e.height());
                EXPECT_ERROR(BSN_ERR_NOT_FOUND, e.hash());
                EXPECT_ERROR(BSN_ERR_NOT_FOUND, e.command());
            }
            break;
        }
        case BSN_EVENT_PEER_DISCONNECTED: {
            auto peer = e.peer().value_or(0);
            s.disconnected[peer] = e.address();
            s.dial_outcomes[e.address()] = e.text();
            describe(s, "disconnected " + std::to_string(peer) + ": " + e.text());
            break;
        }
        case BSN_EVENT_CONNECT_FAILED:
            CHECK(!e.peer().has_value(), s.name + ": a failed dial names no peer");
            s.dial_outcomes[e.address()] = e.text();
            describe(s, "connect failed " + e.address() + ": " + e.text());
            break;
        case BSN_EVENT_MESSAGE: {
            Message m{e.peer().value_or(0), e.command(), e.data()};
            describe(s, "message " + m.command + " from " + std::to_string(m.peer) + " " +
                            hex_bytes(m.data, 16));
            s.messages.push_back(std::move(m));
            break;
        }
        case BSN_EVENT_BLOCK_CONNECTED: {
            std::uint32_t h = e.height();
            s.blocks[h] = e.hash();
            s.headers[h] = e.data();
            describe(s, "block " + std::to_string(h) + " " + bsn::hex(s.blocks[h]));
            if (!s.checked_block) {
                s.checked_block = true;
                CHECK(!e.peer().has_value(), s.name + ": a block event names no peer");
                CHECK(e.data().size() == 80, s.name + ": a block event's data is its header");
                EXPECT_ERROR(BSN_ERR_NOT_FOUND, e.address());
            }
            break;
        }
        case BSN_EVENT_BANNED:
            s.banned.emplace_back(e.address(), e.text());
            describe(s, "banned " + e.address() + ": " + e.text());
            break;
        case BSN_EVENT_UNBANNED:
            s.unbanned.push_back(e.address());
            describe(s, "unbanned " + e.address());
            break;
        default:
            describe(s, "kind " + std::to_string(static_cast<int>(e.kind())) + ": " + e.text());
            break;
    }
}

struct Node {
    bsn::Engine* engine;
    Seen* seen;
};

/// Polls every node until `done()` or the deadline; a failure (with what was seen) on timeout.
bool wait_at(int line, const char* what, const std::vector<Node>& nodes,
             const std::function<bool()>& done) {
    auto deadline = std::chrono::steady_clock::now() + kDeadline;
    while (!done()) {
        if (std::chrono::steady_clock::now() >= deadline) {
            std::string saw;
            for (const Node& n : nodes) {
                saw += "\n  " + n.seen->name + " (" + std::to_string(n.seen->events) +
                       " events), last:";
                for (const std::string& r : n.seen->recent) saw += "\n    " + r;
            }
            check_at(line, false, what, "timed out after 60 s; saw:" + saw);
            return false;
        }
        for (const Node& n : nodes) {
            // drain what is there, then wait a little on each engine in turn
            while (auto e = n.engine->poll(10ms)) take(*n.seen, *e);
        }
    }
    ++g_checks;
    return true;
}

#define WAIT(what, nodes, cond) wait_at(__LINE__, what, nodes, [&]() { return (cond); })

bsn::Config test_config() {
    bsn::Config c("regtest");
    c.set_listen("127.0.0.1:0").set_shards(1).set_pin_threads(false).set_target_outbound(0);
    return c;
}

void run(const char* chain_path, std::size_t n) {
    // ---- plain values and configuration errors
    CHECK(!bsn::version().empty(), "a version");
    CHECK(bsn::result_text(BSN_ERR_TIMEOUT).rfind("BSN_ERR_TIMEOUT", 0) == 0,
          std::string(bsn::result_text(BSN_ERR_TIMEOUT)));
    EXPECT_ERROR(BSN_ERR_INVALID_ARGUMENT, bsn::Config("no-such-net"));
    EXPECT_ERROR(BSN_ERR_INVALID_ARGUMENT, bsn::Config("regtest").set_shards(0));
    EXPECT_ERROR(BSN_ERR_INVALID_ADDRESS, bsn::Config("regtest").set_listen("not an address"));
    EXPECT_ERROR(BSN_ERR_INVALID_ADDRESS,
                 bsn::Config("regtest").set_outbound_bind("127.0.0.1:8333"));
    try {
        bsn::Config("regtest").set_shards(0);
        CHECK(false, "zero shards are refused");
    } catch (const bsn::Error& e) {
        CHECK(contains(e.what(), "bsn_config_set_shards") &&
                  contains(e.what(), "BSN_ERR_INVALID_ARGUMENT") &&
                  contains(e.what(), e.message()),
              std::string("what() names the call, the message and the code: ") + e.what());
    }

    std::vector<Bytes> chain = read_chain(chain_path);
    CHECK(chain.size() == n, "the chain file holds " + std::to_string(chain.size()) +
                                 " blocks, not " + std::to_string(n));
    if (chain.size() != n || n == 0) return;

    // One configuration, two engines: each starts with a copy.
    bsn::Config config = test_config();
    bsn::Engine a(config);
    // B's connections leave from 127.0.0.3 (A started with the copy it took before)
    config.set_outbound_bind("127.0.0.3");
    bsn::Engine b(config);
    Seen sa, sb;
    sa.name = "A";
    sb.name = "B";
    const std::vector<Node> both{{&a, &sa}, {&b, &sb}};
    const std::vector<Node> only_a{{&a, &sa}};
    const std::vector<Node> only_b{{&b, &sb}};

    // ---- A takes the chain
    for (std::size_t i = 0; i < n; ++i) {
        std::uint32_t h = a.submit_block(chain[i]);
        CHECK(h == i + 1, "block " + std::to_string(i) + " went to height " + std::to_string(h));
    }
    bsn::BestHeader tip = a.best_header();
    CHECK(tip.height == n, "A's best header is at " + std::to_string(tip.height));
    bsn::Header top = a.header_by_height(static_cast<std::uint32_t>(n));
    CHECK(Bytes(top.begin(), top.end()) == header_of(chain[n - 1]),
          "A's header at the tip is the file's last");
    // submit_block returns once the header joined; the block is readable once it is stored,
    // which BSN_EVENT_BLOCK_CONNECTED tells
    const auto top_height = static_cast<std::uint32_t>(n);
    if (WAIT("A stores the tip block", only_a, sa.blocks.count(top_height) > 0)) {
        CHECK(sa.blocks[top_height] == tip.hash, "A's tip block event has the tip's hash");
        CHECK(a.block_by_hash(tip.hash) == chain[n - 1], "A reads the tip block back");
    }
    EXPECT_ERROR(BSN_ERR_NOT_FOUND, a.header_by_height(static_cast<std::uint32_t>(n + 100)));
    EXPECT_ERROR(BSN_ERR_NOT_FOUND, a.block_by_hash(bsn::Hash{}));

    // ---- B dials A; both see the connection
    std::string a_addr = a.local_addr();
    CHECK(a_addr.rfind("127.0.0.1:", 0) == 0 && a_addr != "127.0.0.1:0", "A listens: " + a_addr);
    b.connect(a_addr);
    if (!WAIT("both engines see the connection", both,
              !sa.connected.empty() && !sb.connected.empty())) {
        return;
    }
    const std::uint64_t a_to_b = sa.connected.begin()->first;  // B as A names it
    const std::uint64_t b_to_a = sb.connected.begin()->first;  // A as B names it
    CHECK(sb.connected[b_to_a] == a_addr, "B connected to " + sb.connected[b_to_a]);
    CHECK(sa.connected[a_to_b].rfind("127.0.0.3:", 0) == 0,
          "A sees B at its outbound address: " + sa.connected[a_to_b]);

    // ---- a message and its answer: getdata for a block A lacks, answered with notfound
    Bytes getdata{1, 2, 0, 0, 0};  // one entry, MSG_BLOCK
    getdata.insert(getdata.end(), 32, 0x5a);
    b.send(b_to_a, "getdata", getdata);
    auto notfound = [&]() {
        return std::find_if(sb.messages.begin(), sb.messages.end(), [&](const Message& m) {
            return m.command == "notfound";
        });
    };
    if (WAIT("B sees A's notfound as a message", both, notfound() != sb.messages.end())) {
        const Message& m = *notfound();
        CHECK(m.peer == b_to_a, "the notfound came from A");
        CHECK(m.data == getdata, "notfound lists what was asked: " + hex_bytes(m.data));
    }

    // ---- B syncs to A's tip
    if (WAIT("B connects the tip block", both, sb.blocks.count(top_height) > 0)) {
        CHECK(sb.blocks[top_height] == tip.hash,
              "B's tip is A's: " + bsn::hex(sb.blocks[top_height]));
        CHECK(sb.headers[top_height] == header_of(chain[n - 1]),
              "the block event's data is the tip's header");
        bsn::BestHeader bt = b.best_header();
        CHECK(bt.height == tip.height && bt.hash == tip.hash, "best headers equal");
        CHECK(b.block_by_hash(tip.hash) == chain[n - 1], "B reads the file's tip block back");
        CHECK(sb.blocks.count(1) && b.block_by_hash(sb.blocks[1]) == chain[0],
              "B reads the file's first block back");
        bsn::SyncProgress p = b.sync_progress();
        CHECK(p.header_height == top_height && p.best_known_height >= top_height,
              "B's sync progress: headers at " + std::to_string(p.header_height));
    }

    // ---- peers, as each side lists them
    {
        bsn::PeerList pa = a.peers();
        bsn::PeerList pb = b.peers();
        CHECK(pa.size() == 1 && pb.size() == 1,
              "one connection each: " + std::to_string(pa.size()) + ", " +
                  std::to_string(pb.size()));
        if (pa.size() == 1 && pb.size() == 1) {
            bsn::PeerInfo ia = pa.at(0);
            bsn::PeerInfo ib = pb.at(0);
            CHECK(ia.id == a_to_b && ia.inbound && ia.ready, "A's entry is B, inbound, ready");
            CHECK(ia.user_agent == sa.agents[a_to_b] && !ia.user_agent.empty(),
                  "A's entry has B's user agent: " + ia.user_agent);
            CHECK(ib.id == b_to_a && !ib.inbound && ib.ready, "B's entry is A, outbound, ready");
            CHECK(ib.address == a_addr, "B's entry is at A's address: " + ib.address);
            CHECK(ib.version > 0 && ib.start_height == static_cast<std::int32_t>(n),
                  "A's version " + std::to_string(ib.version) + ", start height " +
                      std::to_string(ib.start_height));
            CHECK(pa.all().size() == 1 && pa.all()[0].address == ia.address, "all() as at()");
            EXPECT_ERROR(BSN_ERR_INVALID_ARGUMENT, pa.id(1));
            EXPECT_ERROR(BSN_ERR_INVALID_ARGUMENT, pa.address(5));
        }
        // moves: the list goes along, the moved-from one holds nothing
        bsn::PeerList moved(std::move(pa));
        CHECK(moved.size() == 1, "the moved list has the entry");
        EXPECT_ERROR(BSN_ERR_NULL_ARGUMENT, pa.size());
        pa = std::move(pb);
        CHECK(pa.size() == 1, "move assignment takes the list");
    }

    // ---- a ban and its lifting on A
    const std::string subnet = "10.1.2.0/24";
    a.ban(subnet, std::chrono::hours(1), "cpp test");
    auto banned = [&]() {
        return std::any_of(sa.banned.begin(), sa.banned.end(),
                           [&](const auto& x) { return x.first == subnet; });
    };
    if (WAIT("A tells the ban", both, banned())) {
        auto it = std::find_if(sa.banned.begin(), sa.banned.end(),
                               [&](const auto& x) { return x.first == subnet; });
        CHECK(it->second == "cpp test", "the ban's reason is its data: " + it->second);
    }
    CHECK(a.is_banned("10.1.2.7"), "10.1.2.7 is inside the ban");
    CHECK(!a.is_banned("10.1.3.7"), "10.1.3.7 is not");
    std::string bans = a.bans();
    CHECK(contains(bans, subnet + " ") && contains(bans, "cpp test\n"), "bans: " + bans);
    a.unban(subnet);
    WAIT("A tells the unban", both,
         std::find(sa.unbanned.begin(), sa.unbanned.end(), subnet) != sa.unbanned.end());
    CHECK(!a.is_banned("10.1.2.7"), "the ban is lifted");
    CHECK(!contains(a.bans(), subnet), "no ban listed: " + a.bans());
    EXPECT_ERROR(BSN_ERR_NOT_FOUND, a.unban(subnet));
    CHECK(a.peers().size() == 1, "the loopback connection outlives a ban elsewhere");

    // ---- misuse turns into bsn::Error with the right code
    EXPECT_ERROR(BSN_ERR_INVALID_ADDRESS, a.connect("not an address"));
    EXPECT_ERROR(BSN_ERR_INVALID_ADDRESS, a.ban("300.1.2.0/24", 60s, ""));
    EXPECT_ERROR(BSN_ERR_INVALID_ADDRESS, a.unban("nowhere"));
    EXPECT_ERROR(BSN_ERR_INVALID_ADDRESS, a.is_banned("10.1.2"));
    EXPECT_ERROR(BSN_ERR_UNKNOWN_PEER, a.send(987654321, "ping", Bytes(8, 0)));
    EXPECT_ERROR(BSN_ERR_UNKNOWN_PEER, a.disconnect(987654321));
    EXPECT_ERROR(BSN_ERR_INVALID_DATA, a.send(a_to_b, "getdata", Bytes{1, 2}));
    EXPECT_ERROR(BSN_ERR_INVALID_DATA, a.submit_block(Bytes{1, 2, 3}));
    EXPECT_ERROR(BSN_ERR_INVALID_DATA, a.submit_tx(Bytes{1, 2, 3}));
    EXPECT_ERROR(BSN_ERR_NOT_FOUND, a.accept_tx(bsn::Hash{}));
    EXPECT_ERROR(BSN_ERR_NOT_FOUND, a.reject_tx(bsn::Hash{}, "policy", 0));

    // ---- the event callback on A: delivered on bsn's thread, kept alive by the engine
    {
        std::mutex mu;
        std::vector<std::string> got;  // subnets of BANNED events, in order
        std::atomic<int> calls{0};
        a.set_event_callback([&](const bsn::EventView& e) {
            int k = ++calls;
            if (e.kind() == BSN_EVENT_BANNED) {
                std::lock_guard<std::mutex> g(mu);
                got.push_back(e.address());
            }
            if (k == 1) throw std::runtime_error("a callback that throws does no harm");
        });
        EXPECT_ERROR(BSN_ERR_WRONG_STATE, a.poll(0ms));
        a.ban("10.7.0.1", 60s, "callback");
        a.ban("10.7.0.2", 60s, "callback");
        auto got_both = [&]() {
            std::lock_guard<std::mutex> g(mu);
            return std::find(got.begin(), got.end(), "10.7.0.2/32") != got.end();
        };
        if (!WAIT("the callback gets A's second ban", only_b, got_both())) {
            std::lock_guard<std::mutex> g(mu);
            for (const std::string& s : got) std::fprintf(stderr, "  callback saw %s\n", s.c_str());
        }
        // moving the engine keeps the callback where bsn calls it
        bsn::Engine moved(std::move(a));
        EXPECT_ERROR(BSN_ERR_NULL_ARGUMENT, a.local_addr());
        moved.unban("10.7.0.1");
        moved.ban("10.7.0.3", 60s, "after the move");
        auto got_third = [&]() {
            std::lock_guard<std::mutex> g(mu);
            return std::find(got.begin(), got.end(), "10.7.0.3/32") != got.end();
        };
        WAIT("the callback still runs after a move", only_b, got_third());
        moved.clear_event_callback();
        a = std::move(moved);  // back into `a`, which held nothing
        int before = calls.load();
        a.unban("10.7.0.2");
        WAIT("polling again after the callback is cleared", both,
             std::find(sa.unbanned.begin(), sa.unbanned.end(), "10.7.0.2/32") != sa.unbanned.end());
        CHECK(calls.load() == before, "the cleared callback is not called");
    }

    // ---- owned events move; moved-from ones are empty
    {
        a.ban("10.8.0.0/16", 60s, "event moves");
        std::optional<bsn::Event> ev;
        auto deadline = std::chrono::steady_clock::now() + kDeadline;
        while (std::chrono::steady_clock::now() < deadline) {
            ev = a.poll(100ms);
            if (ev && ev->kind() == BSN_EVENT_BANNED) break;
            if (ev) take(sa, *ev);
            while (auto e = b.poll(0ms)) take(sb, *e);
        }
        CHECK(ev && ev->kind() == BSN_EVENT_BANNED, "a BANNED event to move");
        if (ev && ev->kind() == BSN_EVENT_BANNED) {
            bsn::Event e1(std::move(*ev));
            EXPECT_ERROR(BSN_ERR_NULL_ARGUMENT, ev->kind());
            CHECK(e1.address() == "10.8.0.0/16", "the moved event: " + e1.address());
            bsn::Event e2 = std::move(e1);
            e1 = std::move(e2);  // back: e2 empty, e1 full
            CHECK(e1.text() == "event moves", "data after moves: " + e1.text());
            EXPECT_ERROR(BSN_ERR_NULL_ARGUMENT, e2.data());
        }
    }

    // ---- the connection ends: the peer id is unknown then
    b.disconnect(b_to_a);
    if (WAIT("both see the end of the connection", both,
             sa.disconnected.count(a_to_b) && sb.disconnected.count(b_to_a))) {
        EXPECT_ERROR(BSN_ERR_UNKNOWN_PEER, b.send(b_to_a, "ping", Bytes(8, 1)));
        EXPECT_ERROR(BSN_ERR_UNKNOWN_PEER, b.disconnect(b_to_a));
    }

    // ---- a quiet engine's poll times out into nullopt; moves of configs and engines
    {
        bsn::Config c2(std::move(config));
        EXPECT_ERROR(BSN_ERR_NULL_ARGUMENT, config.set_shards(1));
        EXPECT_ERROR(BSN_ERR_NULL_ARGUMENT, bsn::Engine{config});
        bsn::Engine e(c2);
        bsn::Engine f(c2);
        const std::string gone = e.local_addr();
        e = std::move(f);  // the first engine stopped and freed here
        EXPECT_ERROR(BSN_ERR_NULL_ARGUMENT, f.poll(0ms));
        // a dial to where nobody listens now: its outcome comes as an event about the address
        // (BSN_EVENT_CONNECT_FAILED, or BSN_EVENT_PEER_DISCONNECTED "connect failed: ..."
        // when the refusal comes after the connect started)
        Seen se;
        se.name = "E";
        e.connect(gone);
        const std::vector<Node> only_e{{&e, &se}};
        WAIT("the outcome of a dial to a closed port", only_e, se.dial_outcomes.count(gone) > 0);
        bool quiet = false;
        auto deadline = std::chrono::steady_clock::now() + kDeadline;
        while (!quiet && std::chrono::steady_clock::now() < deadline) {
            quiet = !e.poll(50ms).has_value();
        }
        CHECK(quiet, "a poll of an engine with nothing to tell times out into nullopt");
    }  // f (moved from), e and c2 destroyed

    // ---- stop: every later call is BSN_ERR_STOPPED
    a.stop();
    EXPECT_ERROR(BSN_ERR_STOPPED, a.stop());
    EXPECT_ERROR(BSN_ERR_STOPPED, a.local_addr());
    EXPECT_ERROR(BSN_ERR_STOPPED, a.poll(0ms));
    EXPECT_ERROR(BSN_ERR_STOPPED, a.connect("127.0.0.1:1"));
    EXPECT_ERROR(BSN_ERR_STOPPED, a.best_header());
    EXPECT_ERROR(BSN_ERR_STOPPED, a.peers());
    EXPECT_ERROR(BSN_ERR_STOPPED, a.ban(subnet, 60s, ""));
    EXPECT_ERROR(BSN_ERR_STOPPED, a.set_event_callback([](const bsn::EventView&) {}));
    a.clear_event_callback();  // nothing to clear on a stopped engine: no error
    b.stop();
    EXPECT_ERROR(BSN_ERR_STOPPED, b.send(b_to_a, "ping", Bytes(8, 1)));
}  // a and b freed here, stopped already; the config was moved from

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s CHAIN_FILE BLOCK_COUNT\n", argv[0]);
        return 2;
    }
    std::size_t n = std::strtoul(argv[2], nullptr, 10);
    try {
        run(argv[1], n);
    } catch (const bsn::Error& e) {
        ++g_failures;
        std::fprintf(stderr, "FAIL: unexpected bsn::Error (code %u): %s\n",
                     static_cast<unsigned>(e.code()), e.what());
    } catch (const std::exception& e) {
        ++g_failures;
        std::fprintf(stderr, "FAIL: unexpected exception: %s\n", e.what());
    }
    std::printf("ffi_test (C++, bsn %s): %d checks, %d failed\n",
                std::string(bsn::version()).c_str(), g_checks, g_failures);
    return g_failures == 0 ? 0 : 1;
}
