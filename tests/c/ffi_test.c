/*
 * ffi_test.c: exercises the C ABI of bsn (include/bsn.h) from C, as an embedder would.
 *
 *   ffi_test CHAIN_FILE N
 *
 * CHAIN_FILE holds N regtest blocks on genesis as records of [4-byte LE length][block]
 * (tests/common/ffi.rs, write_chain). Two engines, A and B, on 127.0.0.1 with port 0: A is
 * handed the blocks, B connects to A and syncs them; on the way every object of the ABI is
 * used, and misuse (NULL pointers, bad addresses, small buffers, unknown peers, double frees,
 * stopped and freed engines) must give the documented result codes. Every wait is a loop on
 * bsn_engine_poll_event with one deadline for the whole run (generous: it also runs under
 * valgrind). Each failed check is printed with file:line and bsn_last_error; the exit status
 * is 0 only when every check passed.
 *
 * Run by tests/ffi_c.rs (plain, under valgrind and under AddressSanitizer).
 */

#include "bsn.h"

#include <inttypes.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define RUN_SECONDS 120.0
#define MAX_BLOCKS 1000

/* ---------------------------------------------------------------- checks */

static int checks;
static int failures;

static void failed(const char *file, int line, const char *what) {
    char err[1024];
    size_t n = 0;
    if (bsn_last_error(err, sizeof err, &n) != BSN_OK) {
        snprintf(err, sizeof err, "(%zu bytes, too long to show)", n);
    }
    fprintf(stderr, "%s:%d: FAILED: %s [bsn_last_error: %s]\n", file, line, what, err);
    fflush(stderr);
    failures++;
}

