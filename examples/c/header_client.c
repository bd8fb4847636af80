/*
 * header_client.c: a header client embedding bsn, the way a C node starts.
 *
 *   header_client PEER [NETWORK] [TIMEOUT]
 *
 * Connects to PEER ("1.2.3.4:8333") on NETWORK ("mainnet", "testnet", "regtest" or "stn";
 * default "regtest"), syncs the header chain (no blocks are stored), prints where the sync
 * stands, and when the headers have caught up (or the peer has no more than we do) prints the
 * tip's height and hash and exits 0.
 * Exits 1 with bsn's last error when a call fails or TIMEOUT seconds (default 60) pass.
 *
 * Build from the repository root after `cargo build --release`:
 *   cc -std=c11 -Wall -Wextra -pedantic -I include examples/c/header_client.c \
 *      -L target/release -lbsn -Wl,-rpath,"$PWD/target/release" -o header_client
 */

#include "bsn.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

/* Prints what failed, the result's name and bsn's message for this thread's last failure. */
static int fail(const char *what, bsn_result r) {
    char msg[512];
    size_t len = 0;
    if (bsn_last_error(msg, sizeof msg, &len) != BSN_OK) msg[0] = 0; /* too long: skip it */
    fprintf(stderr, "header_client: %s: %s: %s\n", what, bsn_result_text(r), msg);
    return 1;
}

/* Prints one line of sync progress; returns whether the headers are caught up (no request in
 * flight and no peer claiming more than we have). */
static bool show_progress(const bsn_engine *engine) {
    bsn_sync_progress p;
    if (bsn_engine_sync_progress(engine, &p) != BSN_OK) return false;
    printf("progress: %" PRIu32 " headers of %" PRIu32 " known%s\n", p.header_height,
           p.best_known_height, p.syncing ? ", syncing" : "");
    return !p.syncing && p.header_height >= p.best_known_height;
}

/* Prints the tip: its hash comes in wire order, shown reversed as usual. */
static int show_tip(const bsn_engine *engine) {
    uint8_t hash[32];
    uint32_t height;
    bsn_result r = bsn_engine_best_header(engine, hash, &height);
    if (r != BSN_OK) return fail("reading the best header", r);
    printf("synced: tip height %" PRIu32 " hash ", height);
    for (int i = 31; i >= 0; i--) printf("%02x", hash[i]);
    printf("\n");
    return 0;
}

/* Runs the client on an engine that is started; returns the exit status. */
static int run(bsn_engine *engine, int timeout) {
    time_t deadline = time(NULL) + timeout;
    time_t last_shown = 0;
    while (time(NULL) < deadline) {
        /* Wait up to a second for the next event; the caller owns it and frees it. */
        bsn_event *event = NULL;
        bsn_result r = bsn_engine_poll_event(engine, 1000, &event);
        if (r == BSN_ERR_TIMEOUT) {
            show_progress(engine);
            last_shown = time(NULL);
            continue;
        }
        if (r != BSN_OK) return fail("waiting for events", r);

        bsn_event_type kind = BSN_EVENT_OTHER;
        bsn_event_kind(event, &kind);
        if (kind == BSN_EVENT_PEER_CONNECTED) {
            char addr[64] = "";
            size_t len;
            bsn_event_address(event, addr, sizeof addr, &len);
            printf("connected to %s\n", addr);
            /* A peer no higher than us starts no sync (no HEADERS_SYNCED follows): done. */
            if (show_progress(engine)) {
                bsn_event_free(&event);
                return show_tip(engine);
            }
        } else if (kind == BSN_EVENT_PEER_DISCONNECTED || kind == BSN_EVENT_CONNECT_FAILED) {
            /* the data of these events is why, as text without a NUL */
            char why[256] = "";
            size_t len = 0;
            if (bsn_event_data(event, (uint8_t *)why, sizeof why - 1, &len) == BSN_OK)
                why[len] = 0;
            printf("connection lost or refused: %s (retrying)\n", why);
        } else if (kind == BSN_EVENT_HEADERS_SYNCED) {
            bsn_event_free(&event);
            show_progress(engine);
            return show_tip(engine);
        }
        bsn_event_free(&event);

        if (time(NULL) != last_shown) {
            show_progress(engine);
            last_shown = time(NULL);
        }
    }
    fprintf(stderr, "header_client: no sync within %d seconds\n", timeout);
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 4) {
        fprintf(stderr, "usage: %s PEER [NETWORK] [TIMEOUT]\n", argv[0]);
        return 2;
    }
    const char *peer = argv[1];
    const char *network = argc > 2 ? argv[2] : "regtest";
    int timeout = argc > 3 ? atoi(argv[3]) : 60;
    if (timeout <= 0) timeout = 60;
    setvbuf(stdout, NULL, _IOLBF, 0); /* a line at a time, also into a pipe or a file */

    /* A configuration: a header client that dials only PEER and does not listen. */
    bsn_config *config = NULL;
    bsn_result r = bsn_config_new(network, &config);
    if (r != BSN_OK) return fail("bsn_config_new", r);
    if ((r = bsn_config_set_headers_only(config, true)) != BSN_OK ||
        (r = bsn_config_set_listen(config, "")) != BSN_OK ||
        (r = bsn_config_add_connect(config, peer)) != BSN_OK ||
        (r = bsn_config_set_target_outbound(config, 0)) != BSN_OK ||
        (r = bsn_config_set_shards(config, 1)) != BSN_OK ||
        (r = bsn_config_set_pin_threads(config, false)) != BSN_OK) {
        fail("configuring", r);
        bsn_config_free(&config);
        return 1;
    }

    /* The engine runs on its own threads; the config is copied and can go. */
    bsn_engine *engine = NULL;
    r = bsn_engine_start(config, &engine);
    bsn_config_free(&config);
    if (r != BSN_OK) return fail("bsn_engine_start", r);
    printf("bsn %s: header client on %s, peer %s\n", bsn_version(), network, peer);

    int status = run(engine, timeout);

    /* Free stops the engine (closes connections, joins its threads) and sets engine to NULL. */
    bsn_engine_free(&engine);
    return status;
}