/* A condition that must hold. */
#define CHECK(cond)                                                                            \
    do {                                                                                       \
        checks++;                                                                              \
        if (!(cond)) failed(__FILE__, __LINE__, #cond);                                        \
    } while (0)

/* A call that must return `want`. */
#define EXPECT(call, want)                                                                     \
    do {                                                                                       \
        bsn_result r_ = (call);                                                                \
        checks++;                                                                              \
        if (r_ != (want)) {                                                                    \
            char m_[512];                                                                      \
            snprintf(m_, sizeof m_, "%s returned %d (%s), expected %s", #call, (int)r_,         \
                     bsn_result_text((uint32_t)r_), #want);                                    \
            failed(__FILE__, __LINE__, m_);                                                    \
        }                                                                                      \
    } while (0)

#define OK(call) EXPECT(call, BSN_OK)

/* A condition without which the run cannot go on: leaves the phase (its function) with false. */
#define REQUIRE(cond)                                                                          \
    do {                                                                                       \
        checks++;                                                                              \
        if (!(cond)) {                                                                         \
            failed(__FILE__, __LINE__, "required: " #cond);                                    \
            return false;                                                                      \
        }                                                                                      \
    } while (0)

#define REQUIRE_OK(call)                                                                       \
    do {                                                                                       \
        int f_ = failures;                                                                     \
        OK(call);                                                                              \
        if (failures != f_) return false;                                                      \
    } while (0)

static double now_s(void) {
    struct timespec ts;
    timespec_get(&ts, TIME_UTC);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double started;
static double deadline;

/* ---------------------------------------------------------------- the chain file */

struct block {
    uint8_t *data;
    size_t len;
};

static struct block blocks[MAX_BLOCKS];
static size_t nblocks;
static uint8_t *file_bytes;

static bool read_chain(const char *path, size_t want) {
    FILE *f = fopen(path, "rb");
    REQUIRE(f != NULL);
    size_t cap = 1 << 16, len = 0;
    file_bytes = malloc(cap);
    REQUIRE(file_bytes != NULL);
    for (;;) {
        if (len == cap) {
            uint8_t *p = realloc(file_bytes, cap * 2);
            if (p == NULL) break;
            file_bytes = p;
            cap *= 2;
        }
        size_t got = fread(file_bytes + len, 1, cap - len, f);
        if (got == 0) break;
        len += got;
    }
    fclose(f);
    size_t at = 0;
    while (at + 4 <= len && nblocks < MAX_BLOCKS) {
        size_t n = (size_t)file_bytes[at] | (size_t)file_bytes[at + 1] << 8 |
                   (size_t)file_bytes[at + 2] << 16 | (size_t)file_bytes[at + 3] << 24;
        REQUIRE(at + 4 + n <= len);
        blocks[nblocks].data = file_bytes + at + 4;
        blocks[nblocks].len = n;
        nblocks++;
        at += 4 + n;
    }
    REQUIRE(at == len);
    REQUIRE(nblocks == want);
    return true;
}

/* ---------------------------------------------------------------- the two engines */

struct side {
    const char *name;
    bsn_engine *e;
    bool callback; /* events go to a callback: do not poll */
    bool stopped;  /* bsn_engine_stop was called: nothing to poll */
    char addr[64]; /* where it listens */
    int events;
    /* the last BSN_EVENT_PEER_CONNECTED */
    int connected;
    uint64_t peer;
    char peer_addr[64];
    char peer_agent[300];
    int disconnected; /* of that peer */
    /* BSN_EVENT_BLOCK_CONNECTED: the highest height, and each height's hash and header */
    uint32_t tip;
    bool have[MAX_BLOCKS + 1];
    uint8_t hash[MAX_BLOCKS + 1][32];
    uint8_t header[MAX_BLOCKS + 1][80];
    /* BSN_EVENT_MESSAGE "notfound" */
    int messages;
    int notfound;
    uint64_t notfound_peer;
    uint8_t notfound_data[64];
    size_t notfound_len;
    /* bans */
    int banned;
    char banned_subnet[64];
    char banned_reason[64];
    int unbanned;
    char unbanned_subnet[64];
    int headers_synced;
};

static struct side A = {.name = "A"};
static struct side B = {.name = "B"};

static const char *kind_name(bsn_event_type k) {
    switch (k) {
    case BSN_EVENT_PEER_CONNECTED: return "PEER_CONNECTED";
    case BSN_EVENT_PEER_DISCONNECTED: return "PEER_DISCONNECTED";
    case BSN_EVENT_CONNECT_FAILED: return "CONNECT_FAILED";
    case BSN_EVENT_MESSAGE: return "MESSAGE";
    case BSN_EVENT_BANNED: return "BANNED";
    case BSN_EVENT_UNBANNED: return "UNBANNED";
    case BSN_EVENT_HEADERS_SYNCED: return "HEADERS_SYNCED";
    case BSN_EVENT_BLOCK_CONNECTED: return "BLOCK_CONNECTED";
    case BSN_EVENT_REORG: return "REORG";
    case BSN_EVENT_TX_RECEIVED: return "TX_RECEIVED";
    case BSN_EVENT_BAN_SCORE: return "BAN_SCORE";
    case BSN_EVENT_FATAL: return "FATAL";
    case BSN_EVENT_BLOCK_FILE: return "BLOCK_FILE";
    case BSN_EVENT_OTHER: return "OTHER";
    }
    return "?";
}

/* Copies the event's address text into buf (empty when it has none). */
static void event_address(const bsn_event *ev, char *buf, size_t len) {
    size_t n = 0;
    buf[0] = 0;
    bsn_result r = bsn_event_address(ev, buf, len, &n);
    if (r != BSN_OK) buf[0] = 0;
}

/* Looks at one polled event: checks its accessors and notes what the flow waits for. */
static void take(struct side *s, const bsn_event *ev) {
    static bool misuse_done;
    bsn_event_type k = 0;
    OK(bsn_event_kind(ev, &k));
    s->events++;

    if (!misuse_done) {
        /* NULL event and NULL outputs, once */
        misuse_done = true;
        uint64_t p;
        size_t n;
        EXPECT(bsn_event_kind(NULL, &k), BSN_ERR_NULL_ARGUMENT);
        EXPECT(bsn_event_kind(ev, NULL), BSN_ERR_NULL_ARGUMENT);
        EXPECT(bsn_event_peer(NULL, &p), BSN_ERR_NULL_ARGUMENT);
        EXPECT(bsn_event_data(ev, NULL, 0, NULL), BSN_ERR_NULL_ARGUMENT);
        EXPECT(bsn_event_command(NULL, NULL, 0, &n), BSN_ERR_NULL_ARGUMENT);
        EXPECT(bsn_event_hash(NULL, NULL), BSN_ERR_NULL_ARGUMENT);
    }

    /* the data: its size first (NULL buffer), then into a buffer of just that size */
    size_t dlen = 0, dlen2 = 0;
    bsn_result dr = bsn_event_data(ev, NULL, 0, &dlen);
    uint8_t *data = malloc(dlen + 1);
    if (data == NULL) {
        CHECK(data != NULL);
        return;
    }
    if (dlen > 0) {
        CHECK(dr == BSN_ERR_BUFFER_TOO_SMALL);
        if (dlen > 1) {
            /* one byte short: refused, nothing copied, the size told again */
            memset(data, 0xee, dlen);
            EXPECT(bsn_event_data(ev, data, dlen - 1, &dlen2), BSN_ERR_BUFFER_TOO_SMALL);
            CHECK(dlen2 == dlen);
            CHECK(data[0] == 0xee);
        }
        OK(bsn_event_data(ev, data, dlen, &dlen2));
        CHECK(dlen2 == dlen);
    } else {
        CHECK(dr == BSN_OK);
    }
    data[dlen] = 0;

    uint64_t peer = 0;
    uint32_t height = 0;
    uint8_t hash[32];
    char text[300];
    size_t tlen = 0;

    switch (k) {
    case BSN_EVENT_PEER_CONNECTED:
        OK(bsn_event_peer(ev, &peer));
        CHECK(peer != 0);
        OK(bsn_event_address(ev, text, sizeof text, &tlen));
        CHECK(tlen == strlen(text));
        /* A at 127.0.0.1; B, as A sees it, at its outbound address 127.0.0.3 */
        CHECK(strncmp(text, s == &B ? "127.0.0.1:" : "127.0.0.3:", 10) == 0);
        CHECK(dlen > 0 && dlen < sizeof s->peer_agent); /* the user agent */
        EXPECT(bsn_event_height(ev, &height), BSN_ERR_NOT_FOUND);
        EXPECT(bsn_event_hash(ev, hash), BSN_ERR_NOT_FOUND);
        EXPECT(bsn_event_command(ev, text, sizeof text, &tlen), BSN_ERR_NOT_FOUND);
        s->connected++;
        s->peer = peer;
        event_address(ev, s->peer_addr, sizeof s->peer_addr);
        snprintf(s->peer_agent, sizeof s->peer_agent, "%s", (const char *)data);
        printf("%s: peer %" PRIu64 " connected: %s (%s)\n", s->name, peer, s->peer_addr,
               s->peer_agent);
        break;
    case BSN_EVENT_PEER_DISCONNECTED:
        OK(bsn_event_peer(ev, &peer));
        event_address(ev, text, sizeof text);
        printf("%s: peer %" PRIu64 " (%s) disconnected: %s\n", s->name, peer, text,
               (const char *)data);
        if (peer == s->peer) s->disconnected++;
        break;
    case BSN_EVENT_CONNECT_FAILED:
        event_address(ev, text, sizeof text);
        printf("%s: connect to %s failed: %s\n", s->name, text, (const char *)data);
        break;
    case BSN_EVENT_MESSAGE:
        OK(bsn_event_peer(ev, &peer));
        OK(bsn_event_command(ev, text, sizeof text, &tlen));
        CHECK(tlen == strlen(text) && tlen > 0 && tlen <= 12);
        EXPECT(bsn_event_address(ev, text + 100, 100, &tlen), BSN_ERR_NOT_FOUND);
        s->messages++;
        printf("%s: message %s (%zu bytes) from peer %" PRIu64 "\n", s->name, text, dlen, peer);
        if (strcmp(text, "notfound") == 0 && dlen <= sizeof s->notfound_data) {
            s->notfound++;
            s->notfound_peer = peer;
            memcpy(s->notfound_data, data, dlen);
            s->notfound_len = dlen;
        }
        break;
    case BSN_EVENT_BANNED:
        EXPECT(bsn_event_peer(ev, &peer), BSN_ERR_NOT_FOUND);
        OK(bsn_event_address(ev, s->banned_subnet, sizeof s->banned_subnet, &tlen));
        snprintf(s->banned_reason, sizeof s->banned_reason, "%s", (const char *)data);
        s->banned++;
        printf("%s: banned %s: %s\n", s->name, s->banned_subnet, s->banned_reason);
        break;
    case BSN_EVENT_UNBANNED:
        OK(bsn_event_address(ev, s->unbanned_subnet, sizeof s->unbanned_subnet, &tlen));
        CHECK(dlen == 0);
        s->unbanned++;
        printf("%s: unbanned %s\n", s->name, s->unbanned_subnet);
        break;
    case BSN_EVENT_HEADERS_SYNCED:
        OK(bsn_event_height(ev, &height));
        s->headers_synced++;
        printf("%s: headers synced at height %" PRIu32 "\n", s->name, height);
        break;
    case BSN_EVENT_BLOCK_CONNECTED:
        OK(bsn_event_height(ev, &height));
        OK(bsn_event_hash(ev, hash));
        EXPECT(bsn_event_peer(ev, &peer), BSN_ERR_NOT_FOUND);
        EXPECT(bsn_event_address(ev, text, sizeof text, &tlen), BSN_ERR_NOT_FOUND);
        CHECK(dlen == 80);
        CHECK(height >= 1 && height <= MAX_BLOCKS);
        if (height >= 1 && height <= MAX_BLOCKS && dlen == 80) {
            s->have[height] = true;
            memcpy(s->hash[height], hash, 32);
            memcpy(s->header[height], data, 80);
        }
        if (height > s->tip) s->tip = height;
        break;
    default:
        printf("%s: event %s (%d): %s\n", s->name, kind_name(k), (int)k, (const char *)data);
        break;
    }
    free(data);
}

/*
 * Polls both engines (those not handing events to a callback) until done() holds; false (and a
 * failed check) when the run's deadline passes first.
 */
static bool pump(const char *what, bool (*done)(void)) {
    while (!done()) {
        if (now_s() > deadline) {
            char m[200];
            snprintf(m, sizeof m, "timed out waiting for %s", what);
            failed(__FILE__, __LINE__, m);
            return false;
        }
        struct side *sides[2] = {&A, &B};
        for (int i = 0; i < 2; i++) {
            struct side *s = sides[i];
            if (s->e == NULL || s->callback || s->stopped) continue;
            bsn_event *ev = NULL;
            bsn_result r = bsn_engine_poll_event(s->e, 20, &ev);
            if (r == BSN_OK) {
                CHECK(ev != NULL);
                take(s, ev);
                OK(bsn_event_free(&ev));
                CHECK(ev == NULL);
                /* freed twice through the same variable: refused, nothing happens */
                EXPECT(bsn_event_free(&ev), BSN_ERR_NULL_ARGUMENT);
            } else if (r != BSN_ERR_TIMEOUT) {
                EXPECT(r, BSN_ERR_TIMEOUT);
                return false;
            }
        }
    }
    return true;
}

/* ---------------------------------------------------------------- helpers */

static void hex(const uint8_t *b, size_t n, char *out) {
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < n; i++) {
        out[2 * i] = digits[b[i] >> 4];
        out[2 * i + 1] = digits[b[i] & 15];
    }
    out[2 * n] = 0;
}

static bool start_engine(struct side *s) {
    bsn_config *c = NULL;
    REQUIRE_OK(bsn_config_new("regtest", &c));
    REQUIRE(c != NULL);
    OK(bsn_config_set_listen(c, "127.0.0.1:0"));
    OK(bsn_config_set_shards(c, 1));
    OK(bsn_config_set_pin_threads(c, false));
    OK(bsn_config_set_target_outbound(c, 0));
    if (s == &B) {
        /* B's connections leave from an address of its own */
        OK(bsn_config_set_outbound_bind(c, "127.0.0.3"));
    }
    bsn_result r = bsn_engine_start(c, &s->e);
    OK(bsn_config_free(&c));
    CHECK(c == NULL);
    REQUIRE(r == BSN_OK && s->e != NULL);
    size_t n = 0;
    REQUIRE_OK(bsn_engine_local_addr(s->e, s->addr, sizeof s->addr, &n));
    CHECK(n == strlen(s->addr));
    CHECK(strncmp(s->addr, "127.0.0.1:", 10) == 0 && strcmp(s->addr, "127.0.0.1:0") != 0);
    printf("%s listens on %s\n", s->name, s->addr);
    return true;
}

/* ---------------------------------------------------------------- phases */

static bool phase_config_misuse(void) {
    bsn_config *c = NULL;
    bsn_engine *e = NULL;

    EXPECT(bsn_config_new(NULL, &c), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_config_new("regtest", NULL), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_config_new("moonnet", &c), BSN_ERR_INVALID_ARGUMENT);
    CHECK(c == NULL);
    REQUIRE_OK(bsn_config_new("regtest", &c));

    EXPECT(bsn_config_set_listen(NULL, "127.0.0.1:0"), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_config_set_listen(c, NULL), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_config_set_listen(c, "127.0.0.1:99999"), BSN_ERR_INVALID_ADDRESS);
    EXPECT(bsn_config_set_listen(c, "nonsense"), BSN_ERR_INVALID_ADDRESS);
    EXPECT(bsn_config_add_connect(c, "127.0.0.1:99999"), BSN_ERR_INVALID_ADDRESS);
    EXPECT(bsn_config_add_connect(c, "nonsense"), BSN_ERR_INVALID_ADDRESS);
    EXPECT(bsn_config_add_connect(c, NULL), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_config_set_shards(c, 0), BSN_ERR_INVALID_ARGUMENT);
    EXPECT(bsn_config_set_shards(NULL, 1), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_config_set_pin_threads(NULL, false), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_config_set_headers_only(NULL, true), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_config_set_target_outbound(NULL, 0), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_config_set_magic(c, "xyz"), BSN_ERR_INVALID_ARGUMENT);
    EXPECT(bsn_config_set_outbound_bind(c, "127.0.0.1:8333"), BSN_ERR_INVALID_ADDRESS);
    EXPECT(bsn_config_set_outbound_bind(c, "nonsense"), BSN_ERR_INVALID_ADDRESS);
    EXPECT(bsn_config_set_outbound_bind(c, NULL), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_config_set_outbound_bind(NULL, "127.0.0.2"), BSN_ERR_NULL_ARGUMENT);
    OK(bsn_config_set_outbound_bind(c, "::1"));
    OK(bsn_config_set_outbound_bind(c, ""));
    EXPECT(bsn_config_set_magic(c, NULL), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_config_set_data_dir(c, NULL), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_config_add_seed(c, ""), BSN_ERR_INVALID_ARGUMENT);
    /* the invalid strings may not be UTF-8 either */
    EXPECT(bsn_config_set_listen(c, "\xff\xfe"), BSN_ERR_INVALID_ARGUMENT);

    EXPECT(bsn_engine_start(NULL, &e), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_start(c, NULL), BSN_ERR_NULL_ARGUMENT);
    CHECK(e == NULL);

    /* a port in use is refused at start: A's own address */
    OK(bsn_config_set_listen(c, A.addr));
    OK(bsn_config_set_shards(c, 1));
    OK(bsn_config_set_pin_threads(c, false));
    EXPECT(bsn_engine_start(c, &e), BSN_ERR_IO);
    CHECK(e == NULL);

    OK(bsn_config_free(&c));
    CHECK(c == NULL);
    EXPECT(bsn_config_free(&c), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_config_free(NULL), BSN_ERR_NULL_ARGUMENT);
    return true;
}

static bool phase_submit(void) {
    for (size_t i = 0; i < nblocks; i++) {
        uint32_t h = 0;
        REQUIRE_OK(bsn_engine_submit_block(A.e, blocks[i].data, blocks[i].len, &h));
        CHECK(h == (uint32_t)(i + 1));
    }
    /* misuse is refused (3 bytes are neither a block nor a transaction) */
    uint32_t h = 0;
    uint8_t junk[3] = {1, 2, 3};
    EXPECT(bsn_engine_submit_block(A.e, NULL, 10, &h), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_submit_block(A.e, blocks[0].data, blocks[0].len, NULL),
           BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_submit_block(NULL, blocks[0].data, blocks[0].len, &h),
           BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_submit_block(A.e, junk, sizeof junk, &h), BSN_ERR_INVALID_DATA);
    EXPECT(bsn_engine_submit_tx(A.e, NULL, 5), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_submit_tx(A.e, junk, sizeof junk), BSN_ERR_INVALID_DATA);
    return true;
}

static bool a_has_all(void) { return A.tip == nblocks; }
static bool both_connected(void) { return A.connected > 0 && B.connected > 0; }
static bool b_notfound(void) { return B.notfound > 0; }
static bool b_synced(void) { return B.tip == nblocks; }
static bool a_banned(void) { return A.banned > 0; }
static bool a_unbanned(void) { return A.unbanned > 0; }
static bool b_unbanned(void) { return B.unbanned > 0; }
static bool a_lost_b(void) { return A.disconnected > 0; }

static bool phase_connect(void) {
    EXPECT(bsn_engine_connect(B.e, "127.0.0.1:99999"), BSN_ERR_INVALID_ADDRESS);
    EXPECT(bsn_engine_connect(B.e, "nonsense"), BSN_ERR_INVALID_ADDRESS);
    EXPECT(bsn_engine_connect(B.e, NULL), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_connect(NULL, A.addr), BSN_ERR_NULL_ARGUMENT);
    REQUIRE_OK(bsn_engine_connect(B.e, A.addr));
    REQUIRE(pump("PEER_CONNECTED on both", both_connected));
    /* B's peer is A at the address A listens on */
    CHECK(strcmp(B.peer_addr, A.addr) == 0);
    /* A's peer is B at B's outbound address */
    CHECK(strncmp(A.peer_addr, "127.0.0.3:", 10) == 0);
    CHECK(strncmp(A.peer_agent, "/bsn:", 5) == 0);
    CHECK(strcmp(A.peer_agent, B.peer_agent) == 0);
    return true;
}

static bool phase_message(void) {
    /* getdata for a block A does not have: varint 1, MSG_BLOCK (2), 32 bytes of hash */
    uint8_t getdata[37];
    getdata[0] = 1;
    getdata[1] = 2;
    getdata[2] = getdata[3] = getdata[4] = 0;
    for (int i = 0; i < 32; i++) getdata[5 + i] = (uint8_t)(0xa5 ^ (i * 37));

    EXPECT(bsn_engine_send(B.e, B.peer, NULL, getdata, sizeof getdata), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_send(B.e, B.peer, "getdata", NULL, sizeof getdata),
           BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_send(NULL, B.peer, "getdata", getdata, sizeof getdata),
           BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_send(B.e, B.peer, "getdata", getdata, 20), BSN_ERR_INVALID_DATA);
    EXPECT(bsn_engine_send(B.e, B.peer, "a command too long", NULL, 0),
           BSN_ERR_INVALID_ARGUMENT);
    EXPECT(bsn_engine_send(B.e, 999999, "getdata", getdata, sizeof getdata),
           BSN_ERR_UNKNOWN_PEER);
    EXPECT(bsn_engine_disconnect(B.e, 999999), BSN_ERR_UNKNOWN_PEER);
    EXPECT(bsn_engine_disconnect(NULL, B.peer), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_broadcast(B.e, NULL, NULL, 0), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_broadcast(NULL, "getaddr", NULL, 0), BSN_ERR_NULL_ARGUMENT);

    REQUIRE_OK(bsn_engine_send(B.e, B.peer, "getdata", getdata, sizeof getdata));
    REQUIRE(pump("notfound on B", b_notfound));
    CHECK(B.notfound_peer == B.peer);
    CHECK(B.notfound_len == sizeof getdata);
    CHECK(memcmp(B.notfound_data, getdata, sizeof getdata) == 0);
    return true;
}

static bool phase_sync(void) {
    uint32_t n = (uint32_t)nblocks;
    REQUIRE(pump("BLOCK_CONNECTED at the tip on A", a_has_all));
    REQUIRE(pump("BLOCK_CONNECTED at the tip on B", b_synced));

    uint8_t ha[32], hb[32];
    uint32_t hta = 0, htb = 0;
    OK(bsn_engine_best_header(A.e, ha, &hta));
    OK(bsn_engine_best_header(B.e, hb, &htb));
    CHECK(hta == n && htb == n);
    CHECK(memcmp(ha, hb, 32) == 0);
    CHECK(memcmp(hb, A.hash[n], 32) == 0);
    uint8_t shown[32];
    char shown_hex[65];
    for (int i = 0; i < 32; i++) shown[i] = hb[31 - i]; /* display order is reversed */
    hex(shown, 32, shown_hex);
    printf("B's tip: height %" PRIu32 " hash %s\n", htb, shown_hex);
    EXPECT(bsn_engine_best_header(B.e, NULL, &htb), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_best_header(B.e, hb, NULL), BSN_ERR_NULL_ARGUMENT);

    size_t cap = 0;
    for (size_t i = 0; i < nblocks; i++)
        if (blocks[i].len > cap) cap = blocks[i].len;
    uint8_t *buf = malloc(cap);
    REQUIRE(buf != NULL);
    for (uint32_t h = 1; h <= n; h++) {
        const struct block *b = &blocks[h - 1];
        uint8_t header[80];
        size_t len = 0;
        CHECK(A.have[h] && B.have[h]);
        CHECK(memcmp(A.hash[h], B.hash[h], 32) == 0);
        /* the event's header is the file's; each header links to the hash before it */
        CHECK(memcmp(B.header[h], b->data, 80) == 0);
        if (h > 1) CHECK(memcmp(b->data + 4, B.hash[h - 1], 32) == 0);
        OK(bsn_engine_header_by_height(B.e, h, header));
        CHECK(memcmp(header, b->data, 80) == 0);
        OK(bsn_engine_block_by_hash(B.e, B.hash[h], buf, cap, &len));
        CHECK(len == b->len && memcmp(buf, b->data, b->len) == 0);
    }
    /* a block buffer too small: refused, the size told */
    size_t len = 0;
    EXPECT(bsn_engine_block_by_hash(B.e, B.hash[1], buf, blocks[0].len - 1, &len),
           BSN_ERR_BUFFER_TOO_SMALL);
    CHECK(len == blocks[0].len);
    EXPECT(bsn_engine_block_by_hash(B.e, B.hash[1], buf, cap, NULL), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_block_by_hash(B.e, NULL, buf, cap, &len), BSN_ERR_NULL_ARGUMENT);
    uint8_t unknown[32] = {7};
    EXPECT(bsn_engine_block_by_hash(B.e, unknown, buf, cap, &len), BSN_ERR_NOT_FOUND);
    free(buf);

    uint8_t header[80];
    OK(bsn_engine_header_by_height(B.e, 0, header)); /* genesis */
    EXPECT(bsn_engine_header_by_height(B.e, n + 1, header), BSN_ERR_NOT_FOUND);
    EXPECT(bsn_engine_header_by_height(B.e, 1, NULL), BSN_ERR_NULL_ARGUMENT);

    bsn_sync_progress p;
    memset(&p, 0xff, sizeof p);
    OK(bsn_engine_sync_progress(B.e, &p));
    printf("B sync: header_height %" PRIu32 " best_known %" PRIu32 " block_height %" PRIu32
           " syncing %d sync_peer %" PRIu64 "\n",
           p.header_height, p.best_known_height, p.block_height, (int)p.syncing, p.sync_peer);
    CHECK(p.header_height == n);
    CHECK(p.best_known_height >= n && p.best_known_height < n + 10);
    CHECK(p.block_height == n);
    CHECK(p.sync_peer == 0 || p.sync_peer == B.peer);
    memset(&p, 0xff, sizeof p);
    OK(bsn_engine_sync_progress(A.e, &p));
    CHECK(p.header_height == n && p.block_height == n);
    EXPECT(bsn_engine_sync_progress(A.e, NULL), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_sync_progress(NULL, &p), BSN_ERR_NULL_ARGUMENT);
    return true;
}

static bool phase_peers(void) {
    bsn_peer_list *l = NULL;
    EXPECT(bsn_engine_peers(A.e, NULL), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_peers(NULL, &l), BSN_ERR_NULL_ARGUMENT);
    REQUIRE_OK(bsn_engine_peers(A.e, &l));
    REQUIRE(l != NULL);
    /* B's connection; a BSV stream of B's joining its association may still be listed apart
       for a moment, so the count is at least 1 */
    size_t count = 0;
    OK(bsn_peer_list_len(l, &count));
    CHECK(count >= 1);
    bool found = false;
    for (size_t i = 0; i < count; i++) {
        uint64_t id = 0;
        OK(bsn_peer_list_id(l, i, &id));
        if (id != A.peer) continue;
        found = true;
        bool ready = false, inbound = false;
        char addr[64], agent[300];
        size_t n = 0;
        int32_t version = 0, start_height = -1;
        OK(bsn_peer_list_ready(l, i, &ready));
        CHECK(ready);
        OK(bsn_peer_list_inbound(l, i, &inbound));
        CHECK(inbound); /* B dialled A */
        OK(bsn_peer_list_address(l, i, addr, sizeof addr, &n));
        CHECK(n == strlen(addr) && strcmp(addr, A.peer_addr) == 0);
        /* too small: refused with the size needed */
        EXPECT(bsn_peer_list_address(l, i, addr, 3, &n), BSN_ERR_BUFFER_TOO_SMALL);
        CHECK(n == strlen(A.peer_addr));
        OK(bsn_peer_list_user_agent(l, i, agent, sizeof agent, &n));
        CHECK(strcmp(agent, A.peer_agent) == 0 && strncmp(agent, "/bsn:", 5) == 0);
        OK(bsn_peer_list_version(l, i, &version, &start_height));
        CHECK(version >= 70001);
        CHECK(start_height >= 0 && start_height <= (int32_t)nblocks);
        EXPECT(bsn_peer_list_version(l, i, NULL, &start_height), BSN_ERR_NULL_ARGUMENT);
        printf("A's peer %" PRIu64 ": %s %s version %" PRId32 " start height %" PRId32
               " ready %d inbound %d\n",
               id, addr, agent, version, start_height, (int)ready, (int)inbound);
    }
    CHECK(found);
    uint64_t id;
    bool flag;
    EXPECT(bsn_peer_list_id(l, count, &id), BSN_ERR_INVALID_ARGUMENT);
    EXPECT(bsn_peer_list_id(l, 0, NULL), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_peer_list_ready(NULL, 0, &flag), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_peer_list_len(NULL, &count), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_peer_list_len(l, NULL), BSN_ERR_NULL_ARGUMENT);
    OK(bsn_peer_list_free(&l));
    CHECK(l == NULL);
    EXPECT(bsn_peer_list_free(&l), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_peer_list_free(NULL), BSN_ERR_NULL_ARGUMENT);

    /* B sees A as an outbound peer at A's address */
    REQUIRE_OK(bsn_engine_peers(B.e, &l));
    OK(bsn_peer_list_len(l, &count));
    CHECK(count >= 1);
    found = false;
    for (size_t i = 0; i < count; i++) {
        char addr[64];
        size_t n;
        OK(bsn_peer_list_id(l, i, &id));
        if (id != B.peer) continue;
        found = true;
        OK(bsn_peer_list_inbound(l, i, &flag));
        CHECK(!flag);
        OK(bsn_peer_list_ready(l, i, &flag));
        CHECK(flag);
        OK(bsn_peer_list_address(l, i, addr, sizeof addr, &n));
        CHECK(strcmp(addr, A.addr) == 0);
    }
    CHECK(found);
    OK(bsn_peer_list_free(&l));
    return true;
}

static bool phase_bans(void) {
    const char *reason = "ffi_test ban";
    bool banned = true;
    EXPECT(bsn_engine_ban(A.e, "nonsense", 3600, reason), BSN_ERR_INVALID_ADDRESS);
    EXPECT(bsn_engine_ban(A.e, "127.0.0.1:99999", 3600, reason), BSN_ERR_INVALID_ADDRESS);
    EXPECT(bsn_engine_ban(A.e, NULL, 3600, reason), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_ban(A.e, "10.1.2.0/24", 3600, NULL), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_is_banned(A.e, "nonsense", &banned), BSN_ERR_INVALID_ADDRESS);
    EXPECT(bsn_engine_is_banned(A.e, "127.0.0.1:99999", &banned), BSN_ERR_INVALID_ADDRESS);
    EXPECT(bsn_engine_is_banned(A.e, NULL, &banned), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_is_banned(A.e, "10.1.2.3", NULL), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_unban(A.e, "nonsense"), BSN_ERR_INVALID_ADDRESS);
    OK(bsn_engine_is_banned(A.e, "10.1.2.3", &banned));
    CHECK(!banned);

    long long before = (long long)time(NULL);
    REQUIRE_OK(bsn_engine_ban(A.e, "10.1.2.0/24", 3600, reason));
    REQUIRE(pump("BANNED on A", a_banned));
    CHECK(strcmp(A.banned_subnet, "10.1.2.0/24") == 0);
    CHECK(strcmp(A.banned_reason, reason) == 0);
    OK(bsn_engine_is_banned(A.e, "10.1.2.3", &banned));
    CHECK(banned);
    OK(bsn_engine_is_banned(A.e, "10.1.3.3", &banned));
    CHECK(!banned);

    char text[512];
    size_t n = 0;
    OK(bsn_engine_bans(A.e, text, sizeof text, &n));
    CHECK(n == strlen(text));
    printf("A's bans: %s", text);
    char subnet[64] = "", why[128] = "";
    long long until = 0;
    CHECK(sscanf(text, "%63s %lld %127[^\n]", subnet, &until, why) == 3);
    CHECK(strcmp(subnet, "10.1.2.0/24") == 0);
    CHECK(until >= before + 3600 - 5 && until <= (long long)time(NULL) + 3600 + 5);
    CHECK(strcmp(why, reason) == 0);
    EXPECT(bsn_engine_bans(A.e, text, 3, &n), BSN_ERR_BUFFER_TOO_SMALL);
    CHECK(n > 3);
    EXPECT(bsn_engine_bans(A.e, text, sizeof text, NULL), BSN_ERR_NULL_ARGUMENT);

    REQUIRE_OK(bsn_engine_unban(A.e, "10.1.2.0/24"));
    REQUIRE(pump("UNBANNED on A", a_unbanned));
    CHECK(strcmp(A.unbanned_subnet, "10.1.2.0/24") == 0);
    OK(bsn_engine_is_banned(A.e, "10.1.2.3", &banned));
    CHECK(!banned);
    EXPECT(bsn_engine_unban(A.e, "10.1.2.0/24"), BSN_ERR_NOT_FOUND);
    OK(bsn_engine_bans(A.e, text, sizeof text, &n));
    CHECK(n == 0 && text[0] == 0);
    return true;
}

static bool phase_buffers(void) {
    /* the local address into 3 bytes: refused, nothing copied, the length told */
    char buf[64];
    size_t n = 0;
    memset(buf, 'x', sizeof buf);
    EXPECT(bsn_engine_local_addr(A.e, buf, 3, &n), BSN_ERR_BUFFER_TOO_SMALL);
    CHECK(n == strlen(A.addr));
    CHECK(buf[0] == 'x' && buf[1] == 'x' && buf[2] == 'x');
    /* exactly n bytes leaves no room for the NUL */
    EXPECT(bsn_engine_local_addr(A.e, buf, n, &n), BSN_ERR_BUFFER_TOO_SMALL);
    REQUIRE(n + 1 <= sizeof buf);
    OK(bsn_engine_local_addr(A.e, buf, n + 1, &n));
    CHECK(strcmp(buf, A.addr) == 0);
    EXPECT(bsn_engine_local_addr(A.e, buf, sizeof buf, NULL), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_local_addr(NULL, buf, sizeof buf, &n), BSN_ERR_NULL_ARGUMENT);

    /* the last error: a failure sets it; a buffer too small keeps it for the retry */
    EXPECT(bsn_engine_connect(A.e, "nonsense"), BSN_ERR_INVALID_ADDRESS);
    size_t elen = 0;
    memset(buf, 'x', sizeof buf);
    EXPECT(bsn_last_error(buf, 3, &elen), BSN_ERR_BUFFER_TOO_SMALL);
    CHECK(elen > 3);
    CHECK(buf[0] == 'x');
    char *msg = malloc(elen + 1);
    REQUIRE(msg != NULL);
    size_t elen2 = 0;
    OK(bsn_last_error(msg, elen + 1, &elen2));
    CHECK(elen2 == elen && strlen(msg) == elen);
    CHECK(strstr(msg, "nonsense") != NULL);
    printf("last error after connect(\"nonsense\"): %s\n", msg);
    free(msg);
    EXPECT(bsn_last_error(buf, sizeof buf, NULL), BSN_ERR_NULL_ARGUMENT);

    /* texts */
    const char *v = bsn_version();
    CHECK(v != NULL && strlen(v) > 0);
    CHECK(strncmp(bsn_result_text(BSN_OK), "BSN_OK", 6) == 0);
    CHECK(strncmp(bsn_result_text(BSN_ERR_TIMEOUT), "BSN_ERR_TIMEOUT", 15) == 0);
    CHECK(strncmp(bsn_result_text(BSN_ERR_NULL_ARGUMENT), "BSN_ERR_NULL_ARGUMENT", 21) == 0);
    CHECK(strncmp(bsn_result_text(BSN_ERR_PANIC), "BSN_ERR_PANIC", 13) == 0);
    CHECK(strcmp(bsn_result_text(12345), "unknown result") == 0);
    CHECK(strcmp(bsn_result_text(7000), "unknown result") == 0);

    /* polling and freeing events with NULL */
    bsn_event *ev = NULL;
    EXPECT(bsn_engine_poll_event(A.e, 0, NULL), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_poll_event(NULL, 0, &ev), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_event_free(NULL), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_event_free(&ev), BSN_ERR_NULL_ARGUMENT);

    /* transactions nobody handed over */
    uint8_t txid[32] = {1};
    EXPECT(bsn_engine_accept_tx(A.e, txid), BSN_ERR_NOT_FOUND);
    EXPECT(bsn_engine_accept_tx(A.e, NULL), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_reject_tx(A.e, txid, "no", 0), BSN_ERR_NOT_FOUND);
    EXPECT(bsn_engine_reject_tx(A.e, txid, NULL, 0), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_reject_tx(A.e, NULL, "no", 0), BSN_ERR_NULL_ARGUMENT);
    return true;
}

/* ---------------------------------------------------------------- the event callback */

struct counter {
    atomic_int events;
    atomic_int banned;
    atomic_int bad;
};

static struct counter counted;

static void on_event(void *userdata, const bsn_event *ev) {
    struct counter *c = userdata;
    bsn_event_type k = 0;
    if (bsn_event_kind(ev, &k) != BSN_OK) atomic_fetch_add(&c->bad, 1);
    if (k == BSN_EVENT_BANNED) atomic_fetch_add(&c->banned, 1);
    atomic_fetch_add(&c->events, 1);
}

static bool cb_banned(void) { return atomic_load(&counted.banned) > 0; }

static bool phase_callback(void) {
    bsn_event *ev = NULL;
    EXPECT(bsn_engine_set_event_callback(NULL, on_event, &counted), BSN_ERR_NULL_ARGUMENT);
    REQUIRE_OK(bsn_engine_set_event_callback(B.e, on_event, &counted));
    B.callback = true;
    EXPECT(bsn_engine_poll_event(B.e, 0, &ev), BSN_ERR_WRONG_STATE);
    CHECK(ev == NULL);
    OK(bsn_engine_ban(B.e, "10.9.9.9", 60, "callback test"));
    /* waits polling A (B's events go to the callback) */
    REQUIRE(pump("BANNED through B's callback", cb_banned));
    CHECK(atomic_load(&counted.bad) == 0);
    REQUIRE_OK(bsn_engine_set_event_callback(B.e, NULL, NULL));
    B.callback = false;
    printf("B's callback counted %d events\n", atomic_load(&counted.events));
    /* polling again: the unban's event comes by bsn_engine_poll_event */
    OK(bsn_engine_unban(B.e, "10.9.9.9"));
    REQUIRE(pump("UNBANNED on B by polling", b_unbanned));
    CHECK(strcmp(B.unbanned_subnet, "10.9.9.9/32") == 0);
    return true;
}

/* ---------------------------------------------------------------- stop and free */

static bool phase_stop(void) {
    char buf[64];
    size_t n;
    bsn_event *ev = NULL;
    bsn_peer_list *l = NULL;
    bool flag;
    uint8_t hash[32];
    uint32_t h;
    bsn_sync_progress p;

    REQUIRE_OK(bsn_engine_stop(B.e));
    B.stopped = true;
    EXPECT(bsn_engine_stop(B.e), BSN_ERR_STOPPED);
    EXPECT(bsn_engine_local_addr(B.e, buf, sizeof buf, &n), BSN_ERR_STOPPED);
    EXPECT(bsn_engine_poll_event(B.e, 0, &ev), BSN_ERR_STOPPED);
    EXPECT(bsn_engine_connect(B.e, A.addr), BSN_ERR_STOPPED);
    EXPECT(bsn_engine_send(B.e, B.peer, "ping", NULL, 0), BSN_ERR_STOPPED);
    EXPECT(bsn_engine_broadcast(B.e, "getaddr", NULL, 0), BSN_ERR_STOPPED);
    EXPECT(bsn_engine_peers(B.e, &l), BSN_ERR_STOPPED);
    EXPECT(bsn_engine_ban(B.e, "10.1.2.3", 1, ""), BSN_ERR_STOPPED);
    EXPECT(bsn_engine_is_banned(B.e, "10.1.2.3", &flag), BSN_ERR_STOPPED);
    EXPECT(bsn_engine_best_header(B.e, hash, &h), BSN_ERR_STOPPED);
    EXPECT(bsn_engine_sync_progress(B.e, &p), BSN_ERR_STOPPED);
    EXPECT(bsn_engine_submit_block(B.e, blocks[0].data, blocks[0].len, &h), BSN_ERR_STOPPED);
    EXPECT(bsn_engine_set_event_callback(B.e, on_event, &counted), BSN_ERR_STOPPED);
    CHECK(ev == NULL && l == NULL);

    /* A sees B go */
    REQUIRE(pump("PEER_DISCONNECTED on A", a_lost_b));

    OK(bsn_engine_free(&B.e));
    CHECK(B.e == NULL);
    EXPECT(bsn_engine_free(&B.e), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_local_addr(B.e, buf, sizeof buf, &n), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_stop(B.e), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_poll_event(B.e, 0, &ev), BSN_ERR_NULL_ARGUMENT);
    EXPECT(bsn_engine_free(NULL), BSN_ERR_NULL_ARGUMENT);

    /* A is freed running, with a callback set (set twice: the second replaces the first):
       the free stops the delivery and the engine */
    OK(bsn_engine_set_event_callback(A.e, on_event, &counted));
    OK(bsn_engine_set_event_callback(A.e, on_event, &counted));
    A.callback = true;
    OK(bsn_engine_free(&A.e));
    CHECK(A.e == NULL);
    return true;
}

/* ---------------------------------------------------------------- main */

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: %s CHAIN_FILE N\n", argv[0]);
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    started = now_s();
    deadline = started + RUN_SECONDS;
    long want = strtol(argv[2], NULL, 10);
    printf("bsn %s, chain %s of %ld blocks\n", bsn_version(), argv[1], want);

    bool ok = want > 0 && want <= MAX_BLOCKS && read_chain(argv[1], (size_t)want);
    ok = ok && start_engine(&A) && start_engine(&B);
    ok = ok && phase_config_misuse();
    ok = ok && phase_submit();
    ok = ok && phase_connect();
    ok = ok && phase_message();
    ok = ok && phase_sync();
    ok = ok && phase_peers();
    ok = ok && phase_bans();
    ok = ok && phase_buffers();
    ok = ok && phase_callback();
    ok = ok && phase_stop();
    if (!ok) printf("a required step failed: the rest is skipped\n");

    /* whatever happened, nothing is left running */
    if (B.e != NULL) OK(bsn_engine_free(&B.e));
    if (A.e != NULL) OK(bsn_engine_free(&A.e));
    free(file_bytes);

    if (!ok && failures == 0) failures = 1;
    printf("%d checks, %d failed, %.1f s\n", checks, failures, now_s() - started);
    if (failures == 0) printf("ffi_test: all checks passed\n");
    return failures == 0 ? 0 : 1;
}
